"""Import a release into the filter dataset: one model at a time, through the extraction's writer and commit.

Each model is read layer by layer (one h5py slice per layer, so at most one layer's filters
plus the writer's row groups are in memory), its layers rows get filterlens's own metrics
(``pipeline.extract.extractor.layer_row`` on the weight rebuilt as (out_channels,
in_channels, 3, 3), so orthogonality sees the output kernels) and the release's own
``conv_depth_norm``; its filters rows are ``filter_batch``'s; ``ModelWriter.commit`` writes
the models row last. A rerun skips models committed from the same source digest (sha256
of the model's metadata, layer table and filter bytes); a model that fails gets a failures
row and the others go on.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.checkpoints.load import ConvWeight
from pipeline.dataset.layout import slugify
from pipeline.dataset.schema import arrow_schema, to_table
from pipeline.dataset.store import DatasetStore
from pipeline.dataset.writer import ModelWriter
from pipeline.digest import HashBehind
from pipeline.errors import ConfigError, FilterlensError, QueryError
from pipeline.extract.extractor import layer_row, request_fields, resolve_device
from pipeline.extract.threads import layer_loop_threads, torch_threads
from pipeline.filterdb.layout import SOURCE_FORMAT, ReleaseLayer, ReleaseModel
from pipeline.filterdb.metadata import model_spec
from pipeline.filterdb.reader import Release, model_header, open_release
from pipeline.filterdb.validate import check_finite, validate_model, validate_ranges
from pipeline.progress import progress_bar
from pipeline.zoo.spec import ModelRequest, ModelSpec

log = logging.getLogger(__name__)

SELECT_COLUMNS = ("model_id", "dataset", "threat_model", "robust", "architecture", "clean_acc", "robust_acc",
                  "eps", "extra_data", "paper", "venue", "n_filters", "n_conv3x3_layers")
"""The columns ``--where`` sees: the models row the import would write (and the release's filter counts)."""


@dataclass
class ImportSummary:
    """What one import did, model by model."""

    release: str
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    """The failures rows written (model_id, error_class, message, ...)."""
    n_filters: int = 0
    """Filters written by this run."""
    seconds: float = 0.0

    @property
    def filters_per_s(self) -> float:
        return self.n_filters / self.seconds if self.seconds > 0 else 0.0


def import_release(path: str, out: str | DatasetStore, models: Sequence[str] | None = None,
                   where: str | None = None, device: str | torch.device = "auto", force: bool = False,
                   progress: bool = True, metadata: str = "auto",
                   robust_threat_model: str = "Linf") -> ImportSummary:
    """Import the release at ``path`` (folder or dataset.h5) into the dataset ``out``.

    ``models``: release model names or shell patterns; ``where``: a SQL predicate on ``SELECT_COLUMNS``.
    File-wide format errors raise FilterDBFormatError before anything is written; a model's own errors
    become its failures row.
    """
    started = time.perf_counter()
    store = out if isinstance(out, DatasetStore) else DatasetStore(out)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    summary = ImportSummary(release=path)
    with open_release(path, metadata) as release:
        validate_ranges(release)
        named = select_names(release.models, models)
        specs: dict[int, ModelSpec] = {}
        for model in named:
            try:
                specs[model.release_id] = model_spec(model, robust_threat_model)
            except FilterlensError as exc:  # a model whose metadata cannot be a models row: its failures row
                log.error("%s: %s", model.name, exc)
                summary.failed.append(_fail(store, release, model, None, exc, 0.0))
        chosen = [m for m in named if m.release_id in specs]
        if where and where.strip():
            keep = _where(chosen, specs, where.strip())
            chosen = [m for m in chosen if m.name in keep]
        total = sum(m.n_filters for m in chosen)
        log.info("%s: %d of %d models (%d filters; metadata from the %s)", path, len(chosen), len(release.models),
                 total, release.metadata_source)
        with progress_bar(total, desc="import", unit="filters", enabled=progress, unit_scale=True) as bar:
            for model in chosen:
                spec = specs[model.release_id]
                bar.set_postfix_str(model.name)
                model_started = time.perf_counter()
                try:
                    written = import_model(release, model, spec, store, torch_device, force=force, bar=bar)
                except Exception as exc:  # a bad model, or a bug: its failures row, and on with the others
                    log.error("%s: %s", model.name, exc)
                    summary.failed.append(_fail(store, release, model, spec, exc,
                                                time.perf_counter() - model_started))
                    continue
                if written is None:
                    summary.skipped.append(spec.model_id)
                else:
                    summary.imported.append(spec.model_id)
                    summary.n_filters += written
    summary.seconds = time.perf_counter() - started
    return summary


def source_uri(release: Release, model: ReleaseModel) -> str:
    """Where an imported model came from: the HDF5 file and the model's name in it."""
    return f"{release.h5_path}#{model.name}"


def _fail(store: DatasetStore, release: Release, model: ReleaseModel, spec: ModelSpec | None, exc: BaseException,
          seconds: float) -> dict:
    dataset = spec.dataset if spec is not None else None
    return store.record_failure(model.name, dataset, source_uri(release, model), exc, duration_s=seconds)


def select_names(candidates: list[ReleaseModel], names: Sequence[str] | None) -> list[ReleaseModel]:
    """The models named by ``names`` (exact names or shell patterns; all models when empty)."""
    if not names:
        return candidates
    unmatched = [n for n in names if not any(fnmatch.fnmatchcase(m.name, n) for m in candidates)]
    if unmatched:
        example = f" (names are the release's 'model' column, e.g. {candidates[0].name!r})" if candidates else ""
        raise ConfigError(f"--models: no model of the release is named {', '.join(map(repr, unmatched[:5]))}"
                          f"{example}")
    return [m for m in candidates if any(fnmatch.fnmatchcase(m.name, n) for n in names)]


def _where(models: list[ReleaseModel], specs: dict[int, ModelSpec], where: str) -> set[str]:
    """Model ids for which ``where`` holds, evaluated in the read-only SQL sandbox (no file is readable)."""
    from pipeline.dataset.sandbox import LockedConnection, check_expression, check_read_only

    rows = {c: [] for c in SELECT_COLUMNS}
    for model in models:
        spec = specs[model.release_id]
        values = {**{c: getattr(spec, c, None) for c in SELECT_COLUMNS}, "n_filters": model.n_filters,
                  "n_conv3x3_layers": len(model.layers)}
        for c in SELECT_COLUMNS:
            rows[c].append(values[c])
    schema = arrow_schema("models")
    table = pa.table({c: pa.array(rows[c], type=schema.field(c).type) for c in SELECT_COLUMNS})
    query = f"SELECT model_id FROM models WHERE ({where})"
    try:
        check_expression(where, "--where")
        check_read_only(query, "--where")
    except QueryError as exc:
        raise ConfigError(f"--where {where!r} is not a read-only predicate: {exc}") from None
    sandbox = LockedConnection(threads=1)
    try:
        sandbox.con.register("models", table)
        sandbox.lock([])
        try:
            return {r[0] for r in sandbox.con.execute(query).fetchall()}
        except Exception as exc:  # duckdb.Error: unknown column, type mismatch, ...
            raise ConfigError(f"--where {where!r} is not a valid predicate on {', '.join(SELECT_COLUMNS)}: "
                              f"{str(exc).splitlines()[0]}") from None
    finally:
        sandbox.close()


def _weight(filters: np.ndarray, layer: ReleaseLayer) -> tuple[torch.Tensor, str]:
    """The layer's weight (out_channels, in_channels, 3, 3) and its dtype name: float32 unless the file's
    float64 values are not exactly float32 (then float64, like a float64 checkpoint)."""
    shape = (layer.out_channels, layer.in_channels, 3, 3)
    if filters.dtype == np.float64:
        as32 = filters.astype(np.float32)
        if np.array_equal(as32, filters):
            return torch.from_numpy(as32.reshape(shape)), "float32"
        return torch.from_numpy(filters.reshape(shape)), "float64"
    return torch.from_numpy(filters.astype(np.float32, copy=False).reshape(shape)), str(filters.dtype)


def import_model(release: Release, model: ReleaseModel, spec: ModelSpec, store: DatasetStore,
                 device: torch.device, force: bool = False, bar: Any = None) -> int | None:
    """Import one model; returns the filters written, or None when it was already committed from the same
    source digest (unless ``force``). Nothing of a failed model is committed."""
    started = time.perf_counter()
    validate_model(model)
    if not force and store.stored_model(spec.model_id) is not None:
        if store.is_complete(spec.model_id, release.model_digest(model)):
            log.info("%s: already imported from the same source digest, skipping", spec.model_id)
            if bar is not None:
                bar.update(model.n_filters)
            return None
    request = ModelRequest(**{**asdict(spec)}, checkpoints=[release.h5_path],
                           source_uri=source_uri(release, model))
    slug = slugify(spec.model_id)
    digest = HashBehind(model_header(model))  # hashes each layer while its metrics are computed
    writer = ModelWriter(store, spec.model_id, spec.dataset)
    rows = []
    try:
        with torch_threads(layer_loop_threads(device)):
            _import_layers(release, model, request, slug, device, digest, writer, rows, bar)
        layers = to_table("layers", {k: [r.get(k) for r in rows] for k in arrow_schema("layers").names})
        writer.commit(layers, _model_row(release, model, request, digest.hexdigest(), device, started))
    except BaseException:
        writer.abort()
        raise
    return writer.n_filters


def _import_layers(release: Release, model: ReleaseModel, request: ModelRequest, slug: str, device: torch.device,
                   digest: HashBehind, writer: ModelWriter, rows: list[dict], bar: object | None) -> None:
    """Each layer's filters: read, hashed behind, checked, its layers row into ``rows``, its filters rows written."""
    depth_norms = _depth_norms(model)
    for index, layer in enumerate(model.layers):
        filters = release.read(layer.start, layer.end)
        digest.update(filters)
        check_finite(model, layer, filters)
        weight, dtype_name = _weight(filters, layer)
        conv = ConvWeight(name=f"layer{layer.layer_id}", weight=weight, source_dtype=dtype_name)
        row, batch = layer_row(request, slug, index, len(model.layers), conv, device)
        row["conv_depth_norm"] = depth_norms[index]
        row["member_robust"] = request.robust
        rows.append(row)
        writer.add_filters(batch)
        if bar is not None:
            bar.update(layer.n_filters)


def _depth_norms(model: ReleaseModel) -> list[float]:
    """The release's conv_depth_norm per layer; where it has none, conv_depth / max conv_depth (0 for one)."""
    deepest = max(la.conv_depth for la in model.layers)
    return [la.conv_depth_norm if not math.isnan(la.conv_depth_norm) else
            (la.conv_depth / deepest if deepest > 0 else 0.0) for la in model.layers]


def conv_weight_count(model: ReleaseModel) -> int:
    """Conv weights of the model from the release's ``"(kh, kw) filters"`` counts (its 3x3 weights without them):
    the release records no other parameters."""
    total = 0
    for column, value in model.metadata.items():
        parts = column.removesuffix(" filters").strip("()").split(",") if column.endswith(") filters") else []
        if len(parts) == 2 and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                total += int(value) * int(parts[0]) * int(parts[1])
            except ValueError:
                continue
    return total or 9 * model.n_filters


def _model_row(release: Release, model: ReleaseModel, request: ModelRequest, digest: str, device: torch.device,
               started: float) -> dict:
    """The models row of an imported model (the commit's fields are added by ModelWriter.commit)."""
    return {
        "source_uri": request.source_uri,
        "checkpoint_sha256": digest,
        "checkpoint_bytes": model.n_filters * 9 * release.dtype.itemsize,
        "checkpoint_format": SOURCE_FORMAT,
        **request_fields(request),
        "arch_spec": None,
        "n_conv_layers": len(model.layers),
        "n_conv3x3_layers": len(model.layers),
        "n_params": conv_weight_count(model),
        "n_params_unused": None,
        "n_ensemble_members": 1,
        "n_members": 1,
        "depth_source": SOURCE_FORMAT,
        "input_shape": None,
        "n_nonfinite_layers": 0,
        "metadata_json": json.dumps(request.metadata, sort_keys=True, default=str),
        "device": str(device),
        "extract_seconds": time.perf_counter() - started,
    }
