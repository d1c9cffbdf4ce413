"""Per-pixel calibration of a segmentation run: is a pixel predicted with confidence p right a share p of the time?

Every pixel that is not ignore_index is one (top probability, correct?) pair: `PixelCalibration` counts them in the
shared reliability bins (`sft.core.calibration`) on the device, batch by batch (bincount, as the confusion matrix
is counted), raw and temperature-scaled, with the pixels' mean NLL. The temperature is fitted once on the run's
validation split and stored in model.json, as classification does: the fit needs logits, so it holds those of a
random sample of at most MAX_PIXELS validation pixels (spread evenly over the images) rather than every pixel's —
about 9 MB for 11 classes, and the LBFGS fit on them takes well under a second. Scaling never changes a
predicted class, so mIoU and the masks `sft predict` writes stay exactly as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from sft.core.calibration import ReliabilityBins, reliability_figure
from sft.core.calibration import calibrate_run as calibrate
from sft.core.html import img
from sft.data.loaders import eval_batches

MAX_PIXELS = 200_000


class PixelCalibration:
    """Reliability bins, ECE and NLL of a split's kept pixels, raw and at `temperature`."""

    def __init__(self, ignore_index: int, temperature: float = 1.0):
        self.ignore_index, self.temperature = ignore_index, temperature
        self.raw, self.scaled = ReliabilityBins(), ReliabilityBins()
        self.sums = torch.zeros(3, dtype=torch.float64)  # NLL raw, NLL scaled, pixels: on the device, no sync

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """logits (B, C, H, W) float, target (B, H, W)."""
        keep = target != self.ignore_index
        correct = (logits.argmax(1) == target)[keep]
        nll = []
        for bins, scaled in ((self.raw, logits), (self.scaled, logits / self.temperature)):
            bins.add(scaled.softmax(1).amax(1)[keep], correct)
            nll.append(nn.functional.cross_entropy(scaled, target.long(), ignore_index=self.ignore_index,
                                                   reduction="sum").double())
        self.sums = self.sums.to(logits.device) + torch.stack([*nll, keep.sum().double()])

    def result(self) -> dict:
        (nll_raw, nll_scaled, pixels), raw, scaled = self.sums.tolist(), self.raw.result(), self.scaled.result()
        return {"temperature": self.temperature, "ece": raw["ece"], "ece_calibrated": scaled["ece"],
                "nll": nll_raw / max(pixels, 1), "nll_calibrated": nll_scaled / max(pixels, 1), "reliability": raw,
                "reliability_calibrated": scaled}


@torch.inference_mode()
def sample_pixels(model: nn.Module, dataset: Dataset, ignore_index: int, *, batch_size: int = 32,
                  max_pixels: int = MAX_PIXELS, seed: int = 0,
                  progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and labels (N,) of at most `max_pixels` kept pixels, the same number drawn from each image
    (seeded), on the CPU."""
    device = next(model.parameters()).device
    per_image = max(1, max_pixels // max(len(dataset), 1))
    generator = torch.Generator().manual_seed(seed)
    logits_out, labels_out = [], []
    for x, y in eval_batches(dataset, batch_size, None, progress, "validation pixels"):
        logits = model(x.to(device)).float()
        for image, target in zip(logits, y.to(device)):
            kept = (target.flatten() != ignore_index).nonzero().squeeze(1)
            pick = kept[torch.randperm(len(kept), generator=generator)[:per_image].to(device)]
            logits_out.append(image.flatten(1)[:, pick].T.cpu())
            labels_out.append(target.flatten()[pick].cpu())
    return torch.cat(logits_out).clone(), torch.cat(labels_out).clone()  # plain tensors outside inference mode


def calibrate_run(run_dir: str | Path, model: nn.Module, val: Callable[[], Dataset | None], ignore_index: int, *,
                  batch_size: int = 32, seed: int = 0, progress: bool = False, refit: bool = False) -> dict:
    """The run's temperature (`sft.core.calibration.calibrate_run`), fitted on a pixel sample of its validation
    split (`val()`: the eval dataset, None without one)."""
    def held_out():
        dataset = val()
        if dataset is None or len(dataset) == 0:
            return None
        logits, labels = sample_pixels(model, dataset, ignore_index, batch_size=batch_size, seed=seed,
                                       progress=progress)
        return logits, labels, {"val_images": len(dataset), "val_pixels": len(labels)}

    return calibrate(run_dir, held_out, refit)


def calibration_section(result: dict) -> str:
    """report.html's calibration: the temperature and how it was fitted, ECE and NLL on the evaluated split, the
    reliability diagram (`result`: the scorer's, with the fit under "calibration")."""
    cal = result["calibration"]
    fitted = (f"fitted on {cal['val_pixels']} pixels of {cal['val_images']} validation images (NLL "
              f"{cal['val_nll_before']:.4f} → {cal['val_nll_after']:.4f}, ECE {cal['val_ece_before']:.4f} → "
              f"{cal['val_ece_after']:.4f})" if "val_pixels" in cal else cal.get("note", "as stored in model.json"))
    figure = reliability_figure(result["reliability"], result["reliability_calibrated"], result["temperature"])
    return (f"<p>Temperature <b>{result['temperature']:.4f}</b>, {fitted}. On this data: ECE <b>{result['ece']:.4f}"
            f"</b> before and <b>{result['ece_calibrated']:.4f}</b> after temperature scaling; pixel NLL "
            f"{result['nll']:.4f} → {result['nll_calibrated']:.4f}. Scaling changes no predicted class.</p>"
            f"<figure>{img(figure, 'reliability diagram')}</figure>")
