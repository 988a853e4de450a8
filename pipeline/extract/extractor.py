"""Extract one model: checkpoint -> ordered conv layers -> metrics -> rows in the dataset.

``extract_model`` is the single run-one-unit function every backend calls (the
CLI's ``extract``, the local and the Ray build), so backends differ only in
scheduling. One model is the unit of work, of failure and of idempotency.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa
import torch
from tqdm import tqdm

from pipeline.checkpoints.arch_spec import ArchSpec, parse_arch_spec
from pipeline.checkpoints.bind import BindReport, non_adversarial_members
from pipeline.checkpoints.load import (
    ConvWeight,
    LoadedCheckpoint,
    load_checkpoint,
    state_dict_convs,
    suspected_transposed,
)
from pipeline.checkpoints.trace import bind_and_trace
from pipeline.checkpoints.trace_cache import cached_bind_and_trace
from pipeline.dataset.layout import slugify
from pipeline.dataset.probe_rows import commit_probes
from pipeline.dataset.schema import arrow_schema, to_table
from pipeline.dataset.store import DatasetStore
from pipeline.dataset.writer import ModelWriter
from pipeline.digest import sha256_of_files, sha256_of_files_soon
from pipeline.errors import ConfigError, NoConvWeightsError, ProbeError, ProbeUnavailableError
from pipeline.extract.filter_rows import filter_batch
from pipeline.extract.metrics import (
    filter_columns,
    flatten_filters,
    layer_metrics,
    weight_statistics,
)
from pipeline.extract.probe_stage import needs_probe, probe_ordered
from pipeline.extract.row_update import update_row
from pipeline.extract.threads import layer_loop_threads, torch_threads
from pipeline.probe.config import ProbeConfig
from pipeline.zoo.spec import ModelRequest

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    """Summary of one model's extraction (also used for skipped models)."""

    model_id: str
    skipped: bool
    checkpoint_sha256: str
    n_conv_layers: int = 0
    n_filters: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    updated: list[str] | None = None
    """For a skipped model: the row fields rewritten with new metadata."""
    probed: bool = False
    """Whether probe rows were committed for the model by this call."""
    probe_failure: dict | None = None
    """The failures row of a probe that failed (the extraction itself is committed)."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; an explicit ``cuda`` without a GPU is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def _num_classes(state_dicts: Sequence[dict[str, torch.Tensor]]) -> int | None:
    """Output size of the last 2D weight: the classifier of a plain classification checkpoint."""
    last = [v for k, v in state_dicts[0].items() if v.ndim == 2 and k.endswith("weight")]
    return int(last[-1].shape[0]) if last else None


@dataclass
class OrderedConvs:
    convs: list[ConvWeight]
    depth_source: str
    n_params: int
    n_params_unused: int | None
    input_shape: tuple[int, ...] | None
    bind_report: BindReport | None
    model: torch.nn.Module | None = None
    """The bound model (forward order only): what the probe runs."""


def ordered_convs(request: ModelRequest, loaded: LoadedCheckpoint, device: torch.device,
                  trace_cache: bool = False) -> OrderedConvs:
    """The model's 2D convs in execution order (forward pass), ONNX graph order, or state-dict order.

    With ``trace_cache`` a forward order may come from pipeline/checkpoints/trace_cache.py, built from
    nothing: then ``model`` is None, so callers that run the model (the probe) leave it off.
    """
    if loaded.onnx_convs is not None:
        if request.arch:
            log.warning("%s: --arch is ignored for ONNX checkpoints (the graph gives the order)", request.model_id)
        return OrderedConvs(loaded.onnx_convs, "onnx_graph", loaded.onnx_n_params, None, None, None)
    if not request.arch:
        convs, n_params = state_dict_convs(loaded.state_dicts)
        _warn_transposed(request.model_id, convs)
        return OrderedConvs(convs, "state_dict", n_params, None, None, None)
    spec: ArchSpec = parse_arch_spec(request.arch)
    num_classes = _num_classes(loaded.state_dicts) if spec.kind in ("timm", "torchvision") else None
    bind = cached_bind_and_trace if trace_cache else bind_and_trace
    bound = bind(spec, loaded.state_dicts, loaded.raw_members, device, dataset=request.dataset,
                 input_shape=request.input_shape, num_classes=num_classes)
    traced = bound.traced
    return OrderedConvs(traced.convs, "forward", traced.n_params, traced.n_params_unused, bound.input_shape,
                        bound.report, bound.model)


def _warn_transposed(model_id: str, convs: list[ConvWeight]) -> None:
    """One warning per model when state-dict convs look transposed: without --arch they count as Conv2d."""
    names = suspected_transposed(convs)
    if names:
        log.warning("%s: %d 4-D weights look like transposed/up-sampling convs (%s); without --arch their "
                    "shapes cannot tell them from Conv2d, so they are kept as ordinary convs; pass --arch to "
                    "keep only nn.Conv2d", model_id, len(names), ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def extract_model(request: ModelRequest, store: DatasetStore, device: str | torch.device = "auto",
                  force: bool = False, progress: bool = True, probe: ProbeConfig | None = None) -> ExtractResult:
    """Extract one model into ``store``; skip it when already complete with the same checkpoint digest.

    Raises a FilterlensError subclass on bad input; nothing of a failed model is
    committed, and a previously committed version stays intact. With ``probe``, the
    bound model is also probed (pipeline/probe/): its rows are committed with the
    model, or on their own for a complete model not yet probed under these settings;
    a probe that fails is recorded in failures/ (stage probe) and the extraction kept.
    """
    started = time.perf_counter()
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    digest, hashing = _digest_now_or_later(request, store, force)
    if digest and not force and store.is_complete(request.model_id, digest[0]):
        updated = update_row(store, request.model_id, request)
        if updated is not None:  # same bytes: only new metadata, written into the row (or nothing to do)
            log.debug("%s: already complete (sha256 %s)%s", request.model_id, digest[0][:12],  # callers report it
                     f"; updated {', '.join(updated)}" if updated else ", skipping")
            result = ExtractResult(request.model_id, True, digest[0], device=str(torch_device), updated=updated)
            stored = store.stored_model(request.model_id)
            if stored is not None and needs_probe(probe, stored.probe_config):
                _probe_committed(request, store, probe, torch_device, digest, stored.write_id, result)
            return result
        log.info("%s: the training dataset or robust flag changed: extracting again", request.model_id)

    loaded = load_checkpoint(request.checkpoints, digest=digest, hash_files=hashing is None)
    ordered = ordered_convs(request, loaded, torch_device, trace_cache=probe is None)  # the probe runs the model
    n_conv = len(ordered.convs)
    if not ordered.convs:
        raise NoConvWeightsError(f"{request.model_id}: no 2D convolution ran in the forward pass of {request.arch}")
    writer = ModelWriter(store, request.model_id, request.dataset)
    probe_error: ProbeError | None = None
    try:
        with torch_threads(layer_loop_threads(torch_device)):
            layers, counts = _write_layers(request, ordered.convs, writer, torch_device, progress, n_members(loaded))
        probes, example = None, None
        if probe is not None:
            try:
                probes, example = probe_ordered(request.model_id, request.dataset, ordered.model, ordered.convs,
                                                ordered.input_shape, store, probe, torch_device)
            except ProbeError as exc:
                probe_error = exc
        if hashing is not None:
            loaded.sha256, loaded.n_bytes = hashing() or sha256_of_files(request.checkpoints)
        writer.commit(layers, _model_row(request, loaded, ordered, counts, torch_device, started), probes=probes,
                      probe_example=example)
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - started
    log.debug("%s: %d conv layers, %d 3x3 filters in %.2fs on %s", request.model_id, n_conv, writer.n_filters,
             seconds, torch_device)
    result = ExtractResult(request.model_id, False, loaded.sha256, n_conv, writer.n_filters, seconds,
                           str(torch_device), probed=probe is not None and probe_error is None)
    if probe_error is not None:
        result.probe_failure = _record_probe_failure(store, request, probe_error)
    return result


def _probe_committed(request: ModelRequest, store: DatasetStore, probe: ProbeConfig, device: torch.device,
                     digest: tuple[str, int] | None, write_id: str, result: ExtractResult) -> None:
    """Probe a model that is already committed and commit only its probe rows (recording a failed probe)."""
    try:
        if not request.arch:
            raise ProbeUnavailableError(f"{request.model_id}: only models with an architecture (--arch, the zoo's "
                                        f"arch) can be probed")
        loaded = load_checkpoint(request.checkpoints, digest=digest)
        ordered = ordered_convs(request, loaded, device)
        probes, example = probe_ordered(request.model_id, request.dataset, ordered.model, ordered.convs,
                                        ordered.input_shape, store, probe, device)
    except ProbeError as exc:
        result.probe_failure = _record_probe_failure(store, request, exc)
        return
    if commit_probes(store, request.model_id, write_id, probes, example) is None:
        log.warning("%s: re-extracted by another writer while it was probed: its probe rows were not committed",
                    request.model_id)
        return
    store.clear_failure(slugify(request.model_id))
    result.probed = True


def _record_probe_failure(store: DatasetStore, request: ModelRequest, exc: ProbeError) -> dict:
    log.error("%s", exc)
    return store.record_failure(request.model_id, request.dataset,
                                request.source_uri or " ".join(request.checkpoints), exc)


def _digest_now_or_later(request: ModelRequest, store: DatasetStore, force: bool
                         ) -> tuple[tuple[str, int] | None, Callable[[], tuple[str, int] | None] | None]:
    """(digest, None) when a skip decision needs it now; (None, wait) when nothing complete could be skipped
    (``force``, or no complete model): the files are then hashed in a thread while the model is extracted."""
    if request.digest is None and (force or not store.is_complete(request.model_id)):
        hashing = sha256_of_files_soon(request.checkpoints)
        if hashing is not None:
            return None, hashing
    return _known_digest(request), None


def _known_digest(request: ModelRequest) -> tuple[str, int] | None:
    """The request's (sha256, bytes), else that of its local files; None when a file is not local."""
    if request.digest is not None:
        return request.digest
    if all(os.path.isfile(p) for p in request.checkpoints):
        return sha256_of_files(request.checkpoints)
    return None


