"""Bind checkpoint state dicts to a built network, strictly for parameters, and RobustBench's quirks.

RobustBench helpers live here because binding needs its ensemble layouts and
tolerated keys, and building and the zoo need its import and timm naming.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.checkpoints.arch_spec import ArchSpec
from pipeline.checkpoints.load import strip_prefix
from pipeline.errors import ArchitectureMismatchError

# RobustBench multi-file ensembles whose members are not simply ``models.<i>``:
# each item is the submodule a member binds to, or a mapping from a key of the
# member's checkpoint to a submodule (mirrors robustbench.utils.load_model).
ENSEMBLE_LAYOUTS: dict[str, list[str | dict[str, str]]] = {
    "Bai2023Improving": ["comp_model.models.0", "comp_model.models.1",
                         {"model": "comp_model.policy_net", "bn": "comp_model.bn"}],
    "Bai2024MixedNUTS": ["std_model", "rob_model"],
}

# Members of RobustBench ensembles that were not adversarially trained, by entry-name prefix: the
# accurate base classifier (a normally trained BiT ResNet-152x2, or ConvNeXt V2-L on ImageNet) that
# MixedNUTS and adaptive smoothing mix with a robust one. Adaptive smoothing's mixing network
# (member 2 of Bai2023Improving) is trained on adversarial examples, so it counts as robust.
NON_ADVERSARIAL_MEMBERS: dict[str, tuple[int, ...]] = {
    "Bai2023Improving": (0,),
    "Bai2024MixedNUTS": (0,),
}

# Keys RobustBench itself tolerates as unexpected for some zoo checkpoints.
TOLERATED_UNEXPECTED = re.compile(r"(^model_preact_hl1\.|\.scores$)")


_STRIPS = ("", "module.", "model.", "module.model.", "model.module.", "net.", "network.", "backbone.")
_ADDS = ("", "model.", "module.")


def align_keys(state_dict: Mapping[str, torch.Tensor], target_keys: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Re-prefix checkpoint keys to match the model's: the strip/add pair matching the most keys wins.

    Returns (aligned state dict, description such as ``strip 'model.'``).
    """
    best, best_score, best_desc = dict(state_dict), -1, "as is"
    for strip in _STRIPS:
        stripped = strip_prefix(state_dict, strip) if strip else dict(state_dict)
        for add in _ADDS:
            candidate = {add + k: v for k, v in stripped.items()} if add else stripped
            score = len(target_keys.intersection(candidate))
            if score > best_score:
                desc = " ".join(p for p in (f"strip {strip!r}" if strip else "", f"add {add!r}" if add else "") if p)
                best, best_score, best_desc = candidate, score, desc or "as is"
    return best, best_desc


def _sample(keys: Sequence[str] | set[str], n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


@dataclass
class BindReport:
    """What binding did: prefix changes and the buffers the checkpoint lacked (left at their defaults)."""

    alignments: list[str] = field(default_factory=list)
    missing_buffers: list[str] = field(default_factory=list)
    tolerated_unexpected: list[str] = field(default_factory=list)
    source_dtypes: dict[str, str] = field(default_factory=dict)
    """Checkpoint dtype of tensors cast to the module's dtype (key as bound, e.g. ``models.0.conv1.weight``)."""


def bind_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str,
                    report: BindReport, tolerate_unexpected: bool = False) -> None:
    """Load ``state_dict`` into ``module`` strictly for parameters.

    Missing parameters, unexpected keys and shape mismatches raise
    ArchitectureMismatchError listing them; missing buffers (e.g. input
    normalisation constants some zoo checkpoints omit) are recorded in ``report``.
    A checkpoint that fits only after timm's own ``checkpoint_filter_fn`` (an older timm
    layout, or the official XCiT/DeiT keys; robustbench.load_model and timm apply the
    same filters) is converted with it.
    """
    target = module.state_dict()
    aligned, desc, tolerated = _fitting_keys(module, state_dict, target, where, tolerate_unexpected)
    missing = set(target) - set(aligned)
    report.tolerated_unexpected += tolerated
    report.alignments.append(f"{where}: {desc}")
    prefix = "" if where == "model" else f"{where}."
    report.missing_buffers += [prefix + k for k in sorted(missing)]
    loadable = {}
    for key, value in aligned.items():
        if key not in target:
            continue
        if value.dtype != target[key].dtype and value.is_floating_point():
            report.source_dtypes[prefix + key] = str(value.dtype).removeprefix("torch.")
            value = value.to(target[key].dtype)
        loadable[key] = value
    # assign: the module takes the checkpoint's tensors themselves (no copy; works on meta modules)
    module.load_state_dict(loadable, strict=False, assign=True)


def _timm_model_in(module: nn.Module) -> tuple[str, nn.Module, Callable] | None:
    """The outermost timm model inside ``module`` (itself, or e.g. RobustBench's ``normalize``-wrapped ``model``),
    with its module's ``checkpoint_filter_fn``."""
    for name, sub in module.named_modules():
        source = sys.modules.get(type(sub).__module__)
        filter_fn = getattr(source, "checkpoint_filter_fn", None)
        if (type(sub).__module__.startswith("timm.models.") and callable(filter_fn)
                and hasattr(sub, "forward_features") and hasattr(sub, "forward_head")):
            return name, sub, filter_fn
    return None


def timm_remap(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str] | None:
    """``state_dict`` converted by timm's filter for the timm model inside ``module`` (as timm does when it
    loads pretrained weights), keyed for ``module``; None when there is none or it fails on these keys."""
    found = _timm_model_in(module)
    if found is None:
        return None
    path, inner, filter_fn = found
    local, _ = align_keys(state_dict, set(inner.state_dict()))
    try:
        filtered = filter_fn(dict(local), inner)
    except Exception:  # noqa: BLE001 - a filter that cannot read these keys does not apply
        return None
    prefix = f"{path}." if path else ""
    name = f"{type(inner).__module__}.checkpoint_filter_fn"
    return {prefix + k: v for k, v in filtered.items()}, f"remapped by {name}" + (f", add {prefix!r}" if prefix else "")


