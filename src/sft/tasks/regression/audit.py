"""`sft audit` of a regression recipe: the targets a ridge probe on the cached backbone features disagrees with most.

The probe (probe.py's ridge, its penalty chosen on a seeded fifth of each fold's training rows) predicts every train
and validation row out of fold (sft.tasks.label_audit), so it cannot have memorised a wrong target; cleanlab's OUTRE
score (`cleanlab.regression.rank.get_label_quality_scores`) then rates each target column's given values, low = likely
wrong. How many to flag follows classification's rule — estimate the number of errors, flag that many lowest-scored —
with the estimate taken from the residuals: a value is counted when its out-of-fold residual lies more than
`ROBUST_Z` robust standard deviations (1.4826 x the median absolute deviation) from the median residual (the
modified z-score outlier rule). It is exact for gross errors and errs towards flagging more when the residuals are
heavy-tailed (features the linear probe cannot map well): the ranking then still puts the worst first. One suspect
per flagged (sample, target column); score = 1 - cleanlab's quality, higher = more suspicious.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sft.core.html import esc
from sft.data.samples import Samples
from sft.tasks.label_audit import audit_folder, out_of_fold, probed_rows
from sft.tasks.regression.probe import fit_ridge

ROBUST_Z = 3.5  # Iglewicz and Hoaglin's cut-off for the modified z-score 0.6745 (r - median) / MAD


def ridge_predictions(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Ridge predictions for `x`: the penalty chosen on a seeded fifth of the training rows, then refitted on all."""
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    order = np.random.default_rng(seed).permutation(len(train_x))
    held, rest = order[:max(1, len(order) // 5)], order[max(1, len(order) // 5):]
    chosen = fit_ridge(t(train_x[rest]), t(train_y[rest]), t(train_x[held]), t(train_y[held]))
    fit = fit_ridge(t(train_x), t(train_y), t(train_x), t(train_y), penalties=(chosen.penalty,))
    return x @ fit.weight.double().numpy().T + fit.bias.double().numpy()


def audit_targets(samples: dict[str, Samples], features: dict[str, np.ndarray], *, folds: int = 5,
                  seed: int = 0) -> tuple[list[dict], dict]:
    """(suspects.csv rows ranked most suspicious first, summary) of the train and val targets; `samples` and
    `features` share keys, "train" required."""
    from cleanlab.regression.rank import get_label_quality_scores

    names = list(samples["train"].classes)
    where, x, y = probed_rows(samples, features, np.float64)
    mean, std = y.mean(0), np.where(y.std(0) > 0, y.std(0), 1.0)
    pred = out_of_fold(x, (y - mean) / std, lambda a, b, c: ridge_predictions(a, b, c, seed), folds=folds,
                       seed=seed) * std + mean
    rows, flagged, mae = [], {}, {}
    for k, name in enumerate(names):
        quality = get_label_quality_scores(y[:, k], pred[:, k])
        residual = y[:, k] - pred[:, k]
        spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))
        count = int((np.abs(residual - np.median(residual)) > ROBUST_Z * spread).sum()) if spread > 0 else 0
        flagged[name], mae[name] = count, float(np.abs(residual).mean())
        for j in np.argsort(quality, kind="stable")[:count]:
            split, i = where[j]
            rows.append({"split": split, "sample": samples[split].ids[i], "index": int(i), "kind": "label_issue",
                         "given_label": f"{name}={y[j, k]:.6g}", "suggested_label": f"{name}={pred[j, k]:.6g}",
                         "score": 1.0 - float(quality[j]),
                         "detail": f"out-of-fold ridge predicts {pred[j, k]:.4g} (residual {residual[j]:+.4g})"})
    rows.sort(key=lambda r: -r["score"])
    return rows, {"out_of_fold_mae": mae, "suspects": flagged, "samples": len(y)}


def audit_data(task, recipe, out_dir: str | Path, *, overwrite: bool = False) -> dict:
    """`sft audit` of a regression recipe: audit.json, suspects.csv and audit.html in out_dir; returns the summary."""
    def heading(summary: dict) -> str:
        body = "".join(f"<tr><td>{esc(n)}</td><td>{summary['out_of_fold_mae'][n]:.4g}</td>"
                       f"<td>{summary['suspects'][n]}</td></tr>" for n in summary["suspects"])
        return f"""
<p>Out-of-fold ridge probe on the features of {esc(summary['backbone'])}, {summary['samples']} train and val
samples; a value is flagged when cleanlab rates it among the lowest and its residual lies more than {ROBUST_Z:g}
robust standard deviations out.</p>
<table><tr><th>target</th><th>out-of-fold MAE</th><th>suspects</th></tr>{body}</table>"""
    return audit_folder(task, recipe, out_dir, overwrite, lambda s, f, seed: audit_targets(s, f, seed=seed), heading)
