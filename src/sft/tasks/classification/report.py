"""report.html: one self-contained page (figures and thumbnails embedded as base64 PNG) that explains an evaluation:
metrics per class, the confusion matrix and the most confused pairs, calibration, prediction sets, training curves,
the top losses and Grad-CAM heat maps (token attributions for texts). Rendered from an evaluation's results.json, so
`sft report` can rebuild it."""

from __future__ import annotations

import csv
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch.utils.data import default_collate

from sft.core.atomic import atomic_write_text
from sft.core.calibration import reliability_figure
from sft.core.html import esc, img, page, table, thumbnail
from sft.tasks.classification.interpret import find_target_layer, grad_cam, token_attributions

_SECTIONS = ["summary", "per-class", "confusion", "confused-pairs", "calibration", "sets", "curves", "top-losses"]
SECTIONS = {"image": _SECTIONS + ["gradcam"], "text": _SECTIONS + ["attributions"]}  # the page's section ids
TITLES = {"summary": "Summary", "per-class": "Per class", "confusion": "Confusion matrix",
          "confused-pairs": "Most confused pairs", "calibration": "Calibration", "sets": "Prediction sets",
          "curves": "Training curves",
          "top-losses": "Top losses", "gradcam": "Grad-CAM by class", "attributions": "Token attributions by class"}
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ccc;border-radius:6px;padding:6px;font-size:12px;max-width:420px}
.card img{width:112px;height:112px;image-rendering:pixelated;margin-right:4px}.bad{color:#b00}
figure img{max-width:100%}nav a{margin-right:1em}.tok{padding:0 1px;border-radius:3px}"""
SCRIPT = """<script>window.addEventListener('load',()=>{const im=[...document.images];
document.body.dataset.images=im.length;
document.body.dataset.broken=im.filter(i=>!i.complete||i.naturalWidth===0).length;});</script>"""


# -- figures ----------------------------------------------------------------------------------------------------

def confusion_figure(cm: np.ndarray, classes: list[str]) -> Figure:
    """Counts and row-normalised rates (each row: where the samples of a true class went)."""
    n = len(classes)
    size = min(4 + 0.35 * n, 14)
    fig = Figure(figsize=(2 * size + 1, size), layout="constrained")
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for ax, data, title, fmt in zip(fig.subplots(1, 2), (cm, rates), ("counts", "row-normalised"), ("d", ".2f")):
        shown = ax.imshow(data, cmap="Blues")
        fig.colorbar(shown, ax=ax, fraction=0.046)
        ax.set(title=title, xlabel="predicted", ylabel="true")
        if n <= 60:  # beyond that, names would overlap: the per-class table and the pairs name them
            ax.set(xticks=range(n), yticks=range(n))
            ax.set_xticklabels(classes, rotation=90, fontsize=8), ax.set_yticklabels(classes, fontsize=8)
        if n <= 25:
            for (i, j), v in np.ndenumerate(data):
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                        color="white" if v > data.max() / 2 else "black")
    return fig


def read_logs(run_dir: Path) -> list[dict]:
    """Rows of the run's CSV logs: the parts kept over resumes (metrics.before-resume-N.csv), then metrics.csv."""
    logs = Path(run_dir) / "logs"
    number = lambda p: int(re.sub(r"\D", "", p.stem) or 0)  # noqa: E731
    files = sorted(logs.glob("metrics.before-resume-*.csv"), key=number) + [logs / "metrics.csv"]
    rows = []
    for path in files:
        if path.exists():
            with open(path, newline="") as f:
                rows += [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    known = sorted((r["step"], r["epoch"]) for r in rows if "step" in r and "epoch" in r)
    for r in rows:  # the LR monitor logs steps without their epoch: the epoch of the last row logged at or before
        if "epoch" not in r and "step" in r and known:
            r["epoch"] = next((e for s, e in reversed(known) if s <= r["step"]), known[0][1])
    return rows


def curves_figure(rows: list[dict]) -> Figure:
    """Loss, accuracy and learning rate against the step (top) and the epoch (bottom; means per epoch)."""
    fig = Figure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 3)
    keys = sorted({k for row in rows for k in row} - {"step", "epoch"})
    kinds = {"loss": [k for k in keys if "loss" in k], "accuracy": [k for k in keys if "acc" in k],
             "learning rate": [k for k in keys if k.startswith("lr")]}
    for col, (kind, names) in enumerate(kinds.items()):
        for row, x in enumerate(("step", "epoch")):
            ax = axes[row, col]
            drawn: dict[tuple, list[str]] = {}  # identical curves (e.g. LR groups) drawn once, names joined
            for name in names:
                if x == "epoch" and name.endswith("_step"):
                    continue
                pts = [(r[x], r[name]) for r in rows if name in r and x in r]
                if x == "epoch":
                    means: dict[float, list[float]] = {}
                    for e, v in pts:
                        means.setdefault(e, []).append(v)
                    pts = [(e, float(np.mean(v))) for e, v in sorted(means.items())]
                if pts:
                    drawn.setdefault(tuple(sorted(pts)), []).append(name)
            for k, (pts, labels) in enumerate(drawn.items()):
                xs, ys = zip(*pts)
                label = labels[0] if len(labels) == 1 else f"{labels[0]} (+{len(labels) - 1} same)"
                if len(drawn) > 6 and 0 < k < len(drawn) - 1:  # many LR groups: name the first and last only
                    label = "_" if k > 1 else f"... {len(drawn) - 2} more groups"
                ax.plot(xs, ys, "-" if len(pts) > 20 else "-o", label=label, markersize=3)
            ax.set(xlabel=x, ylabel=kind)
            if kind == "learning rate":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            if ax.lines:
                ax.legend(fontsize=7)
    return fig


# -- interpretation ---------------------------------------------------------------------------------------------

def _batch(dataset, collate_fn, indices: list[int]):
    x, _ = (collate_fn or default_collate)([dataset[i] for i in indices])
    return x


def explain(model, info, samples, dataset, collate_fn, indices: list[int], targets: list[int] | None, layer=None):
    """Per index: a Grad-CAM overlay (images; `layer` from find_target_layer, found when None) or token
    attributions (texts) for its target class (default: the prediction), or why it could not be made (a str)."""
    if not indices:
        return []
    try:
        if targets is None:
            with torch.no_grad():
                targets = [int(model(_batch(dataset, collate_fn, [i])).argmax(-1)) for i in indices]
        if samples.kind == "text":
            tokenizer = getattr(collate_fn, "tokenizer", None)
            return [token_attributions(model, _batch(dataset, collate_fn, [i]), t, tokenizer=tokenizer)
                    for i, t in zip(indices, targets)]
        x = _batch(dataset, collate_fn, indices)
        layer = layer or find_target_layer(model, x[:1])
        return grad_cam(model, x, targets, info.preprocess.mean, info.preprocess.std, layer)
    except (ValueError, RuntimeError) as e:
        return [f"not available: {e}"] * len(indices)


def tokens_html(pairs) -> str:
    if isinstance(pairs, str):
        return f"<p>{esc(pairs)}</p>"
    spans = []
    for token, a in pairs:
        color = f"rgba(0,160,0,{a:.2f})" if a >= 0 else f"rgba(220,0,0,{-a:.2f})"
        spans.append(f'<span class="tok" style="background:{color}" title="{a:+.3f}">{esc(token)}</span>')
    return "<p>" + " ".join(spans) + "</p>"


def card(samples, i: int, caption: str, explanation) -> str:
    """One sample: its text with token attributions, or its image with the Grad-CAM overlay; then `caption`."""
    if samples.kind == "text":
        body = f"<p>{esc(samples.text(i))}</p>" + tokens_html(explanation)
    else:
        body = img(thumbnail(samples.image(i)), f"sample {i}")
        body += (img(thumbnail(Image.fromarray(explanation)), f"Grad-CAM {i}") if not isinstance(explanation, str)
                 else f"<p>{esc(explanation)}</p>")
    return f'<div class="card">{body}<div>{caption}</div></div>'


# -- the page ---------------------------------------------------------------------------------------------------

def sets_section(sets: dict | None) -> str:
    """Coverage asked and reached, the mean set size, how the sets were fitted, and how many samples got each size
    (`conformal.SetCounts.result()`; None: none in this evaluation)."""
    if not sets:
        return ("<p>Not computed in this evaluation: it is older than prediction sets, or the run's validation split "
                "is too small for the default coverage (<code>sft eval</code> said so).</p>")
    method = f"RAPS (λ {sets['penalty']:g}, k {sets['k_reg']})" if sets["penalty"] else "APS"
    total = max(sum(sets["set_sizes"]), 1)
    sizes = [[size, count, count / total] for size, count in enumerate(sets["set_sizes"]) if count]
    return (f"<p>Coverage asked <b>{sets['coverage_target']:g}</b>, reached <b>{sets['set_coverage']:.4f}</b> on "
            f"this data; mean set size <b>{sets['mean_set_size']:.3f}</b> of {len(sets['set_sizes']) - 1} classes. "
            f"{method} sets, split conformal on the run's {sets['val_samples']} validation samples "
            f"({'fitted now' if sets['fitted_now'] else 'as stored in model.json'}; score threshold "
            f"{sets['threshold']:.4f}). The guarantee is marginal: over samples exchangeable with the validation "
            f"split, the true class is in the set at least this often; not for each sample or class. "
            f"<code>sft predict --coverage</code> and <code>sft serve</code>'s <code>coverage</code> give these sets."
            f"</p>" + table(["set size", "samples", "share"], sizes))


def confused_pairs(cm: np.ndarray, classes: list[str], n: int = 10) -> list[list]:
    pairs = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    return [[classes[i], classes[j], c, c / max(int(cm[i].sum()), 1)] for c, i, j in sorted(pairs, reverse=True)[:n]]


def render(results: dict, model, info, samples, dataset, collate_fn) -> str:
    m, classes, cal = results["metrics"], results["classes"], results["calibration"]
    cm = np.array(m["confusion_matrix"])
    kind = results.get("kind", "image")
    sec = {}
    sec["summary"] = table(["metric", "value"], [[k, m[k]] for k in (
        "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1")]
        + [[f"top-{m['top_k']} accuracy", m["top_k_accuracy"]], ["loss (cross-entropy)", m["loss"]],
           ["samples", m["samples"]], ["test-time augmentation", results.get("tta", "none")]])
    sec["per-class"] = table(["class", "precision", "recall", "F1", "support"], [
        [c, m["per_class_precision"][i], m["per_class_recall"][i], m["per_class_f1"][i], m["support"][i]]
        for i, c in enumerate(classes)])
    sec["confusion"] = f"<figure>{img(confusion_figure(cm, classes), 'confusion matrix')}</figure>"
    pairs = confused_pairs(cm, classes)
    sec["confused-pairs"] = (table(["true", "predicted as", "count", "share of true class"], pairs) if pairs
                             else "<p>No confusions.</p>")
    flipped = " (their flip-averaged logits, for this evaluation only)" if results.get("tta") == "flip" else ""
    fitted = (f"fitted on {cal['val_samples']} validation samples{flipped} (NLL {cal['val_nll_before']:.4f} → "
              f"{cal['val_nll_after']:.4f}, ECE {cal['val_ece_before']:.4f} → {cal['val_ece_after']:.4f})"
              if "val_samples" in cal else "as stored in model.json")
    sec["calibration"] = (
        f"<p>Temperature <b>{m['temperature']:.4f}</b>, {fitted}. On this data: ECE <b>{m['ece']:.4f}</b> before "
        f"and <b>{m['ece_calibrated']:.4f}</b> after temperature scaling; NLL {m['loss']:.4f} → "
        f"{m['nll_calibrated']:.4f}. <code>sft predict</code> reports the scaled probabilities.</p>"
        + "<figure>" + img(reliability_figure(m["reliability"], m["reliability_calibrated"], m["temperature"]),
                           "reliability diagram") + "</figure>")
    sec["sets"] = sets_section(m.get("sets"))
    rows = read_logs(Path(results["run_dir"]))
    sec["curves"] = (f"<figure>{img(curves_figure(rows), 'training curves')}</figure>" if rows
                     else "<p>No training logs (logs/metrics.csv) in the run directory.</p>")
    losses = m.get("top_losses", [])
    what = "Grad-CAM of the predicted class" if kind == "image" else "attributions towards the predicted class"
    layer = None
    if kind == "image":  # found once for both galleries
        try:
            layer = find_target_layer(model, _batch(dataset, collate_fn, [0]))
        except ValueError:
            pass  # explain() says why on the page
    expl = explain(model, info, samples, dataset, collate_fn, [r["index"] for r in losses], [r["pred"] for r in losses],
                   layer)
    sec["top-losses"] = f"<p>The {len(losses)} samples of highest loss (calibrated probabilities); {what}.</p>" + \
        '<div class="grid">' + "".join(card(samples, r["index"], (
            f"#{r['index']} given <b>{esc(classes[r['label']])}</b> ({r['label_prob']:.3f}), predicted "
            f"<b class='bad'>{esc(classes[r['pred']])}</b> ({r['pred_prob']:.3f}), loss {r['loss']:.3f}"), e)
            for r, e in zip(losses, expl)) + "</div>"
    picked = results.get("class_samples", [])
    expl = explain(model, info, samples, dataset, collate_fn, picked, None, layer)
    sec[SECTIONS[kind][-1]] = f"<p>Samples of each class; {what}.</p>" + '<div class="grid">' + "".join(
        card(samples, i, f"#{i} class <b>{esc(classes[samples.labels[i]])}</b>", e)
        for i, e in zip(picked, expl)) + "</div>"
    data = results["data"]
    body = "".join(f'<section id="{s}"><h2>{TITLES[s]}</h2>{sec[s]}</section>' for s in SECTIONS[kind])
    nav = "".join(f'<a href="#{s}">{TITLES[s]}</a>' for s in SECTIONS[kind])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return page(f'sft evaluation: {Path(results["run_dir"]).name}',
                f'<h1>Evaluation of {esc(results["run_dir"])}</h1><p>Data: {esc(data["source"]["path"])} '
                f'({data["samples"]} samples, {len(classes)} classes). Written {when} by <code>sft eval</code>.</p>'
                f"<nav>{nav}</nav>{body}{SCRIPT}", CSS)


def build_report(results: dict, model, info, samples, dataset, collate_fn, progress: bool = False) -> str:
    """The page, with a spinner while Grad-CAM runs (on the CPU, in NCHW: its backward passes are several times
    faster there than in channels_last)."""
    from contextlib import nullcontext

    from rich.console import Console
    model = model.cpu().eval()
    if getattr(model, "channels_last", False):
        model.channels_last = False
    with Console(stderr=True).status("writing report.html (Grad-CAM)") if progress else nullcontext():
        return render(results, model, info, samples, dataset, collate_fn)


def write_report(out: Path, results: dict, model, info, samples, dataset, collate_fn, progress: bool = False):
    """Render and write out/report.html atomically (`sft report`)."""
    atomic_write_text(Path(out) / "report.html", build_report(results, model, info, samples, dataset, collate_fn,
                                                              progress))


def class_samples(labels: np.ndarray, num_classes: int, per_class: int = 2, max_classes: int = 40) -> list[int]:
    """The first `per_class` samples of each of the first `max_classes` classes (the report's Grad-CAM gallery)."""
    labels = np.asarray(labels)
    return [int(i) for c in range(min(num_classes, max_classes)) for i in np.flatnonzero(labels == c)[:per_class]]
