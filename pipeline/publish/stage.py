"""Staging: the committed part of a dataset turned into the tree a Hub dataset repo should hold.

Orphans of crashed writes and ``failures/`` are left out; the tree is::

    README.md                 the dataset card (pipeline/publish/card.py)
    _manifest.json            versions, builds (no host names or paths), snapshot digest
    models/part-<m>.parquet   one row per model (the model's commit marker, as in the dataset)
    layers/<d>/<m>/part-<write_id>.parquet           (models written before: dataset=<d>/model=<m>/)
    filters/<d>/<m>/part-<write_id>-<k>.parquet
    probes/<d>/<m>/part-<probe_write_id>.parquet     (probed models only)

The layout is the dataset's own, so the repo is itself a filter dataset (read it
as ``hf://datasets/ORG/NAME``, or download it and keep building on it). Files
are hard-linked (or copied, or downloaded from a remote root) as they are; a
file beyond the Hub's limits is re-chunked (pipeline/publish/rechunk.py) and the
model's row rewritten with the new ``n_filter_files``. The same dataset stages
to byte-identical files, which is what makes republishing incremental.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.dataset.layout import COMPRESSION, MANIFEST, StoredModel, stored_models_of
from pipeline.dataset.schema import schema_version
from pipeline.dataset.store import DatasetStore
from pipeline.digest import sha256_file
from pipeline.errors import ConfigError, StoreError
from pipeline.publish import limits
from pipeline.publish.card import CARD, CardInputs, render_card
from pipeline.publish.rechunk import rechunk

log = logging.getLogger(__name__)

BUILD_KEYS = ("command", "backend", "pipeline_version", "finished_at", "models", "done", "skipped", "failed",
              "seconds", "model_id")
"""Build-record keys copied to the published manifest (host names and local paths stay private)."""
_GIT_HASH_MAX_BYTES = 50 * 2**20


@dataclass
class StagedFile:
    """One file of the staged tree: where it goes in the repo, where it is locally, its digest."""

    path: str
    local: str
    size: int
    sha256: str

    def git_sha1(self) -> str | None:
        """The git blob id (how the Hub identifies non-LFS files); None for files too big to be regular."""
        if self.size > _GIT_HASH_MAX_BYTES:
            return None
        digest = hashlib.sha1(b"blob %d\0" % self.size)
        with open(self.local, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def staged_file(path: str, local: Path) -> StagedFile:
    """The StagedFile of the local file ``local``, to be stored at ``path`` in the repo."""
    return StagedFile(path, str(local), local.stat().st_size, sha256_file(str(local)))


@dataclass
class StagedTree:
    """The tree a repo should hold, ready to sync (see the module docstring)."""

    root: str
    files: dict[str, StagedFile]
    card_inputs: CardInputs
    manifest: dict
    rows: dict[str, int]
    snapshot: str
    rechunked: list[str] = field(default_factory=list)

    @property
    def n_models(self) -> int:
        return len(self.card_inputs.models)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def published_manifest(manifest: dict, snapshot: str, rows: dict[str, int], n_models: int) -> dict:
    """The manifest as published: versions and dates, build records without hosts or paths, the snapshot."""
    keep = ("format", "dataset_version", "schema_version", "pipeline_version", "created_at", "updated_at")
    out = {key: manifest[key] for key in keep if key in manifest}
    out.setdefault("format", "filterlens")
    out.setdefault("schema_version", schema_version())
    out["builds"] = [{k: b[k] for k in BUILD_KEYS if k in b} for b in manifest.get("builds", []) if isinstance(b, dict)]
    out["published"] = {"snapshot": snapshot, "models": n_models, "rows": rows, "published_with": __version__}
    return out


def _place(store: DatasetStore, source: str, target: Path) -> None:
    """Put a dataset file at ``target``: hard link when possible, else copy, else download."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    if store.local:
        try:
            os.link(source, target)
            return
        except OSError:
            shutil.copyfile(source, target)
            return
    with store.fs.open_input_stream(source) as src, open(target, "wb") as dst:
        while chunk := src.read(8 << 20):
            dst.write(chunk)


def _with_filter_counts(models: pa.Table, counts: list[int]) -> pa.Table:
    """``models`` with its ``n_filter_files`` column replaced by ``counts``."""
    index = models.schema.get_field_index("n_filter_files")
    return models.set_column(index, models.schema.field(index), pa.array(counts, pa.int32()))


def _stage_model_files(store: DatasetStore, model: StoredModel, out: Path) -> tuple[list[Path], bool]:
    """Place one model's layers and filters files under ``out``; re-chunk those beyond the limits.

    Returns the staged paths (the layers file first) and whether anything was re-chunked.
    """
    layer_target = out / store.relative(store.layer_file(model))
    _place(store, store.layer_file(model), layer_target)
    rechunked = False
    if not limits.fits_hub(str(layer_target), check_size=False):  # one layers file per model: only its row groups
        rechunk([layer_target], "layers", lambda k: layer_target, split_files=False)
        rechunked = True
    targets = []
    for source in store.filter_files(model):
        targets.append(out / store.relative(source))
        _place(store, source, targets[-1])
    if not all(limits.fits_hub(str(t)) for t in targets):
        base = targets[0].parent
        targets = rechunk(targets, "filters", lambda k: base / f"part-{model.write_id}-{k}.parquet")
        rechunked = True
    return [layer_target, *targets], rechunked


