"""A finished segmentation run's masks, for `sft predict`'s rows and `sft serve`'s answers alike: an image through the
run's eval transform, the model's class per pixel at the run's size, brought back to the image's own size (nearest),
and the share of each class there. Behind `sft serve`, a batch runs on PyTorch or onnxruntime; the answer's mask is a
PNG of class indices (as `sft predict --out` writes it), with a colour overlay on request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torchvision import tv_tensors

from sft.tasks.segmentation.data import joint_transforms
from sft.tasks.segmentation.report import overlay
from sft.tasks.serving import Params, RunPredictor, decode_image, png_base64


def eval_transform(info):
    """The run's eval transform of an image (resize to its size, normalise as the backbone was trained)."""
    return joint_transforms(info.preprocess, info.image_size, "none", info.ignore_index)[1]


def image_input(image: Image.Image, transform) -> torch.Tensor:
    """An RGB image as the model's (3, S, S) input."""
    return transform(tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))).as_subclass(torch.Tensor)


@torch.inference_mode()
def class_maps(model, x: torch.Tensor) -> np.ndarray:
    """The most probable class of every pixel of a batch (B, 3, S, S): (B, S, S) uint8."""
    return model(x).argmax(1).to(torch.uint8).numpy()


def full_mask(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class map at the image's own (width, height), nearest neighbour: classes are never blended."""
    return np.asarray(Image.fromarray(pred).resize(size, Image.NEAREST))


def class_shares(mask: np.ndarray, classes: int) -> np.ndarray:
    return np.bincount(mask.ravel(), minlength=classes)[:classes] / mask.size


class Overlay(Params):
    overlay: bool = Field(False, description="also answer the image with the mask's colours over it (a base64 PNG)")


class MaskPredictor(RunPredictor):
    """`sft serve` for a segmentation run: per image {"shares": {class: share}, "mask": base64 PNG of class indices at
    the image's size, "width", "height"} and "overlay" when asked."""
    params = Overlay

    def __init__(self, task, run_dir: str | Path, engine: str):
        super().__init__(task, run_dir, engine)
        self.transform = eval_transform(self.info)

    def metadata(self) -> dict:
        return {**super().metadata(), "image_size": self.info.image_size, "ignore_index": self.info.ignore_index}

    def prepare(self, item: bytes) -> tuple[torch.Tensor, Image.Image]:
        image = decode_image(item)
        return image_input(image, self.transform), image

    def run(self, prepared: list) -> list[tuple[np.ndarray, Image.Image]]:
        maps = class_maps(self.model, torch.stack([x for x, _ in prepared]))
        return [(pred, image) for pred, (_, image) in zip(maps, prepared)]

    def answer(self, output: tuple[np.ndarray, Image.Image], params: Overlay) -> dict:
        pred, image = output
        mask = full_mask(pred, image.size)
        shares = class_shares(mask, len(self.info.classes))
        answer = {"shares": {c: round(float(v), 6) for c, v in zip(self.info.classes, shares)},
                  "width": image.width, "height": image.height, "mask": png_base64(mask)}
        if params.overlay:
            answer["overlay"] = png_base64(overlay(np.asarray(image), mask))
        return answer
