"""The filter dataset on disk or object storage: atomic per-model writes, reads, cleanup.

Layout (docs/design.md):

    <root>/models/part-<slug>.parquet                            one row per model (the commit marker)
    <root>/layers/dataset=<d>/model=<slug>/part-<write_id>.parquet
    <root>/filters/dataset=<d>/model=<slug>/part-<write_id>-<k>.parquet
    <root>/failures/part-<slug>.parquet
    <root>/_manifest.json

A model's layers and filters files are written first under a fresh ``write_id``;
the model's row in ``models/`` is written last and names that ``write_id``, so it
is the commit: until it lands a reader (``open_dataset``) sees the previous
version or nothing, and a crash leaves only orphan files that the next write or
``cleanup_orphans`` removes. Re-extracting a model replaces it: the new files
are committed by overwriting the model's row, then the old files are deleted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import queue
import re
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.dataset.schema import arrow_schema, check_schema, schema_version, to_table
from pipeline.errors import DatasetNotFoundError, StoreError, describe

log = logging.getLogger(__name__)

FILTER_ROWS_PER_GROUP = 1 << 20
"""Rows per Parquet row group in filters files (~40 MB uncompressed)."""
FILTER_ROWS_PER_FILE = 8 << 20
"""Rows per filters file before a new one is started (~250 MB on disk)."""
FLOAT_ENCODING = "BYTE_STREAM_SPLIT"
"""Encoding of the w0..w8 float32 columns (measured in benchmarks/bench_extract.py: smaller than PLAIN under zstd)."""
COMPRESSION = "zstd"
MANIFEST = "_manifest.json"
WEIGHT_COLUMNS = [f"w{i}" for i in range(9)]


CONSTANT_COLUMNS = ("model_id", "dataset", "model")
"""filters columns that hold one value per model: written from dictionary arrays (no per-row strings)."""


def filters_write_schema() -> pa.Schema:
    """The filters schema as the writer receives it: constant string columns as dictionaries.

    Files are written without the Arrow schema blob, so readers see plain UTF-8
    string columns, exactly the types in schemas/filters.yaml.
    """
    schema = arrow_schema("filters")
    for name in CONSTANT_COLUMNS:
        index = schema.get_field_index(name)
        schema = schema.set(index, pa.field(name, pa.dictionary(pa.int32(), pa.string()), nullable=False))
    return schema


def slugify(key: str) -> str:
    """Filesystem- and Hive-safe folder name for a key; injective (a hash is added when characters are replaced)."""
    readable = key.replace("/", "--")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", readable).strip(".")
    if not slug or slug[0] in "._-":
        slug = "m" + slug
    if slug.replace("--", "/") != key or len(slug) > 150:
        slug = f"{slug[:150]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    return slug


def resolve_root(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any URI pyarrow or fsspec understands (s3://, gs://, hf://, memory://)."""
    if "://" not in root:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root))
    scheme = root.split("://", 1)[0]
    if scheme in ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss"):
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


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class StoredModel:
    """A committed model's identity and where its files are."""

    model_id: str
    dataset: str
    slug: str
    write_id: str
    n_filter_files: int
    checkpoint_sha256: str
    schema_version: int
    source_uri: str | None = None


