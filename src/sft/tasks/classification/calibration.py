"""Calibration: temperature scaling fitted on the run's validation split, stored in model.json.

A fine-tuned network's softmax is usually over-confident. One scalar T, fitted by minimising the validation NLL of
softmax(logits / T), fixes most of it without changing any prediction (Guo et al., 2017). `sft predict` then reports
softmax(logits / T); `sft eval` reports the ECE before and after. The fit, the bins and the storing are
`sft.core.calibration`, shared with segmentation's per-pixel calibration; this module gives it the validation
logits, which the prediction sets (`conformal`) are fitted on too.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from sft.core.calibration import calibrate_run as calibrate, temperature_fit
from sft.data.loaders import Inputs
from sft.data.samples import Samples, stratified_subset
from sft.tasks.base import score_batches
from sft.tasks.classification.conformal import KEY, fit_logits

MAX_VAL = 20_000  # validation samples whose logits are held for the fit (a stratified subset beyond that)


class Logits:
    """The Scorer that keeps every (logits, labels), on the CPU in float32: for the small validation split that
    calibration fits on, never for an evaluation set (bound it with a subset first)."""

    def __init__(self):
        self.logits, self.labels = [], []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, first: int) -> None:
        self.logits.append(outputs.float().cpu())
        self.labels.append(targets.cpu())

    def result(self) -> dict:
        return {"logits": torch.cat(self.logits).clone(), "labels": torch.cat(self.labels).clone()}


def collect_logits(model: nn.Module, dataset: Dataset, *, batch_size: int = 128, collate_fn: Callable | None = None,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All (logits, labels) of `dataset`, on the model's device, in float32 on the CPU."""
    held = score_batches(model, dataset, Logits(), batch_size=batch_size, collate_fn=collate_fn, progress=progress,
                         what="validation logits")
    return held["logits"], held["labels"]


HeldOut = Callable[[], tuple[torch.Tensor, torch.Tensor, dict]]  # () -> the validation (logits, labels, facts)


def validation_logits(model: nn.Module, val: Callable[[], Samples], inputs: Inputs, *, seed: int = 0,
                      batch_size: int = 128, progress: bool = False) -> HeldOut:
    """`held_out()` for the fits on the validation split (`val()`, in the run's `inputs`, on the model's device; at
    most MAX_VAL samples, a stratified subset beyond): its (logits, labels, facts), computed on the first call only,
    so the temperature and the prediction sets share one pass."""
    @cache
    def held_out():
        samples = val()
        if len(samples) > MAX_VAL:
            samples = samples.subset(stratified_subset(samples.labels, MAX_VAL, seed))
        logits, labels = collect_logits(model, inputs.eval(samples), batch_size=batch_size,
                                        collate_fn=inputs.collate, progress=progress)
        return logits, labels, {"val_samples": len(labels)}
    return held_out


def calibrate_run(run_dir: str | Path, info, held_out: HeldOut, *, refit: bool = False) -> dict:
    """The run's temperature (`sft.core.calibration.calibrate_run`), fitted on the validation logits `held_out()`
    gives (`validation_logits`); `info` follows it."""
    result = calibrate(run_dir, held_out, refit)
    info.temperature = result["temperature"]
    if result["fitted_now"]:
        info.extra["temperature_fitted"] = {k: v for k, v in result.items() if k != "fitted_now"}
    return result


def fit_unstored(info, held_out: HeldOut, *, penalty: float = 0.0, k_reg: int = 1) -> dict:
    """The temperature and the prediction sets fitted on `held_out()`'s logits into `info` only, never into
    model.json: the fits of the model seen through flip TTA (`--tta flip`), whose logits are not those the stored
    fits describe. Returns the calibration as `calibrate_run` does."""
    logits, labels, facts = held_out()
    result = {**temperature_fit(logits, labels, facts), "fitted_now": True, "stored": False}
    info.temperature = result["temperature"]
    info.extra[KEY] = asdict(fit_logits(logits, labels, info.temperature, penalty=penalty, k_reg=k_reg))
    return result
