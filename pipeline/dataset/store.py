"""The filter dataset on disk or object storage: reads, commits, failures, cleanup, the manifest.

The files and their names are in ``dataset/layout.py``; one model's new version
is streamed by ``dataset/writer.py``. A model's layers and filters files are
written first under a fresh ``write_id``; the model's row in ``models/`` is
written last and names that ``write_id``, so it is the commit: until it lands a
reader (``open_dataset``) sees the previous version or nothing, and a crash
leaves only unreferenced files. Re-extracting a model replaces it by overwriting
its row; nobody deletes the old files but ``vacuum``, after a retention, so
readers finish on their snapshot (docs/architecture.md, "The commit protocol").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.atomic_write import TEMP_SUFFIX, atomic_target
from pipeline.dataset import manifest
from pipeline.dataset.layout import (
    BUILDS,
    COMPRESSION,
    DATA_TABLES,
    MANIFEST,
    PROBE_EXAMPLES,
    ROW_TABLES,
    DatasetPaths,
    StoredModel,
    slugify,
    stored_models_of,
    utcnow,
)
from pipeline.dataset.location import resolve_root
from pipeline.dataset.row_index import INDEX_DIR, MAX_BUILD_S, index_table, split_by_index
from pipeline.dataset.schema import arrow_schema, check_schema, schema_version, to_table
from pipeline.errors import DatasetNotFoundError, StoreError, describe

log = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 24 * 3600.0
"""How long an unreferenced file is kept before ``vacuum`` removes it (longer than any reader runs)."""


class DatasetStore(DatasetPaths):
    """Reads and writes one filter dataset rooted at a local path or URI."""

    def __init__(self, root: str, filesystem: pafs.FileSystem | None = None) -> None:
        self.uri = root
        if filesystem is None:
            self.fs, path = resolve_root(root)
        else:
            self.fs, path = filesystem, root
        super().__init__(path)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    # --- file operations ----------------------------------------------------------------------
    def file_exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def list_dir(self, directory: str, recursive: bool = False) -> list[pafs.FileInfo]:
        """The entries under ``directory`` ([] when it does not exist)."""
        try:
            return self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True, recursive=recursive))
        except (FileNotFoundError, OSError):
            return []

    def delete_file(self, path: str) -> None:
        """Delete a file; a missing one is not an error."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def delete_dir(self, path: str) -> None:
        """Delete a folder and everything in it; a missing one is not an error."""
        try:
            self.fs.delete_dir(path)
        except FileNotFoundError:
            pass

    def write_table(self, table: pa.Table, path: str, **kwargs: object) -> None:
        """Write a Parquet file so that readers never see it half-written (``pipeline/atomic_write.py``)."""
        try:
            with atomic_target(path, self.fs) as target:
                pq.write_table(table, target, filesystem=self.fs, compression=COMPRESSION, **kwargs)
        except OSError as exc:
            raise StoreError(f"writing {path} failed: {exc}") from exc

    def write_bytes(self, payload: bytes, path: str) -> None:
        """Write a small file so that readers never see it half-written (a probe example, a transfer set)."""
        try:
            with atomic_target(path, self.fs) as target, self.fs.open_output_stream(target) as out:
                out.write(payload)
        except OSError as exc:
            raise StoreError(f"writing {path} failed: {exc}") from exc

    def data_files(self, table: str) -> set[str]:
        """Every file now under ``layers/`` or ``filters/`` (committed or not), from one listing."""
        return {info.path for info in self.list_dir(self.path(table), recursive=True)
                if info.type == pafs.FileType.File}

    def part_files(self, table: str) -> list[str]:
        """The visible Parquet files of ``models/`` or ``failures/`` (no temp files)."""
        return sorted(info.path for info in self.list_dir(self.path(table))
                      if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
                      and not info.base_name.startswith((".", "_")))

    # --- reading -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return any(self.file_exists(self.path(p)) for p in ("models", MANIFEST, BUILDS, "failures"))

    def _row_infos(self, table: str) -> list[pafs.FileInfo]:
        return [i for i in self.list_dir(self.path(table)) if i.type == pafs.FileType.File
                and i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_"))]

    def _read_parts(self, table: str, infos: list[pafs.FileInfo] | None = None) -> pa.Table:
        """All rows of ``models`` or ``failures``: unchanged files from the index, the others from themselves."""
        infos = self._row_infos(table) if infos is None else infos
        schema = arrow_schema(table)
        if not infos:
            return empty_table(schema)
        cached, todo = split_by_index(infos, *self._load_index(table), local=self.local)
        parts = [conform(cached, schema)] if cached is not None else []
        if todo:
            check_schema(table, pq.read_schema(todo[0].path, filesystem=self.fs), todo[0].path)
            parts.append(self._read_files([i.path for i in todo], schema))
        return pa.concat_tables(parts) if parts else empty_table(schema)

    def _read_files(self, files: list[str], schema: pa.Schema) -> pa.Table:
        if self.local:
            try:
                return conform(read_local_parquet(files), schema)
            except duckdb.IOException:  # a row deleted (delete_model) since the listing: read one by one
                pass

        def read_one(path: str) -> pa.Table | None:
            try:
                return self.read_parquet(path, schema=schema)
            except FileNotFoundError:
                return None

        with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:  # object stores: one GET each
            parts = [t for t in pool.map(read_one, files) if t is not None]
        return pa.concat_tables(parts) if parts else empty_table(schema)

    def _load_index(self, table: str) -> tuple[pa.Table | None, int | None]:
        path = self.path(INDEX_DIR, f"{table}.parquet")
        info = self.fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            return None, None
        try:
            return self.read_parquet(path), info.mtime_ns
        except (OSError, pa.ArrowInvalid) as exc:  # damaged or being replaced: read the files instead
            log.debug("ignoring the row index %s: %s", path, exc)
            return None, None

    def write_index(self) -> None:
        """Compact the models and failures rows into ``_index/`` (pipeline/dataset/row_index.py); any writer may."""
        for table in ROW_TABLES:
            started = time.monotonic()
            infos = self._row_infos(table)

            def read(info: pafs.FileInfo) -> tuple[pafs.FileInfo, pa.Table] | None:
                try:
                    return info, self.read_parquet(info.path)
                except FileNotFoundError:  # deleted since the listing
                    return None

            with ThreadPoolExecutor(max_workers=min(16, max(1, len(infos)))) as pool:  # object stores: GETs
                rows = [r for r in pool.map(read, infos) if r is not None]
            path = self.path(INDEX_DIR, f"{table}.parquet")
            if not rows:
                self.delete_file(path)
            elif time.monotonic() - started < MAX_BUILD_S:
                self.write_table(index_table(rows), path)

    def read_parquet(self, path: str, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        """One small Parquet file, read whole (no pyarrow.dataset: it imports pandas, slow at CLI start-up)."""
        with self.fs.open_input_file(path) as handle:
            table = pq.ParquetFile(handle).read(columns=columns)
        return table if schema is None else conform(table, schema)

    def models(self) -> pa.Table:
        """The models table (committed models only)."""
        return self._read_parts("models")

    def failures(self) -> pa.Table:
        """The failures table: models whose latest attempt failed."""
        return self._read_parts("failures")

    def stored_models(self) -> dict[str, StoredModel]:
        """Committed models by model_id."""
        return stored_models_of(self.models())

    def stored_model(self, model_id: str) -> StoredModel | None:
        """One committed model, read from its own row file (no scan of the whole models table)."""
        path = self.model_row_path(slugify(model_id))
        try:
            table = self.read_parquet(path)
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            if self.file_exists(path):
                raise
            return None
        return stored_models_of(table).get(model_id)

    def snapshot(self) -> Snapshot:
        """One consistent view for a reader: the committed rows read once, and exactly their files.

        Writers never delete files (``vacuum`` does, after a retention period), so
        every file of the snapshot stays readable while the reader works, whatever
        commits meanwhile. A row whose files are missing (a broken copy, a too-eager
        vacuum) leaves out that model, with a warning, instead of failing every query.
        """
        listed = {t: self._row_infos(t) for t in ROW_TABLES}  # one listing each, shared with the caller
        models = self._read_parts("models", listed["models"])
        stored = stored_models_of(models)
        missing = self.incomplete_models(stored.values())
        if missing:
            log.warning("%d models in %s have missing files and are left out (e.g. %s); rebuild them with "
                        "filterlens extract/build --force", len(missing), self.uri, missing[0])
            keep = pa.array([m not in set(missing) for m in models.column("model_id").to_pylist()], pa.bool_())
            models = models.filter(keep)
            stored = {k: v for k, v in stored.items() if k not in set(missing)}
        return Snapshot(models, self._read_parts("failures", listed["failures"]), stored, missing,
                        {t: sorted(i.path for i in infos) for t, infos in listed.items()})

    def incomplete_models(self, models: Iterable[StoredModel]) -> list[str]:
        """The model_ids among ``models`` with a layers or filters file missing (one listing)."""
        present = set().union(*(self.data_files(t) for t in DATA_TABLES))
        return [m.model_id for m in models if not all(p in present for p in self.model_files(m))]

    def complete_models(self) -> dict[str, StoredModel]:
        """Committed models under the current schema whose files all exist (one listing, for build plans)."""
        stored = self.stored_models()
        missing = set(self.incomplete_models(stored.values()))
        return {model_id: model for model_id, model in stored.items()
                if model.schema_version == schema_version() and model_id not in missing}

    def committed_files(self, table: str, models: Iterable[StoredModel] | None = None) -> list[str]:
        """Exactly the files of committed model versions for ``layers``, ``filters`` or ``probes`` (what views read)."""
        models = self.stored_models().values() if models is None else models
        if table == "layers":
            return [self.layer_file(m) for m in models]
        if table == "filters":
            return [f for m in models for f in self.filter_files(m)]
        if table == "probes":
            return [f for m in models for f in self.probe_files(m)]
        raise KeyError(table)

    def orphan_files(self) -> list[str]:
        """Files under layers/, filters/ and probes/ that no committed model version refers to."""
        keep = {p for t in DATA_TABLES for p in self.committed_files(t)}
        return sorted(p for t in DATA_TABLES for p in self.data_files(t) if p not in keep)

    def is_complete(self, model_id: str, checkpoint_sha256: str | None = None) -> bool:
        """True when the model is committed under the current schema, with that digest, and its files exist."""
        model = self.stored_model(model_id)
        if model is None or model.schema_version != schema_version():
            return False
        if checkpoint_sha256 is not None and model.checkpoint_sha256 != checkpoint_sha256:
            return False
        return all(self.file_exists(p) for p in self.model_files(model))

    def require(self) -> None:
        """Raise DatasetNotFoundError unless the root holds a filter dataset."""
        if not self.exists():
            raise DatasetNotFoundError(
                f"{self.uri}: no filter dataset here (no models/ or {MANIFEST}); build one with filterlens extract/build")

    # --- writing -----------------------------------------------------------------------------
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
            self.write_table(to_table("failures", {k: [v] for k, v in row.items()}), self.failure_path(row["model"]))
        except StoreError as write_error:
            log.error("could not record the failure of %s in %s: %s", model_id, self.uri, write_error)
        return row

    def clear_failure(self, slug: str) -> None:
        self.delete_file(self.failure_path(slug))

    def delete_model(self, model_id: str) -> bool:
        """Remove a committed model (row first, then its files); True when it existed."""
        model = self.stored_model(model_id)
        if model is None:
            return False
        self.delete_file(self.model_row_path(model.slug))
        for table in DATA_TABLES:
            for directory in self.partition_dirs(table, model.dataset, model.slug):  # this layout's and the old one
                self.delete_dir(directory)
        return True

    def prune_dirs(self, directories: Iterable[str]) -> None:
        """Delete each of ``directories`` that holds nothing."""
        for directory in directories:
            if not self.list_dir(directory):
                self.delete_dir(directory)

    def vacuum(self, older_than_s: float = DEFAULT_RETENTION_S, dry_run: bool = False) -> list[str]:
        """Delete files no committed row refers to, once unreferenced for ``older_than_s`` (by modification time).

        Replaced versions, crash leftovers, temp files and the examples of replaced probes. Readers may still be reading
        a replaced version, and a writer's files are unreferenced until it commits,
        so only files older than the retention go. Returns the paths (deleted, or that
        would be with ``dry_run``).
        """
        cutoff = utcnow().timestamp() - older_than_s
        keep = {p for t in DATA_TABLES for p in self.committed_files(t)}
        candidates = [i for t in DATA_TABLES for i in self.list_dir(self.path(t), recursive=True)
                      if i.type == pafs.FileType.File and i.path not in keep]
        candidates += [i for t in ROW_TABLES for i in self.list_dir(self.path(t))
                       if i.type == pafs.FileType.File and i.base_name.endswith(TEMP_SUFFIX)]
        examples = {self.probe_example_for(m.slug, m.probe_write_id)
                    for m in self.stored_models().values() if m.probe_write_id}
        candidates += [i for i in self.list_dir(self.path(PROBE_EXAMPLES), recursive=True)
                       if i.type == pafs.FileType.File and i.path not in examples]
        old = sorted(i.path for i in candidates  # no modification time known: only with no retention at all
                     if (i.mtime is not None and i.mtime.timestamp() <= cutoff) or older_than_s <= 0)
        if dry_run:
            return old
        for path in old:
            self.delete_file(path)
        for table in DATA_TABLES:  # drop partition folders left empty, deepest first
            folders = [i.path for i in self.list_dir(self.path(table), recursive=True)
                       if i.type == pafs.FileType.Directory]
            self.prune_dirs(sorted(folders, key=lambda p: -len(p)))
        self.write_index()
        if old:
            log.info("vacuum removed %d unreferenced files from %s", len(old), self.uri)
        return old

    # --- manifest and build records (pipeline/dataset/manifest.py) -----------------------------
    def build_records(self) -> list[dict]:
        """Every build record (``_builds/<time>-<id>.json``), oldest first."""
        return manifest.build_records(self.fs, self)

    def read_manifest(self) -> dict:
        """The manifest: derived from the build records when there are any, else ``_manifest.json`` as stored."""
        return manifest.read_manifest(self.fs, self)

    def update_manifest(self, build: dict | None = None) -> dict:
        """Add one build record (its own file: concurrent builds never lose each other's); refresh _manifest.json."""
        return manifest.record_build(self.fs, self, build)


def empty_table(schema: pa.Schema) -> pa.Table:
    """No rows, ``schema``'s columns (``Schema.empty_table`` would import pandas: 0.2 s of CLI start-up)."""
    return pa.Table.from_batches([], schema=schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns and types; a column the files lack reads as nulls."""
    for name in schema.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(schema.names).cast(schema)


def read_local_parquet(files: list[str]) -> pa.Table:
    """Many small local Parquet files at once (DuckDB's parallel reader: ~100x faster than one by one)."""
    with duckdb.connect(":memory:") as con:
        return con.read_parquet(files, union_by_name=True).to_arrow_table()


@dataclass
class Snapshot:
    """What one reader sees: the committed rows at one moment, and the models among them whose files all exist."""

    models: pa.Table
    failures: pa.Table
    stored: dict[str, StoredModel]
    missing: list[str] = field(default_factory=list)
    row_files: dict[str, list[str]] = field(default_factory=dict)
    """The models/ and failures/ files the rows were read from."""
