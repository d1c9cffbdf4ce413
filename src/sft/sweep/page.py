"""What a sweep leaves for a human: the trials as CSV, the best recipe as a file `sft train` takes, and one
self-contained HTML page — Optuna's own plots (optimisation history, parameter importances, parallel coordinates,
the epochs each trial reported) drawn with matplotlib and inlined, above the trials table."""

from __future__ import annotations

import csv
import io
import warnings

import matplotlib.pyplot as plt
import optuna.visualization.matplotlib as ov
import yaml

from sft.core.html import esc, img, page, table
from sft.recipe import read_raw

CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:75em} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right} td:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:1em} .plots figure{margin:0} img{max-width:36em}
tr.best td{font-weight:bold;background:#eef6ee}"""


def _rows(trials) -> tuple[list[str], list[list]]:
    keys = sorted({k for t in trials for k in t.params})
    header = ["trial", "state", "value", *keys, "epochs", "seconds", "run", "error"]
    rows = []
    for t in trials:
        epochs = t.user_attrs.get("sft.epochs") or (max(t.intermediate_values) + 1 if t.intermediate_values else "")
        rows.append([t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6g}",
                     *(_shown(t.params.get(k, "")) for k in keys), epochs, t.user_attrs.get("sft.seconds", ""),
                     t.user_attrs.get("sft.run_dir", ""), t.user_attrs.get("sft.error", "")])
    return header, rows


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_table(trials) -> str:
    """trials.csv: one row per trial — number, state, value (the monitored one), each parameter, the epochs trained,
    seconds, its run folder and, for a failed trial, why."""
    header, rows = _rows(trials)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def best_recipe_text(recipe: str, overrides: list[str]) -> str:
    """The recipe file with the sweep's overrides and the best parameters applied, without its run_dir (`sft train
    best.yaml` writes runs/best, as for any recipe file)."""
    raw, _ = read_raw(recipe, overrides)
    raw.pop("run_dir", None)
    return yaml.safe_dump(raw, sort_keys=False)


def _plots(study) -> list[tuple[str, str]]:
    """(title, inline image) of each of Optuna's plots that the study's trials allow."""
    shown = []
    for title, plot in (("Optimisation history", ov.plot_optimization_history),
                        ("Parameter importances (fANOVA)", ov.plot_param_importances),
                        ("Parallel coordinates", ov.plot_parallel_coordinate),
                        ("Monitored value per epoch (pruned trials stop early)", ov.plot_intermediate_values)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # too few finished trials for this plot
                continue
        figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        figure.set_size_inches(7, 4.5)
        figure.tight_layout()
        shown.append((title, img(figure, title)))
        plt.close(figure)
    return shown


def sweep_page(study, summary: dict) -> str:
    """sweep.html: the best trial, its test scores, Optuna's plots and every trial."""
    header, rows = _rows(study.get_trials())
    best = summary["best_trial"]
    body = "".join(f"<tr{' class=best' if r[0] == best else ''}>" + "".join(f"<td>{esc(c)}</td>" for c in r)
                   + "</tr>" for r in rows)
    test = summary.get("test") or {}
    scores = table(["test metric", "value"], [[k, f"{v:.4g}"] for k, v in test.items() if isinstance(v, float)])
    params = table(["parameter", "best value"], [[k, _shown(v)] for k, v in summary["best_params"].items()])
    states = ", ".join(f"{n} {state}" for state, n in summary["trials"].items() if n)
    figures = "".join(f"<figure>{image}<figcaption>{esc(title)}</figcaption></figure>"
                      for title, image in _plots(study))
    return page("sft sweep", f"""<h1>Sweep {esc(summary['study'])}</h1>
<p>Trials: {esc(states)}; {summary['seconds']:.0f} s. Chosen on validation ({esc(summary['monitor'])}): trial {best},
{summary['best_value']:.4g}; its recipe is best.yaml{', its test scores below (the test split is scored once, for it)'
                                                  if test else ''}.</p>
{params}{scores if test else ''}
<h2>Plots</h2><div class=plots>{figures}</div>
<h2>Trials</h2><table><tr>{''.join(f'<th>{esc(h)}</th>' for h in header)}</tr>{body}</table>""", CSS)
