"""A finished detection run's boxes, for `sft predict`'s rows and `sft serve`'s answers alike: the detector sees the
image at the run's size, and its boxes are scaled back to the image's own pixels (xyxy), those under the score asked
for dropped. Behind `sft serve`, a batch runs on the engine the run was loaded with; each prepared item keeps its
image's size so that its boxes can be scaled back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torchvision import tv_tensors

from sft.tasks.detection.data import box_transforms, transform_image
from sft.tasks.detection.options import PredictOptions
from sft.tasks.serving import Params, RunPredictor, decode_image


def detections(found: dict, size: tuple[int, int], image_size: int, score: float,
               limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes xyxy in the image's own pixels, scores, 0-based labels) of one image's detector output at the run's
    size, for an image of `size` (width, height): those of at least `score`, the `limit` best (all when None)."""
    keep = found["scores"] >= score
    boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
    if limit is not None:
        best = torch.argsort(scores, descending=True, stable=True)[:limit]
        boxes, scores, labels = boxes[best], scores[best], labels[best]
    w, h = size
    return boxes * torch.tensor([w / image_size, h / image_size] * 2), scores, labels


class BoxParams(Params):
    score: float = Field(PredictOptions.model_fields["score"].default, ge=0, le=1,
                         description="the lowest score kept (the run's detector keeps none under its own "
                                     "score_threshold)")
    max_detections: int | None = Field(None, ge=1, description="at most this many boxes, the highest scores first "
                                                               "(default: all the detector kept)")


class BoxPredictor(RunPredictor):
    """`sft serve` for a detection run: per image {"detections": [{"label", "score", "xyxy"}], "width", "height"},
    highest scores first."""
    params = BoxParams

    def __init__(self, task, run_dir: str | Path, engine: str):
        super().__init__(task, run_dir, engine)
        self.transform = box_transforms(self.info.image_size, "none")[1]

    def metadata(self) -> dict:
        return {**super().metadata(), "image_size": self.info.image_size,
                "score_threshold": self.info.score_threshold, "detections_per_image": self.info.detections_per_image}

    def prepare(self, item: bytes) -> tuple[torch.Tensor, tuple[int, int]]:
        image = decode_image(item)
        x = transform_image(self.transform, tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1)))
        return x, image.size

    @torch.inference_mode()
    def run(self, prepared: list) -> list[tuple[dict, tuple[int, int]]]:
        found = self.model(torch.stack([x for x, _ in prepared]))
        return [(f, size) for f, (_, size) in zip(found, prepared)]

    def answer(self, output: tuple[dict, tuple[int, int]], params: BoxParams) -> dict:
        found, (w, h) = output
        boxes, scores, labels = detections(found, (w, h), self.info.image_size, params.score, params.max_detections)
        return {"detections": [{"label": self.info.classes[int(c)], "score": round(float(s), 6),
                                "xyxy": [round(float(v), 2) for v in b]}
                               for b, s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist())],
                "width": w, "height": h}
