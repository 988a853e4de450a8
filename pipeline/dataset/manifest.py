"""Build records and the manifest: one file per build, ``_manifest.json`` derived from them.

Records are never rewritten, so concurrent builds never lose each other's
(``_builds/<time>-<id>.json``). ``_manifest.json`` is derived from all records after
each one is added; a concurrent refresh may miss a record written at the same
moment, but ``read_manifest`` always derives afresh. Datasets from before the
records have their manifest's builds imported once.

With the manifest, the root gets a ``README.md`` card whose YAML ``configs`` name each
table's files, as a published repo's card does (``publish/card.py`` uses the same
``data_configs``): ``datasets.load_dataset(<root>, "layers")`` then reads a local root
as it reads the Hub repo.
"""

from __future__ import annotations

import json
import logging

import pyarrow.fs as pafs
import yaml

from pipeline import __version__
from pipeline.atomic_write import write_bytes_atomic
from pipeline.dataset.layout import BUILDS, MANIFEST, DatasetPaths, new_write_id, utcnow
from pipeline.dataset.schema import schema_version

log = logging.getLogger(__name__)

CARD = "README.md"
"""The dataset card at the root (a local root's short one; a published repo's is ``publish/card.py``'s)."""
DATA_FILES = {"models": "models/*.parquet", "layers": "layers/**/*.parquet", "filters": "filters/**/*.parquet",
              "probes": "probes/**/*.parquet", "failures": "failures/*.parquet"}
"""Each table's files as ``datasets`` config globs (relative to the root)."""
CARD_TAG = "filterlens"
"""In the card's YAML ``tags``: a card filterlens generated (and may rewrite)."""


