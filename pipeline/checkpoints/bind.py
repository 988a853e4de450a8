"""Architecture specs: instantiate a network (no download), bind weights, order convs by a forward pass.

Spec forms accepted by ``--arch``:

* ``robustbench:<dataset>:<threat_model>:<name>`` - an entry of the installed
  RobustBench model zoo, e.g. ``robustbench:cifar10:Linf:Carmon2019Unlabeled``;
* ``timm:<name>`` and ``torchvision:<name>`` - randomly initialised models of
  those libraries (``pretrained`` is never requested);
* ``<python.module>:<factory>`` - your own code: ``factory()`` returns the model.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.checkpoints.arch_spec import ArchSpec
from pipeline.checkpoints.load import ConvWeight, strip_prefix
from pipeline.errors import ArchitectureMismatchError, ForwardPassError, UnknownArchitectureError

log = logging.getLogger(__name__)

DATASET_INPUT_SHAPES = {
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
    "tinyimagenet": (3, 64, 64),
    "imagenet": (3, 224, 224),
    "mnist": (1, 28, 28),
}

# RobustBench multi-file ensembles whose members are not simply ``models.<i>``:
# each item is the submodule a member binds to, or a mapping from a key of the
# member's checkpoint to a submodule (mirrors robustbench.utils.load_model).
ENSEMBLE_LAYOUTS: dict[str, list[str | dict[str, str]]] = {
    "Bai2023Improving": ["comp_model.models.0", "comp_model.models.1",
                         {"model": "comp_model.policy_net", "bn": "comp_model.bn"}],
    "Bai2024MixedNUTS": ["std_model", "rob_model"],
}

# Keys RobustBench itself tolerates as unexpected for some zoo checkpoints.
TOLERATED_UNEXPECTED = re.compile(r"(^model_preact_hl1\.|\.scores$)")


def import_robustbench():  # noqa: ANN201 - returns the robustbench model_zoo module
    """Import robustbench 1.1.1, working around its packaging snags.

    It imports ``autoattack`` while its dependency installs ``pyautoattack``, and
    imports ``pkg_resources`` (deprecated; needs setuptools < 81).
    """
    if "autoattack" not in sys.modules:
        with contextlib.suppress(ImportError):
            sys.modules["autoattack"] = importlib.import_module("pyautoattack")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from robustbench.model_zoo import models as zoo
        except ImportError as exc:
            raise UnknownArchitectureError(f"robustbench is not importable here ({exc}); pip install robustbench==1.1.1") from None
    return zoo


def robustbench_entry(dataset: str, threat_model: str, name: str) -> dict:
    """The zoo dict of one RobustBench entry (``model`` factory, ``gdrive_id``, ...)."""
    zoo = import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        models = zoo.model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    except (ValueError, KeyError):
        raise UnknownArchitectureError(
            f"robustbench has no leaderboard {dataset}/{threat_model}; datasets: "
            f"{[d.value for d in BenchmarkDataset]}, threat models: {[t.value for t in ThreatModel]}") from None
    if name not in models:
        close = [n for n in models if n.lower().startswith(name.lower()[:6])][:5]
        raise UnknownArchitectureError(
            f"robustbench {dataset}/{threat_model} has no model {name!r}"
            f"{'; did you mean ' + ', '.join(close) if close else ''}")
    return models[name]


def robustbench_timm_name(spec: ArchSpec) -> str | None:
    """The timm model name robustbench.load_model uses for a zoo entry, when timm has it."""
    import timm

    name = f"{spec.name.lower().replace('-', '_')}_{spec.dataset.lower()}_{spec.threat_model.lower()}"
    return name if timm.is_model(name) else None


@contextlib.contextmanager
def _no_pretrained_downloads() -> Iterator[None]:
    """Make zoo factories build random-init models: pretrained=True is turned off and hub downloads fail."""
    import timm
    import torchvision

    original_create = timm.create_model

    def create_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        kwargs["pretrained"] = False
        return original_create(*args, **kwargs)

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise UnknownArchitectureError("the architecture factory tried to download weights")

    patches = [(timm, "create_model", create_model), (torch.hub, "load_state_dict_from_url", refuse)]
    originals = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    tv_models = torchvision.models
    original_builders = {}
    for builder_name in ("resnet50", "resnet18", "wide_resnet50_2", "alexnet"):
        builder = getattr(tv_models, builder_name, None)
        if builder is not None:
            original_builders[builder_name] = builder

            def wrapped(*args, _b=builder, **kwargs):  # noqa: ANN002, ANN003, ANN202
                kwargs.pop("pretrained", None)
                kwargs["weights"] = None
                return _b(*args, **kwargs)

            setattr(tv_models, builder_name, wrapped)
    try:
        for obj, attr, value in patches:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in originals:
            setattr(obj, attr, value)
        for builder_name, builder in original_builders.items():
            setattr(tv_models, builder_name, builder)


def instantiate(spec: ArchSpec, num_classes: int | None = None, on_meta: bool = False) -> nn.Module:
    """Build the (randomly initialised) network named by ``spec``; never downloads weights.

    ``on_meta`` builds it on PyTorch's meta device: no memory and no random
    initialisation, for models whose weights are about to be replaced anyway.
    """
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        return _build(spec, num_classes)


def _build(spec: ArchSpec, num_classes: int | None) -> nn.Module:
    try:
        if spec.kind == "robustbench":
            entry = robustbench_entry(spec.dataset, spec.threat_model, spec.name)
            timm_name = robustbench_timm_name(spec)
            if timm_name:  # robustbench.load_model serves these through timm, as we do
                import timm
                from robustbench.model_zoo.enums import BenchmarkDataset
                from robustbench.utils import DATASET_CLASSES

                return timm.create_model(timm_name, pretrained=False,
                                         num_classes=DATASET_CLASSES[BenchmarkDataset(spec.dataset)])
            with _no_pretrained_downloads(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return entry["model"]()
        if spec.kind == "timm":
            import timm

            if not timm.is_model(spec.name):
                raise UnknownArchitectureError(f"timm has no model {spec.name!r} (see timm.list_models())")
            kwargs = {"num_classes": num_classes} if num_classes else {}
            return timm.create_model(spec.name, pretrained=False, **kwargs)
        if spec.kind == "torchvision":
            import torchvision

            try:
                kwargs = {"num_classes": num_classes} if num_classes else {}
                return torchvision.models.get_model(spec.name, weights=None, **kwargs)
            except ValueError:
                raise UnknownArchitectureError(
                    f"torchvision has no model {spec.name!r} (see torchvision.models.list_models())") from None
        module_name, factory_name = spec.name.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownArchitectureError(f"cannot import {module_name!r} for --arch {spec} ({exc})") from None
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise UnknownArchitectureError(f"{module_name} has no callable {factory_name!r} for --arch {spec}")
        model = factory()
        if not isinstance(model, nn.Module):
            raise UnknownArchitectureError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
        return model
    except UnknownArchitectureError:
        raise
    except Exception as exc:
        raise UnknownArchitectureError(f"building {spec} failed: {type(exc).__name__}: {exc}") from None


def input_shape_for(spec: ArchSpec | None, dataset: str | None, model: nn.Module | None = None) -> tuple[int, ...]:
    """(C, H, W) of the dummy input: the dataset's image size, or the timm model's default config."""
    if spec is not None and spec.kind == "robustbench" and spec.dataset in DATASET_INPUT_SHAPES:
        return DATASET_INPUT_SHAPES[spec.dataset]
    if dataset and dataset.lower() in DATASET_INPUT_SHAPES:
        return DATASET_INPUT_SHAPES[dataset.lower()]
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, Mapping) and "input_size" in cfg:
        return tuple(int(x) for x in cfg["input_size"])
    raise ForwardPassError(
        f"cannot tell the input size for dataset {dataset!r}; pass --input-shape CxHxW (e.g. 3x32x32)")


# --- binding ------------------------------------------------------------------------------

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
    """
    target = module.state_dict()
    aligned, desc = align_keys(state_dict, set(target))
    report.alignments.append(f"{where}: {desc}")
    param_names = {name for name, _ in module.named_parameters()}
    missing = set(target) - set(aligned)
    unexpected = set(aligned) - set(target)
    missing_params = missing & param_names
    if tolerate_unexpected:
        report.tolerated_unexpected += sorted(k for k in unexpected if TOLERATED_UNEXPECTED.search(k))
        unexpected = {k for k in unexpected if not TOLERATED_UNEXPECTED.search(k)}
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