def n_members(loaded: LoadedCheckpoint) -> int:
    """Ensemble members of a loaded checkpoint: its state dicts (1 for a single model or ONNX)."""
    return max(1, len(loaded.state_dicts))


@dataclass
class _LayerCounts:
    n_conv3x3: int = 0
    n_nonfinite_layers: int = 0


def non_robust_members(request: ModelRequest, n_members: int) -> set[int]:
    """Members of an ensemble that were not adversarially trained: RobustBench's known ones (by the
    ``robustbench:`` spec's name, or a ``robustbench/<dataset>/<threat>/<name>`` model_id) and the zoo
    entry's ``metadata.non_robust_members`` (member indices)."""
    if request.arch and request.arch.startswith("robustbench:"):
        name = parse_arch_spec(request.arch).name
    else:
        parts = request.model_id.split("/")
        name = parts[-1] if len(parts) == 4 and parts[0] == "robustbench" else ""
    declared = request.metadata.get("non_robust_members") or []
    if not isinstance(declared, list) or not all(isinstance(i, int) and 0 <= i < n_members for i in declared):
        raise ConfigError(f"{request.model_id}: metadata.non_robust_members must list member indices "
                          f"0..{n_members - 1}, not {declared!r}")
    return ({i for i in non_adversarial_members(name) if i < n_members} if name else set()) | set(declared)


