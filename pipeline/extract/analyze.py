"""In-memory analysis: a model, a state dict or a checkpoint file -> its layers table, nothing written.

``pipeline.analyze`` (exported lazily from ``pipeline/__init__.py``) calls ``analyze`` here.
The rows are computed by the extractor's own functions (``ordered_convs``, ``layer_row``,
``member_positions``, ``non_robust_members``), so they are the rows ``filterlens extract``
writes for the same input: same columns (``schemas/layers.yaml``), same numbers.

* a checkpoint path (or several, an ensemble): loaded as ``extract`` loads it; with ``arch``
  bound and ordered by a forward pass, else in state-dict order;
* a state dict (or a list of them, or a wrapper such as ``{"state_dict": ...}``): the same,
  without a file;
* an ``nn.Module``: its convs in the order one forward pass on a dummy input runs them
  (``trace_convs``; ``input_shape`` or the ``dataset``'s image size). The module keeps its
  device and its train/eval mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.checkpoints.architectures import input_shape_for
from pipeline.checkpoints.load import (
    ConvWeight,
    LoadedCheckpoint,
    checkpoint_members,
    load_checkpoint,
)
from pipeline.checkpoints.trace import trace_convs
from pipeline.dataset.layout import slugify
from pipeline.dataset.schema import arrow_schema, to_table
from pipeline.errors import ConfigError, ForwardPassError
from pipeline.extract.extractor import (
    layer_row,
    member_positions,
    n_members,
    non_robust_members,
    ordered_convs,
    resolve_device,
)
from pipeline.zoo.spec import ADVERSARIAL_THREAT_MODELS, ModelRequest

ModelInput = nn.Module | Mapping | str | os.PathLike | Sequence
"""What ``analyze`` accepts: a module, a state dict (or a list of them), or checkpoint path(s)."""


def analyze(model: ModelInput, arch: str | None = None, dataset: str | None = None, *,
            input_shape: Sequence[int] | None = None, model_id: str | None = None, threat_model: str | None = None,
            robust: bool | None = None, device: str | torch.device = "auto") -> pd.DataFrame:
    """One row per conv layer with the layers table's columns, as ``filterlens extract`` computes them.

    ``dataset`` (default: the robustbench spec's, else ``unknown``) sets the dummy input's
    size and the ``dataset`` column; ``threat_model``/``robust`` set ``member_robust``.
    """
    return layers_table(model, arch, dataset, input_shape=input_shape, model_id=model_id,
                        threat_model=threat_model, robust=robust, device=device).to_pandas()


def layers_table(model: ModelInput, arch: str | None = None, dataset: str | None = None, *,
                 input_shape: Sequence[int] | None = None, model_id: str | None = None,
                 threat_model: str | None = None, robust: bool | None = None,
                 device: str | torch.device = "auto") -> pa.Table:
    """``analyze``'s rows as an Arrow table of ``schemas/layers.yaml``'s schema."""
    spec = parse_arch_spec(arch) if arch else None
    from_spec = spec if spec is not None and spec.kind == "robustbench" else None
    threat = threat_model or (from_spec.threat_model if from_spec else None) or "none"
    request = ModelRequest(
        model_id=model_id or _default_id(model), arch=arch,
        dataset=dataset or (from_spec.dataset if from_spec else None) or "unknown",
        threat_model=threat, robust=threat in ADVERSARIAL_THREAT_MODELS if robust is None else robust,
        input_shape=tuple(int(x) for x in input_shape) if input_shape else None)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    if isinstance(model, nn.Module):
        if arch:
            raise ConfigError("arch binds a state dict or a checkpoint file; a module is traced as it is")
        convs, members = _module_convs(model, request), 1
    else:
        loaded = _load(model)
        convs, members = ordered_convs(request, loaded, torch_device).convs, n_members(loaded)
    return _rows(request, convs, torch_device, members)


def _default_id(model: ModelInput) -> str:
    if isinstance(model, nn.Module):
        return type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        return Path(model).stem
    if isinstance(model, Sequence) and model and isinstance(model[0], (str, os.PathLike)):
        return Path(model[0]).stem
    return "state_dict"


def _load(model: Mapping | str | os.PathLike | Sequence) -> LoadedCheckpoint:
    """A checkpoint file (or files) loaded as ``extract`` loads it, or a state dict held in memory."""
    if isinstance(model, (str, os.PathLike)) or (
            isinstance(model, Sequence) and model and all(isinstance(p, (str, os.PathLike)) for p in model)):
        return load_checkpoint(model)
    if not isinstance(model, (Mapping, Sequence)):
        raise ConfigError(f"analyze takes an nn.Module, a state dict or checkpoint path(s), not "
                          f"{type(model).__name__}")
    loaded = LoadedCheckpoint(paths=[], format="state_dict", sha256="", n_bytes=0)
    for member, state_dict, where in checkpoint_members(model, "the state dict"):
        loaded.raw_members.append(member)
        loaded.state_dicts.append(state_dict)
        loaded.unwrap_paths.append(where)
    return loaded


def _module_convs(model: nn.Module, request: ModelRequest) -> list[ConvWeight]:
    """The module's convs in forward order, traced where the module is (its device and mode are restored)."""
    try:
        shape = request.input_shape or input_shape_for(None, request.dataset, model)
    except ForwardPassError:
        raise ConfigError(f"cannot tell the input size for dataset {request.dataset!r}: pass input_shape=(C, H, W) "
                          "or a dataset such as cifar10 or imagenet") from None
    here = next(model.parameters(), torch.empty(0)).device
    training = model.training
    try:
        return trace_convs(model, shape, here).convs
    finally:
        model.train(training)


def _rows(request: ModelRequest, convs: list[ConvWeight], device: torch.device, members: int) -> pa.Table:
    """The layers rows of ``convs``, exactly as ``extract`` computes them (members in order, depth per member)."""
    slug = slugify(request.model_id)
    convs = sorted(convs, key=lambda c: c.member)  # as _write_layers: execution order within each member
    non_robust = non_robust_members(request, members)
    rows = []
    for (index, n_conv), conv in zip(member_positions(convs), convs, strict=True):
        row, _ = layer_row(request, slug, index, n_conv, conv, device)
        row["member_robust"] = request.robust and conv.member not in non_robust
        rows.append(row)
    return to_table("layers", {k: [r.get(k) for r in rows] for k in arrow_schema("layers").names})
