"""What every task's `sft serve` predictor shares: request bytes decoded as an image, arrays answered as base64 PNG,
the run behind it (its model.json, model on the engine asked for, weights id, /metadata), and for the tasks on pooled
vectors a request item as the run's model input (`ImageRequests`, `TextRequests`: its eval transform, its tokenizer).
A task's serving.py adds its parameters (a pydantic model the server validates requests against), `prepare`, `run`
and `answer`."""

from __future__ import annotations

import base64
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from sft.data.texts import text_item
from sft.errors import UserError
from sft.models.export import file_id
from sft.tasks.pooled import eval_transform


class Params(BaseModel):
    """A predictor's request parameters: none unless a task declares its own (a subclass with fields)."""
    model_config = ConfigDict(extra="forbid")


def decode_image(data: bytes) -> Image.Image:
    """Request bytes as an RGB image; anything else is a UserError (the server answers 422)."""
    if not data:
        raise UserError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except UnidentifiedImageError:  # its message holds the repr of our BytesIO, which means nothing to a client
        raise UserError("not an image that can be read (no image format recognised)") from None
    except Exception as e:  # PIL raises many types for damaged images
        raise UserError(f"not an image that can be read ({str(e)[:120] or type(e).__name__})") from None


def png_base64(array: np.ndarray) -> str:
    """An (H, W) or (H, W, 3) uint8 array as a base64 PNG. Compression level 1: masks are flat and shrink as well as
    at the default level, several times faster."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", compress_level=1)
    return base64.b64encode(out.getvalue()).decode()


class RunPredictor:
    """A finished run behind `sft serve` (sft.tasks.base.Predictor): its model.json (`info`), its model on `engine`
    through the task's own `load_run`, and /metadata."""
    inputs = "image"
    params: type[BaseModel] = Params

    def __init__(self, task, run_dir: str | Path, engine: str):
        self.run_dir, self.engine = Path(run_dir), engine
        self.info = task.run_info(self.run_dir)
        self.model = task.load_run(self.run_dir, self.info, engine)
        self.weights_id = file_id(self.run_dir / "model.safetensors")

    def metadata(self) -> dict:
        named = {"classes": self.info.classes} if hasattr(self.info, "classes") else {}
        return {"task": self.info.task, **named, "inputs": self.inputs,
                "preprocess": asdict(self.info.preprocess), "backbone": self.info.backbone,
                "weights_id": self.weights_id, "engine": self.engine, "run_dir": str(self.run_dir.resolve())}


class ImageRequests(RunPredictor):
    """A predictor of a pooled-vector image run: each request image through the run's eval transform, a batch
    stacked."""
    inputs = "image"

    def __init__(self, task, run_dir: str | Path, engine: str):
        super().__init__(task, run_dir, engine)
        self.transform = eval_transform(self.info)

    def prepare(self, item: bytes | str) -> torch.Tensor:
        return self.transform(decode_image(item))

    def batch(self, prepared: list) -> torch.Tensor:
        return torch.stack(prepared)


class TextRequests(RunPredictor):
    """A predictor of a pooled-vector text run: each request text (a pair as 'first<TAB>second') through the run's
    tokenizer, a batch padded to its longest."""
    inputs = "text"

    def __init__(self, task, run_dir: str | Path, engine: str):
        super().__init__(task, run_dir, engine)
        self.collate = task.run_inputs(self.model, self.info).collate

    def prepare(self, item: bytes | str) -> str | tuple[str, str]:
        if not isinstance(item, str) or not item.strip():
            raise UserError("each text must be a non-empty string")
        return text_item(item, self.info.preprocess.pair)

    def batch(self, prepared: list) -> dict:
        return self.collate([(t, 0) for t in prepared])[0]
