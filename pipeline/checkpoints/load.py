"""Safe checkpoint loading: bytes on disk -> state dicts (or ONNX conv weights).

Supported formats: PyTorch zip and legacy pickles (``.pt/.pth/.ckpt/.bin``),
safetensors and ONNX. Pickles are always read with ``torch.load(weights_only=True)``
plus a short allow-list of harmless globals, so a checkpoint that would need
arbitrary code to unpickle is refused and its code never runs.

The zoo's wrappers are unwrapped here: nested ``state_dict``/``model``/``net``/
``last``/``best`` keys, ``module.`` (DataParallel) prefixes, and ensembles given
as several files or as a list of state dicts in one file.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.digest import sha256_of_files
from pipeline.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NoConvWeightsError,
    NotACheckpointError,
    UnsafeCheckpointError,
)

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "last", "best",
                "ema", "model_ema", "state", "params", "weights", "module")
"""Keys under which checkpoints nest their state dict, in order of preference
(RobustBench takes ``last`` over ``best``)."""



def _safe_globals() -> list:
    """Globals that plain training checkpoints pickle and that run no code when unpickled."""
    allowed: list = [argparse.Namespace, np.ndarray, np.dtype]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    allowed += [_reconstruct, scalar]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool", "uint8")]
    allowed.append(torch.torch_version.TorchVersion)
    return allowed


@dataclass
class ConvWeight:
    """One 2D convolution's weight with what is known about the layer."""

    name: str
    weight: torch.Tensor
    groups: int | None = None
    stride: str | None = None
    dilation: str | None = None
    has_bias: bool | None = None
    source_dtype: str | None = None
    """dtype in the checkpoint when the weight was cast on binding (else the weight's own)."""
    member: int = 0
    """0-based ensemble member the layer belongs to (0 for a single model)."""


@dataclass
class LoadedCheckpoint:
    """What a checkpoint (one or several files) holds, ready for binding or direct extraction."""

    paths: list[str]
    format: str
    sha256: str
    n_bytes: int
    state_dicts: list[dict[str, torch.Tensor]] = field(default_factory=list)
    raw_members: list[object] = field(default_factory=list)
    onnx_convs: list[ConvWeight] | None = None
    onnx_n_params: int = 0
    unwrap_paths: list[str] = field(default_factory=list)


def detect_format(path: str | os.PathLike) -> str:
    """torch-zip, torch-legacy, safetensors or onnx, from the file's first bytes (and name for ONNX)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(f"{path}: the file is empty (an interrupted download?); fetch it again")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-legacy"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    hint = ""
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype", b"<html", b"<?xml")):
        hint = " (it looks like an HTML page: a failed or redirected download?)"
    elif lowered.startswith((b"{", b"[")):
        hint = " (it looks like JSON text)"
    raise NotACheckpointError(  # never quote the bytes: the file may be anything (a key, /etc/shadow)
        f"{path}: not a checkpoint: it starts with bytes that are not a zip, pickle, safetensors or ONNX header{hint}"
    )


def _torch_load(path: Path, fmt: str) -> object:
    """torch.load with weights_only=True, mapping its failures to our error classes."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=(fmt == "torch-zip"))
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "not an allowed global" in text:
            detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line),
                          text.splitlines()[0] if text else "")
            raise UnsafeCheckpointError(
                f"{path}: refusing to unpickle code-bearing objects ({detail}); "
                "the file must hold tensors only - re-save it with torch.save(model.state_dict())"
            ) from None
        raise CorruptCheckpointError(f"{path}: the pickle is damaged ({text.splitlines()[0] if text else exc})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, struct.error, KeyError, IndexError,
            TypeError, AttributeError, OverflowError, MemoryError) as exc:  # what damaged pickles raise (fuzzed)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptCheckpointError(
            f"{path}: truncated or damaged {fmt} checkpoint ({type(exc).__name__}: {first[:120]}); download it again"
        ) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptCheckpointError(f"{path}: damaged safetensors file ({exc}); download it again") from None


def _is_tensor_map(obj: object) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: object, where: str = "") -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict inside a loaded checkpoint object: (state dict, path of keys taken).

    A mapping whose values are mostly tensors is a state dict; otherwise the first
    of WRAPPER_KEYS that leads to one is followed; otherwise the only nested
    mapping that leads to one. Non-tensor entries of a state dict are dropped.
    """
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return {str(k): v for k, v in tensors.items()}, where or "."
        candidates = [k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)]
        candidates += [k for k, v in obj.items() if k not in candidates and isinstance(v, Mapping)]
        for key in candidates:
            try:
                return unwrap_state_dict(obj[key], f"{where}/{key}" if where else str(key))
            except NoConvWeightsError:
                continue
    raise NoConvWeightsError(f"no state dict (mapping of names to tensors) found{' under ' + where if where else ''}")


def split_ensemble(obj: object) -> list[object] | None:
    """The members of a one-file ensemble (a list/tuple of state dicts or wrappers), else None."""
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(m, Mapping) for m in obj):
        return list(obj)
    return None


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that starts with it (e.g. DataParallel's ``module.``)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _onnx_convs(path: Path) -> tuple[list[ConvWeight], int]:
    """Conv weights of an ONNX graph in node (topological = execution) order, and the float parameter count."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends from protobuf
        raise CorruptCheckpointError(f"{path}: damaged ONNX file ({type(exc).__name__}: {exc}); export it again") from None
    graph = model.graph
    tensors: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    aliases: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type == "Identity" and node.input:
            aliases[node.output[0]] = node.input[0]

    def resolve(name: str) -> np.ndarray | None:
        seen = 0
        while name in aliases and seen < 64:
            name, seen = aliases[name], seen + 1
        return tensors.get(name)

    convs: list[ConvWeight] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        weight = resolve(node.input[1])
        if weight is None or weight.ndim != 4 or not np.issubdtype(weight.dtype, np.floating):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        strides = attrs.get("strides", [1, 1])
        dilations = attrs.get("dilations", [1, 1])
        convs.append(ConvWeight(
            name=node.name or f"{node.input[1]}#{index}",
            weight=torch.from_numpy(np.array(weight, dtype=weight.dtype, copy=True)),
            groups=int(attrs.get("group", 1)),
            stride="x".join(str(int(s)) for s in strides),
            dilation="x".join(str(int(d)) for d in dilations),
            has_bias=len(node.input) > 2 and bool(node.input[2]),
        ))
    n_params = sum(int(t.size) for t in tensors.values() if np.issubdtype(t.dtype, np.floating))
    return convs, n_params


