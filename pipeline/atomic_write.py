"""The one way filterlens writes a file that readers may see: complete or not at all.

On a local filesystem the bytes go to a hidden temp file beside the target
(``.<name>.<random>.tmp``), are flushed to disk, and the temp file is renamed over
the target (a rename is atomic within one folder). On object stores (S3, GCS,
memory://) an object only appears once its upload finishes, so the target is
written directly. Leftover ``.tmp`` files from a crash are what the dataset's
``filterlens vacuum`` removes (once older than its retention).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyarrow.fs is imported where it is used: it costs ~0.15 s of CLI start-up
    import pyarrow.fs as pafs

TEMP_SUFFIX = ".tmp"


def temp_sibling(path: str) -> str:
    """A hidden, unique temp name in the same folder as ``path``."""
    directory, _, name = path.rpartition("/")
    hidden = f".{name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
    return f"{directory}/{hidden}" if directory else hidden


def is_temp_of(name: str, target_name: str) -> bool:
    """True when the file name ``name`` is a temp file made for ``target_name``."""
    return name.startswith(f".{target_name}.") and name.endswith(TEMP_SUFFIX)


def _quiet_delete(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass


@contextmanager
def atomic_target(path: str, fs: pafs.FileSystem | None = None) -> Iterator[str]:
    """Yield the path to write instead of ``path``; on success it is moved into place, on error deleted.

    ``fs`` is a pyarrow filesystem (default: local, where ``path`` may be relative).
    """
    import pyarrow.fs as pafs

    if fs is None:
        fs, path = pafs.LocalFileSystem(), os.path.abspath(path)
    local = isinstance(fs, pafs.LocalFileSystem)
    parent = path.rpartition("/")[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    target = temp_sibling(path) if local else path
    try:
        yield target
        if target != path:
            fs.move(target, path)
    except BaseException:
        if target != path:
            _quiet_delete(fs, target)
        raise


def write_bytes_atomic(path: str, data: bytes, fs: pafs.FileSystem | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one (fsynced when local)."""
    import pyarrow.fs as pafs

    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        with atomic_target(path, fs) as target:
            with open(target, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        return
    with atomic_target(path, fs) as target, fs.open_output_stream(target) as stream:
        stream.write(data)
