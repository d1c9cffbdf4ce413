"""A false-negative rate with a guarantee: conformal risk control (Angelopoulos, Bates, Fisch, Lei & Schuster,
"Conformal Risk Control", 2022) of the FNR on the run's validation split.

A sample's predicted labels at threshold t are those of probability ≥ t (one t for every label); its loss is its
false-negative rate, the share of its true labels left out — at most 1 and non-increasing as t falls. With the n
validation samples that have a label and their mean loss R̂(t), the largest t such that

    (n / (n + 1)) · R̂(t) + 1 / (n + 1) ≤ α

keeps the expected FNR of a new sample exchangeable with them (one with a label) at most α. Only the validation
positives' probabilities matter, so the fit stores them (sorted) with their weights 1/|labels of the sample| in
model.json (extra["fnr"]); any α is read off it later by `sft predict --fnr`, `sft serve`'s `fnr` and `sft eval
--fnr`, without the validation data. This is a guarantee on the mean over samples, not for each sample or each label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sft.errors import UserError

KEY = "fnr"  # model.json's extra[KEY]: the fit
DEFAULT_FNR = 0.1


@dataclass
class FnrFit:
    scores: list[float]  # the validation positives' probabilities, ascending
    weights: list[float]  # 1 / (labels of the positive's sample), in the same order
    n: int  # validation samples with at least one label

    def threshold(self, alpha: float) -> float:
        """The largest threshold whose conformal bound on the FNR is within `alpha`; a UserError when n is too small
        for it (even predicting every label leaves the bound 1/(n+1) above alpha)."""
        n = self.n
        if not 0 < alpha < 1:
            raise UserError(f"fnr {alpha}: a false-negative rate between 0 and 1, e.g. 0.1")
        if (n + 1) * alpha < 1 + 1e-12:
            raise UserError(f"a false-negative rate of {alpha} cannot be guaranteed from the run's {n} labelled "
                            f"validation samples (it needs at least {int(np.ceil(1 / alpha - 1 + 1e-9))}): ask for "
                            f"more, or train with a larger validation split (data.val or data.val_fraction)")
        bound = ((n + 1) * alpha - 1) / n
        s, w = np.asarray(self.scores, np.float64), np.asarray(self.weights, np.float64)
        values = np.unique(s)[::-1]  # candidate thresholds, largest first
        below = np.concatenate([[0.0], np.cumsum(w)]) / n  # below[k]: R̂ of the positives s[:k] left out
        risk = below[np.searchsorted(s, values, side="left")]
        ok = np.flatnonzero(risk <= bound + 1e-12)  # risk grows with the threshold: the first ok is the largest
        return float(values[ok[0]]) if len(ok) else 0.0


def fit_fnr(probabilities: torch.Tensor, targets: torch.Tensor) -> FnrFit:
    """The fit on validation probabilities and 0/1 targets (N, C)."""
    p, y = probabilities.double().cpu().numpy(), targets.cpu().numpy() > 0.5
    counts = y.sum(1)
    rows, _ = np.nonzero(y)
    scores, weights = p[y], 1.0 / counts[rows]
    order = np.argsort(scores, kind="stable")
    return FnrFit(scores[order].tolist(), weights[order].tolist(), int((counts > 0).sum()))


def stored_fnr(info) -> FnrFit | None:
    try:
        fit = FnrFit(**info.extra.get(KEY))
    except TypeError:  # none stored, or not what this module writes
        return None
    return fit if fit.n > 0 else None


def run_fnr(run_dir: str | Path, info) -> FnrFit:
    """The stored fit `sft predict --fnr` and `sft serve` use, or a UserError naming the command that makes it."""
    fit = stored_fnr(info)
    if fit is None:
        raise UserError(f"{run_dir} has no false-negative-rate fit in its model.json: run `sft eval {run_dir}` once "
                        f"(it fits it on the validation split and stores it), then ask for an fnr again")
    return fit


def false_negative_rate(probabilities: torch.Tensor, targets: torch.Tensor, threshold: float) -> tuple[float, int]:
    """(mean FNR over the samples with a label, their number) at `threshold`."""
    y = targets > 0.5
    counts = y.sum(1)
    missed = (y & (probabilities < threshold)).sum(1)
    labelled = counts > 0
    n = int(labelled.sum())
    return (float((missed[labelled].double() / counts[labelled]).mean()) if n else 0.0), n