def load_checkpoint(paths: str | os.PathLike | Sequence[str | os.PathLike],
                    digest: tuple[str, int] | None = None, hash_files: bool = True) -> LoadedCheckpoint:
    """Load one checkpoint file, or several files that form one ensemble, safely.

    ``digest`` is the (sha256, bytes) of the files when the caller already has it. With
    ``hash_files=False`` and no digest, ``sha256`` is left empty for the caller to fill in
    (``extract_model`` hashes in a thread while it extracts).

    Raises CheckpointNotFoundError, NotACheckpointError, CorruptCheckpointError,
    UnsafeCheckpointError or NoConvWeightsError with a one-line explanation.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise CheckpointNotFoundError("no checkpoint file given")
    for path in paths:
        if not path.is_file():
            raise CheckpointNotFoundError(f"{path}: no such checkpoint file")
    formats = [detect_format(p) for p in paths]
    sha256, n_bytes = digest or (sha256_of_files(paths) if hash_files else ("", 0))
    loaded = LoadedCheckpoint(paths=[str(p) for p in paths], format=formats[0], sha256=sha256, n_bytes=n_bytes)

    if "onnx" in formats:
        if len(paths) > 1:
            raise NotACheckpointError("ONNX models cannot be combined into an ensemble; pass one .onnx file")
        loaded.onnx_convs, loaded.onnx_n_params = _onnx_convs(paths[0])
        if not loaded.onnx_convs:
            raise NoConvWeightsError(f"{paths[0]}: the ONNX graph has no Conv node with 4D float weights")
        return loaded

    for path, fmt in zip(paths, formats, strict=True):
        obj = _load_safetensors(path) if fmt == "safetensors" else _torch_load(path, fmt)
        for member, state_dict, where in checkpoint_members(obj, str(path)):
            loaded.raw_members.append(member)
            loaded.state_dicts.append(state_dict)
            loaded.unwrap_paths.append(where)
    if not any(conv_weight_keys(sd) for sd in loaded.state_dicts):
        raise NoConvWeightsError(
            f"{', '.join(map(str, paths))}: no 4D convolution weights among "
            f"{sum(len(sd) for sd in loaded.state_dicts)} tensors; is this a CNN checkpoint?"
        )
    return loaded


def checkpoint_members(obj: object, source: str) -> list[tuple[object, dict[str, torch.Tensor], str]]:
    """(raw member, state dict without ``module.`` prefixes, unwrap path) of each model in one loaded file.

    A file holds one model, or a one-file ensemble as a list of state dicts or wrappers.
    """
    members = []
    for member in split_ensemble(obj) or [obj]:
        try:
            state_dict, where = unwrap_state_dict(member)
        except NoConvWeightsError:
            raise NoConvWeightsError(
                f"{source}: holds no state dict (found {type(member).__name__}"
                f"{' with keys ' + ', '.join(map(str, list(member)[:8])) if isinstance(member, Mapping) else ''})"
            ) from None
        members.append((member, strip_prefix(state_dict, "module."), where))
    return members


def conv_weight_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of 2D conv weights in state-dict order: 4D floating tensors named ``...weight``.

    Falls back to every 4D floating tensor when none is named ``weight``.
    """
    four_d = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.ndim == 4
              and v.is_floating_point()]
    named = [k for k in four_d if k.rsplit(".", 1)[-1] == "weight"]
    return named or four_d


TRANSPOSED_NAME = re.compile(r"transpose|deconv|upconv|upsampl|(^|[._])up(\d*|_[a-z0-9]*)(\.|$)", re.IGNORECASE)
"""Layer names that suggest a transposed (up-sampling) convolution, e.g. ``decoder.deconv1`` or ``up.0``."""


def suspected_transposed(convs: Sequence[ConvWeight]) -> list[str]:
    """Names of state-dict convs that look like ConvTranspose2d layers (shapes alone cannot tell them apart)."""
    return [c.name for c in convs if TRANSPOSED_NAME.search(c.name)]


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def state_dict_convs(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> tuple[list[ConvWeight], int]:
    """Conv weights in state-dict order when no architecture is known, and the parameter count.

    Ensemble members are prefixed ``members.<i>.`` and numbered by the state dict they
    came from (file, or list item); BatchNorm running statistics do not count as parameters.
    """
    convs: list[ConvWeight] = []
    n_params = 0
    for i, sd in enumerate(state_dicts):
        prefix = f"members.{i}." if len(state_dicts) > 1 else ""
        for key in conv_weight_keys(sd):
            name = key[: -len(".weight")] if key.endswith(".weight") else key
            bias_key = f"{name}.bias"
            convs.append(ConvWeight(name=prefix + name, weight=sd[key], has_bias=bias_key in sd, member=i))
        n_params += sum(v.numel() for k, v in sd.items() if isinstance(v, torch.Tensor)
                        and v.is_floating_point() and not k.endswith(BUFFER_SUFFIXES))
    return convs, n_params
