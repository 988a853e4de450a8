"""Re-chunking Parquet files whose size or row groups exceed what the Hub and its dataset viewer handle.

Rows keep their order and exact values, and the store's encodings are kept, so a
re-chunked file reads exactly like the original; the same input gives the same bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.layout import COMPRESSION, filters_parquet_options
from pipeline.dataset.schema import arrow_schema
from pipeline.publish import limits


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup record batches into tables of exactly ``size`` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


def _writer(path: Path, schema: pa.Schema, table: str) -> pq.ParquetWriter:
    """A writer with the store's encodings, so re-chunked files read exactly like the originals."""
    if table == "filters":
        return pq.ParquetWriter(path, schema, **filters_parquet_options())
    return pq.ParquetWriter(path, schema, compression=COMPRESSION, write_statistics=True)


def _write_chunks(sources: list[Path], table: str, out_dir: Path, rows_per_group: int,
                  rows_per_file: int | None) -> list[Path]:
    """Stream the sources' rows into files of ``rows_per_file`` rows (one file if None) in groups of ``rows_per_group``."""
    schema = arrow_schema(table).remove_metadata() if table == "filters" else None
    batches = (batch for source in sources for batch in pq.ParquetFile(source).iter_batches(batch_size=65536))
    outputs: list[Path] = []
    writer = None
    file_rows = 0
    try:
        for chunk in _rebatch(batches, rows_per_group):
            if schema is not None:
                chunk = chunk.cast(schema)
            if writer is None:
                outputs.append(out_dir / f"{len(outputs)}.parquet")
                writer = _writer(outputs[-1], chunk.schema, table)
                file_rows = 0
            writer.write_table(chunk, row_group_size=rows_per_group)
            file_rows += chunk.num_rows
            if rows_per_file is not None and file_rows >= rows_per_file:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()
    return outputs


def _initial_sizes(sources: list[Path], split_files: bool) -> tuple[int, int | None]:
    """(rows per group, rows per file or None) estimated from the sources' bytes per row."""
    metas = [pq.read_metadata(s) for s in sources]
    n_rows = sum(m.num_rows for m in metas)
    uncompressed = sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups))
    compressed = sum(os.path.getsize(s) for s in sources)
    rows_per_group = max(1, min(n_rows, int(limits.MAX_ROW_GROUP_BYTES / max(uncompressed / max(n_rows, 1), 1e-9))))
    rows_per_file = None
    if split_files:
        estimate = int(0.9 * limits.MAX_FILE_BYTES / max(compressed / max(n_rows, 1), 1e-9))
        rows_per_file = max(rows_per_group, estimate // rows_per_group * rows_per_group)
    return rows_per_group, rows_per_file


def _write_fitting(sources: list[Path], table: str, tmp_dir: Path, rows_per_group: int,
                   rows_per_file: int | None) -> list[Path]:
    """Write the chunks into ``tmp_dir``, halving group and file sizes until every output fits the limits."""
    while True:  # the estimates ignore per-group and per-file overheads: shrink until the output fits
        outputs = _write_chunks(sources, table, tmp_dir, rows_per_group, rows_per_file)
        groups_fit = all(limits.fits_hub(str(o), check_size=False) for o in outputs)
        files_fit = rows_per_file is None or all(o.stat().st_size <= limits.MAX_FILE_BYTES for o in outputs)
        if not groups_fit and rows_per_group > 1:
            rows_per_group //= 2
            if rows_per_file is not None:
                rows_per_file = max(rows_per_group, rows_per_file // rows_per_group * rows_per_group)
        elif not files_fit and rows_per_file > rows_per_group:
            rows_per_file = max(rows_per_group, rows_per_file // 2 // rows_per_group * rows_per_group)
        else:
            return outputs
        for output in outputs:
            output.unlink()


def rechunk(sources: list[Path], table: str, name: Callable[[int], Path], split_files: bool = True) -> list[Path]:
    """Rewrite Parquet ``sources`` (one model's files of ``table``, in order) into files within the Hub limits.

    Row groups are sized from the sources' uncompressed bytes per row to stay under
    ``MAX_ROW_GROUP_BYTES``; with ``split_files``, files from their compressed bytes per
    row to stay under ``MAX_FILE_BYTES`` (halving the rows per file while a file still
    comes out too big; likewise for row groups). ``name(k)`` gives the path of the k-th output file. Rows keep
    their order and exact values; the result is the same bytes for the same input.
    """
    rows_per_group, rows_per_file = _initial_sizes(sources, split_files)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".rechunk-", dir=sources[0].parent))
    try:
        outputs = _write_fitting(sources, table, tmp_dir, rows_per_group, rows_per_file)
        for source in sources:
            source.unlink()  # a hard link: unlinking leaves the dataset's own file untouched
        final = []
        for k, output in enumerate(outputs):
            os.replace(output, name(k))
            final.append(Path(name(k)))
        return final
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
