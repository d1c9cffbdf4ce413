"""Calibration: temperature scaling fitted on the run's validation split, stored in model.json.

A fine-tuned network's softmax is usually over-confident. One scalar T, fitted by minimising the validation NLL of
softmax(logits / T), fixes most of it without changing any prediction (Guo et al., 2017). `sft predict` then reports
softmax(logits / T); `sft eval` reports the ECE before and after. The fit, the bins and the storing are
`sft.core.calibration`, shared with segmentation's per-pixel calibration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torchmetrics.functional as tmf
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import Dataset

from sft.core.calibration import fit_temperature, nll, set_temperature
from sft.core.precision import autocast_for
from sft.data.loaders import Inputs, eval_batches
from sft.data.samples import Samples, stratified_subset

MAX_VAL = 20_000  # validation samples whose logits are held for the fit (a stratified subset beyond that)


def ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, n_bins: int = 15) -> float:
    """Expected calibration error (torchmetrics, L1, equal-width bins) of softmax(logits / temperature)."""
    probs = (logits.float() / temperature).softmax(-1)
    return float(tmf.calibration_error(probs, labels, task="multiclass", num_classes=logits.shape[-1],
                                       n_bins=n_bins))


@torch.inference_mode()
def collect_logits(model: nn.Module, dataset: Dataset, *, batch_size: int = 128, precision: str = "32-true",
                   device: torch.device | str = "cpu", collate_fn: Callable | None = None,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All (logits, labels) of `dataset`, on the CPU in float32. Holds every logit: for the small validation split
    that calibration fits on, never for an evaluation set (bound it with a subset first)."""
    model.eval()
    out, labels = [], []
    with autocast_for(precision, device):
        for x, y in eval_batches(dataset, batch_size, collate_fn, progress, "validation logits"):
            out.append(model(move_data_to_device(x, device)).float().cpu())
            labels.append(y.cpu())
    return torch.cat(out).clone(), torch.cat(labels).clone()  # clone: plain tensors, usable outside inference mode


def calibrate_run(run_dir: str | Path, model: nn.Module, info, val: Callable[[], Samples], inputs: Inputs, *,
                  seed: int = 0, device="cpu", batch_size: int = 128, progress: bool = False,
                  refit: bool = False) -> dict:
    """The run's temperature: fitted now on its validation split (`val()`, in the run's `inputs`; stored in
    model.json) unless model.json says it was fitted already. Returns the temperature with the validation NLL and
    ECE before and after. The validation logits are held in memory (validation sets are small; at most MAX_VAL
    samples, a stratified subset beyond)."""
    previous = info.extra.get("temperature_fitted")
    if previous and not refit:
        return {**previous, "temperature": info.temperature, "fitted_now": False}
    val = val()
    if len(val) > MAX_VAL:
        val = val.subset(stratified_subset(val.labels, MAX_VAL, seed))
    logits, labels = collect_logits(model, inputs.eval(val), batch_size=batch_size, device=device,
                                    collate_fn=inputs.collate, progress=progress)
    t = fit_temperature(logits, labels)
    fitted = {"temperature": t, "val_samples": len(labels), "val_nll_before": nll(logits, labels),
              "val_nll_after": nll(logits, labels, t), "val_ece_before": ece(logits, labels),
              "val_ece_after": ece(logits, labels, t)}
    set_temperature(run_dir, t, fitted)
    info.temperature, info.extra["temperature_fitted"] = t, fitted
    return {**fitted, "fitted_now": True}
