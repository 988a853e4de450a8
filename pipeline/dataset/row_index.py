"""A compacted copy of the one-file-per-model rows, so that opening a 1,000-model root reads two files, not 1,000.

``_index/<table>.parquet`` holds every row of ``models/`` (or ``failures/``) as it
was when the index was written, with the row file it came from and that file's
size and modification time. A reader lists ``models/`` as always (the listing is
the truth) and takes a row from the index only when its file is unchanged: same
name, size and modification time (nanoseconds on local disks). Object stores give
modification times to the second, so there a row is taken from the index only if
its file was last written at least ``SETTLED_S`` before the index itself: a row
rewritten within the same second, with the same size, cannot be mistaken for the
old one. Everything else is read from its own file. A stale or missing index
makes a read slower, never wrong; any writer may rewrite it (the last one wins).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs

INDEX_DIR = "_index"
SETTLED_S = 60.0
"""On object stores, how much older than the index a row file must be for the index copy to count."""
MAX_BUILD_S = 30.0
"""An index that took longer than this to write is not written (it could not honour ``SETTLED_S``)."""
FILE, SIZE, MTIME = "_file", "_size", "_mtime_ns"


def mtime_ns(info: pafs.FileInfo) -> int:
    return info.mtime_ns if info.mtime_ns is not None else -1


def index_table(rows_by_file: list[tuple[pafs.FileInfo, pa.Table]]) -> pa.Table:
    """The index: each file's rows, with the file's name, size and modification time."""
    parts = []
    for info, rows in rows_by_file:
        n = rows.num_rows
        parts.append(rows.append_column(FILE, pa.array([info.base_name] * n, pa.string()))
                     .append_column(SIZE, pa.array([info.size] * n, pa.int64()))
                     .append_column(MTIME, pa.array([mtime_ns(info)] * n, pa.int64())))
    return pa.concat_tables(parts, promote_options="permissive")


def split_by_index(infos: list[pafs.FileInfo], index: pa.Table | None, index_mtime_ns: int | None,
                   local: bool) -> tuple[pa.Table | None, list[pafs.FileInfo]]:
    """(the index rows still valid for the listed files, the files that must be read themselves)."""
    if index is None or index.num_rows == 0:
        return None, infos
    recorded = {(f, s, m): k for k, (f, s, m) in enumerate(zip(index.column(FILE).to_pylist(),
                                                                index.column(SIZE).to_pylist(),
                                                                index.column(MTIME).to_pylist(), strict=True))}
    settled_before = None if local or index_mtime_ns is None else index_mtime_ns - int(SETTLED_S * 1e9)
    keep, todo = [], []
    for info in infos:
        k = recorded.get((info.base_name, info.size, mtime_ns(info)))
        if k is None or mtime_ns(info) < 0 or (settled_before is not None and mtime_ns(info) > settled_before):
            todo.append(info)
        else:
            keep.append(k)
    if not keep:
        return None, infos
    rows = index.take(pa.array(keep, pa.int64())).drop_columns([FILE, SIZE, MTIME])
    return rows, todo
