"""The one CSV reader for files users hand-edit (exclude lists, relabel maps): header checked, line numbers kept."""

from __future__ import annotations

import csv
from pathlib import Path

from sft.errors import UserError


def read_rows(path: Path, need: list) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line, row) pairs; `need` lists required columns, a tuple inside it alternatives."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [(reader.line_num, r) for r in reader]
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; expected a CSV file with a header line") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read CSV ({e})") from None
    missing = [c if isinstance(c, str) else " (or ".join(c) + ")" for c in need
               if not ({c} if isinstance(c, str) else set(c)) & set(header)]
    if missing:
        raise UserError(f"{path}: missing column {' and '.join(missing)}; the header has columns {header}")
    return header, rows
