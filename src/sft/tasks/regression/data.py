"""A regression split: a CSV, TSV or JSONL manifest whose rows give an image file (relative to the manifest) or a
text, and one number per target column. Every row is checked when the split loads, so a missing, non-numeric, NaN or
infinite target, a missing column or an image that cannot be read is one error naming the file and line, before any
model is built."""

from __future__ import annotations

import math

import numpy as np

from sft.data.manifest import manifest_rows, manifest_samples
from sft.data.samples import Samples
from sft.errors import UserError


def number(value, column: str, where: str) -> float:
    """A target cell as a finite float, or a UserError naming the file:line, the column and the value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}: no value in target column {column!r}; every row needs a number there")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{where}: target column {column!r} holds {value!r}, not a number")
    try:
        x = float(value)
    except ValueError:
        raise UserError(f"{where}: target column {column!r} holds {value!r}, not a number") from None
    if not math.isfinite(x):
        raise UserError(f"{where}: target column {column!r} is {value!r}; a target must be a finite number")
    return x


def read_targets(path, *, kind: str, format: str = "auto", target_columns: list[str], column: str,
                 pair_column: str | None = None) -> Samples:
    """The samples of one manifest: image files (`kind` "image", `column` the path column) or texts (`kind` "text",
    `column` the text column, `pair_column` a second text), with their targets (N, K) float32 in the order of
    `target_columns`, which name them (`Samples.classes`). Sample ids are `file:line`."""
    items, targets, ids = [], [], []
    for where, row, item in manifest_rows(path, kind=kind, format=format, column=column, pair_column=pair_column,
                                          columns=target_columns, what="target columns",
                                          hint="data.target_columns"):
        targets.append([number(row[c], c, where) for c in target_columns])
        items.append(item)
        ids.append(where)
    return manifest_samples(path, kind, items, ids, target_columns, targets)


def standardization(targets: np.ndarray, names: list[str], standardize: bool, where: str) -> tuple[list, list]:
    """(mean, std) per target column of the training split, which the head's outputs are scaled back with (mean 0 and
    std 1 when not standardised); a UserError when a column has a single value, which leaves nothing to learn."""
    targets = np.asarray(targets, dtype=np.float64)
    std = targets.std(axis=0)
    flat = [name for name, s in zip(names, std) if not s > 0]
    if flat:
        raise UserError(f"{where}: target column(s) {flat} hold a single value in the training split "
                        f"({targets[0, names.index(flat[0])]:g}); there is nothing to learn")
    if not standardize:
        return [0.0] * len(names), [1.0] * len(names)
    return targets.mean(axis=0).tolist(), std.tolist()


def target_scale(targets: np.ndarray) -> list[float]:
    """Each target column's standard deviation on the training split: the unit of the export's parity check."""
    return np.asarray(targets, dtype=np.float64).std(axis=0).tolist()
