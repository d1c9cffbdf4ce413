"""report.html of a regression evaluation: one self-contained page (figures and thumbnails embedded) with the scores
per target column, the intervals' coverage, predicted against true values, the residuals' histogram and the samples
of largest error (their images, or their texts). Rendered from an evaluation's results.json and the evaluated
samples, so `sft report` rebuilds it."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from sft.core.html import esc, evaluation_page, img, table, thumbnail
from sft.data.samples import Samples

FIGURES = 6  # target columns drawn at most (the tables list them all)
TITLES = {"summary": "Summary", "per-target": "Per target", "intervals": "Prediction intervals",
          "scatter": "Predicted against true", "residuals": "Residuals", "worst": "Largest errors"}


def scatter_figure(scatter: dict, names: list[str]) -> Figure:
    """Predicted against true per column, with the diagonal of perfect predictions."""
    shown = names[:FIGURES]
    fig = Figure(figsize=(4.2 * len(shown), 4), layout="constrained")
    for ax, name, true, pred in zip(np.atleast_1d(fig.subplots(1, len(shown))), shown, scatter["true"],
                                    scatter["pred"]):
        ax.scatter(true, pred, s=6, alpha=0.5)
        if true:
            lo, hi = min(min(true), min(pred)), max(max(true), max(pred))
            ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
        ax.set(title=name, xlabel="true", ylabel="predicted")
    return fig


def residuals_figure(histograms: list[dict], names: list[str]) -> Figure:
    """The histogram of predicted - true per column."""
    shown = names[:FIGURES]
    fig = Figure(figsize=(4.2 * len(shown), 3.2), layout="constrained")
    for ax, name, h in zip(np.atleast_1d(fig.subplots(1, len(shown))), shown, histograms):
        if h["counts"]:
            edges = np.asarray(h["edges"])
            ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge")
        ax.axvline(0, color="black", linewidth=1)
        ax.set(title=name, xlabel="predicted - true", ylabel="samples")
    return fig


def card(samples: Samples, row: dict, names: list[str]) -> str:
    """One sample of large error: its image or text, its id, and each column's true and predicted value."""
    i = row["index"]
    body = f"<p>{esc(samples.text(i))}</p>" if samples.kind == "text" else img(thumbnail(samples.image(i)), row["id"])
    values = "<br>".join(f"{esc(n)}: true <b>{t:.4g}</b>, predicted <b>{p:.4g}</b> ({e:+.3g})"
                         for n, t, p, e in zip(names, row["true"], row["pred"], row["error"]))
    return f'<div class="card">{body}<div>{esc(row["id"])}<br>{values}</div></div>'


def intervals_section(intervals: dict | None) -> str:
    if not intervals:
        return "<p>Not computed in this evaluation.</p>"
    rows = [[n, v["interval_coverage"], v["interval_width"]] for n, v in intervals["per_target"].items()]
    how = "fitted now" if intervals["fitted_now"] else "as stored in model.json"
    return (f"<p>Coverage asked <b>{intervals['coverage_target']:g}</b>, reached <b>"
            f"{intervals['interval_coverage']:.4f}</b> on this data; mean width <b>"
            f"{intervals['mean_interval_width']:.4g}</b>. Split-conformal intervals (prediction ± the validation "
            f"residuals' finite-sample quantile) on the run's {intervals['val_samples']} validation samples ({how}). "
            f"The guarantee is marginal: over samples exchangeable with the validation split, the true value lies "
            f"in its interval at least this often, for each column; not for each sample. <code>sft predict "
            f"--coverage</code> and <code>sft serve</code>'s <code>coverage</code> give these intervals.</p>"
            + table(["target", "coverage", "width"], rows))


def render(results: dict, samples: Samples) -> str:
    m, names = results["metrics"], results["targets"]
    sec = {"summary": table(["metric", "value"], [[k, "-" if m[k] is None else m[k]] for k in (
        "mae", "rmse", "r2", "spearman", "samples")])}
    sec["per-target"] = table(["target", "MAE", "RMSE", "R²", "Spearman"], [
        [n, *("-" if v[k] is None else v[k] for k in ("mae", "rmse", "r2", "spearman"))]
        for n, v in m["per_target"].items()])
    sec["intervals"] = intervals_section(m.get("intervals"))
    more = f" (the first {FIGURES} of {len(names)} targets)" if len(names) > FIGURES else ""
    sec["scatter"] = (f"<p>Up to {len(m['scatter']['true'][0]) if m['samples'] else 0} samples, evenly spaced over "
                      f"the split{more}.</p><figure>{img(scatter_figure(m['scatter'], names), 'predicted vs true')}"
                      f"</figure>")
    sec["residuals"] = f"<figure>{img(residuals_figure(m['residuals'], names), 'residuals')}</figure>"
    sec["worst"] = (f"<p>The {len(m['worst'])} samples of largest error (in training standard deviations when "
                    f"there are several targets).</p><div class=\"grid\">"
                    + "".join(card(samples, row, names) for row in m["worst"]) + "</div>")
    return evaluation_page(results, f"targets {', '.join(names)}", sec, TITLES)