def member_positions(convs: Sequence[ConvWeight]) -> list[tuple[int, int]]:
    """(conv_index, conv layers of the member) of each conv: execution order counted per ensemble member."""
    sizes: dict[int, int] = {}
    indices = []
    for conv in convs:
        indices.append(sizes.get(conv.member, 0))
        sizes[conv.member] = indices[-1] + 1
    return [(index, sizes[conv.member]) for index, conv in zip(indices, convs, strict=True)]


def _write_layers(request: ModelRequest, convs: list[ConvWeight], writer: ModelWriter, device: torch.device,
                  progress: bool, members: int) -> tuple[pa.Table, _LayerCounts]:
    """Compute every layer's row (members in order), hand 3x3 layers' filter rows to ``writer``; return the
    layers table."""
    slug = slugify(request.model_id)
    convs = sorted(convs, key=lambda c: c.member)  # stable: execution order within each member
    non_robust = non_robust_members(request, members)
    layer_rows: list[dict] = []
    counts = _LayerCounts()
    for (index, n_conv), conv in zip(member_positions(convs), tqdm(
            convs, desc=request.model_id, unit="layer", leave=False, disable=None if progress else True), strict=True):
        row, batch = layer_row(request, slug, index, n_conv, conv, device)
        row["member_robust"] = request.robust and conv.member not in non_robust
        layer_rows.append(row)
        if batch is not None:
            counts.n_conv3x3 += 1
            counts.n_nonfinite_layers += row["n_nonfinite"] > 0
            writer.add_filters(batch)
    layers = to_table("layers", {k: [r.get(k) for r in layer_rows] for k in arrow_schema("layers").names})
    return layers, counts


