"""Flip test-time augmentation (`--tta flip` on `sft eval` and `sft predict`): the model also sees each image mirrored
left to right, and the two answers are merged as the anchors merge them: logits averaged (timm's validation TTA),
per-pixel logits mirrored back and averaged, boxes mirrored back and merged by class-wise NMS (Ultralytics'
augmented inference). Twice the inference compute, no training change."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import batched_nms


class FlipAverage(nn.Module):
    """The mean of the logits of an image and of its mirror image; `dense` (per-pixel) logits are mirrored back."""

    def __init__(self, model: nn.Module, dense: bool = False) -> None:
        super().__init__()
        self.model, self.dense = model, dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mirrored = self.model(x.flip(-1))
        return (self.model(x) + (mirrored.flip(-1) if self.dense else mirrored)) / 2


class FlipMergedBoxes(nn.Module):
    """The detections of an image and of its mirror image (boxes mirrored back), merged by class-wise NMS at `iou`,
    the `keep` best per image."""

    def __init__(self, model: nn.Module, iou: float, keep: int) -> None:
        super().__init__()
        self.model, self.iou, self.keep = model, iou, keep

    def forward(self, x: torch.Tensor) -> list[dict]:
        width = x.shape[-1]
        merged = []
        for plain, mirrored in zip(self.model(x), self.model(x.flip(-1))):
            flipped = mirrored["boxes"]
            back = flipped[:, [2, 1, 0, 3]] * flipped.new_tensor([-1, 1, -1, 1]) + flipped.new_tensor([width, 0, width, 0])
            boxes = torch.cat([plain["boxes"], back])
            scores, labels = torch.cat([plain["scores"], mirrored["scores"]]), torch.cat([plain["labels"],
                                                                                          mirrored["labels"]])
            kept = batched_nms(boxes, scores, labels, self.iou)[:self.keep]
            merged.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
        return merged