class DatasetStore:
    """Reads and writes one filter dataset rooted at a local path or URI."""

    def __init__(self, root: str, filesystem: pafs.FileSystem | None = None) -> None:
        self.uri = root
        if filesystem is None:
            self.fs, self.root = resolve_root(root)
        else:
            self.fs, self.root = filesystem, root.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    # --- paths ----------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def model_row_path(self, slug: str) -> str:
        return self.path("models", f"part-{slug}.parquet")

    def failure_path(self, slug: str) -> str:
        return self.path("failures", f"part-{slug}.parquet")

    def partition_dir(self, table: str, dataset: str, slug: str) -> str:
        return self.path(table, f"dataset={slugify(dataset)}", f"model={slug}")

    def layer_file(self, model: StoredModel) -> str:
        return f"{self.partition_dir('layers', model.dataset, model.slug)}/part-{model.write_id}.parquet"

    def filter_files(self, model: StoredModel) -> list[str]:
        base = self.partition_dir("filters", model.dataset, model.slug)
        return [f"{base}/part-{model.write_id}-{k}.parquet" for k in range(model.n_filter_files)]

    # --- low-level I/O ----------------------------------------------------------------------
    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _list(self, directory: str, recursive: bool = False) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True, recursive=recursive))
        except (FileNotFoundError, OSError):
            return []

    def _delete_file(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def _delete_dir(self, path: str) -> None:
        try:
            self.fs.delete_dir(path)
        except FileNotFoundError:
            pass

    def temp_path(self, path: str) -> str:
        """Where to write ``path`` before it is complete: a hidden temp name locally (renamed after),
        the path itself on object stores (where an object appears only once fully uploaded)."""
        if not self.local:
            return path
        directory, name = path.rsplit("/", 1)
        return f"{directory}/.{name}.{uuid.uuid4().hex[:8]}.tmp"

    def _write_table_atomic(self, table: pa.Table, path: str, **kwargs: object) -> None:
        """Write a Parquet file so that readers never see it half-written."""
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        target = self.temp_path(path)
        try:
            pq.write_table(table, target, filesystem=self.fs, compression=COMPRESSION, **kwargs)
            if target != path:
                self.fs.move(target, path)
        except OSError as exc:
            if target != path:
                self._delete_file(target)
            raise StoreError(f"writing {path} failed: {exc}") from exc

    # --- reading -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self._exists(self.path("models")) or self._exists(self.path(MANIFEST))

    def _read_parts(self, table: str) -> pa.Table:
        files = sorted(info.path for info in self._list(self.path(table))
                       if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
                       and not info.base_name.startswith((".", "_")))
        schema = arrow_schema(table)
        if not files:
            return schema.empty_table()
        for path in files[:1]:
            check_schema(table, pq.read_schema(path, filesystem=self.fs), path)
        return pads.dataset(files, schema=schema, filesystem=self.fs, format="parquet").to_table()

    def models(self) -> pa.Table:
        """The models table (committed models only)."""
        return self._read_parts("models")

    def failures(self) -> pa.Table:
        """The failures table: models whose latest attempt failed."""
        return self._read_parts("failures")

    _STORED_COLUMNS = ["model_id", "dataset", "model", "write_id", "n_filter_files", "checkpoint_sha256",
                       "schema_version", "source_uri"]

    @staticmethod
    def _stored(rows: list[dict]) -> dict[str, StoredModel]:
        return {r["model_id"]: StoredModel(r["model_id"], r["dataset"], r["model"], r["write_id"], r["n_filter_files"],
                                           r["checkpoint_sha256"], r["schema_version"], r["source_uri"]) for r in rows}

    def stored_models(self) -> dict[str, StoredModel]:
        """Committed models by model_id."""
        return self._stored(self.models().select(self._STORED_COLUMNS).to_pylist())

    def stored_model(self, model_id: str) -> StoredModel | None:
        """One committed model, read from its own row file (no scan of the whole models table)."""
        path = self.model_row_path(slugify(model_id))
        try:
            table = pq.read_table(path, filesystem=self.fs, columns=self._STORED_COLUMNS)
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            if self._exists(path):
                raise
            return None
        return self._stored(table.to_pylist()).get(model_id)

    def complete_models(self) -> dict[str, StoredModel]:
        """Committed models under the current schema whose files all exist (one listing, for build plans)."""
        present = {info.path for table in ("layers", "filters")
                   for info in self._list(self.path(table), recursive=True) if info.type == pafs.FileType.File}
        return {model_id: model for model_id, model in self.stored_models().items()
                if model.schema_version == schema_version()
                and self.layer_file(model) in present and all(f in present for f in self.filter_files(model))}

    def committed_files(self, table: str, models: Iterable[StoredModel] | None = None) -> list[str]:
        """Exactly the files of committed model versions for ``layers`` or ``filters`` (what views read)."""
        models = self.stored_models().values() if models is None else models
        if table == "layers":
            return [self.layer_file(m) for m in models]
        if table == "filters":
            return [f for m in models for f in self.filter_files(m)]
        raise KeyError(table)

    def is_complete(self, model_id: str, checkpoint_sha256: str | None = None) -> bool:
        """True when the model is committed under the current schema, with that digest, and its files exist."""
        model = self.stored_model(model_id)
        if model is None or model.schema_version != schema_version():
            return False
        if checkpoint_sha256 is not None and model.checkpoint_sha256 != checkpoint_sha256:
            return False
        return all(self._exists(p) for p in [self.layer_file(model), *self.filter_files(model)])

    def require(self) -> None:
        """Raise DatasetNotFoundError unless the root holds a filter dataset."""
        if not self.exists():
            raise DatasetNotFoundError(
                f"{self.uri}: no filter dataset here (no models/ or {MANIFEST}); build one with filterlens extract/build")

    # --- writing -----------------------------------------------------------------------------
    def writer(self, model_id: str, dataset: str) -> ModelWriter:
        """Start writing a new version of one model; commit it with ``ModelWriter.commit``."""
        return ModelWriter(self, model_id, dataset)

    def record_failure(self, model_id: str, dataset: str | None, source_uri: str | None, exc: BaseException,
                       attempts: int = 1, duration_s: float = 0.0, stage: str | None = None) -> dict:
        """Write (replace) the failures row of a model whose latest attempt raised ``exc``; returns the row.

        A failure to write it (the dataset itself unreachable) is logged, not raised:
        the caller is already reporting the model's own error.
        """
        exc_stage, error_class, transient = describe(exc)
        row = {"model_id": model_id, "dataset": dataset, "model": slugify(model_id), "source_uri": source_uri,
               "stage": stage or exc_stage, "error_class": error_class,
               "message": str(exc).splitlines()[0] if str(exc) else error_class, "attempts": attempts,
               "duration_s": duration_s, "transient": transient, "failed_at": utcnow(),
               "pipeline_version": __version__}
        try:
            self._write_table_atomic(to_table("failures", {k: [v] for k, v in row.items()}),
                                     self.failure_path(row["model"]))
        except StoreError as write_error:
            log.error("could not record the failure of %s in %s: %s", model_id, self.uri, write_error)
        return row

    def clear_failure(self, slug: str) -> None:
        self._delete_file(self.failure_path(slug))

    def delete_model(self, model_id: str) -> bool:
        """Remove a committed model (row first, then its files); True when it existed."""
        model = self.stored_model(model_id)
        if model is None:
            return False
        self._delete_file(self.model_row_path(model.slug))
        for table in ("layers", "filters"):
            self._delete_dir(self.partition_dir(table, model.dataset, model.slug))
        return True

    def cleanup_orphans(self) -> list[str]:
        """Delete files no committed model version refers to (left by crashes or replaced versions)."""
        keep = {p for t in ("layers", "filters") for p in self.committed_files(t)}
        removed = []
        for table in ("layers", "filters"):
            for info in self._list(self.path(table), recursive=True):
                if info.type == pafs.FileType.File and info.path not in keep:
                    self._delete_file(info.path)
                    removed.append(info.path)
            # drop partition folders left empty
            for info in sorted(self._list(self.path(table), recursive=True), key=lambda i: -len(i.path)):
                if info.type == pafs.FileType.Directory and not self._list(info.path):
                    self._delete_dir(info.path)
        for info in self._list(self.path("models")) + self._list(self.path("failures")):
            if info.base_name.endswith(".tmp"):
                self._delete_file(info.path)
                removed.append(info.path)
        if removed:
            log.info("removed %d orphan files from %s", len(removed), self.uri)
        return removed

    # --- manifest ----------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        path = self.path(MANIFEST)
        if not self._exists(path):
            return {}
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def update_manifest(self, build: dict | None = None) -> dict:
        """Rewrite _manifest.json: bump the dataset version and append ``build`` (last 50 kept)."""
        manifest = self.read_manifest()
        now = utcnow().isoformat()
        manifest.update({
            "format": "filterlens",
            "dataset_version": int(manifest.get("dataset_version", 0)) + 1,
            "schema_version": schema_version(),
            "pipeline_version": __version__,
            "created_at": manifest.get("created_at", now),
            "updated_at": now,
        })
        if build:
            manifest["builds"] = [*manifest.get("builds", []), build][-50:]
        data = json.dumps(manifest, indent=2, default=str).encode()
        self.fs.create_dir(self.root, recursive=True)
        target = self.path(MANIFEST)
        tmp = self.temp_path(target)
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        if tmp != target:
            self.fs.move(tmp, target)
        return manifest


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
        self.write_id = f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self.filters_dir = store.partition_dir("filters", dataset, self.slug)
        self.layers_dir = store.partition_dir("layers", dataset, self.slug)
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
        path = f"{self.filters_dir}/part-{self.write_id}-{len(self._files)}.parquet"
        self.store.fs.create_dir(self.filters_dir, recursive=True)
        self._open_path = self.store.temp_path(path)
        self._writer = pq.ParquetWriter(
            self._open_path, self._schema, filesystem=self.store.fs, compression=COMPRESSION,
            use_dictionary=[*CONSTANT_COLUMNS, "conv_index", "sparse"],
            column_encoding={c: FLOAT_ENCODING for c in WEIGHT_COLUMNS},
            write_statistics=True,
            store_schema=False,
        )
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
        """Drop everything written so far (best effort; leftovers are orphans cleaned later)."""
        if self._closed:
            return
        self._closed = True
        self._drain()
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
            self.store._delete_file(self._open_path)
        for path in self._files:
            self.store._delete_file(path)
        self.store._delete_file(f"{self.layers_dir}/part-{self.write_id}.parquet")

    def commit(self, layers: pa.Table, model_row: dict) -> StoredModel:
        """Write the layers file and then the models row (the commit); delete the previous version's files."""
        try:
            self.finish_filters()
            layers_path = f"{self.layers_dir}/part-{self.write_id}.parquet"
            self.store._write_table_atomic(layers, layers_path, row_group_size=1 << 20)
            previous = self.store.stored_model(self.model_id)
            row = {**model_row, "model_id": self.model_id, "dataset": self.dataset, "model": self.slug,
                   "write_id": self.write_id, "n_filter_files": len(self._files), "n_filters": self.n_filters,
                   "schema_version": schema_version(), "pipeline_version": __version__}
            row.setdefault("extracted_at", utcnow())
            table = to_table("models", {k: [v] for k, v in row.items()})
            self.store._write_table_atomic(table, self.store.model_row_path(self.slug))
        except BaseException:
            self.abort()
            raise
        self._closed = True
        committed = StoredModel(self.model_id, self.dataset, self.slug, self.write_id, len(self._files),
                                row["checkpoint_sha256"], schema_version())
        # Remove the previous version and leftovers of crashed attempts of this model.
        keep = {self.store.layer_file(committed), *self.store.filter_files(committed)}
        dirs = {self.layers_dir, self.filters_dir}
        if previous is not None:
            dirs |= {self.store.partition_dir(t, previous.dataset, previous.slug) for t in ("layers", "filters")}
        for directory in dirs:
            for info in self.store._list(directory):
                if info.type == pafs.FileType.File and info.path not in keep:
                    self.store._delete_file(info.path)
            if not self.store._list(directory):
                self.store._delete_dir(directory)
        for info in self.store._list(self.store.path("models")):
            if info.base_name.startswith(f".part-{self.slug}.parquet.") and info.base_name.endswith(".tmp"):
                self.store._delete_file(info.path)
        self.store.clear_failure(self.slug)
        return committed
