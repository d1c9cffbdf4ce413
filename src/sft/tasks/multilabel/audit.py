"""`sft audit` of a multi-label recipe: the samples whose label sets a one-vs-rest probe on the cached backbone
features disagrees with (a label likely missing, or likely wrong).

The probe (probe.py's one-vs-rest logistic regression, its L2 strength chosen once by log-loss on a seeded fifth)
gives every train and validation row out-of-fold probabilities (sft.tasks.label_audit), so it cannot have memorised a
wrong label set; cleanlab's `multilabel_classification.filter.find_label_issues` then flags samples as classification
does (filter_by="low_self_confidence": cleanlab estimates how many labels are wrong per class and flags that many
least-confident ones), and `multilabel_classification.rank.get_label_quality_scores` ranks them (score = 1 -
quality, higher = more suspicious). The suggested label set is the labels the probe gives at least 1/2.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from sft.core.html import esc
from sft.data.samples import Samples
from sft.tasks.label_audit import audit_folder, out_of_fold, probed_rows
from sft.tasks.multilabel.metrics import average_precisions
from sft.tasks.multilabel.probe import fit_one_vs_rest
from sft.training.probe import L2_PATH


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float32))


def chosen_l2(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """The probe's L2 strength, chosen once on a seeded fifth of the rows by validation log-loss: cleanlab needs
    calibrated probabilities, and the task's own choice (validation mAP, a ranking) favours weak, over-confident fits
    that make cleanlab flag many clean samples."""
    order = np.random.default_rng(seed).permutation(len(x))
    held, rest = order[:max(1, len(order) // 5)], order[max(1, len(order) // 5):]
    p = lambda l2: np.clip(one_vs_rest_probabilities(x[rest], y[rest], x[held], l2), 1e-6, 1 - 1e-6)  # noqa: E731
    loss = {l2: float(-(y[held] * np.log(q) + (1 - y[held]) * np.log(1 - q)).mean()) for l2 in L2_PATH
            for q in [p(l2)]}
    return min(loss, key=loss.get)


def one_vs_rest_probabilities(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, l2: float) -> np.ndarray:
    """Each label's probability for `x` from the one-vs-rest probe at L2 strength `l2` fitted on the training rows."""
    fit = fit_one_vs_rest(_tensor(train_x), _tensor(train_y), _tensor(train_x), _tensor(train_y), l2_path=(l2,))
    return torch.sigmoid(_tensor(x) @ fit.weight.T + fit.bias).numpy()


def audit_label_sets(samples: dict[str, Samples], features: dict[str, np.ndarray], *, folds: int = 5,
                     seed: int = 0) -> tuple[list[dict], dict]:
    """(suspects.csv rows ranked most suspicious first, summary) of the train and val label sets; `samples` and
    `features` share keys, "train" required."""
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    classes = list(samples["train"].classes)
    where, x, y = probed_rows(samples, features)
    l2 = chosen_l2(x, y, seed)  # one strength for every fold: one path instead of one per fold
    probs = out_of_fold(x, y, lambda a, b, c: one_vs_rest_probabilities(a, b, c, l2), folds=folds, seed=seed)
    labels = [np.flatnonzero(row).tolist() for row in y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = find_label_issues(labels=labels, pred_probs=probs, filter_by="low_self_confidence")
        quality = get_label_quality_scores(labels, probs)
    names = lambda row: "|".join(classes[c] for c in row)  # noqa: E731
    rows = []
    for j in np.flatnonzero(mask):
        split, i = where[j]
        missing = [f"{classes[c]} ({probs[j, c]:.2f})" for c in range(len(classes)) if not y[j, c] and probs[j, c] >= .5]
        doubtful = [f"{classes[c]} ({probs[j, c]:.2f})" for c in labels[j] if probs[j, c] < .5]
        detail = "; ".join(part for part in (f"missing? {', '.join(missing)}" if missing else "",
                                             f"doubtful: {', '.join(doubtful)}" if doubtful else "") if part)
        rows.append({"split": split, "sample": samples[split].ids[i], "index": int(i), "kind": "label_issue",
                     "given_label": names(labels[j]), "suggested_label": names(np.flatnonzero(probs[j] >= .5)),
                     "score": 1.0 - float(quality[j]), "detail": detail or "out-of-fold probe disagrees"})
    rows.sort(key=lambda r: -r["score"])
    ap = average_precisions(torch.from_numpy(probs), torch.from_numpy(y))["macro"]
    return rows, {"out_of_fold_map": ap, "suspects": len(rows), "samples": len(y)}


def audit_data(task, recipe, out_dir: str | Path, *, overwrite: bool = False) -> dict:
    """`sft audit` of a multi-label recipe: audit.json, suspects.csv and audit.html in out_dir; returns the summary."""
    def heading(summary: dict) -> str:
        ap = "n/a" if summary["out_of_fold_map"] is None else f"{summary['out_of_fold_map']:.3g}"
        return f"""
<p>Out-of-fold one-vs-rest probe on the features of {esc(summary['backbone'])}, {summary['samples']} train and val
samples: macro average precision <b>{ap}</b>; {summary['suspects']} label sets flagged by cleanlab. Full list in
suspects.csv.</p>"""
    return audit_folder(task, recipe, out_dir, overwrite, lambda s, f, seed: audit_label_sets(s, f, seed=seed),
                        heading)
