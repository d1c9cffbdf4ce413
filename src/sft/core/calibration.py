"""Calibration every task's evaluation shares: temperature scaling fitted once and stored in a run's model.json
(`calibrate_run`), the reliability bins and their ECE (the one definition), and the reliability diagram.

A fine-tuned network's softmax is usually over-confident. One scalar T, fitted by minimising the validation NLL of
softmax(logits / T), fixes most of it without changing any prediction (Guo et al., 2017). Classification scores a
sample's top probability against its label; segmentation scores every (not ignored) pixel's the same way, so both
count the same bins — on the device, with bincount, never holding every probability.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from sft.core.atomic import atomic_write_json, check_writable
from sft.errors import UserError

N_BINS = 15  # equal-width confidence bins (ECE and the reliability diagram), as torchmetrics' default


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) (logits (N, C), labels (N,)): LBFGS on log T (so T
    stays positive)."""
    with torch.inference_mode(False), torch.enable_grad():  # also when called under inference mode
        logits, labels = logits.detach().float().clone(), labels.detach().long().clone()
        log_t = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = _nll(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
    return float(log_t.detach().clamp(-5, 5).exp())


def _nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labels under softmax(logits), from torch's log_softmax and nll_loss."""
    return nn.functional.nll_loss(nn.functional.log_softmax(logits, dim=-1), labels)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(_nll(logits.float() / temperature, labels))


def ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Expected calibration error of softmax(logits / temperature) (logits (N, C)), in the reliability bins."""
    bins = ReliabilityBins()
    bins.update((logits.float() / temperature).softmax(-1), labels)
    return bins.result()["ece"]


def calibrate_run(run_dir: str | Path, held_out: Callable[[], tuple[torch.Tensor, torch.Tensor, dict] | None],
                  refit: bool = False) -> dict:
    """The run's temperature: as stored in model.json, or fitted now and stored there. `held_out()` gives the
    validation logits (N, C) and labels (N,) to fit on, with facts saying what they are (None: no validation data,
    no scaling). Returns the temperature with the NLL and ECE of those logits before and after."""
    path = Path(run_dir) / "model.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: missing or damaged ({e}); the run did not finish") from None
    previous = raw.get("extra", {}).get("temperature_fitted")
    if previous and not refit:
        return {**previous, "temperature": float(raw.get("temperature", 1.0)), "fitted_now": False}
    check_writable(run_dir, f"`sft eval` stores the temperature it fits in {path}; make the run folder writable "
                            f"(chmod -R u+w {run_dir}) or evaluate a writable copy of it")
    found = held_out()
    if found is None:
        return {"temperature": 1.0, "fitted_now": False, "note": "no validation split: not scaled"}
    fitted = temperature_fit(*found)
    set_temperature(run_dir, fitted["temperature"], fitted)
    return {**fitted, "fitted_now": True}


def temperature_fit(logits: torch.Tensor, labels: torch.Tensor, facts: dict) -> dict:
    """The temperature fitted on validation logits (N, C) and labels (N,), with the NLL and ECE before and after."""
    t = fit_temperature(logits, labels)
    return {"temperature": t, **facts, "val_nll_before": nll(logits, labels), "val_nll_after": nll(logits, labels, t),
            "val_ece_before": ece(logits, labels), "val_ece_after": ece(logits, labels, t)}


def stored_temperature(run_dir: str | Path) -> tuple[float, dict] | None:
    """The temperature `sft eval` fitted and stored in the run's model.json, with how, or None."""
    try:
        raw = json.loads((Path(run_dir) / "model.json").read_text(encoding="utf-8"))
        fitted = raw["extra"]["temperature_fitted"]
        return float(raw["temperature"]), fitted
    except (OSError, ValueError, LookupError, TypeError):
        return None


def set_temperature(run_dir: str | Path, temperature: float, fitted: dict) -> None:
    """Write the temperature into the run's model.json (atomically), with how it was fitted under
    extra.temperature_fitted."""
    path = Path(run_dir) / "model.json"
    if not path.exists():
        raise UserError(f"{run_dir}: no model.json; the run did not finish")
    raw = json.loads(path.read_text())
    raw["temperature"] = float(temperature)
    raw.setdefault("extra", {})["temperature_fitted"] = fitted
    atomic_write_json(path, raw)


class ReliabilityBins:
    """Counts, confidence and accuracy sums in equal-width confidence bins: the reliability diagram, and the same
    ECE as torchmetrics' `CalibrationError(norm="l1")`. The sums stay on the device of the first update."""

    def __init__(self, n_bins: int = N_BINS):
        self.count, self.conf, self.correct = (torch.zeros(n_bins, dtype=torch.float64) for _ in range(3))

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Probabilities (N, C) and labels (N,)."""
        conf, pred = probs.max(-1)
        self.add(conf, pred == labels)

    def add(self, conf: torch.Tensor, correct: torch.Tensor) -> None:
        """Top probabilities and whether their class was right, any shape (e.g. a batch's kept pixels)."""
        if self.count.device != conf.device:
            self.count, self.conf, self.correct = (t.to(conf.device) for t in (self.count, self.conf, self.correct))
        n = len(self.count)
        conf = conf.reshape(-1).double()
        bins = torch.clamp(torch.ceil(conf * n).long() - 1, 0, n - 1)  # torchmetrics' right-closed bins
        self.count += torch.bincount(bins, minlength=n).double()
        self.conf += torch.bincount(bins, weights=conf, minlength=n)
        self.correct += torch.bincount(bins, weights=correct.reshape(-1).double(), minlength=n)

    def result(self) -> dict:
        count, conf, correct = (t.cpu() for t in (self.count, self.conf, self.correct))
        total = max(float(count.sum()), 1.0)
        safe = count.clamp(min=1)
        ece = float(((conf - correct).abs()).sum() / total)
        return {"count": count.long().tolist(), "confidence": (conf / safe).tolist(),
                "accuracy": (correct / safe).tolist(), "ece": ece}


def reliability_figure(before: dict, after: dict, temperature: float) -> Figure:
    """Accuracy against confidence per bin (`ReliabilityBins.result()`), raw and temperature-scaled, side by side."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    for ax, bins, title in zip(fig.subplots(1, 2), (before, after), ("raw", f"temperature {temperature:.3f}")):
        n = len(bins["count"])
        centers = (np.arange(n) + 0.5) / n
        used = np.array(bins["count"]) > 0
        ax.bar(centers[used], np.array(bins["accuracy"])[used], width=1 / n, edgecolor="k", alpha=.7, label="accuracy")
        ax.plot(np.array(bins["confidence"])[used], np.array(bins["accuracy"])[used], "o", color="C1",
                label="(confidence, accuracy)")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{title}: ECE {bins['ece']:.4f}")
        ax.legend(loc="upper left", fontsize=8)
    return fig
