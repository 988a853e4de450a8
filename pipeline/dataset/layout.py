"""Where a filter dataset keeps its files, and how they are encoded (docs/design.md, "Layout").

    <root>/models/part-<slug>.parquet                            one row per model (the commit marker)
    <root>/layers/dataset=<d>/model=<slug>/part-<write_id>.parquet
    <root>/filters/dataset=<d>/model=<slug>/part-<write_id>-<k>.parquet
    <root>/failures/part-<slug>.parquet
    <root>/_manifest.json                                        derived from _builds/
    <root>/_builds/<time>-<id>.json                              one record per build

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
"""Encoding of the w0..w8 float32 columns (measured in benchmarks/bench_extract.py: smaller than PLAIN under zstd)."""
COMPRESSION = "zstd"
MANIFEST = "_manifest.json"
BUILDS = "_builds"
"""One JSON record per build or extract (never rewritten): the manifest is derived from them."""
WEIGHT_COLUMNS = [f"w{i}" for i in range(9)]
DATA_TABLES = ("layers", "filters")
"""Tables partitioned by dataset and model, one version of files per committed write_id."""
ROW_TABLES = ("models", "failures")
"""Tables with one small file per model."""

CONSTANT_COLUMNS = ("model_id", "dataset", "model")
"""filters columns that hold one value per model: written from dictionary arrays (no per-row strings)."""

STORED_COLUMNS = ["model_id", "dataset", "model", "write_id", "n_filter_files", "checkpoint_sha256",
                  "schema_version", "source_uri"]
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
    """A fresh, time-ordered id for one write of a model's files."""
    return f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


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


def stored_models_of(models: pa.Table) -> dict[str, StoredModel]:
    """The ``StoredModel`` of each row of a models table, by model_id."""
    rows = models.select(STORED_COLUMNS).to_pylist()
    return {r["model_id"]: StoredModel(r["model_id"], r["dataset"], r["model"], r["write_id"], r["n_filter_files"],
                                       r["checkpoint_sha256"], r["schema_version"], r["source_uri"]) for r in rows}


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

    def partition_dir(self, table: str, dataset: str, slug: str) -> str:
        return self.path(table, f"dataset={slugify(dataset)}", f"model={slug}")

    def layer_file_for(self, dataset: str, slug: str, write_id: str) -> str:
        return f"{self.partition_dir('layers', dataset, slug)}/part-{write_id}.parquet"

    def filter_file_for(self, dataset: str, slug: str, write_id: str, k: int) -> str:
        return f"{self.partition_dir('filters', dataset, slug)}/part-{write_id}-{k}.parquet"

    def layer_file(self, model: StoredModel) -> str:
        return self.layer_file_for(model.dataset, model.slug, model.write_id)

    def filter_files(self, model: StoredModel) -> list[str]:
        return [self.filter_file_for(model.dataset, model.slug, model.write_id, k) for k in range(model.n_filter_files)]

    def model_files(self, model: StoredModel) -> list[str]:
        """The layers file and filters files of a committed model version."""
        return [self.layer_file(model), *self.filter_files(model)]

    def relative(self, path: str) -> str:
        """``path`` relative to the root (as in a published repo)."""
        prefix = self.root + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not under {self.root}")
        return path[len(prefix):]
