"""Order a network's 2D convs by one dummy forward pass; ``bind_and_trace`` builds, binds and traces."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.checkpoints.arch_spec import ArchSpec
from pipeline.checkpoints.architectures import input_shape_for, instantiate
from pipeline.checkpoints.bind import (
    BindReport,
    bind_members,
    materialize_meta_tensors,
    member_submodules,
)
from pipeline.checkpoints.load import ConvWeight
from pipeline.errors import ArchitectureBuildError, ArchitectureMismatchError, ForwardPassError

log = logging.getLogger(__name__)


def _fmt_pair(value: object) -> str | None:
    if isinstance(value, (tuple, list)):
        return "x".join(str(int(v)) for v in value)
    if isinstance(value, int):
        return f"{value}x{value}"
    return None


@dataclass
class TraceResult:
    convs: list[ConvWeight]
    n_params: int
    n_params_unused: int


def trace_convs(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> TraceResult:
    """Run one forward pass on a seeded dummy input and return the 2D convs in the order they ran.

    A conv that never runs is not part of the dataset; a conv that runs twice
    (weight sharing) counts once, at its first call. Parameters of modules that
    never ran are counted as unused.
    """
    model = _to_device(model, device).eval()
    names = {m: n for n, m in model.named_modules()}
    executed: set[nn.Module] = set()
    order: list[nn.Module] = []

    def pre_hook(module: nn.Module, _inputs: object) -> None:
        if module not in executed:
            executed.add(module)
            if isinstance(module, nn.Conv2d):
                order.append(module)

    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules()]
    generator = torch.Generator().manual_seed(0)
    dummy = torch.randn((1, *input_shape), generator=generator).to(device)
    try:
        with torch.no_grad():
            model(dummy)
    except Exception as exc:
        raise ForwardPassError(
            f"the dummy forward pass with input 1x{'x'.join(map(str, input_shape))} failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "pass --input-shape or check --arch") from None
    finally:
        for handle in handles:
            handle.remove()

    n_params, n_unused = _count_params(model, executed)
    convs = [ConvWeight(name=names[m] or "<root>", weight=m.weight.detach(), groups=int(m.groups),
                        stride=_fmt_pair(m.stride), dilation=_fmt_pair(m.dilation), has_bias=m.bias is not None)
             for m in order]
    return TraceResult(convs=convs, n_params=n_params, n_params_unused=n_unused)


def _to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model.to(device)``; on meta (a shape-only trace) 0-dim tensors stay real, so control flow that reads
    scalars (mixing weights, thresholds) still runs, and plain tensor attributes (constants the zoo's code
    keeps outside buffers) move too."""
    if device.type != "meta":
        return model.to(device)
    model._apply(lambda t: t if t.dim() == 0 else t.to(device))
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                setattr(module, name, value.to(device))
    return model


def _count_params(model: nn.Module, executed: set[nn.Module]) -> tuple[int, int]:
    """(all parameters, those of modules that never ran), each shared tensor counted once."""
    seen: set[int] = set()
    n_params = n_unused = 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            n_params += param.numel()
            if module not in executed:
                n_unused += param.numel()
    return n_params, n_unused


@dataclass
class BoundModel:
    traced: TraceResult
    report: BindReport
    input_shape: tuple[int, ...]
    model: nn.Module | None = None
    """The bound model itself (on the trace's device), for stages that run it (the probe)."""
    bound_weights: list[torch.Tensor] | None = None
    """Each traced conv's weight as bound, before the trace moved it to its device (for the trace cache)."""


def bind_and_trace(spec: ArchSpec, state_dicts: Sequence[Mapping[str, torch.Tensor]], raw_members: Sequence[object],
                   device: torch.device, dataset: str | None = None, input_shape: tuple[int, ...] | None = None,
                   num_classes: int | None = None) -> BoundModel:
    """Build ``spec``, bind the weights, and trace the conv order.

    The model is first built with its weights on the meta device (no memory, no random
    initialisation: the weights come from the checkpoint); code that cannot run that way
    falls back to an ordinary build, and so does binding or a forward pass that fails on
    the meta-built model. Mismatches between checkpoint and architecture are raised either way.
    On ``device`` meta the trace is shape-only (no weight gets real storage).
    """
    model, on_meta = build_for_binding(spec, num_classes)
    try:
        return _bind_and_trace(model, spec, state_dicts, raw_members, device, dataset, input_shape)
    except ArchitectureMismatchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a meta-build artefact gets one ordinary build
        if not on_meta or device.type == "meta":
            raise
        log.debug("binding or tracing the meta-built %s failed (%s); building it normally", spec, exc)
    model = instantiate(spec, num_classes=num_classes)
    return _bind_and_trace(model, spec, state_dicts, raw_members, device, dataset, input_shape)


def build_for_binding(spec: ArchSpec, num_classes: int | None = None) -> tuple[nn.Module, bool]:
    """(model, built on meta): a meta build, or an ordinary one when the architecture's code cannot run on meta.

    Only when both fail is an ArchitectureBuildError raised, with the ordinary build's cause.
    """
    try:
        return instantiate(spec, num_classes=num_classes, on_meta=True), True
    except ArchitectureBuildError as exc:
        log.debug("meta-device build of %s failed (%s); building it normally", spec, exc)
    return instantiate(spec, num_classes=num_classes), False


def _bind_and_trace(model: nn.Module, spec: ArchSpec, state_dicts: Sequence[Mapping[str, torch.Tensor]],
                    raw_members: Sequence[object], device: torch.device, dataset: str | None,
                    input_shape: tuple[int, ...] | None) -> BoundModel:
    report = bind_members(model, spec, state_dicts, raw_members)
    if device.type != "meta":
        materialize_meta_tensors(model)
    shape = input_shape or input_shape_for(spec, dataset, model)
    as_bound = {name: m.weight for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    traced = trace_convs(model, shape, device)
    assign_members(model, traced.convs, member_submodules(model, spec, len(state_dicts)))
    for conv in traced.convs:
        conv.source_dtype = report.source_dtypes.get(f"{conv.name}.weight")
    bound_weights = [as_bound["" if conv.name == "<root>" else conv.name] for conv in traced.convs]
    return BoundModel(traced, report, shape, model, bound_weights)


def assign_members(model: nn.Module, convs: Sequence[ConvWeight], submodules: Sequence[Sequence[str]]) -> None:
    """Set each conv's ``member``: the ensemble member whose submodule (``submodules[i]``) holds its module.

    Modules are matched by identity, not name: a member may be reachable under two names
    (``branch1`` and ``models.0``), and ``named_modules`` gives each module its first one.
    A conv outside every member got its weights from no checkpoint: ArchitectureMismatchError.
    """
    if len(submodules) <= 1:
        return
    owner: dict[int, int] = {}
    for member, paths in enumerate(submodules):
        for path in paths:
            for module in model.get_submodule(path).modules():
                owner.setdefault(id(module), member)
    for conv in convs:
        member = owner.get(id(model if conv.name == "<root>" else model.get_submodule(conv.name)))
        if member is None:
            raise ArchitectureMismatchError(
                f"conv {conv.name} runs but belongs to none of the ensemble members' submodules "
                f"({', '.join(p for paths in submodules for p in paths)}), so no checkpoint gave its weights")
        conv.member = member
