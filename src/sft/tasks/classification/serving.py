"""A finished classification run behind `sft serve`: request items (image bytes, texts) become the same inputs
`sft predict` gives the model (the run's eval transform, its tokenizer), batches run on PyTorch or onnxruntime, and
each answer is the top-k labels with the run's (calibrated) probabilities."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from sft.data.images import build_transforms
from sft.errors import UserError
from sft.models.export import file_id, probabilities
from sft.tasks.classification.export import load_model
from sft.tasks.classification.onnx import load_onnx
from sft.tasks.classification.recipe import TEXT


def load_engine(run_dir: str | Path, engine: str):
    """(model, info) of a run on `engine`: the PyTorch model, or its ONNX export through onnxruntime."""
    if engine not in ("torch", "onnx"):
        raise UserError(f"--engine {engine}: expected torch or onnx")
    return load_model(run_dir) if engine == "torch" else load_onnx(run_dir)


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


class ClassifierPredictor:
    def __init__(self, task, run_dir: str | Path, engine: str):
        self.model, self.info = load_engine(run_dir, engine)
        self.engine, self.run_dir = engine, Path(run_dir)
        self.inputs = "text" if self.info.task == TEXT else "image"
        self.collate = task.run_inputs(self.model, self.info).collate
        self.transform = None if self.inputs == "text" else build_transforms(self.info.preprocess, None, "none")[1]
        self.weights_id = file_id(self.run_dir / "model.safetensors")

    def metadata(self) -> dict:
        return {"task": self.info.task, "classes": self.info.classes, "inputs": self.inputs,
                "preprocess": asdict(self.info.preprocess), "transform": str(self.transform or ""),
                "temperature": self.info.temperature, "backbone": self.info.backbone, "weights_id": self.weights_id,
                "engine": self.engine, "run_dir": str(self.run_dir.resolve())}

    def prepare(self, item: bytes | str) -> object:
        if self.inputs == "image":
            return self.transform(decode_image(item))
        if not isinstance(item, str) or not item.strip():
            raise UserError("each text must be a non-empty string")
        if self.info.preprocess.pair:
            if "\t" not in item:
                raise UserError("this run classifies text pairs: give each as 'first<TAB>second'")
            return tuple(item.split("\t", 1))
        return item

    @torch.inference_mode()
    def run(self, prepared: list) -> list[torch.Tensor]:
        x = torch.stack(prepared) if self.inputs == "image" else self.collate([(t, 0) for t in prepared])[0]
        return list(probabilities(self.model(x), self.info.temperature))

    def answer(self, probs: torch.Tensor, top_k: int) -> dict:
        values, indices = probs.topk(min(top_k, len(self.info.classes)))
        return {"predictions": [{"label": self.info.classes[i], "probability": round(float(v), 6)}
                                for v, i in zip(values.tolist(), indices.tolist())]}
