"""Checkpoint digests: the sha256 that identifies a checkpoint's bytes (no torch needed, for download tasks)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

_HASH_CHUNK = 8 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of one file's bytes."""
    return _sha256_and_size(path)[0]


def _sha256_and_size(path: str | os.PathLike) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sha256_of_files(paths: Sequence[str | os.PathLike]) -> tuple[str, int]:
    """(hex sha256, total bytes): of the file itself, or of the member digests in order for several files."""
    digests, total = [], 0
    for path in paths:
        digest, size = _sha256_and_size(path)
        digests.append(digest)
        total += size
    if len(digests) == 1:
        return digests[0], total
    return hashlib.sha256("".join(digests).encode()).hexdigest(), total
