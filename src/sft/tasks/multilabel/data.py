"""A multi-label split: a CSV, TSV or JSONL manifest whose rows give an image file (relative to the manifest) or a
text, and the sample's labels — one column holding a delimited list (`data.label_column`, `data.label_delimiter`; a
JSONL list too) or one 0/1 column per class (`data.label_columns`). The labels become multi-hot targets (N, C) float32
(`Samples.targets`, `Samples.classes` naming the C labels). Every row is checked when the split loads: an unknown
label, a sample without labels (unless data.allow_empty), a 0/1 column holding anything else, each one error naming
the file and line, before any model is built."""

from __future__ import annotations

import numpy as np

from sft.data.manifest import manifest_rows, manifest_samples
from sft.data.samples import Samples
from sft.errors import UserError

BINARY = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0}


def listed_labels(value, column: str, delimiter: str, where: str) -> list[str]:
    """A label-list cell (a delimited string, or a JSON list) as its labels, stripped, empty parts dropped."""
    if value is None:
        return []
    if isinstance(value, list):
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise UserError(f"{where}: label column {column!r} holds {value!r}; expected a list of label names")
        return [str(v).strip() for v in value if str(v).strip()]
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise UserError(f"{where}: label column {column!r} holds {value!r}; expected labels separated by "
                        f"{delimiter!r}")
    return [part.strip() for part in str(value).split(delimiter) if part.strip()]


def binary(value, column: str, where: str) -> float:
    """A 0/1 label column's cell as 0.0 or 1.0, or a UserError naming the file:line, the column and the value."""
    key = str(value).strip().lower() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else (
        str(value).lower() if isinstance(value, bool) else None)
    if key not in BINARY:
        raise UserError(f"{where}: label column {column!r} holds {value!r}; a 0/1 label column holds 0 or 1")
    return BINARY[key]


def read_multilabel(path, *, kind: str, format: str = "auto", column: str, pair_column: str | None = None,
                    label_column: str = "labels", delimiter: str = "|", label_columns: list[str] | None = None,
                    classes: list[str] | None = None, allow_empty: bool = False) -> Samples:
    """The samples of one manifest with multi-hot targets (N, C): C = `classes` when given (a label outside them is
    an error), else the sorted union of this file's labels (label_columns: the columns, in their order). Sample ids
    are `file:line`."""
    columns = list(label_columns) if label_columns else [label_column]
    hint = "data.label_columns" if label_columns else "data.label_column"
    items, ids, rows = [], [], []
    for where, row, item in manifest_rows(path, kind=kind, format=format, column=column, pair_column=pair_column,
                                          columns=columns, what="labels", hint=hint):
        if label_columns:
            present = [c for c in label_columns if binary(row[c], c, where)]
        else:
            present = listed_labels(row[label_column], label_column, delimiter, where)
        if not present and not allow_empty:
            raise UserError(f"{where}: no label; every sample needs at least one (set data.allow_empty: true to "
                            f"accept samples without labels)")
        if classes is not None:
            unknown = [x for x in present if x not in classes]
            if unknown:
                raise UserError(f"{where}: label {unknown[0]!r} is not one of data.classes {list(classes)}")
        items.append(item)
        ids.append(where)
        rows.append(present)
    names = list(classes) if classes is not None else (list(label_columns) if label_columns else
                                                       sorted({x for present in rows for x in present}))
    if not names:
        raise UserError(f"{path}: no labels at all; a multi-label set needs at least one label")
    index = {name: j for j, name in enumerate(names)}
    targets = np.zeros((len(rows), len(names)), np.float32)
    for i, present in enumerate(rows):
        targets[i, [index[x] for x in present]] = 1.0
    return manifest_samples(path, kind, items, ids, names, targets)


def label_counts(targets: np.ndarray) -> np.ndarray:
    """Positives per label (C,)."""
    return np.asarray(targets).sum(0).astype(np.int64)