REQUEST_FIELDS = ("threat_model", "robust", "architecture", "clean_acc", "robust_acc", "eps", "extra_data", "paper",
                  "venue")
"""The models columns a request gives as they are (extraction and imports alike)."""


def request_fields(request: ModelRequest) -> dict:
    """The ``REQUEST_FIELDS`` of a request, for its models row."""
    return {name: getattr(request, name) for name in REQUEST_FIELDS}


def _model_row(request: ModelRequest, loaded: LoadedCheckpoint, ordered: OrderedConvs, counts: _LayerCounts,
               device: torch.device, started: float) -> dict:
    """The models-table row of one extraction (``started``: its perf_counter start, for extract_seconds)."""
    metadata = {**request.metadata, "unwrap_paths": loaded.unwrap_paths}
    if ordered.bind_report is not None:
        metadata["binding"] = asdict(ordered.bind_report)
    return {
        "source_uri": request.source_uri or " ".join(loaded.paths),
        "checkpoint_sha256": loaded.sha256,
        "checkpoint_bytes": loaded.n_bytes,
        "checkpoint_format": loaded.format,
        **request_fields(request),
        "arch_spec": str(parse_arch_spec(request.arch)) if request.arch and loaded.onnx_convs is None else None,
        "n_conv_layers": len(ordered.convs),
        "n_conv3x3_layers": counts.n_conv3x3,
        "n_params": ordered.n_params,
        "n_params_unused": ordered.n_params_unused,
        "n_ensemble_members": n_members(loaded),
        "n_members": n_members(loaded),
        "depth_source": ordered.depth_source,
        "input_shape": "x".join(map(str, (1, *ordered.input_shape))) if ordered.input_shape else None,
        "n_nonfinite_layers": counts.n_nonfinite_layers,
        "metadata_json": json.dumps(metadata, sort_keys=True, default=str),
        "device": str(device),
        "extract_seconds": time.perf_counter() - started,
    }


def layer_row(request: ModelRequest, slug: str, index: int, n_conv: int, conv: ConvWeight,
              device: torch.device) -> tuple[dict, pa.RecordBatch | None]:
    """One layers-table row, and the layer's filter rows when it is 3x3 (also used by pipeline/filterdb/)."""
    weight = conv.weight
    c_out, c_in_group, kh, kw = (int(x) for x in weight.shape)
    row = {
        "model_id": request.model_id,
        "dataset": request.dataset,
        "model": slug,
        "member": conv.member,
        "layer_name": conv.name,
        "conv_index": index,
        "conv_depth_norm": index / (n_conv - 1) if n_conv > 1 else 0.0,
        "in_channels": c_in_group * (conv.groups or 1),
        "out_channels": c_out,
        "groups": conv.groups,
        "kernel_h": kh,
        "kernel_w": kw,
        "n_filters": c_out * c_in_group,
        "stride": conv.stride,
        "dilation": conv.dilation,
        "has_bias": conv.has_bias,
        "weight_dtype": conv.source_dtype or _dtype_name(weight.dtype),
    }
    on_device = weight.detach().to(device)
    if (kh, kw) != (3, 3):
        n_nonfinite = int((~torch.isfinite(on_device)).sum().item())
        row["n_nonfinite"] = n_nonfinite
        if not n_nonfinite and on_device.numel():
            row["weight_abs_max"], row["weight_mean"], row["weight_std"] = weight_statistics(on_device)
        return row, None
    columns = filter_columns(flatten_filters(on_device))  # shared by the maxima and the filters rows
    metrics, sparse = layer_metrics(on_device, columns=columns)
    row.update(asdict(metrics))
    return row, filter_batch(request.model_id, request.dataset, slug, index, weight, sparse, conv.member, columns)


def run_one(request: ModelRequest, store: DatasetStore, device: str | torch.device = "auto",
            force: bool = False, progress: bool = True) -> ExtractResult:
    """extract_model, recording a failures row when it raises (then re-raising)."""
    started = time.perf_counter()
    try:
        return extract_model(request, store, device=device, force=force, progress=progress)
    except Exception as exc:  # expected errors and bugs alike leave a row in failures/
        store.record_failure(request.model_id, request.dataset, request.source_uri or " ".join(request.checkpoints),
                             exc, duration_s=time.perf_counter() - started)
        raise