def _fitting_keys(module: nn.Module, state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                  where: str, tolerate_unexpected: bool) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(state dict keyed for ``module``, how it was re-keyed, tolerated extra keys): as is, else via timm's filter."""
    aligned, desc = align_keys(state_dict, set(target))
    try:
        return aligned, desc, _check_fit(module, aligned, target, where, tolerate_unexpected)
    except ArchitectureMismatchError:
        remapped = timm_remap(module, state_dict)
        if remapped is None:
            raise
    aligned, desc = remapped
    try:
        return aligned, desc, _check_fit(module, aligned, target, where, tolerate_unexpected)
    except ArchitectureMismatchError as after:
        raise ArchitectureMismatchError(f"{after} (also after it was {desc})") from None


def _check_fit(module: nn.Module, aligned: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
               where: str, tolerate_unexpected: bool) -> list[str]:
    """Raise ArchitectureMismatchError for missing parameters, unexpected keys or shape mismatches;
    return the unexpected keys RobustBench tolerates (when ``tolerate_unexpected``)."""
    param_names = {name for name, _ in module.named_parameters()}
    unexpected = set(aligned) - set(target)
    missing_params = (set(target) - set(aligned)) & param_names
    tolerated = sorted(k for k in unexpected if TOLERATED_UNEXPECTED.search(k)) if tolerate_unexpected else []
    unexpected -= set(tolerated)
    shape_errors = [f"{k} {tuple(aligned[k].shape)} vs {tuple(target[k].shape)}" for k in set(aligned) & set(target)
                    if aligned[k].shape != target[k].shape]
    if missing_params or unexpected or shape_errors:
        parts = []
        if missing_params:
            parts.append(f"missing {len(missing_params)} parameters: {_sample(missing_params)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_sample(unexpected)}")
        if shape_errors:
            parts.append(f"{len(shape_errors)} shape mismatches: {_sample(shape_errors, 3)}")
        raise ArchitectureMismatchError(
            f"checkpoint does not fit {where} ({'; '.join(parts)}); check --arch or the checkpoint")
    return tolerated


def bind_members(model: nn.Module, spec: ArchSpec, state_dicts: Sequence[Mapping[str, torch.Tensor]],
                 raw_members: Sequence[object]) -> BindReport:
    """Bind one state dict, or an ensemble's several, into ``model``."""
    report = BindReport()
    tolerate = spec.kind == "robustbench"
    if len(state_dicts) == 1:
        bind_state_dict(model, state_dicts[0], "model", report, tolerate)
        return report
    layout = _ensemble_layout(model, spec, len(state_dicts))
    for i, target in enumerate(layout):
        if isinstance(target, str):
            bind_state_dict(model.get_submodule(target), state_dicts[i], target, report, tolerate)
            continue
        raw = raw_members[i]
        for key, submodule in target.items():
            if not isinstance(raw, Mapping) or not isinstance(raw.get(key), Mapping):
                raise ArchitectureMismatchError(f"ensemble member {i} of {spec} lacks the {key!r} state dict")
            bind_state_dict(model.get_submodule(submodule), strip_prefix(raw[key], "module."), submodule,
                            report, tolerate)
    return report


def non_adversarial_members(name: str) -> tuple[int, ...]:
    """The members of RobustBench entry ``name`` that were not adversarially trained (empty: none known)."""
    return next((v for k, v in NON_ADVERSARIAL_MEMBERS.items() if name.startswith(k)), ())


def member_submodules(model: nn.Module, spec: ArchSpec, n_members: int) -> list[tuple[str, ...]]:
    """Per ensemble member, the submodules its state dict(s) were bound to; ``[("",)]`` for a single model."""
    if n_members == 1:
        return [("",)]
    return [(target,) if isinstance(target, str) else tuple(target.values())
            for target in _ensemble_layout(model, spec, n_members)]


def _ensemble_layout(model: nn.Module, spec: ArchSpec, n_members: int) -> list[str | dict[str, str]]:
    """Where each ensemble member binds: a known RobustBench layout, else ``models.<i>``."""
    layout = next((v for k, v in ENSEMBLE_LAYOUTS.items() if spec.kind == "robustbench" and spec.name.startswith(k)),
                  None)
    if layout is None:
        members = getattr(model, "models", None)
        if not isinstance(members, (nn.ModuleList, list)) or len(members) != n_members:
            raise ArchitectureMismatchError(
                f"{n_members} state dicts given but {spec} has no .models list of that length; "
                "an ensemble needs an architecture with one submodule per member")
        layout = [f"models.{i}" for i in range(n_members)]
    if len(layout) != n_members:
        raise ArchitectureMismatchError(f"{spec} is an ensemble of {len(layout)} members, {n_members} given")
    return layout


def materialize_meta_tensors(model: nn.Module) -> None:
    """Give tensors still on the meta device (buffers the checkpoint lacked) real storage.

    Variances and scales become ones, everything else zeros: values only matter
    for the dummy forward pass, which only has to run, not to be accurate.
    """
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in list(store.items()):
                if tensor is not None and tensor.is_meta:
                    fill = torch.ones if any(s in name for s in ("var", "std", "sigma", "scale")) else torch.zeros
                    value = fill(tensor.shape, dtype=tensor.dtype)
                    store[name] = nn.Parameter(value, requires_grad=False) if isinstance(tensor, nn.Parameter) else value
