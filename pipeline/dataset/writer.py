"""Stream one model's new version into the dataset, then commit it (docs/design.md, "Commit protocol").

Filter rows arrive layer by layer and are written in full row groups by a
background thread (compression overlaps the metrics); the layers file follows,
and the model's row in ``models/`` last: that row is the commit. Until then
readers see the previous version; on any error this write's own files are removed.
Nothing of any other version is ever deleted here (``DatasetStore.vacuum`` does that).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.atomic_write import temp_sibling
from pipeline.dataset.layout import (
    FILTER_ROWS_PER_FILE,
    FILTER_ROWS_PER_GROUP,
    StoredModel,
    filters_parquet_options,
    filters_write_schema,
    new_write_id,
    slugify,
    utcnow,
)
from pipeline.dataset.schema import schema_version, to_table
from pipeline.dataset.store import DatasetStore
from pipeline.errors import StoreError

_STOP = object()


@dataclass
class _FilterBuffer:
    batches: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0


class ModelWriter:
    """Streams one model's filters and layers into fresh files, then commits them with the models row."""

    def __init__(self, store: DatasetStore, model_id: str, dataset: str) -> None:
        self.store = store
        self.model_id = model_id
        self.dataset = dataset
        self.slug = slugify(model_id)
        self.write_id = new_write_id()
        self.filters_dir = store.partition_dir("filters", dataset, self.slug, self.write_id)
        self.layers_dir = store.partition_dir("layers", dataset, self.slug, self.write_id)
        self._buffer = _FilterBuffer()
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0
        self._files: list[str] = []
        self._open_path = ""
        self.n_filters = 0
        self._closed = False
        self._schema = filters_write_schema()
        # Row groups are compressed and written by a background thread, overlapping the metrics.
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _open_file(self) -> None:
        path = self.store.filter_file_for(self.dataset, self.slug, self.write_id, len(self._files))
        self.store.fs.create_dir(self.filters_dir, recursive=True)
        self._open_path = temp_sibling(path) if self.store.local else path
        self._writer = pq.ParquetWriter(
            self._open_path, self._schema, filesystem=self.store.fs, **filters_parquet_options())
        self._files.append(path)
        self._file_rows = 0

    def _close_file(self) -> None:
        """Finish the open filters file and move it to its final name."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        if self._open_path != self._files[-1]:
            self.store.fs.move(self._open_path, self._files[-1])

    def _write_rows(self, table: pa.Table) -> None:
        if self._writer is None:
            self._open_file()
        self._writer.write_table(table, row_group_size=FILTER_ROWS_PER_GROUP)
        self._file_rows += table.num_rows
        if self._file_rows >= FILTER_ROWS_PER_FILE:
            self._close_file()

    def _flush(self, final: bool = False) -> None:
        buffer = self._buffer
        if not buffer.rows:
            return
        table = pa.Table.from_batches(buffer.batches, schema=self._schema)
        full = (table.num_rows // FILTER_ROWS_PER_GROUP) * FILTER_ROWS_PER_GROUP
        cut = table.num_rows if final else full
        if cut:
            self._submit(table.slice(0, cut))
        rest = table.slice(cut)
        self._buffer = _FilterBuffer(rest.to_batches() if rest.num_rows else [], rest.num_rows)

    def _writer_loop(self) -> None:
        while (table := self._queue.get()) is not _STOP:
            if self._error is None:
                try:
                    self._write_rows(table)
                except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
                    self._error = exc

    def _submit(self, table: pa.Table) -> None:
        self._raise_writer_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer_loop, name=f"write-{self.slug}", daemon=True)
            self._thread.start()
        self._queue.put(table)

    def _drain(self) -> None:
        """Wait until the background writer has written everything submitted."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            raise StoreError(f"writing filters of {self.model_id} failed: {self._error}") from self._error

    def finish_filters(self) -> None:
        """Write out all buffered filters and close the last file (before the layers and the commit)."""
        self._flush(final=True)
        self._drain()
        self._raise_writer_error()
        self._close_file()

    def add_filters(self, batch: pa.RecordBatch) -> None:
        """Append filter rows (one layer's, say); written out in full row groups."""
        if batch.num_rows == 0:
            return
        self._buffer.batches.append(batch)
        self._buffer.rows += batch.num_rows
        self.n_filters += batch.num_rows
        if self._buffer.rows >= FILTER_ROWS_PER_GROUP:
            self._flush()

    def abort(self) -> None:
        """Drop everything this write produced so far (best effort; leftovers are removed by a later vacuum)."""
        if self._closed:
            return
        self._closed = True
        self._drain()
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
            self.store.delete_file(self._open_path)
        for path in self._files:
            self.store.delete_file(path)
        self.store.delete_file(self.store.layer_file_for(self.dataset, self.slug, self.write_id))
        self.store.delete_file(self.store.probe_file_for(self.dataset, self.slug, self.write_id))

    def commit(self, layers: pa.Table, model_row: dict, probes: pa.Table | None = None,
               probe_example: bytes | None = None) -> StoredModel:
        """Write the layers file (and the probes file), check this write's files are all there, then write the
        models row (the commit).

        Nothing is deleted: the previous version's files stay readable for readers
        that opened before this commit, until ``filterlens vacuum`` removes them.
        Two writers of one model both commit; the row written last wins.
        """
        try:
            self.finish_filters()
            own = list(self._files)
            probe_fields: dict = {"probe_write_id": None, "probe_config": None}
            if probes is not None and probes.num_rows:
                probes_path = self.store.probe_file_for(self.dataset, self.slug, self.write_id)
                if probe_example:
                    self.store.write_bytes(probe_example, self.store.probe_example_for(self.slug, self.write_id))
                self.store.write_table(probes, probes_path)
                own.append(probes_path)
                probe_fields = {"probe_write_id": self.write_id,
                                "probe_config": probes.column("probe_config")[0].as_py()}
            layers_path = self.store.layer_file_for(self.dataset, self.slug, self.write_id)
            self.store.write_table(layers, layers_path, row_group_size=1 << 20)
            self._check_own_files([layers_path, *own])
            row = {**model_row, "model_id": self.model_id, "dataset": self.dataset, "model": self.slug,
                   "write_id": self.write_id, "n_filter_files": len(self._files), "n_filters": self.n_filters,
                   "schema_version": schema_version(), "pipeline_version": __version__, **probe_fields}
            row.setdefault("extracted_at", utcnow())
            table = to_table("models", {k: [v] for k, v in row.items()})
            self.store.write_table(table, self.store.model_row_path(self.slug))
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self.store.clear_failure(self.slug)
        return StoredModel(self.model_id, self.dataset, self.slug, self.write_id, len(self._files),
                           row["checkpoint_sha256"], schema_version(), row.get("source_uri"),
                           probe_fields["probe_write_id"], probe_fields["probe_config"])

    def _check_own_files(self, paths: list[str]) -> None:
        """Refuse to commit a row whose files are gone (removed by a vacuum with a very short retention)."""
        infos = self.store.fs.get_file_info(paths)
        missing = [i.path for i in infos if i.type == pafs.FileType.NotFound]
        if missing:
            raise StoreError(f"{self.model_id}: {len(missing)} files of this write disappeared before its commit "
                             f"(e.g. {missing[0]}; a vacuum with a too short --older-than?); extract it again")
