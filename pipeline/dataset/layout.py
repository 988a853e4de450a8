"""Where a filter dataset keeps its files, and how they are encoded (docs/design.md, "Layout").

    <root>/models/part-<slug>.parquet                            one row per model (the commit marker)
    <root>/layers/<d>/<slug>/part-<write_id>.parquet
    <root>/filters/<d>/<slug>/part-<write_id>-<k>.parquet
    <root>/probes/<d>/<slug>/part-<probe_write_id>.parquet       (probed models only)
    <root>/failures/part-<slug>.parquet
    <root>/_probes/examples/<slug>/<probe_write_id>.npz          the probe's example image (figure only)
    <root>/_probes/transfer-<digest>.npz                         a run's transfer perturbations
    <root>/_manifest.json                                        derived from _builds/
    <root>/_builds/<time>-<id>.json                              one record per build

``<d>`` is ``slugify(dataset)``. The folder names are deliberately not Hive-style
(``key=value``): every file carries ``dataset`` and ``model`` as real string columns
with the exact values, and readers that infer partitions from ``key=value`` folders
(pandas, pyarrow, Polars, DuckDB) would add the folder's type and value on top of
them (a dictionary type that does not merge with the files' strings, a slug that
differs from the value for odd names). Models written before this layout live in
``layers/dataset=<d>/model=<slug>/``: the ``write_id`` tells them apart
(``hive_layout``), so old datasets keep reading.

Pure naming: no I/O here. The store (``dataset/store.py``) reads and writes these
paths; publishing (``publish/``) stages the same tree.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from dataclasses import dataclass

import pyarrow as pa

from pipeline.dataset.schema import arrow_schema

FILTER_ROWS_PER_GROUP = 1 << 20
"""Rows per Parquet row group in filters files (~40 MB uncompressed)."""
FILTER_ROWS_PER_FILE = 8 << 20
"""Rows per filters file before a new one is started (~250 MB on disk)."""
FLOAT_ENCODING = "BYTE_STREAM_SPLIT"
"""Encoding of the w0..w8 float32 columns (benchmarks/bench_encodings.py: 6% smaller than PLAIN under LZ4)."""
COMPRESSION = "lz4"
"""Codec of every table (Parquet LZ4_RAW). Float weights barely compress (random or trained), and decoding is what
scans pay: benchmarks/bench_encodings.py measured LZ4 + BYTE_STREAM_SPLIT at 1.03x the size of zstd with 3.1x its
decode speed, and the stats histogram pass 1.6x faster per CPU-second. Files written with zstd (before) stay
readable: the codec is recorded per column chunk."""
MANIFEST = "_manifest.json"
BUILDS = "_builds"
"""One JSON record per build or extract (never rewritten): the manifest is derived from them."""
WEIGHT_COLUMNS = [f"w{i}" for i in range(9)]
DATA_TABLES = ("layers", "filters", "probes")
"""Tables partitioned by dataset and model, one version of files per committed write_id (probe_write_id)."""
PROBE_EXAMPLES = "_probes/examples"
"""One small .npz per probe: the first image through the first stage (the notebook's figure)."""
ROW_TABLES = ("models", "failures")
"""Tables with one small file per model."""

CONSTANT_COLUMNS = ("model_id", "dataset", "model")
"""filters columns that hold one value per model: written from dictionary arrays (no per-row strings)."""
FILTER_STATISTICS_COLUMNS = [*CONSTANT_COLUMNS, "member", "conv_index", "out_channel", "in_channel", "sparse"]
"""filters columns with min/max statistics per row group (what a reader can skip row groups by). The weights have
none: every row group of a layer spans their range, so they would prune nothing, and computing them was a quarter of
the writer's CPU (0.09 of 0.36 CPU-s per 4M filters)."""


def filters_parquet_options() -> dict:
    """pyarrow ``ParquetWriter`` keyword arguments of every filters file: the store's writer, re-chunking for the
    Hub and the benchmarks' I/O floors all write with these, so they encode alike."""
    return {"compression": COMPRESSION, "use_dictionary": [*CONSTANT_COLUMNS, "conv_index", "sparse"],
            "column_encoding": {c: FLOAT_ENCODING for c in WEIGHT_COLUMNS},
            "write_statistics": FILTER_STATISTICS_COLUMNS, "store_schema": False}

STORED_COLUMNS = ["model_id", "dataset", "model", "write_id", "n_filter_files", "checkpoint_sha256",
                  "schema_version", "source_uri", "probe_write_id", "probe_config"]
"""The models columns that say where a committed model's files are (see ``StoredModel``)."""


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


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_write_id() -> str:
    """A fresh, time-ordered id for one write of a model's files (its ``Z`` marks the flat layout)."""
    return f"{utcnow():%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:8]}"


_FLAT_WRITE_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")


def hive_layout(write_id: str) -> bool:
    """Whether a write's files are in the old ``dataset=<d>/model=<slug>`` folders (write ids without the ``Z``)."""
    return _FLAT_WRITE_ID.fullmatch(write_id) is None


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
    probe_write_id: str | None = None
    """The committed probes file (None: never probed)."""
    probe_config: str | None = None
    """Digest of the settings of the committed probe (``ProbeConfig.key``)."""


def stored_models_of(models: pa.Table) -> dict[str, StoredModel]:
    """The ``StoredModel`` of each row of a models table, by model_id (rows without probe columns: not probed)."""
    names = [c for c in STORED_COLUMNS if c in models.column_names]
    rows = models.select(names).to_pylist()
    return {r["model_id"]: StoredModel(r["model_id"], r["dataset"], r["model"], r["write_id"], r["n_filter_files"],
                                       r["checkpoint_sha256"], r["schema_version"], r["source_uri"],
                                       r.get("probe_write_id"), r.get("probe_config")) for r in rows}


class DatasetPaths:
    """The paths of one dataset root (a path inside its filesystem, without a scheme)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def model_row_path(self, slug: str) -> str:
        return self.path("models", f"part-{slug}.parquet")

    def failure_path(self, slug: str) -> str:
        return self.path("failures", f"part-{slug}.parquet")

    def partition_dir(self, table: str, dataset: str, slug: str, write_id: str | None = None) -> str:
        """The folder of a model's files: ``<table>/<d>/<slug>``, or the old Hive folders for an old ``write_id``."""
        if write_id is not None and hive_layout(write_id):
            return self.path(table, f"dataset={slugify(dataset)}", f"model={slug}")
        return self.path(table, slugify(dataset), slug)

    def partition_dirs(self, table: str, dataset: str, slug: str) -> list[str]:
        """Every folder that may hold a model's files (this layout's and the old Hive one)."""
        return [self.path(table, slugify(dataset), slug), self.path(table, f"dataset={slugify(dataset)}", f"model={slug}")]

    def layer_file_for(self, dataset: str, slug: str, write_id: str) -> str:
        return f"{self.partition_dir('layers', dataset, slug, write_id)}/part-{write_id}.parquet"

    def filter_file_for(self, dataset: str, slug: str, write_id: str, k: int) -> str:
        return f"{self.partition_dir('filters', dataset, slug, write_id)}/part-{write_id}-{k}.parquet"

    def probe_file_for(self, dataset: str, slug: str, probe_write_id: str) -> str:
        return f"{self.partition_dir('probes', dataset, slug)}/part-{probe_write_id}.parquet"

    def probe_example_for(self, slug: str, probe_write_id: str) -> str:
        """The probe's example for the notebook's figure (pipeline/probe/example.py); not a table file."""
        return self.path(PROBE_EXAMPLES, slug, f"{probe_write_id}.npz")

    def probe_files(self, model: StoredModel) -> list[str]:
        """The committed probes file of a model ([] when it was never probed)."""
        if not model.probe_write_id:
            return []
        return [self.probe_file_for(model.dataset, model.slug, model.probe_write_id)]

    def layer_file(self, model: StoredModel) -> str:
        return self.layer_file_for(model.dataset, model.slug, model.write_id)

    def filter_files(self, model: StoredModel) -> list[str]:
        return [self.filter_file_for(model.dataset, model.slug, model.write_id, k) for k in range(model.n_filter_files)]

    def model_files(self, model: StoredModel) -> list[str]:
        """The layers file, filters files and probes file (if probed) of a committed model version."""
        return [self.layer_file(model), *self.filter_files(model), *self.probe_files(model)]

    def relative(self, path: str) -> str:
        """``path`` relative to the root (as in a published repo)."""
        prefix = self.root + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not under {self.root}")
        return path[len(prefix):]
