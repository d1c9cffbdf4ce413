"""Multi-label scores of a split (`MultilabelScores`, the skeleton's Scorer, over the labels' probabilities (B, C)):
macro and micro average precision (torchmetrics; macro over the labels with a positive in the split), micro and macro
F1 and subset accuracy at the run's per-label thresholds, each label's AP, F1, precision, recall and positives, a few
precision-recall curves for the report, the worst samples, and the achieved false-negative rate at a stated α.
`f1_thresholds` tunes the thresholds: the F1-best per label on the validation split."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics.functional.classification import multilabel_average_precision, multilabel_precision_recall_curve

from sft.tasks.multilabel.risk import FnrFit, false_negative_rate

CURVES = 6  # precision-recall curves kept for the report: the labels of lowest AP
CURVE_POINTS = 200
DEFAULT_THRESHOLD = 0.5  # a label without a validation positive


def average_precisions(p: torch.Tensor, y: torch.Tensor) -> dict:
    """{"macro", "micro", "per_label"}: AP per label (None without a positive), their mean, and the AP of all
    (sample, label) pairs pooled."""
    if len(y) == 0:
        return {"macro": None, "micro": None, "per_label": [None] * y.shape[1]}
    t, c = y.long(), y.shape[1]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*No positive samples.*")
        per = multilabel_average_precision(p.float(), t, c, average=None)
        micro = multilabel_average_precision(p.float(), t, c, average="micro") if t.any() else None
    present = t.sum(0) > 0
    per_label = [float(a) if ok else None for a, ok in zip(per.tolist(), present.tolist())]
    values = [a for a in per_label if a is not None]
    return {"macro": sum(values) / len(values) if values else None, "micro": None if micro is None else float(micro),
            "per_label": per_label}


def f1_thresholds(p: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Each label's F1-best threshold on (p, y): halfway between the lowest probability kept and the next one below
    (DEFAULT_THRESHOLD for a label without a positive)."""
    out = []
    for j in range(p.shape[1]):
        probs, truth = p[:, j].double().cpu().numpy(), y[:, j].cpu().numpy() > 0.5
        positives = int(truth.sum())
        if not positives:
            out.append(DEFAULT_THRESHOLD)
            continue
        order = np.argsort(-probs, kind="stable")
        s, tp = probs[order], np.cumsum(truth[order])
        cut = np.flatnonzero(np.append(s[1:] < s[:-1], True))  # the last of each run of ties
        f1 = 2 * tp[cut] / (cut + 1 + positives)
        k = cut[int(np.argmax(f1))]
        out.append(float((s[k] + s[k + 1]) / 2) if k + 1 < len(s) else float(s[k]))
    return out


def threshold_scores(p: torch.Tensor, y: torch.Tensor, thresholds: list[float]) -> dict:
    """Micro and macro F1, subset accuracy and each label's precision, recall and F1 with label j predicted where
    p[:, j] ≥ thresholds[j]."""
    pred, truth = p >= torch.as_tensor(thresholds, dtype=p.dtype), y > 0.5
    tp, fp, fn = ((pred & truth).sum(0).double(), (pred & ~truth).sum(0).double(), (~pred & truth).sum(0).double())
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.ones_like(tp))
    per = [{"precision": float(a / (a + b)) if a + b else None, "recall": float(a / (a + c)) if a + c else None,
            "f1": float(f)} for a, b, c, f in zip(tp, fp, fn, f1)]
    denom = float(2 * tp.sum() + fp.sum() + fn.sum())
    return {"micro_f1": float(2 * tp.sum()) / denom if denom else 1.0, "macro_f1": float(f1.mean()),
            "subset_accuracy": float((pred == truth).all(1).double().mean()) if len(y) else None, "per_label": per}


def pr_curves(p: torch.Tensor, y: torch.Tensor, labels: list[int]) -> dict:
    """Precision-recall curves of `labels` (indices), each down to CURVE_POINTS points."""
    if not labels:
        return {}
    precision, recall, _ = multilabel_precision_recall_curve(p[:, labels].float(), y[:, labels].long(), len(labels))
    curves = {}
    for j, pr, rc in zip(labels, precision, recall):
        keep = np.unique(np.linspace(0, len(pr) - 1, min(CURVE_POINTS, len(pr))).round().astype(int))
        curves[j] = {"precision": pr[keep].tolist(), "recall": rc[keep].tolist()}
    return curves


class MultilabelScores:
    """The Scorer of a multi-label model's probabilities (B, C) (sft.tasks.base.score_batches runs it over a split):
    `names` the labels, `thresholds` each label's, `worst` samples kept, `fnr` (fit, α) the conformal threshold's
    achieved false-negative rate."""

    def __init__(self, names: list[str], thresholds: list[float] | None = None, *, worst: int = 0,
                 fnr: tuple[FnrFit, float] | None = None, fitted_now: bool = False):
        self.names, self.worst, self.fnr, self.fitted_now = names, worst, fnr, fitted_now
        self.thresholds = thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * len(names)
        self.probabilities: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, first: int) -> None:
        self.probabilities.append(outputs.detach().float().cpu())
        self.targets.append(targets.float().cpu())

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = len(self.names)
        return (torch.cat(self.probabilities) if self.probabilities else torch.zeros(0, c),
                torch.cat(self.targets) if self.targets else torch.zeros(0, c))

    def result(self) -> dict:
        p, y = self.arrays()
        ap = average_precisions(p, y)
        at = threshold_scores(p, y, self.thresholds)
        positives = y.sum(0).long().tolist()
        per = {name: {"ap": a, **s, "positives": n, "threshold": t} for name, a, s, n, t in
               zip(self.names, ap["per_label"], at["per_label"], positives, self.thresholds)}
        result = {"samples": len(y), "map_macro": ap["macro"], "map_micro": ap["micro"],
                  **{k: at[k] for k in ("micro_f1", "macro_f1", "subset_accuracy")}, "per_label": per}
        lowest = sorted((a, j) for j, a in enumerate(ap["per_label"]) if a is not None)[:CURVES]
        result["curves"] = {self.names[j]: c for j, c in pr_curves(p, y, [j for _, j in lowest]).items()}
        loss = torch.nn.functional.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y, reduction="none").mean(1)
        order = loss.argsort(descending=True, stable=True)[:self.worst]
        result["worst"] = [{"index": int(i), "true": [n for n, t in zip(self.names, y[i].tolist()) if t > 0.5],
                            "pred": [n for n, q, t in zip(self.names, p[i].tolist(), self.thresholds) if q >= t],
                            "probabilities": [round(q, 4) for q in p[i].tolist()], "loss": float(loss[i])}
                           for i in order.tolist()]
        if self.fnr is not None:
            fit, alpha = self.fnr
            threshold = fit.threshold(alpha)
            achieved, n = false_negative_rate(p, y, threshold)
            result["fnr"] = {"fnr_target": alpha, "fnr": achieved, "threshold": threshold, "samples": n,
                             "mean_labels": float((p >= threshold).sum(1).double().mean()) if len(p) else None,
                             "val_samples": fit.n, "fitted_now": self.fitted_now}
        return result


def summarize(results: dict) -> dict:
    """metrics.json of an evaluation: the scores, the false-negative rate reached, then each label's scores."""
    m = results["metrics"]
    summary = {k: m[k] for k in ("map_macro", "map_micro", "micro_f1", "macro_f1", "subset_accuracy", "samples")}
    if "fnr" in m:
        summary.update({k: m["fnr"][k] for k in ("fnr_target", "fnr", "threshold", "mean_labels")})
    summary["per_label"] = {n: dict(s) for n, s in m["per_label"].items()}
    return summary
