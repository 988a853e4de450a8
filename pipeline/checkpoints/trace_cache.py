"""A cache of forward-order traces: the second extraction of an architecture builds nothing.

Binding and tracing a ``robustbench:``, ``timm:`` or ``torchvision:`` spec imports those
libraries (robustbench alone takes seconds) and builds the network, only to learn which
checkpoint tensor each executed conv uses, in which order, and a few counts. That answer
depends on nothing but the key below, so it is stored (a small JSON file under
``$FILTERLENS_CACHE/traces``, default ``~/.cache/filterlens/traces``) and, on a hit, the
convs are taken straight from the loaded state dicts: no robustbench, timm or torchvision
import, no model.

The key: the spec, the installed versions of robustbench, timm, torchvision and torch (read
from package metadata, without importing them), ``num_classes``, the dataset and requested
input shape (they choose the dummy input), and the checkpoint's signature (every key, shape
and dtype of each state dict, and the layout of raw ensemble members). A changed version or
a checkpoint with another layout misses. Only traces whose every conv weight *is* a
checkpoint tensor (no cast, no remap) are stored, so a hit gives the same bytes; module
specs (``<module>:<factory>``, code that can change under the same name) are never cached,
and neither are shape-only (meta device) traces. ``FILTERLENS_TRACE_CACHE=0`` turns it off.
A caller that needs the bound model itself (the probe) does not use the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch

from pipeline.checkpoints.arch_spec import ArchSpec
from pipeline.checkpoints.bind import BindReport
from pipeline.checkpoints.load import ConvWeight
from pipeline.checkpoints.trace import BoundModel, TraceResult, bind_and_trace

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHED_KINDS = ("robustbench", "timm", "torchvision")
VERSIONED_PACKAGES = ("robustbench", "timm", "torchvision", "torch")


def trace_cache_dir() -> Path | None:
    """Where traces are cached; None when ``FILTERLENS_TRACE_CACHE`` turns the cache off."""
    if os.environ.get("FILTERLENS_TRACE_CACHE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    root = os.environ.get("FILTERLENS_CACHE") or str(Path.home() / ".cache" / "filterlens")
    return Path(root) / "traces"


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages an architecture's code comes from (metadata only: nothing imported)."""
    versions: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _layout(value: object, depth: int = 0) -> object:
    """Keys, shapes and dtypes of a (nested) mapping of tensors; other values by type."""
    if isinstance(value, torch.Tensor):
        return [list(value.shape), str(value.dtype).removeprefix("torch.")]
    if isinstance(value, Mapping) and depth < 3:
        return [[str(k), _layout(v, depth + 1)] for k, v in value.items()]
    return type(value).__name__


def checkpoint_signature(state_dicts: Sequence[Mapping[str, torch.Tensor]], raw_members: Sequence[object]) -> str:
    """sha256 of every state dict's keys, shapes and dtypes (in order) and of the raw members' layout."""
    layout = {"state_dicts": [_layout(sd) for sd in state_dicts],
              "raw_members": [_layout(m) for m in raw_members]}
    return hashlib.sha256(json.dumps(layout, separators=(",", ":")).encode()).hexdigest()


def cache_key(spec: ArchSpec, state_dicts: Sequence[Mapping[str, torch.Tensor]], raw_members: Sequence[object],
              dataset: str | None, input_shape: tuple[int, ...] | None, num_classes: int | None) -> dict:
    """Everything a trace depends on."""
    return {"format": CACHE_FORMAT, "spec": str(spec), "versions": package_versions(), "num_classes": num_classes,
            "dataset": dataset, "input_shape": list(input_shape) if input_shape else None,
            "checkpoint": checkpoint_signature(state_dicts, raw_members)}


def _key_path(root: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return root / f"{digest[:40]}.json"


def _tensor_id(t: torch.Tensor) -> tuple:
    return (t.device.type, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _sources(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[tuple, tuple[int, str]]:
    found: dict[tuple, tuple[int, str]] = {}
    for i, sd in enumerate(state_dicts):
        for key, value in sd.items():
            if isinstance(value, torch.Tensor) and value.numel():
                found.setdefault(_tensor_id(value), (i, key))
    return found


def _entry(bound: BoundModel, bound_weights: Sequence[torch.Tensor],
           state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict | None:
    """The cache entry of a trace, or None when some conv weight is not a checkpoint tensor as it is."""
    sources = _sources(state_dicts)
    convs = []
    for conv, weight in zip(bound.traced.convs, bound_weights, strict=True):
        source = sources.get(_tensor_id(weight)) if weight.numel() else None
        if source is None or conv.source_dtype is not None:
            return None
        convs.append({"name": conv.name, "source": list(source), "groups": conv.groups, "stride": conv.stride,
                      "dilation": conv.dilation, "has_bias": conv.has_bias, "member": conv.member})
    return {"convs": convs, "n_params": bound.traced.n_params, "n_params_unused": bound.traced.n_params_unused,
            "input_shape": list(bound.input_shape), "report": asdict(bound.report)}


def _from_entry(entry: dict, state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> BoundModel:
    convs = []
    for c in entry["convs"]:
        member_dict, key = c["source"]
        convs.append(ConvWeight(name=c["name"], weight=state_dicts[member_dict][key].detach(), groups=c["groups"],
                                stride=c["stride"], dilation=c["dilation"], has_bias=c["has_bias"],
                                member=c["member"]))
    traced = TraceResult(convs=convs, n_params=entry["n_params"], n_params_unused=entry["n_params_unused"])
    return BoundModel(traced, BindReport(**entry["report"]), tuple(entry["input_shape"]), None)


def _read(path: Path, key: dict) -> dict | None:
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.debug("unreadable trace cache entry %s (%s): tracing again", path, exc)
        return None
    return stored.get("entry") if isinstance(stored, dict) and stored.get("key") == key else None


def _write(path: Path, key: dict, entry: dict) -> None:
    """Write-then-rename, so concurrent extractions never read half an entry; a failure only costs the cache."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": key, "entry": entry}, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not write the trace cache entry %s (%s)", path, exc)
        tmp.unlink(missing_ok=True)


def cached_bind_and_trace(spec: ArchSpec, state_dicts: Sequence[Mapping[str, torch.Tensor]],
                          raw_members: Sequence[object], device: torch.device, dataset: str | None = None,
                          input_shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> BoundModel:
    """``bind_and_trace`` through the cache: on a hit the result has ``model`` None and nothing was built."""
    root = trace_cache_dir()
    if root is None or spec.kind not in CACHED_KINDS or device.type == "meta":
        return bind_and_trace(spec, state_dicts, raw_members, device, dataset=dataset, input_shape=input_shape,
                              num_classes=num_classes)
    key = cache_key(spec, state_dicts, raw_members, dataset, input_shape, num_classes)
    path = _key_path(root, key)
    entry = _read(path, key)
    if entry is not None:
        try:
            bound = _from_entry(entry, state_dicts)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            log.debug("trace cache entry %s does not fit (%s): tracing again", path, exc)
        else:
            log.debug("%s: forward order from the trace cache (%s)", spec, path.name)
            return bound
    bound = bind_and_trace(spec, state_dicts, raw_members, device, dataset=dataset, input_shape=input_shape,
                           num_classes=num_classes)
    entry = _entry(bound, bound.bound_weights, state_dicts)
    if entry is not None:
        _write(path, key, entry)
    else:
        log.debug("%s: a conv weight is not a checkpoint tensor as is (cast or remapped): trace not cached", spec)
    return bound