def _record_files(fs: pafs.FileSystem, paths: DatasetPaths) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(paths.path(BUILDS), allow_not_found=True))
    except (FileNotFoundError, OSError):
        return []
    return sorted((i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json")),
                  key=lambda i: i.base_name)


def build_records(fs: pafs.FileSystem, paths: DatasetPaths) -> list[dict]:
    """Every build record, oldest first (a record being written or damaged is skipped, never fatal)."""
    records = []
    for info in _record_files(fs, paths):
        try:
            with fs.open_input_stream(info.path) as f:
                records.append(json.loads(f.read().decode()))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
    return records


def read_manifest(fs: pafs.FileSystem, paths: DatasetPaths) -> dict:
    """Derived from the records when there are any, else ``_manifest.json`` as stored (e.g. a published copy)."""
    records = build_records(fs, paths)
    if records:
        return derive_manifest(records)
    try:
        with fs.open_input_stream(paths.path(MANIFEST)) as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return {}


def record_build(fs: pafs.FileSystem, paths: DatasetPaths, build: dict | None = None) -> dict:
    """Add one record (its own new file) and rewrite ``_manifest.json`` from all records; returns the manifest."""
    if not _record_files(fs, paths):
        _import_legacy_builds(fs, paths)
    now = utcnow()
    record = {**(build or {}), "recorded_at": now.isoformat(), "pipeline_version": __version__,
              "schema_version": schema_version()}
    name = f"{now:%Y%m%dT%H%M%S%f}-{new_write_id()[-8:]}.json"
    write_bytes_atomic(paths.path(BUILDS, name), json.dumps(record, default=str).encode(), fs)
    manifest = derive_manifest(build_records(fs, paths))
    write_bytes_atomic(paths.path(MANIFEST), json.dumps(manifest, indent=2, default=str).encode(), fs)
    write_local_card(fs, paths, manifest)
    return manifest


def data_configs(tables: tuple[str, ...]) -> list[dict]:
    """The card's ``configs``: one per table, its files as globs; ``models`` is the default."""
    configs = []
    for table in tables:
        config: dict = {"config_name": table, "data_files": [{"split": "train", "path": DATA_FILES[table]}]}
        if table == "models":
            config["default"] = True
        configs.append(config)
    return configs


def local_card(manifest: dict, probes: bool = False) -> str:
    """The README.md of a local (unpublished) root: the ``configs`` a published card has, and a few lines
    (``probes``: the root has a probes table, so it gets a config too)."""
    tables = ("models", "layers", "filters", *(("probes",) if probes else ()), "failures")
    header = yaml.safe_dump({"pretty_name": "filterlens filter dataset", "tags": [CARD_TAG],
                             "configs": data_configs(tables)},
                            sort_keys=False, width=1000)
    return "\n".join([
        "---", header.rstrip("\n"), "---", "",
        "# filterlens filter dataset", "",
        f"Dataset version {manifest.get('dataset_version')} (schema version {manifest.get('schema_version')}), "
        f"written by filterlens {manifest.get('pipeline_version')}, updated {manifest.get('updated_at')}. "
        "This card is generated and rewritten with every build: edits are lost.", "",
        "Tables (filterlens' `schemas/` lists every column): `models` (one row per model), `layers` (one row per "
        "conv layer), `filters` (one row per 3x3 filter), `probes` (first-stage probe rows, where a model was "
        "probed), `failures` (models whose latest attempt failed).", "",
        "```python",
        "import pipeline",
        "ds = pipeline.open_dataset(\"<this folder>\")   # committed models only",
        "from datasets import load_dataset",
        "layers = load_dataset(\"<this folder>\", \"layers\", split=\"train\")",
        "```", "",
        "Readers that glob the folders (`datasets`, `pandas.read_parquet`, DuckDB, Polars) also see replaced "
        "versions and leftovers of crashed writes until `filterlens vacuum` removes them; `open_dataset`, "
        "`filterlens sql` and a published copy hold exactly the committed models.", "",
    ])


def _generated_card(text: str) -> bool:
    """Whether a README.md is a card filterlens wrote (its YAML tags name filterlens)."""
    if not text.startswith("---\n"):
        return False
    try:
        meta = yaml.safe_load(text[4:].split("\n---", 1)[0]) or {}
    except yaml.YAMLError:
        return False
    return isinstance(meta, dict) and CARD_TAG in (meta.get("tags") or [])


def write_local_card(fs: pafs.FileSystem, paths: DatasetPaths, manifest: dict) -> None:
    """Write the root's README.md card, unless the root holds a README.md filterlens did not write."""
    path = paths.path(CARD)
    try:
        with fs.open_input_stream(path) as f:
            existing = f.read().decode(errors="replace")
    except (FileNotFoundError, OSError):
        existing = None
    if existing is not None and not _generated_card(existing):
        log.info("%s: a README.md filterlens did not write is kept (datasets.load_dataset needs the configs "
                 "of a generated card)", path)
        return
    card = local_card(manifest, probes=fs.get_file_info(paths.path("probes")).type == pafs.FileType.Directory)
    if card != existing:
        write_bytes_atomic(path, card.encode(), fs)


def _import_legacy_builds(fs: pafs.FileSystem, paths: DatasetPaths) -> None:
    """A dataset written before build records: its manifest's builds become records (once)."""
    legacy = read_manifest(fs, paths)
    for k, build in enumerate(legacy.get("builds", [])):
        record = {**build, "recorded_at": str(build.get("finished_at") or legacy.get("created_at") or "")}
        write_bytes_atomic(paths.path(BUILDS, f"00000000T000000{k:06d}-legacy.json"),
                           json.dumps(record, default=str).encode(), fs)


def derive_manifest(records: list[dict]) -> dict:
    """``_manifest.json`` from the build records: the version counts them, the last 50 are listed."""
    builds = [{k: v for k, v in r.items() if k not in ("recorded_at", "schema_version")} for r in records]
    return {
        "format": "filterlens",
        "dataset_version": len(records),
        "schema_version": records[-1].get("schema_version", schema_version()),  # of the last writer
        "pipeline_version": records[-1].get("pipeline_version", __version__),
        "created_at": records[0].get("recorded_at"),
        "updated_at": records[-1].get("recorded_at"),
        "builds": [b for b in builds if len(b) > 1][-50:],
    }


