"""What `sft audit` shares across the tasks that audit their labels with probes on cached backbone features
(classification, regression, multi-label): the recipe's train/val/test samples and their cached features, K-fold
out-of-fold predictions of a probe (a probe scored on its own training rows memorises the bad labels), and the files
a human reviews — suspects.csv (one row per suspect, the columns every task writes) and a self-contained audit.html
of the worst suspects' thumbnails (or text snippets)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

import numpy as np

from sft.core.atomic import atomic_write_json, atomic_write_text
from sft.core.html import esc, img, page
from sft.core.rundir import check_replaceable, mark
from sft.data.samples import Samples
from sft.errors import UserError
from sft.recipe import Recipe
from sft.training.prepare import Prepared, prepare

CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right} td:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:.8em} .card{width:140px;font-size:12px;display:flex;flex-direction:column}
.card img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;background:#eee}
.id{color:#666;overflow-wrap:anywhere} .missing{width:128px;height:128px;background:#fdd}
.text{width:128px;height:128px;overflow:auto;background:#eee;white-space:pre-wrap;overflow-wrap:anywhere;font-size:11px}
"""
CSV_COLUMNS = ["split", "sample", "index", "kind", "given_label", "suggested_label", "score", "detail"]


def audit_features(task, recipe: Recipe) -> tuple[dict[str, Samples], dict[str, np.ndarray], Prepared]:
    """The recipe's splits ("train", and "val"/"test" when there are) and their backbone features (from the feature
    cache, images without augmentation), with what `prepare` made of the recipe."""
    plain = {"augment": "none"} if "augment" in type(recipe.data).model_fields else {}
    p = prepare(task, recipe.model_copy(update={"data": recipe.data.model_copy(update=plain)}))
    samples = {name: s for name, s in (("train", p.splits.train), ("val", p.splits.val), ("test", p.splits.test))
               if s}
    return samples, {name: p.data.features(name, p.data.eval_sets[name]).numpy() for name in samples}, p


def probed_rows(samples: dict[str, Samples], features: dict[str, np.ndarray],
                dtype=np.float32) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
    """The rows the probe audits, train then val pooled: (split, index) of each, their features (N, D) and targets
    (N, K); `samples` and `features` share keys, "train" required."""
    probe = [s for s in ("train", "val") if s in samples]
    if "train" not in samples or any(len(features[s]) != len(samples[s]) for s in probe):
        raise ValueError("audit: need 'train' and one feature row per sample")
    y = np.concatenate([np.asarray(samples[s].targets, dtype) for s in probe])
    if len(y) < 4:
        raise UserError(f"audit: {len(y)} train and val samples; the out-of-fold probe needs at least 4")
    return ([(s, i) for s in probe for i in range(len(samples[s]))],
            np.concatenate([np.asarray(features[s], dtype) for s in probe]), y)


def audit_folder(task, recipe: Recipe, out_dir: str | Path, overwrite: bool,
                 find: Callable[[dict, dict, int], tuple[list[dict], dict]], heading: Callable[[dict], str]) -> dict:
    """`sft audit` of a task that probes its own backbone: `find(samples, features, seed)` gives the suspects.csv rows
    (most suspicious first) and the summary; writes audit.json (the summary, its backbone, the rows), suspects.csv
    and audit.html (`heading(summary)` above the suspects) to out_dir; returns the summary."""
    out = Path(out_dir)
    check_replaceable(out, "audit", overwrite=overwrite)
    samples, features, p = audit_features(task, recipe)
    rows, summary = find(samples, features, recipe.seed)
    summary["backbone"] = f"{p.recipe.model.backbone}@{p.recipe.model.weights}"
    atomic_write_json(out / "audit.json", {**summary, "suspects_rows": rows})
    write_suspects(out, rows, samples, heading(summary))
    mark(out, "audit")
    return summary


def out_of_fold(x: np.ndarray, y: np.ndarray, fit_predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each row's prediction by `fit_predict(train_x, train_y, rows_x)` fitted on the other folds (shuffled K-fold,
    seeded; `folds` of them, at least 2 and at most one per row)."""
    from sklearn.model_selection import KFold

    out = None
    for train, held in KFold(max(2, min(folds, len(x))), shuffle=True, random_state=seed).split(x):
        pred = np.asarray(fit_predict(x[train], y[train], x[held]))
        if out is None:
            out = np.zeros((len(x), *pred.shape[1:]), pred.dtype)
        out[held] = pred
    return out


def thumbnail(samples: Samples, i: int, chars: int = 280) -> str:
    """An inline PNG of an image sample; for a text sample its first `chars` characters, HTML-escaped."""
    if samples.kind == "text":
        text = samples.text(i)
        snippet = text if len(text) <= chars else text[:chars].rstrip() + "\u2026"
        return f'<div class=text title="{esc(text[:2000])}">{esc(snippet)}</div>'
    try:
        im = samples.image(i)
    except UserError:  # the file went away since the audit: show the row anyway
        return "<div class=missing>image unavailable</div>"
    im.thumbnail((128, 128))
    return img(im)


def write_suspects(out_dir: Path, rows: list[dict], samples: dict[str, Samples], heading: str, *,
                   thumbnails: int = 48) -> None:
    """suspects.csv (CSV_COLUMNS, the rows in their order) and audit.html: `heading` (HTML) above the first
    `thumbnails` suspects as cards (thumbnail, given -> suggested label, score, split/sample)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "score": f"{r['score']:.6g}"} for r in rows)
    atomic_write_text(Path(out_dir) / "suspects.csv", buf.getvalue())
    e, cards = esc, []
    for r in rows[:thumbnails]:
        change = e(r["given_label"]) + (f" &rarr; {e(r['suggested_label'])}"
                                        if r["suggested_label"] != r["given_label"] else "")
        cards.append(f'<div class=card>{thumbnail(samples[r["split"]], r["index"])}<b>{e(r["kind"])}</b>'
                     f'<span>{change}</span><span>score {r["score"]:.3f}</span>'
                     f'<span class=id title="{e(r["detail"])}">{e(r["split"])}/{e(r["sample"])}</span></div>')
    atomic_write_text(Path(out_dir) / "audit.html", page("sft audit", f"""<h1>Dataset audit</h1>{heading}
<h2>Worst {len(cards)} suspects</h2><div class=grid>{"".join(cards)}</div>""", CSS))
