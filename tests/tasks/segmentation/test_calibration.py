"""Per-pixel calibration: the bins count every kept pixel once, give torchmetrics' ECE, and drop ignored pixels."""

import pytest
import torch
import torchmetrics.functional as tmf

from sft.tasks.segmentation.calibration import PixelCalibration, sample_pixels


def batch(seed=0, ignore=255):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 8, 8, generator=g) * 3
    target = torch.randint(0, 4, (3, 8, 8), generator=g)
    target[:, :2] = ignore  # two rows of every image count for nothing
    return logits, target


def test_pixel_ece_is_torchmetrics_on_the_kept_pixels():
    logits, target = batch()
    cal = PixelCalibration(255, temperature=2.0)
    cal.update(logits[:2], target[:2]), cal.update(logits[2:], target[2:])  # split over batches: the same sums
    result = cal.result()
    keep = target != 255
    flat = logits.permute(0, 2, 3, 1)[keep]
    for key, t in (("ece", 1.0), ("ece_calibrated", 2.0)):
        expected = tmf.calibration_error((flat / t).softmax(-1), target[keep], task="multiclass", num_classes=4,
                                         n_bins=15)
        assert result[key] == pytest.approx(float(expected), abs=1e-5)
    assert sum(result["reliability"]["count"]) == int(keep.sum()) == 3 * 6 * 8
    assert result["nll"] == pytest.approx(float(torch.nn.functional.cross_entropy(flat, target[keep])), rel=1e-5)


class Fixed(torch.nn.Module):
    """A 'model' that returns the logits stored for each image (its input is the image's index)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits, requires_grad=False)

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


def test_the_temperature_sample_is_bounded_and_never_an_ignored_pixel():
    logits, target = batch()
    dataset = [(torch.full((1, 1, 1), float(i)), target[i]) for i in range(3)]
    sampled, labels = sample_pixels(Fixed(logits), dataset, 255, batch_size=2, max_pixels=30)
    assert sampled.shape == (30, 4) and len(labels) == 30 and (labels != 255).all()
    sampled, labels = sample_pixels(Fixed(logits), dataset, 255, max_pixels=10_000)
    assert len(labels) == 3 * 6 * 8  # fewer kept pixels than asked for: all of them, once
