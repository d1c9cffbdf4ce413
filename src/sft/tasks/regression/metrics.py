"""Regression's scores of a split (`RegressionScores`, the skeleton's Scorer): MAE, RMSE, R² and Spearman's rank
correlation (torchmetrics) per target column in the targets' own units, the worst samples, the residuals' histogram,
a sample of (true, predicted) pairs for the report's scatter, and the intervals' coverage at a stated level. A
regression's outputs are K numbers per sample (not a class's worth of logits), so the split's predictions are kept
until `result()`; training's final metrics and `sft eval` score with it, `summarize` gives metrics.json."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score, spearman_corrcoef

from sft.tasks.regression.intervals import IntervalCounts

SCATTER = 2000  # (true, predicted) pairs kept for the report's figures, evenly spaced over the split
BINS = 40  # of the residuals' histogram


def column_scores(pred: torch.Tensor, true: torch.Tensor) -> dict:
    """MAE, RMSE, R² and Spearman of one column's predictions (N,) against its targets (N,); R² and Spearman are
    None below 2 samples or for a constant column."""
    n, varied = len(true), bool(true.numel() > 1 and true.std() > 0)
    rank = varied and bool(pred.std() > 0)
    return {"mae": float(mean_absolute_error(pred, true)) if n else None,
            "rmse": float(mean_squared_error(pred, true, squared=False)) if n else None,
            "r2": float(r2_score(pred, true)) if varied else None,
            "spearman": float(spearman_corrcoef(pred, true)) if rank else None}


class RegressionScores:
    """The Scorer of a regression's outputs (B, K) in the targets' units (sft.tasks.base.score_batches runs it over
    a split). `names`: the target columns; `scale`: their training standard deviations, which rank the worst
    samples (the largest error in those units); `worst`: how many to keep; `intervals`: their coverage."""

    def __init__(self, names: list[str], scale: list[float] | None = None, *, worst: int = 0,
                 intervals: IntervalCounts | None = None):
        self.names, self.worst, self.intervals = names, worst, intervals
        self.scale = torch.as_tensor(scale if scale is not None else [1.0] * len(names), dtype=torch.float64)
        self.predictions: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, first: int) -> None:
        pred, true = outputs.detach().float().cpu(), targets.float().cpu()
        self.predictions.append(pred)
        self.targets.append(true)
        if self.intervals is not None:
            self.intervals.update(pred, true)

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (prediction, target) so far, (N, K) each."""
        k = len(self.names)
        return (torch.cat(self.predictions) if self.predictions else torch.zeros(0, k),
                torch.cat(self.targets) if self.targets else torch.zeros(0, k))

    def result(self) -> dict:
        pred, true = self.arrays()
        per = {name: column_scores(pred[:, j], true[:, j]) for j, name in enumerate(self.names)}
        result = {"samples": len(true), "per_target": per}
        for key in ("mae", "rmse", "r2", "spearman"):  # the mean over the columns (the column's own when one)
            values = [p[key] for p in per.values() if p[key] is not None]
            result[key] = sum(values) / len(values) if values else None
        errors = (pred.double() - true.double())
        order = (errors.abs() / self.scale).max(1).values.argsort(descending=True, stable=True)[:self.worst]
        result["worst"] = [{"index": int(i), "true": true[i].tolist(), "pred": pred[i].tolist(),
                            "error": errors[i].tolist()} for i in order.tolist()]
        shown = np.unique(np.linspace(0, len(true) - 1, min(SCATTER, len(true))).round().astype(int))
        result["scatter"] = {"true": true[shown].T.tolist(), "pred": pred[shown].T.tolist()}
        result["residuals"] = []
        for j in range(len(self.names)):
            counts, edges = np.histogram(errors[:, j].numpy(), bins=BINS) if len(true) else ([], [])
            result["residuals"].append({"counts": list(map(int, counts)), "edges": list(map(float, edges))})
        if self.intervals is not None:
            result["intervals"] = self.intervals.result(self.names)
        return result


def summarize(results: dict) -> dict:
    """metrics.json of an evaluation: the scores (means over the target columns), the intervals' coverage and width,
    then each column's scores."""
    m = results["metrics"]
    summary = {key: m[key] for key in ("mae", "rmse", "r2", "spearman", "samples")}
    per = {name: dict(scores) for name, scores in m["per_target"].items()}
    if "intervals" in m:
        i = m["intervals"]
        summary.update({key: i[key] for key in ("coverage_target", "interval_coverage", "mean_interval_width")})
        for name, scores in i["per_target"].items():
            per[name].update(scores)
    summary["per_target"] = per
    return summary
