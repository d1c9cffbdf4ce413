"""`sft compare`: runs side by side, their metrics and the recipe keys in which they differ."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sft.core.atomic import atomic_write_text
from sft.core.html import page, table
from sft.errors import UserError

SKIP = {"run_dir"}  # differs between any two runs and already heads the columns
TITLE = "sft compare"


def flatten(tree, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _read(path: Path, load) -> dict:
    try:
        return (load(path.read_text()) or {}) if path.exists() else {}
    except (ValueError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None


def run_metrics(run: Path) -> dict:
    """Scalars of metrics.json, then those of the evaluation (eval/metrics.json) under `eval.`."""
    scalars = lambda d: {k: v for k, v in d.items() if not isinstance(v, (dict, list))}  # noqa: E731
    metrics = scalars(_read(run / "metrics.json", json.loads))
    metrics.update({f"eval.{k}": v for k, v in scalars(_read(run / "eval" / "metrics.json", json.loads)).items()})
    return metrics


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def compare_runs(run_dirs: list[str | Path]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one column per run; rows are every metric, then `recipe.<key>` for each differing key."""
    runs = [Path(r) for r in run_dirs]
    for run in runs:
        if not (run / "recipe.yaml").is_file():
            raise UserError(f"{run}: not a run directory (no recipe.yaml)")
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [str(r) for r in runs]
    metrics = [run_metrics(r) for r in runs]
    recipes = [flatten(_read(r / "recipe.yaml", yaml.safe_load)) for r in runs]
    keys = list(dict.fromkeys(k for m in metrics for k in m))
    rows = [[k] + [_cell(m.get(k)) for m in metrics] for k in keys]
    for key in dict.fromkeys(k for r in recipes for k in r):
        values = [_cell(r.get(key)) for r in recipes]
        if key not in SKIP and len(set(values)) > 1:
            rows.append([f"recipe.{key}"] + values)
    return ["", *names], rows


def write_html(path: str | Path, header: list[str], rows: list[list[str]], overwrite: bool = False) -> None:
    """The table as one HTML page; an existing file is replaced only with `overwrite`, and only if sft wrote it."""
    path = Path(path)
    if path.exists():
        if path.is_dir():
            raise UserError(f"--out {path} is a folder; give the name of an .html file")
        if not overwrite:
            raise UserError(f"--out {path} already exists; pass --overwrite to replace it or choose another name")
        if TITLE not in path.read_text(errors="replace")[:400]:
            raise UserError(f"--out {path} was not written by sft compare; it is left untouched, choose another name")
    css = "body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}" \
          "td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}"
    atomic_write_text(path, page(TITLE, "<h1>Runs compared</h1>" + table(header, rows, 'id="compare"'), css))
