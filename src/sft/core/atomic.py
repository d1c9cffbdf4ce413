"""Atomic writes: a file is either its old content or its complete new content, never half of it. A folder that
cannot take the temporary file (read-only, not ours) is a UserError naming it, not an OSError from deep inside."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from sft.errors import UserError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file over `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    fd, tmp = _temporary(tempfile.mkstemp, path)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_dir(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_dir)`, then swap the folder into place: readers see the old folder or the complete new one."""
    path = Path(path)
    tmp = _temporary(tempfile.mkdtemp, path)
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old")
            os.replace(path, Path(old) / path.name)
            shutil.rmtree(old)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def check_writable(folder: str | Path, why: str) -> None:
    """A UserError before any work when `folder` (or, while it does not exist, the nearest folder above it) cannot
    take a new file, as every atomic write starts with one; `why` says what is written there."""
    folder = Path(folder).resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    fd, probe = _temporary(tempfile.mkstemp, existing / "probe", why)
    os.close(fd)
    os.unlink(probe)


def _temporary(make: Callable, path: Path, why: str = "make it writable or choose another folder"):
    """`make` (mkstemp or mkdtemp) beside `path`, the folder created first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return make(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"{path.parent}: cannot be written ({e.strerror or e}); {why}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