def _stage_row(store: DatasetStore, models: pa.Table, position: int, n_filter_files: int, out: Path,
               row_files: set[str]) -> Path:
    """Place one model's row file; rewrite it when re-chunking changed ``n_filter_files`` (or it is missing)."""
    model_id = models.column("model_id")[position].as_py()
    slug = models.column("model")[position].as_py()
    source = store.model_row_path(slug)
    target = out / store.relative(source)
    if source in row_files and n_filter_files == models.column("n_filter_files")[position].as_py():
        _place(store, source, target)
        return target
    row = _with_filter_counts(models.slice(position, 1), [n_filter_files])
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(row, target, compression=COMPRESSION)
    log.debug("%s: row file written for the published tree", model_id)
    return target


def _committed_models(store: DatasetStore, dataset: str) -> pa.Table:
    """The models table sorted by model_id; StoreError for committed models lacking files, HubLimitError past the limits."""
    models = store.models().sort_by("model_id")
    stored = stored_models_of(models)
    missing = store.incomplete_models(stored.values())
    if missing:
        raise StoreError(f"{dataset}: {len(missing)} committed models have missing files (e.g. {missing[0]}); "
                         "rebuild them (filterlens build/extract --force) or delete them before publishing")
    old = sorted(m for m, model in stored.items() if model.schema_version != schema_version())
    if old:  # the published card and manifest state one schema version: every file must follow it
        raise StoreError(f"{dataset}: {len(old)} committed models were written under another schema version "
                         f"(e.g. {old[0]}); rebuild them (filterlens build/extract --force) before publishing")
    limits.check_layout([store.relative(p) for m in stored.values()
                         for p in [store.model_row_path(m.slug), *store.model_files(m)]])  # fail fast
    return models


def _stage_data(store: DatasetStore, models: pa.Table, out: Path) -> tuple[dict[str, Path], pa.Table, list[str]]:
    """Place every model's files and row under ``out``.

    Returns the placed files by repo path, the models table with the staged ``n_filter_files``,
    and the ids of the models whose files were re-chunked.
    """
    files: dict[str, Path] = {}
    n_filter_files: dict[str, int] = {}
    rechunked: list[str] = []
    for model_id, model in stored_models_of(models).items():
        paths, changed = _stage_model_files(store, model, out)
        n_filter_files[model_id] = len(paths) - 1
        rechunked += [model_id] if changed else []
        files.update({str(p.relative_to(out)): p for p in paths})
        for source in store.probe_files(model):  # one small file per probed model: never beyond the limits
            target = out / store.relative(source)
            _place(store, source, target)
            files[str(target.relative_to(out))] = target
    row_files = set(store.part_files("models"))
    for position, model_id in enumerate(models.column("model_id").to_pylist()):
        row = _stage_row(store, models, position, n_filter_files[model_id], out, row_files)
        files[str(row.relative_to(out))] = row
    if rechunked:
        log.info("re-chunked %d models' files to fit the Hub's limits", len(rechunked))
    local_sources = [s for s in models.column("source_uri").to_pylist() if s and "://" not in s]
    if local_sources:
        log.warning("%d models' source_uri are local paths (e.g. %s); they are published as they are",
                    len(local_sources), local_sources[0])
    counts = [n_filter_files[m] for m in models.column("model_id").to_pylist()]
    return files, _with_filter_counts(models, counts), rechunked


def _totals(staged: dict[str, StagedFile]) -> tuple[dict[str, int], dict[str, int]]:
    """(rows, bytes) of the staged data files, per table."""
    rows = {t: 0 for t in ("models", "layers", "filters", "probes")}
    size = {t: 0 for t in rows}
    for path, item in staged.items():
        rows[path.split("/", 1)[0]] += pq.read_metadata(item.local).num_rows
        size[path.split("/", 1)[0]] += item.size
    if not rows["probes"]:  # a table only where some model was probed
        del rows["probes"], size["probes"]
    return rows, size


def _fresh_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir``, created; ConfigError when it exists and is not empty."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: the staging folder must be new or empty")
    out.mkdir(parents=True, exist_ok=True)
    return out


def stage(dataset: str, out_dir: str | os.PathLike, repo_id: str, revision: str | None = None,
          license: str | None = None) -> StagedTree:
    """Stage the committed part of ``dataset`` (a path or URI) into ``out_dir`` for publishing to ``repo_id``."""
    store = DatasetStore(dataset)
    store.require()
    out = _fresh_dir(out_dir)
    files, models, rechunked = _stage_data(store, _committed_models(store, dataset), out)
    staged = {path: staged_file(path, local) for path, local in sorted(files.items())}
    rows, size = _totals(staged)
    snapshot = hashlib.sha256("".join(f"{p}\t{f.sha256}\n" for p, f in staged.items()).encode()).hexdigest()
    manifest = published_manifest(store.read_manifest(), snapshot, rows, models.num_rows)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    n_failures = store.failures().num_rows
    inputs = CardInputs(
        repo_id=repo_id, models=models.to_pylist(), rows=rows, bytes=size, manifest=manifest,
        files=dict(Counter(path.split("/", 1)[0] for path in staged)),
        snapshot=snapshot, revision=revision, license=license, pipeline_version=__version__,
        excluded=[f"`failures` ({n_failures} models whose latest extraction failed)"] if n_failures else [],
    )
    (out / CARD).write_text(render_card(inputs))
    for path in (MANIFEST, CARD):
        staged[path] = staged_file(path, out / path)
    limits.check_layout([*staged, ".gitattributes"])
    return StagedTree(str(out), dict(sorted(staged.items())), inputs, manifest, rows, snapshot, sorted(rechunked))
