"""Text files users hand us (CSV, TSV and JSONL data, `predict --file`): UTF-8, or an error with the line and column
of the first byte that is not, instead of a UnicodeDecodeError from the middle of a buffered read."""

from __future__ import annotations

from pathlib import Path

from sft.errors import UserError


def read_utf8(path: str | Path) -> str:
    """The file's text; a UTF-8 byte-order mark is dropped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); save the "
                        f"file as UTF-8") from None
