"""What every task's `sft serve` predictor shares: request bytes decoded as an image, arrays answered as base64 PNG,
and the run behind it (its model.json, model on the engine asked for, weights id, /metadata). A task's serving.py
adds its parameters (a pydantic model the server validates requests against), `prepare`, `run` and `answer`."""

from __future__ import annotations

import base64
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from sft.errors import UserError
from sft.models.export import file_id


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
        return {"task": self.info.task, "classes": self.info.classes, "inputs": self.inputs,
                "preprocess": asdict(self.info.preprocess), "backbone": self.info.backbone,
                "weights_id": self.weights_id, "engine": self.engine, "run_dir": str(self.run_dir.resolve())}
