"""Prediction intervals with a stated coverage: split conformal regression (Lei et al. 2018) on the absolute
residuals of the run's validation split, per target column, in the targets' own units.

With the n validation residuals |y - ŷ| of a column sorted, the interval at coverage 1 - α is ŷ ± the k-th,
k = ceil((n + 1)(1 - α)) (sft.core.conformal): over samples exchangeable with the validation split the true value lies
inside at least a share 1 - α of the time (marginally, for each column on its own; not for each sample), and at most
1 - α + 1/(n + 1) when residuals do not tie. Every interval of a column has the same width: the price of a guarantee
that needs no model of the noise.

The fit stores the sorted residuals in model.json (extra["intervals"]), so any coverage is read off them later by
`sft predict --coverage`, `sft serve`'s `coverage` and `sft eval --coverage`, without the validation data. Training
fits it at its end; `sft eval` fits it on the validation split when model.json lacks it (a rebuilt run).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from sft.core.atomic import check_writable
from sft.core.conformal import quantile_rank, store_fit
from sft.errors import UserError

KEY = "intervals"  # model.json's extra[KEY]: the fit


@dataclass
class IntervalFit:
    """A run's validation absolute residuals, one sorted list per target column, in the targets' units."""
    residuals: list[list[float]]

    def half_widths(self, coverage: float) -> list[float]:
        """Each column's interval half-width at `coverage`; a UserError when the validation split is too small."""
        k = quantile_rank(len(self.residuals[0]), coverage)
        return [column[k - 1] for column in self.residuals]


def fit_intervals(predictions: torch.Tensor, targets: torch.Tensor) -> IntervalFit:
    """The fit on validation predictions and targets (N, K), both in the targets' units."""
    residuals = (targets.double() - predictions.double()).abs().sort(dim=0).values
    return IntervalFit(residuals.T.tolist())


def stored_fit(info) -> IntervalFit | None:
    """The fit stored in the run's model.json (`info.extra`), or None."""
    raw = info.extra.get(KEY)
    try:
        fit = IntervalFit(**raw)
    except TypeError:  # none stored, or not what this module writes
        return None
    return fit if len(fit.residuals) == len(info.targets) and fit.residuals[0] else None


def run_fit(run_dir: str | Path, info) -> IntervalFit:
    """The stored fit `sft predict` and `sft serve` use, or a UserError naming the command that makes it."""
    fit = stored_fit(info)
    if fit is None:
        raise UserError(f"{run_dir} has no interval fit in its model.json: run `sft eval {run_dir}` once (it fits the "
                        f"intervals on the validation split and stores them), then ask for a coverage again")
    return fit


def fit_run(run_dir: str | Path, info, held_out: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple[
        IntervalFit, bool]:
    """The run's fit: as stored in model.json, or fitted now on the validation predictions and targets `held_out()`
    gives and stored there (`info.extra` follows). Returns it and whether it was fitted now."""
    fit = stored_fit(info)
    if fit is not None:
        return fit, False
    check_writable(run_dir, f"`sft eval` stores the interval fit in {Path(run_dir) / 'model.json'}; make the run "
                            f"folder writable (chmod -R u+w {run_dir}) or evaluate a writable copy of it")
    fit = fit_intervals(*held_out())
    store_fit(run_dir, KEY, asdict(fit), info.extra)
    return fit, True


class IntervalCounts:
    """Coverage and width of the intervals at `coverage` on an evaluated split, counted batch by batch (part of
    metrics.RegressionScores)."""

    def __init__(self, fit: IntervalFit, coverage: float, fitted_now: bool = False):
        self.fit, self.coverage, self.fitted_now = fit, coverage, fitted_now
        self.half = torch.tensor(fit.half_widths(coverage), dtype=torch.float64)  # too few samples: fails here
        self.covered, self.count = torch.zeros(len(self.half), dtype=torch.long), 0

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """Predictions and targets (N, K) in the targets' units."""
        errors = (targets.double() - predictions.double()).abs().cpu()
        self.covered += (errors <= self.half).sum(0)
        self.count += len(targets)

    def result(self, names: list[str]) -> dict:
        n = max(self.count, 1)
        per = [int(c) / n for c in self.covered]
        return {"coverage_target": self.coverage, "interval_coverage": sum(per) / len(per),
                "mean_interval_width": float(2 * self.half.mean()), "val_samples": len(self.fit.residuals[0]),
                "fitted_now": self.fitted_now,
                "per_target": {name: {"interval_coverage": c, "interval_width": float(2 * h)}
                               for name, c, h in zip(names, per, self.half.tolist())}}
