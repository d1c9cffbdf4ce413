"""COCO mAP through torchmetrics' MeanAveragePrecision (the faster_coco_eval backend: the COCO protocol, faster),
plus what a report needs beside it: precision-recall curves, per-image errors and the confusions between classes at
IoU 0.5. Labels here are 0-based class indices; the detectors' background index is handled in sft...module.
`DetectionScorer` counts a split batch by batch for `sft.tasks.base.score_batches` (training's final metrics and
`sft eval`)."""

from __future__ import annotations

import heapq

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

REPORT_SCORE = 0.3  # predictions shown in the report and counted in its confusions


def mean_ap(extended: bool = False) -> MeanAveragePrecision:
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval",
                                class_metrics=extended, extended_summary=extended)


def summary(result: dict, classes: list[str]) -> dict:
    """Plain numbers from MeanAveragePrecision.compute(): map, map50, map75, mar_100, and per-class AP/recall
    (None for a class with no box in target nor prediction)."""
    out = {k: float(result[k]) for k in ("map", "map_50", "map_75", "mar_100", "map_small", "map_medium")}
    out = {"map": out["map"], "map50": out["map_50"], "map75": out["map_75"], "recall": out["mar_100"],
           "map_small": out["map_small"], "map_medium": out["map_medium"]}
    ap, recall = [None] * len(classes), [None] * len(classes)
    if "map_per_class" in result and result["classes"].numel():
        ids = result["classes"].reshape(-1).tolist()
        for name, values in (("map_per_class", ap), ("mar_100_per_class", recall)):
            for i, v in zip(ids, result[name].reshape(-1).tolist()):
                if 0 <= i < len(classes) and v >= 0:  # -1: COCO's "no box of this class"
                    values[int(i)] = float(v)
    out["ap"], out["class_recall"] = ap, recall
    return out


def pr_curves(result: dict, classes: list[str]) -> dict[str, list[float]]:
    """Precision at the 101 COCO recall points, IoU 0.5, all areas, 100 detections: one curve per class present."""
    precision = result.get("precision")
    if precision is None or precision.ndim != 5:
        return {}
    ids = result["classes"].reshape(-1).tolist()
    curves = {}
    for k, i in enumerate(ids):
        curve = precision[0, :, k, 0, -1]
        if 0 <= i < len(classes) and (curve >= 0).any():
            curves[classes[int(i)]] = curve.clamp(min=0).tolist()
    return curves


def match(pred: dict, target: dict, score: float, iou: float = 0.5) -> dict:
    """One image at IoU `iou` among predictions of at least `score`, matched greedily whatever their class:
    (target class, predicted class) pairs, the classes of missed boxes and of false detections, and the errors
    (boxes not found with their class + detections that are not a right one)."""
    keep = pred["scores"] >= score
    p_boxes, p_labels = pred["boxes"][keep], pred["labels"][keep].tolist()
    t_boxes, t_labels = target["boxes"], target["labels"].tolist()
    pairs, used, matched = [], set(), set()
    if len(p_boxes) and len(t_boxes):
        overlaps = box_iou(t_boxes.float(), p_boxes.float())
        for t in torch.argsort(-overlaps.max(1).values).tolist():  # best overlaps first
            row = overlaps[t].clone()
            row[list(used)] = -1
            j = int(row.argmax())
            if row[j] >= iou:
                used.add(j), matched.add(t)
                pairs.append((t_labels[t], p_labels[j]))
    right = sum(t == p for t, p in pairs)
    return {"pairs": pairs, "missed": [c for t, c in enumerate(t_labels) if t not in matched],
            "false": [c for j, c in enumerate(p_labels) if j not in used],
            "errors": (len(t_labels) - right) + (len(p_labels) - right)}


def confusion(matches: list[dict], num_classes: int) -> np.ndarray:
    """(K+1, K+1) counts over a split: rows the target class (last row: no box there, a false detection), columns
    the predicted class (last column: missed)."""
    m = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for found in matches:
        for t, p in found["pairs"]:
            m[t, p] += 1
        for t in found["missed"]:
            m[t, num_classes] += 1
        for p in found["false"]:
            m[num_classes, p] += 1
    return m


class DetectionScorer:
    """COCO mAP of a split; with `extended`, per-class AP and recall, PR curves, the confusions at IoU 0.5
    (predictions of at least REPORT_SCORE) and the `top_n` images with the most errors, with those predictions (kept
    from this one pass, for the report to draw). The skeleton's Scorer: outputs and targets are lists of dicts
    (boxes xyxy, labels; outputs with scores)."""

    def __init__(self, classes: list[str], *, extended: bool = False, top_n: int = 0):
        self.classes, self.extended, self.top_n = classes, extended, top_n
        self.metric = mean_ap(extended=True)
        self.matches, self.worst, self.samples = [], [], 0

    def update(self, outputs: list[dict], targets: list[dict], first: int) -> None:
        if not self.samples and targets:  # the counts live where the model runs, as its outputs do
            self.metric = self.metric.to(targets[0]["boxes"].device)
        self.metric.update(outputs, targets)
        self.samples = max(self.samples, first + len(targets))
        if not (self.extended or self.top_n):  # training's final metrics: the mAP only, no matching (no GPU syncs)
            return
        outputs, targets = ([{k: v.cpu() for k, v in d.items()} for d in ds] for ds in (outputs, targets))  # one copy
        for index, (pred, target) in enumerate(zip(outputs, targets), first):
            m = match(pred, target, REPORT_SCORE)
            self.matches.append(m)
            if self.top_n and m["errors"]:
                item = (m["errors"], -index, shown(pred))  # (errors, -index) are unique: predictions never compared
                worst = self.worst
                heapq.heappush(worst, item) if len(worst) < self.top_n else heapq.heappushpop(worst, item)

    def result(self) -> dict:
        raw = self.metric.compute()
        result = summary(raw, self.classes)
        result.update(samples=self.samples, classes=self.classes)
        if self.extended:
            result.update(pr_curves=pr_curves(raw, self.classes),
                          confusion=confusion(self.matches, len(self.classes)).tolist(),
                          worst=[{"index": -i, "errors": e, **p} for e, i, p in sorted(self.worst, reverse=True)],
                          report_score=REPORT_SCORE)
        return result


def shown(pred: dict) -> dict:
    """An image's predictions of at least REPORT_SCORE, as JSON (boxes xyxy in the model's input pixels)."""
    keep = pred["scores"] >= REPORT_SCORE
    return {"boxes": [[round(float(v), 2) for v in b] for b in pred["boxes"][keep]],
            "scores": [round(float(v), 4) for v in pred["scores"][keep]],
            "labels": [int(c) for c in pred["labels"][keep]]}
