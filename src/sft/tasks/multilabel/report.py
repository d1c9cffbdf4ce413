"""report.html of a multi-label evaluation: one self-contained page (figures and thumbnails embedded) with the scores,
each label's AP, F1, precision, recall and threshold, the false-negative rate reached against the one asked, the
precision-recall curves of the labels of lowest AP, and the samples of largest loss (their images, or their texts)
with their true and predicted labels. Rendered from an evaluation's results.json and the evaluated samples, so
`sft report` rebuilds it."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from sft.core.html import esc, evaluation_page, img, table, thumbnail
from sft.data.samples import Samples

TITLES = {"summary": "Summary", "per-label": "Per label", "fnr": "False-negative rate",
          "curves": "Precision-recall curves", "worst": "Largest losses"}


def curves_figure(curves: dict) -> Figure:
    """One precision-recall curve per label, side by side."""
    fig = Figure(figsize=(3.6 * max(len(curves), 1), 3.4), layout="constrained")
    for ax, (name, c) in zip(np.atleast_1d(fig.subplots(1, max(len(curves), 1))), curves.items()):
        ax.plot(c["recall"], c["precision"])
        ax.set(title=name, xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    return fig


def card(samples: Samples, row: dict) -> str:
    i = row["index"]
    body = f"<p>{esc(samples.text(i))}</p>" if samples.kind == "text" else img(thumbnail(samples.image(i)), row["id"])
    return (f'<div class="card">{body}<div>{esc(row["id"])}<br>true: <b>{esc(", ".join(row["true"]) or "-")}</b><br>'
            f'predicted: <b>{esc(", ".join(row["pred"]) or "-")}</b><br>loss {row["loss"]:.3g}</div></div>')


def fnr_section(fnr: dict | None) -> str:
    if not fnr:
        return "<p>Not computed in this evaluation.</p>"
    how = "fitted now" if fnr["fitted_now"] else "as stored in model.json"
    return (f"<p>False-negative rate asked <b>{fnr['fnr_target']:g}</b>, reached <b>{fnr['fnr']:.4f}</b> on the "
            f"{fnr['samples']} samples of this data with a label, with one threshold <b>{fnr['threshold']:.4g}</b> "
            f"for every label ({fnr['mean_labels']:.2f} labels per sample). Conformal risk control on the run's "
            f"{fnr['val_samples']} labelled validation samples ({how}): over samples exchangeable with them, the mean "
            f"share of a sample's true labels left out is at most the rate asked; not for each sample or label. "
            f"<code>sft predict --fnr</code> and <code>sft serve</code>'s <code>fnr</code> use this threshold.</p>")


def render(results: dict, samples: Samples) -> str:
    m, names = results["metrics"], results["classes"]
    show = lambda v: "-" if v is None else v  # noqa: E731
    sec = {"summary": table(["metric", "value"], [[k, show(m[k])] for k in (
        "map_macro", "map_micro", "micro_f1", "macro_f1", "subset_accuracy", "samples")])
        + "<p>F1 and subset accuracy at each label's threshold (its F1-best on the validation split).</p>"}
    sec["per-label"] = table(["label", "AP", "F1", "precision", "recall", "positives", "threshold"], [
        [n, *(show(v[k]) for k in ("ap", "f1", "precision", "recall", "positives", "threshold"))]
        for n, v in m["per_label"].items()])
    sec["fnr"] = fnr_section(m.get("fnr"))
    sec["curves"] = (f"<p>The {len(m['curves'])} labels of lowest AP.</p><figure>"
                     f"{img(curves_figure(m['curves']), 'precision-recall curves')}</figure>" if m["curves"]
                     else "<p>No label has a positive in this data.</p>")
    sec["worst"] = (f"<p>The {len(m['worst'])} samples of largest mean binary cross-entropy.</p><div class=\"grid\">"
                    + "".join(card(samples, row) for row in m["worst"]) + "</div>")
    return evaluation_page(results, f"{len(names)} labels", sec, TITLES)
