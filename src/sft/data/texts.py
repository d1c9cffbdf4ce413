"""Labelled texts from CSV/TSV/JSONL, and batches of them: tokenization with dynamic padding per batch."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from sft.data.samples import Samples, batch_targets
from sft.core.textfile import need_file, read_utf8
from sft.errors import UserError

TEXT_FORMATS = ("csv", "tsv", "jsonl")


def read_texts(path, *, format: str = "auto", text_column: str = "text", pair_column: str | None = None,
               label_column: str = "label", classes: list[str] | None = None) -> Samples:
    """Labelled texts (or text pairs) from a CSV, TSV or JSONL file; sample ids are `file:line`."""
    path = need_file(path, "a CSV, TSV or JSONL file of texts and labels")
    rows = list(file_rows(path, format, "texts"))
    columns = [text_column, label_column] + ([pair_column] if pair_column else [])
    texts, labels, ids, empty = [], [], [], []
    for line, row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise UserError(f"{path}:{line}: no column {missing[0]!r}; the columns are {sorted(row)} "
                            f"(set data.text_column / data.label_column / data.text_pair_column)")
        parts = [str(row[text_column] or "")] + ([str(row[pair_column] or "")] if pair_column else [])
        if not all(p.strip() for p in parts):
            empty.append(line)
            continue
        texts.append(tuple(parts) if pair_column else parts[0])
        labels.append(str(row[label_column]).strip())
        ids.append(f"{path}:{line}")
    if empty:
        raise UserError(f"{path}: {len(empty)} empty text(s), at line(s) {empty[:10]}; remove or fill them")
    if not texts:
        raise UserError(f"{path}: no labelled texts")
    names = [str(c) for c in classes] if classes else sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        first = ids[labels.index(unknown[0])]
        raise UserError(f"{first}: label {unknown[0]!r} is not one of the classes {names} "
                        f"({len(unknown)} unknown label(s): {unknown[:5]})")
    return Samples(texts, np.array([index[x] for x in labels], dtype=np.int64), names, ids, kind="text")


def file_rows(path: Path, format: str, what: str):
    """(line, row) pairs of a CSV, TSV or JSONL file, its format from `format` or (auto) the file's suffix; `what`
    it holds, for the error."""
    if format == "auto":
        format = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
            path.suffix.lower(), "")
    if format not in TEXT_FORMATS:
        raise UserError(f"{path}: {what} are read from {', '.join(TEXT_FORMATS)} files (by suffix or data.*.format)")
    return jsonl_rows(path) if format == "jsonl" else table_rows(path, "\t" if format == "tsv" else ",")


def table_rows(path: Path, delimiter: str):
    """(line, row) pairs, `line` being where the row starts (a quoted field may span lines)."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # a long text is a text, in CSV as in JSONL
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header:
            raise UserError(f"{path}: empty file; expected a header line with the column names")
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                return
            if len(row) > len(header):  # zip would drop the extra fields, and with them part of a text
                raise UserError(f"{path}:{start}: {len(row)} fields but the header has {len(header)}; quote fields "
                                f"that contain the delimiter {delimiter!r} (\"like{delimiter} this\")")
            if row:  # a blank line is no row
                yield start, dict(zip(header, row + [None] * (len(header) - len(row))))
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: cannot read ({e})") from None


def jsonl_rows(path: Path):
    for line, text in enumerate(read_utf8(path).split("\n"), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{line}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line}: expected a JSON object per line, got {type(row).__name__}")
        yield line, row


def text_item(text: str, pair: bool) -> str | tuple[str, str]:
    """A text given to a finished run (`sft predict`, `sft serve`) as its model takes it: a run on text pairs takes
    'first<TAB>second' as the pair."""
    if not pair:
        return text
    if "\t" not in text:
        raise UserError(f"this run reads text pairs: give each as 'first<TAB>second' ({text!r})")
    return tuple(text.split("\t", 1))


class TextDataset(Dataset):
    def __init__(self, samples: Samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples.items[i], self.samples.target(i)


class Tokenize:
    """Collate (text, label) pairs into a padded batch: padding to the longest text of the batch, not max_length."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, texts: list) -> dict:
        return dict(self.tokenizer(*_columns(texts), truncation=True, max_length=self.max_length, padding=True,
                                   return_tensors="pt"))

    def __call__(self, batch):
        texts, labels = zip(*batch)
        return self.encode(list(texts)), batch_targets(list(labels))


def token_lengths(tokenizer, samples: Samples) -> np.ndarray:
    """Tokens of each text (pair) before truncation, int64 (N,): one tokenizer pass per run, which counts the texts
    longer than max_length (truncated and counted, not rejected) and groups training batches by length."""
    lengths = [tokenizer(*_columns(list(samples.items[start:start + 1024])), return_length=True,
                         verbose=False)["length"] for start in range(0, len(samples), 1024)]
    return np.array([n for chunk in lengths for n in chunk], dtype=np.int64)


def _columns(texts: list) -> tuple[list[str], ...]:
    """Single texts -> (texts,); pairs -> (firsts, seconds), as tokenizers take them."""
    if isinstance(texts[0], tuple):
        return [t[0] for t in texts], [t[1] for t in texts]
    return (list(texts),)
