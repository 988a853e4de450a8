"""Turn a dataset root (a local path or a URI) into a pyarrow filesystem and a path inside it."""

from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import StoreError

log = logging.getLogger(__name__)

PYARROW_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss")


def resolve_root(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any URI pyarrow or fsspec understands (s3://, gs://, hf://, memory://)."""
    if "://" not in root:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root))
    scheme = root.split("://", 1)[0]
    if scheme in PYARROW_SCHEMES:
        try:
            return pafs.FileSystem.from_uri(root)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            if scheme == "file":
                raise StoreError(f"cannot open {root}: {exc}") from None
            log.debug("pyarrow cannot open %s (%s); trying fsspec", root, exc)
    if scheme == "hf":  # HfFileSystem with $HF_ENDPOINT read now, pinned to one commit (pipeline/dataset/hub.py)
        from pipeline.dataset.hub import open_hub_root

        return open_hub_root(root)
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs, path = fsspec.core.url_to_fs(root)
    except (ImportError, ValueError) as exc:
        raise StoreError(f"no filesystem for {root!r} ({exc}); install the fsspec package for {scheme}://") from None
    return PyFileSystem(FSSpecHandler(fs)), path.rstrip("/")
