"""Checkpoint digests: the sha256 that identifies a checkpoint's bytes (no torch needed, for download tasks)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

_HASH_CHUNK = 8 << 20


def sha256_of_files(paths: Sequence[str | os.PathLike]) -> tuple[str, int]:
    """(hex sha256, total bytes): of the file itself, or of the member digests in order for several files."""
    digests, total = [], 0
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
                total += len(chunk)
        digests.append(h.hexdigest())
    if len(digests) == 1:
        return digests[0], total
    return hashlib.sha256("".join(digests).encode()).hexdigest(), total
