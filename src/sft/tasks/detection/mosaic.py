"""Mosaic augmentation (Ultralytics' `mosaic`, at one scale): four training images, each already through the train
transform (S x S), become one S x S image whose quarters meet at a random point in its middle half. Each quarter is
the part of its image nearest that point, so objects keep their size; a box cut by a quarter's edge is kept clipped
when at least a tenth of it is left and both sides are over 2 px (Ultralytics' box_candidates), else dropped with
its label. The detector sees more objects per image, at more positions and cut in more ways, for the same compute."""

from __future__ import annotations

import random

import torch

MIN_SIDE, MIN_AREA = 2.0, 0.1  # Ultralytics' box_candidates: wh_thr, area_thr


def mosaic(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], x: int, y: int) -> tuple:
    """Four (image (3, S, S), boxes (n, 4) xyxy pixels, labels (n,)), top-left, top-right, bottom-left, bottom-right,
    as one (image, boxes, labels) whose quarters meet at (x, y)."""
    size = parts[0][0].shape[-1]
    image = parts[0][0].new_empty(parts[0][0].shape)
    boxes, labels = [], []
    # (output columns, output rows) of each quarter; its source is shifted by where the quarter starts minus where
    # the part nearest (x, y) starts in the source
    for (picture, part_boxes, part_labels), (left, right, top, bottom), (dx, dy) in zip(parts, (
            (0, x, 0, y), (x, size, 0, y), (0, x, y, size), (x, size, y, size)),
            ((x - size, y - size), (x, y - size), (x - size, y), (x, y))):
        image[:, top:bottom, left:right] = picture[:, top - dy:bottom - dy, left - dx:right - dx]
        shifted = part_boxes + part_boxes.new_tensor([dx, dy, dx, dy])
        clipped = torch.stack([shifted[:, 0].clamp(left, right), shifted[:, 1].clamp(top, bottom),
                               shifted[:, 2].clamp(left, right), shifted[:, 3].clamp(top, bottom)], dim=1)
        kept = _visible(shifted, clipped)
        boxes.append(clipped[kept])
        labels.append(part_labels[kept])
    return image, torch.cat(boxes), torch.cat(labels)


def _visible(boxes: torch.Tensor, clipped: torch.Tensor) -> torch.Tensor:
    """Boxes whose clipped part has both sides over MIN_SIDE px and at least MIN_AREA of their area."""
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (w > MIN_SIDE) & (h > MIN_SIDE) & (w * h >= MIN_AREA * area)


def meeting_point(size: int) -> tuple[int, int]:
    """Where the quarters meet: uniform over the middle half of each side (Ultralytics' mosaic centre)."""
    return random.randint(size // 4, 3 * size // 4), random.randint(size // 4, 3 * size // 4)
