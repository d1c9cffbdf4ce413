"""Prediction sets with a stated coverage: split conformal prediction with APS scores, RAPS-regularised on request
(Angelopoulos et al. 2021), on the run's calibrated probabilities, fitted once on its validation split.

Own code rather than MAPIE's: MAPIE's APS score is always randomised at fit time and its RAPS refits an sklearn
estimator on a split of the data, while the score on precomputed probabilities is a sort and a cumulative sum.

A class's score for a sample is the calibrated probability of the classes ranked at or above it (plus `penalty` per
rank beyond `k_reg`: RAPS, which keeps unlikely tail classes out), except the top class, which scores 0. With the n
validation samples' scores of their true class sorted, the set at coverage 1 - α holds the classes scoring at most
the k-th, k = ceil((n + 1)(1 - α)): over exchangeable samples the true class is then in the set at least a share
1 - α of the time (marginally, not per sample), and at most 1 - α + 1/(n + 1) unless the top class alone covers more.
The sets are deterministic (no random tie-breaking, so `sft predict` and `sft serve` give the same set for the same
input) and never empty: the top class scoring 0 at the fit too is what keeps that from costing extra coverage.

The fit stores the sorted validation scores (rounded up to 1e-6, which only widens sets) in model.json: any
coverage's threshold is read off them later, without the validation data and without refitting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from sft.core.atomic import check_writable
from sft.core.conformal import quantile_rank, store_fit
from sft.errors import UserError

KEY = "prediction_sets"  # model.json's extra[KEY]: the fit


def class_scores(probs: torch.Tensor, penalty: float = 0.0, k_reg: int = 1) -> torch.Tensor:
    """(N, C): each class's score were it the label — the probability mass ranked at or above it (a stable sort:
    ties keep the class order), plus `penalty` per rank beyond `k_reg`; the top class scores 0, so every set holds
    it. In float64 and at most 1: float32 probabilities sum to 1 ± 1e-7, and the last classes' mass must not land
    above a threshold of 1 by that alone."""
    probs = probs.double()
    order = probs.argsort(dim=-1, descending=True, stable=True)
    mass = probs.gather(-1, order).cumsum(-1).clamp(max=1.0)
    if penalty:
        ranks = torch.arange(1, probs.shape[-1] + 1, device=probs.device, dtype=probs.dtype)
        mass = mass + penalty * (ranks - k_reg).clamp(min=0)
    mass[:, 0] = 0.0
    return torch.empty_like(mass).scatter_(-1, order, mass)


@dataclass
class SetFit:
    """A run's prediction-set fit: its validation samples' scores of the true class, sorted, and how they were
    scored (the RAPS penalty, at the run's temperature)."""
    scores: list[float]
    penalty: float = 0.0
    k_reg: int = 1
    temperature: float = 1.0

    def threshold(self, coverage: float) -> float:
        return self.scores[quantile_rank(len(self.scores), coverage) - 1]

    def sets(self, probs: torch.Tensor, coverage: float) -> torch.Tensor:
        """(N, C) bool: the classes in each sample's set at `coverage`, for calibrated probabilities (N, C)."""
        return class_scores(probs, self.penalty, self.k_reg) <= self.threshold(coverage)

    def same(self, temperature: float, penalty: float, k_reg: int) -> bool:
        return (self.temperature, self.penalty, self.k_reg) == (temperature, penalty, k_reg)


def fit_sets(probs: torch.Tensor, labels: torch.Tensor, *, penalty: float = 0.0, k_reg: int = 1,
             temperature: float = 1.0) -> SetFit:
    """The fit on validation probabilities (N, C) (softmax(logits / temperature)) and labels (N,)."""
    scores = class_scores(probs, penalty, k_reg).gather(-1, labels.long().view(-1, 1).to(probs.device))[:, 0]
    rounded = (scores.cpu() * 1e6).ceil() / 1e6  # up: a threshold a hair higher only adds classes
    return SetFit(rounded.sort().values.tolist(), float(penalty), int(k_reg), float(temperature))


def fit_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float, *, penalty: float = 0.0,
               k_reg: int = 1) -> SetFit:
    """The fit on validation logits (N, C) at `temperature` (k_reg counts only with a penalty)."""
    return fit_sets((logits.float() / temperature).softmax(-1), labels, penalty=penalty, k_reg=k_reg if penalty else 1,
                    temperature=temperature)


