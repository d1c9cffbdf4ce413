"""mAP from torchmetrics' faster_coco_eval backend equals pycocotools' on a small case; matches and confusions."""

import math

import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from sft.tasks.detection.metrics import confusion, match, mean_ap, summary

CLASSES = ["cat", "dog", "bird"]


def case():
    g = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for _ in range(6):
        xy = torch.rand(3, 2, generator=g) * 60
        boxes = torch.cat([xy, xy + 10 + torch.rand(3, 2, generator=g) * 30], 1)
        labels = torch.randint(0, 3, (3,), generator=g)
        jitter = boxes + torch.randn(3, 4, generator=g) * 3
        preds.append({"boxes": jitter, "scores": torch.rand(3, generator=g), "labels": labels.roll(1) if
                      len(preds) % 3 == 0 else labels})
        targets.append({"boxes": boxes, "labels": labels})
    targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})  # a negative
    preds.append({"boxes": torch.tensor([[1.0, 1, 20, 20]]), "scores": torch.tensor([0.9]),
                  "labels": torch.tensor([0])})
    return preds, targets


def test_faster_coco_eval_matches_pycocotools():
    pytest.importorskip("pycocotools")
    preds, targets = case()
    ours = mean_ap(extended=True)
    ours.update(preds, targets)
    reference = MeanAveragePrecision(box_format="xyxy", backend="pycocotools", class_metrics=True)
    reference.update(preds, targets)
    a, b = summary(ours.compute(), CLASSES), summary(reference.compute(), CLASSES)
    assert 0 < a["map50"] < 1
    for key in ("map", "map50", "map75", "recall"):
        assert math.isclose(a[key], b[key], abs_tol=1e-4), key
    assert all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a["ap"], b["ap"]))


def test_a_perfect_detector_scores_one():
    _, targets = case()
    perfect = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    metric = mean_ap()
    metric.update(perfect, targets)
    s = summary(metric.compute(), CLASSES)
    assert s["map"] == pytest.approx(1.0) and s["map50"] == pytest.approx(1.0)


def test_matches_and_confusions_at_iou_half():
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
              "labels": torch.tensor([0, 1, 2])}
    pred = {"boxes": torch.tensor([[0.0, 0, 10, 11], [20, 20, 30, 30], [60, 60, 70, 70], [40, 40, 50, 50]]),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.1]), "labels": torch.tensor([0, 2, 1, 2])}
    m = match(pred, target, score=0.3)  # the last prediction is below the score: box 2 is missed
    assert sorted(m["pairs"]) == [(0, 0), (1, 2)] and m["missed"] == [2] and m["false"] == [1]
    assert m["errors"] == 2 + 2  # two boxes not found with their class, two detections that are not right ones
    matrix = confusion([m], 3)
    assert matrix[0, 0] == 1 and matrix[1, 2] == 1 and matrix[2, 3] == 1 and matrix[3, 1] == 1
