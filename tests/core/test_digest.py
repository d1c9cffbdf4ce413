"""The shared file digest: hashlib's sha256, recomputed when the file changes."""

import hashlib
import os

from sft.core.digest import sha256_file
from sft.models.causal_lm import file_digest
from sft.models.export import file_id


def test_digest_matches_hashlib_and_follows_changes(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * (5 << 20))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest() == file_digest(path)
    assert file_id(path) == "sha256:" + sha256_file(path)
    path.write_bytes(b"b" * 10)
    os.utime(path, ns=(1, 1))  # even with an old mtime, the size differs
    assert sha256_file(path) == hashlib.sha256(b"b" * 10).hexdigest()
