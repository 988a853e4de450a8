"""Build records and the manifest: one file per build, ``_manifest.json`` derived from them.

Records are never rewritten, so concurrent builds never lose each other's
(``_builds/<time>-<id>.json``). ``_manifest.json`` is derived from all records after
each one is added; a concurrent refresh may miss a record written at the same
moment, but ``read_manifest`` always derives afresh. Datasets from before the
records have their manifest's builds imported once.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs

from pipeline import __version__
from pipeline.atomic_write import write_bytes_atomic
from pipeline.dataset.layout import BUILDS, MANIFEST, DatasetPaths, new_write_id, utcnow
from pipeline.dataset.schema import schema_version


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
    return manifest


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


