"""mIoU from one confusion matrix: equal to torchmetrics where every class is present, right where one is absent."""

import math

import torch
from torchmetrics.classification import MulticlassJaccardIndex

from sft.tasks.segmentation.metrics import ConfusionMatrix, scores


def test_miou_matches_torchmetrics_when_every_class_is_present():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (6, 16, 16), generator=g)
    preds = torch.where(torch.rand(6, 16, 16, generator=g) < 0.7, target, torch.randint(0, 4, (6, 16, 16),
                                                                                         generator=g))
    ours, theirs = ConfusionMatrix(4), MulticlassJaccardIndex(4, average="macro")
    for p, t in zip(preds.split(2), target.split(2)):  # batch by batch, as in validation
        ours.update(p, t)
        theirs.update(p, t)
    assert math.isclose(scores(ours.compute())["miou"], float(theirs.compute()), rel_tol=1e-6)
    per_class = MulticlassJaccardIndex(4, average="none")(preds, target)
    assert torch.allclose(torch.tensor(scores(ours.compute())["iou"], dtype=torch.float32), per_class)


def test_absent_classes_are_left_out_and_ignored_pixels_never_count():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255]]])
    preds = torch.tensor([[[0, 0, 1, 0], [0, 0, 1, 2]]])  # the ignored pixel's prediction must not count
    matrix = ConfusionMatrix(3, ignore_index=255)
    matrix.update(preds, target)
    s = scores(matrix.compute())
    assert s["iou"][2] is None  # class 2: in neither target nor (counted) prediction
    assert s["iou"][0] == 4 / 5 and s["iou"][1] == 2 / 3
    assert math.isclose(s["miou"], (4 / 5 + 2 / 3) / 2) and s["pixels"] == [4, 3, 0]
    assert math.isclose(s["pixel_acc"], 6 / 7)
    per_image = [scores(torch.bincount(t[t != 255] * 3 + p[t != 255], minlength=9).reshape(3, 3))["miou"]
                 for p, t in ((preds[:, :1], target[:, :1]), (preds[:, 1:], target[:, 1:]))]
    assert sum(per_image) / 2 != s["miou"]  # averaging per image (or batch) is another number: one matrix per split


def test_logits_are_reduced_to_classes():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2] = 1.0
    matrix = ConfusionMatrix(3)
    matrix.update(logits, torch.full((1, 2, 2), 2))
    assert scores(matrix.compute())["miou"] == 1.0