def bind_members(model: nn.Module, spec: ArchSpec, state_dicts: Sequence[Mapping[str, torch.Tensor]],
                 raw_members: Sequence[object]) -> BindReport:
    """Bind one state dict, or an ensemble's several, into ``model``."""
    report = BindReport()
    tolerate = spec.kind == "robustbench"
    if len(state_dicts) == 1:
        bind_state_dict(model, state_dicts[0], "model", report, tolerate)
        return report
    layout = next((v for k, v in ENSEMBLE_LAYOUTS.items() if spec.kind == "robustbench" and spec.name.startswith(k)),
                  None)
    if layout is None:
        members = getattr(model, "models", None)
        if not isinstance(members, (nn.ModuleList, list)) or len(members) != len(state_dicts):
            raise ArchitectureMismatchError(
                f"{len(state_dicts)} state dicts given but {spec} has no .models list of that length; "
                "an ensemble needs an architecture with one submodule per member")
        layout = [f"models.{i}" for i in range(len(state_dicts))]
    if len(layout) != len(state_dicts):
        raise ArchitectureMismatchError(f"{spec} is an ensemble of {len(layout)} members, {len(state_dicts)} given")
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


# --- forward-order tracing ----------------------------------------------------------------

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
    model = model.to(device).eval()
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
    convs = [ConvWeight(name=names[m] or "<root>", weight=m.weight.detach(), groups=int(m.groups),
                        stride=_fmt_pair(m.stride), dilation=_fmt_pair(m.dilation), has_bias=m.bias is not None)
             for m in order]
    return TraceResult(convs=convs, n_params=n_params, n_params_unused=n_unused)


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