def stored_fit(info) -> SetFit | None:
    """The fit `sft eval` stored in the run's model.json (`info.extra`), valid for its temperature, or None."""
    raw = info.extra.get(KEY)
    try:
        fit = SetFit(**raw)
    except TypeError:  # none stored, or not what this module writes
        return None
    return fit if fit.temperature == info.temperature and fit.scores else None


def run_fit(run_dir: str | Path, info) -> SetFit:
    """The stored fit `sft predict` and `sft serve` use, or a UserError naming the command that makes it."""
    fit = stored_fit(info)
    if fit is None:
        raise UserError(f"{run_dir} has no prediction-set fit for its temperature: run `sft eval {run_dir}` once (it "
                        f"fits the sets on the validation split and stores them in model.json), then ask for a "
                        f"coverage again")
    return fit


def fit_run(run_dir: str | Path, info, held_out: Callable[[], tuple[torch.Tensor, torch.Tensor, dict]], *,
            penalty: float = 0.0, k_reg: int = 1) -> tuple[SetFit, bool]:
    """The run's fit at its temperature with this RAPS penalty: as stored in model.json, or fitted now on the
    validation logits `held_out()` gives and stored there (`info.extra` follows). Returns it and whether it was
    fitted now."""
    k_reg = k_reg if penalty else 1  # without a penalty k_reg changes nothing
    fit = stored_fit(info)
    if fit is not None and fit.same(info.temperature, penalty, k_reg):
        return fit, False
    path = Path(run_dir) / "model.json"
    check_writable(run_dir, f"`sft eval` stores the prediction-set fit in {path}; make the run folder writable "
                            f"(chmod -R u+w {run_dir}) or evaluate a writable copy of it")
    logits, labels, _ = held_out()
    fit = fit_logits(logits, labels, info.temperature, penalty=penalty, k_reg=k_reg)
    store_fit(run_dir, KEY, asdict(fit), info.extra)
    return fit, True


class SetCounts:
    """Coverage and set sizes at `coverage` on an evaluated split, counted batch by batch (part of metrics.Scores)."""

    def __init__(self, fit: SetFit, coverage: float, num_classes: int, fitted_now: bool = False):
        self.fit, self.coverage, self.fitted_now = fit, coverage, fitted_now
        self.threshold = fit.threshold(coverage)  # a too small validation split fails here, before scoring
        self.covered, self.sizes = 0, torch.zeros(num_classes + 1, dtype=torch.long)

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Calibrated probabilities (N, C) and labels (N,)."""
        inside = self.fit.sets(probs, self.coverage)
        self.covered += int(inside.gather(-1, labels.view(-1, 1)).sum())
        self.sizes += torch.bincount(inside.sum(-1).cpu(), minlength=len(self.sizes))

    def result(self) -> dict:
        n = max(int(self.sizes.sum()), 1)
        mean = float((torch.arange(len(self.sizes)) * self.sizes).sum()) / n
        return {"coverage_target": self.coverage, "set_coverage": self.covered / n, "mean_set_size": mean,
                "set_sizes": self.sizes.tolist(), "threshold": self.threshold, "val_samples": len(self.fit.scores),
                "penalty": self.fit.penalty, "k_reg": self.fit.k_reg, "fitted_now": self.fitted_now}


def set_rows(probs: torch.Tensor, fit: SetFit, coverage: float, classes: list[str]) -> list[list[str]]:
    """Each sample's set as class names, most probable first (a set is the first classes of that order: the scores
    grow along it)."""
    sizes = fit.sets(probs, coverage).sum(-1).tolist()
    order = probs.argsort(dim=-1, descending=True, stable=True).tolist()
    return [[classes[c] for c in row[:size]] for row, size in zip(order, sizes)]
