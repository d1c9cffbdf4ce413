"""Text files users hand us (CSV, TSV and JSONL data, `predict --file`): UTF-8, or an error with the line and column
of the first byte that is not, instead of a UnicodeDecodeError from the middle of a buffered read; a folder where a
file is wanted is called a folder, not "not found"."""

from __future__ import annotations

from pathlib import Path

from sft.errors import UserError


def need_file(path: str | Path, what: str) -> Path:
    """`path` when it is a file; else a UserError saying it is a folder or missing, and `what` file was expected."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected {what}")
    if not path.is_file():
        raise UserError(f"{path}: not found; expected {what}")
    return path


def read_utf8(path: str | Path) -> str:
    """The file's text; a UTF-8 byte-order mark is dropped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; expected a text file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); save the "
                        f"file as UTF-8") from None