@dataclass
class BoundModel:
    traced: TraceResult
    report: BindReport
    input_shape: tuple[int, ...]


def bind_and_trace(spec: ArchSpec, state_dicts: Sequence[Mapping[str, torch.Tensor]], raw_members: Sequence[object],
                   device: torch.device, dataset: str | None = None, input_shape: tuple[int, ...] | None = None,
                   num_classes: int | None = None) -> BoundModel:
    """Build ``spec``, bind the weights, and trace the conv order.

    The model is first built on the meta device (no random initialisation: the
    weights come from the checkpoint); code that cannot run that way falls back
    to an ordinary build. Mismatches between checkpoint and architecture are
    raised either way.
    """
    last_error: Exception | None = None
    for on_meta in (True, False):
        try:
            model = instantiate(spec, num_classes=num_classes, on_meta=on_meta)
            report = bind_members(model, spec, state_dicts, raw_members)
            if on_meta:
                materialize_meta_tensors(model)
            shape = input_shape or input_shape_for(spec, dataset, model)
            traced = trace_convs(model, shape, device)
            for conv in traced.convs:
                conv.source_dtype = report.source_dtypes.get(f"{conv.name}.weight")
            return BoundModel(traced, report, shape)
        except (ArchitectureMismatchError, UnknownArchitectureError):
            raise
        except Exception as exc:  # noqa: BLE001 - retried once without the meta device
            if not on_meta:
                raise
            log.debug("meta-device build of %s failed (%s); building it normally", spec, exc)
            last_error = exc
    raise ForwardPassError(str(last_error))
