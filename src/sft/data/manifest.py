"""Manifests of the tasks on pooled vectors whose rows carry their own targets (regression, multi-label): a CSV, TSV
or JSONL file whose rows name an image file (relative to the manifest) or give a text (or a text pair), beside the
task's own columns. `manifest_rows` checks each row's input and columns and leaves its targets to the task;
`manifest_samples` checks every image once all rows are read, so a bad row is one error naming its file and line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from sft.core.textfile import need_file
from sft.data.images import _verify_image
from sft.data.samples import Samples
from sft.data.texts import file_rows
from sft.errors import UserError


def manifest_rows(path, *, kind: str, format: str, column: str, pair_column: str | None, columns: list[str],
                  what: str, hint: str) -> Iterator[tuple[str, dict, object]]:
    """(where, row, item) of each row of the manifest at `path`: `where` is `file:line`, `item` the image file
    (absolute; `kind` "image", `column` its path column) or the text (`kind` "text", a (text, text) pair with
    `pair_column`). Each row must have `columns` (the task's own; `hint` names the recipe keys that set them) and a
    non-empty input; an image file must exist. `what`: the task's own columns, for the file's description."""
    inputs = "image paths" if kind == "image" else "texts"
    path = need_file(path, f"a CSV, TSV or JSONL manifest of {inputs} and {what}")
    needed = [column] + ([pair_column] if pair_column else []) + list(columns)
    for line, row in file_rows(path, format, f"{inputs} and {what}"):
        where = f"{path}:{line}"
        missing = [c for c in needed if c not in row]
        if missing:
            keys = "data.path_column" if kind == "image" else "data.text_column / data.text_pair_column"
            raise UserError(f"{where}: no column {missing[0]!r}; the columns are {sorted(row)} (set {hint}, {keys})")
        parts = [str(row[c] or "").strip() for c in needed[:2 if pair_column else 1]]
        if not all(parts):
            raise UserError(f"{where}: empty {column if not parts[0] else pair_column!r}")
        if kind == "image":
            file = os.path.abspath(Path(path).parent / parts[0])  # an absolute path stays itself
            if not os.path.isfile(file):
                raise UserError(f"{where}: image file not found: {file}")
            yield where, row, file
        else:
            yield where, row, tuple(str(row[c]) for c in needed[:2]) if pair_column else str(row[column])


def manifest_samples(path, kind: str, items: list, ids: list[str], names: list[str], targets) -> Samples:
    """The manifest's samples with their targets (N, K) float32 named by `names`, every image checked readable; a
    UserError when there are none."""
    if not items:
        raise UserError(f"{path}: no rows after the header; expected one row per sample")
    if kind == "image":
        for file, where in zip(items, ids):
            if err := _verify_image(file):
                raise UserError(f"{where}: not a readable image: {file} ({err})")
    return Samples(items, None, list(names), ids, kind, targets=np.asarray(targets, dtype=np.float32).reshape(
        len(items), len(names)))
