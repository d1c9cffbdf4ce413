"""One process at a time per folder or cache entry: an exclusive lock keyed by the folder's resolved path (a symlink to a folder
takes the folder's lock), kept in sft's own lock folder, never in the user's, and removed when it is released.

flock(2) ends with the process that holds it, so a killed run leaves nothing that blocks the next one. Removing
the file on release races with a process that opened it a moment before: that process finds, once it holds the
lock, that the path now names another file (or none), and tries again on the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from sft.errors import UserError


def lock_folder() -> Path:
    """Where this user's locks live: on the machine's own temporary disk (per user, private)."""
    return Path(tempfile.gettempdir()) / f"sft-locks-{os.getuid()}"


class FolderLock:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        key = hashlib.sha256(str(self.folder.expanduser().resolve()).encode()).hexdigest()[:32]
        self.path = lock_folder() / f"{key}.lock"
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock: False when another process holds it (or, with `wait`, once it has released it)."""
        _own_folder(self.path.parent)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {self.folder.resolve()}\n".encode())  # who holds it, for a curious user
                self.fd = fd
                return True
            os.close(fd)  # its holder released and removed it between our open and our lock

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still held: nobody can take the removed file after us
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None



def _own_folder(folder: Path) -> None:
    """The lock folder, made private to this user; one that another user made (or opened to others) is refused:
    whoever can write there can break or block our locks."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UserError(f"{folder}: sft's lock folder is not a private folder of yours; remove it (sft makes it "
                        f"again), or set TMPDIR to another folder")


@contextlib.contextmanager
def holding(path: str | Path):
    """Wait for `path`'s lock and hold it for the block: one process fills a cache entry while the others wait."""
    lock = FolderLock(path)
    try:
        lock.acquire(wait=True)
    except OSError as e:
        raise UserError(f"{lock.path}: cannot take the lock of {path} ({e.strerror or e})") from None
    try:
        yield
    finally:
        lock.release()
