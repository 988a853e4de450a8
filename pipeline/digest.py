"""Checkpoint digests: the sha256 that identifies a checkpoint's bytes (no torch needed, for download tasks)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Sequence

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


def sha256_of_files_soon(paths: Sequence[str | os.PathLike]) -> Callable[[], tuple[str, int] | None] | None:
    """Start ``sha256_of_files`` in a thread and return a function that waits for it; None unless all are local files.

    Hashing releases the GIL, so a CLI process can hash its checkpoint while it imports torch
    (0.17 s of a 153 MB checkpoint hidden behind 1 s of imports). The waiting function returns
    None when hashing failed: the caller hashes again the usual way, so the error surfaces
    where it is recorded.
    """
    if not paths or not all(os.path.isfile(p) for p in paths):
        return None
    outcome: dict[str, tuple[str, int]] = {}

    def work() -> None:
        with contextlib.suppress(OSError):
            outcome["digest"] = sha256_of_files(paths)

    thread = threading.Thread(target=work, name="sha256", daemon=True)
    thread.start()

    def wait() -> tuple[str, int] | None:
        thread.join()
        return outcome.get("digest")

    return wait


class HashBehind:
    """A sha256 fed in order from a background thread: ``update`` returns once the previous chunk is hashed.

    Hashing releases the GIL, so a layer's bytes are hashed while its metrics are computed
    (the caller must not change a chunk's buffer until the next ``update`` or ``hexdigest``).
    """

    def __init__(self, initial: bytes = b"") -> None:
        self._hash = hashlib.sha256(initial)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def update(self, data: bytes | memoryview | object) -> None:
        """Hash ``data`` (any contiguous buffer) after the chunks before it; raises what hashing those raised."""
        self._wait()
        self._thread = threading.Thread(target=self._feed, args=(data,), name="sha256", daemon=True)
        self._thread.start()

    def _feed(self, data: object) -> None:
        try:
            self._hash.update(data)  # type: ignore[arg-type]
        except BaseException as exc:  # raised by the caller's next update or hexdigest, and every one after
            self._error = exc

    def hexdigest(self) -> str:
        self._wait()
        return self._hash.hexdigest()

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:  # kept: every later call raises it too, so no digest misses the chunk
            raise self._error
