"""sha256 of a file, read block-wise (weights files are hundreds of MB) and remembered for the process while the
file's size and modification time stay the same: an export check, a server's /metadata and a GGUF cache key hash
the same file once."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of the file at `path`."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:  # the stat fields are the cache key only
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
