"""mIoU that is right by construction: one confusion matrix counted over the whole split, then the scores.

Metric libraries average per-batch or per-image IoUs, score a class absent from both target and prediction as 0,
or count ignored pixels (torchmetrics 1693, 1385, 2866; evaluate 421). Here ignored pixels are dropped before
counting, the matrix is summed over batches and over DDP processes (torchmetrics' state sync), and a class that
appears in neither target nor prediction of the split has no IoU: it is left out of the mean, not counted as 0.
`SegmentationScorer` counts a split batch by batch for `sft.tasks.base.score_batches` (training's final metrics and
`sft eval`).
"""

from __future__ import annotations

import heapq

import numpy as np
import torch
from torchmetrics import Metric

from sft.tasks.segmentation.calibration import PixelCalibration


class ConfusionMatrix(Metric):
    """Pixel counts (target class, predicted class) of a whole split."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("matrix", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.matrix += confusion(preds, target, self.num_classes, self.ignore_index)

    def compute(self) -> torch.Tensor:
        return self.matrix


def confusion(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Pixel counts (target, prediction) of a batch: preds (B, H, W) class indices or (B, C, H, W) logits, target
    (B, H, W) with ignore_index pixels dropped before counting."""
    if preds.ndim == target.ndim + 1:
        preds = preds.argmax(1)
    keep = target != ignore_index
    cells = target[keep].long() * num_classes + preds[keep].long()
    return torch.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(matrix: torch.Tensor) -> dict:
    """mIoU, pixel accuracy, mean Dice and per-class IoU / Dice (None for a class absent from target and
    prediction) from a confusion matrix (rows: target, columns: prediction)."""
    m = matrix.double().cpu()
    tp = m.diag()
    fp, fn = m.sum(0) - tp, m.sum(1) - tp
    union = tp + fp + fn
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.nan)
    dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.nan)
    total = m.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "mean_dice": float(dice[present].mean()) if present.any() else float("nan"),
        "iou": [None if torch.isnan(v) else float(v) for v in iou],
        "dice": [None if torch.isnan(v) else float(v) for v in dice],
        "pixels": [int(v) for v in m.sum(1)],
    }


class SegmentationScorer:
    """A split's scores from one confusion matrix, per-pixel calibration (raw and at `temperature`), and the `top_n`
    images of lowest IoU (in the scores), with the masks predicted for them (`worst_masks`, for the report: no second
    forward pass). The skeleton's Scorer: outputs are logits (B, C, H, W), targets masks (B, H, W)."""

    def __init__(self, classes: list[str], ignore_index: int, *, top_n: int = 0, temperature: float = 1.0):
        self.classes, self.ignore_index, self.top_n = classes, ignore_index, top_n
        self.total = ConfusionMatrix(len(classes), ignore_index)
        self.calibration = PixelCalibration(ignore_index, temperature)
        self.worst: list[tuple[float, int]] = []
        self.kept: dict[int, np.ndarray] = {}  # the worst images' predicted masks so far
        self.samples = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, first: int) -> None:
        logits = outputs.float()
        pred = logits.argmax(1)
        if not self.samples:  # the counts live where the model runs
            self.total = self.total.to(pred.device)
        self.total.update(pred, targets)
        self.calibration.update(logits, targets)
        if self.top_n:
            for index, (p, t) in enumerate(zip(pred, targets), first):
                self._rank(p, t, index)
        self.samples = max(self.samples, first + len(targets))

    def _rank(self, pred: torch.Tensor, target: torch.Tensor, index: int) -> None:
        """This image's own matrix (a bincount, no Metric object per image): kept with its mask when among the
        worst."""
        item = (-scores(confusion(pred[None], target[None], len(self.classes), self.ignore_index))["miou"], -index)
        worst = self.worst
        dropped = heapq.heappush(worst, item) if len(worst) < self.top_n else heapq.heappushpop(worst, item)
        if dropped != item:
            self.kept[index] = pred.cpu().numpy().astype(np.uint8)
            if dropped:
                del self.kept[-dropped[1]]

    def result(self) -> dict:
        matrix = self.total.compute()
        result = scores(matrix) | self.calibration.result()
        result.update(samples=self.samples, classes=self.classes, matrix=matrix.cpu().tolist(),
                      worst=[{"index": -i, "miou": -v} for v, i in sorted(self.worst, reverse=True)])
        return result

    def worst_masks(self) -> list[np.ndarray]:
        """The predicted masks of the images `result()["worst"]` lists, in its order."""
        return [self.kept[-i] for _, i in sorted(self.worst, reverse=True)]
