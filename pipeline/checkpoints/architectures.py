"""Build the network an architecture spec names, randomly initialised and without downloading weights.

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
import io
import warnings
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pipeline.checkpoints.arch_spec import ArchSpec
from pipeline.checkpoints.robustbench import robustbench_entry, robustbench_timm_name
from pipeline.errors import ArchitectureBuildError, ForwardPassError, UnknownArchitectureError

DATASET_INPUT_SHAPES = {
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
    "tinyimagenet": (3, 64, 64),
    "imagenet": (3, 224, 224),
    "mnist": (1, 28, 28),
}


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
        raise ArchitectureBuildError("the architecture factory tried to download weights")

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


META_MIN_NUMEL = 1024
"""Parameters this large are created on the meta device by ``instantiate(on_meta=True)``; smaller ones
(scales, biases, mixing weights) stay real, so construction code that reads them still runs."""


@contextlib.contextmanager
def _large_parameters_on_meta() -> Iterator[None]:
    """Move every large parameter to the meta device as it is registered; buffers and computations stay real.

    Unlike ``torch.device("meta")``, construction-time arithmetic (drop-path schedules, index
    tables, ``.item()`` calls) still runs, while the memory and the random initialisation of
    the weights, which the checkpoint replaces anyway, are skipped.
    """
    original = nn.Module.register_parameter

    def register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if type(param) is nn.Parameter and not param.is_meta and param.numel() >= META_MIN_NUMEL:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register_parameter
    try:
        with _SkipInPlaceOnMeta():
            yield
    finally:
        nn.Module.register_parameter = original


class _SkipInPlaceOnMeta(TorchFunctionMode):
    """Initialisers' in-place ops on meta tensors change nothing but run slow Python meta kernels: skip them."""

    OPS = frozenset({"uniform_", "normal_", "trunc_normal_", "erfinv_", "mul_", "add_", "sub_", "div_", "clamp_",
                     "clamp_min_", "clamp_max_", "fill_", "zero_", "copy_", "exponential_", "bernoulli_", "random_",
                     "log_normal_", "geometric_", "cauchy_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        if getattr(func, "__name__", "") in self.OPS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _cuda_calls_stay_on_cpu() -> Iterator[None]:
    """Without a GPU, make ``.cuda()`` in zoo constructors a no-op (e.g. BiT's normalisation constants)."""
    if torch.cuda.is_available():
        yield
        return
    originals = (torch.Tensor.cuda, nn.Module.cuda)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = originals  # type: ignore[method-assign]


def instantiate(spec: ArchSpec, num_classes: int | None = None, on_meta: bool = False) -> nn.Module:
    """Build the (randomly initialised) network named by ``spec``; never downloads weights.

    ``on_meta`` puts its large parameters on PyTorch's meta device: no memory and no random
    initialisation, for models whose weights are about to be replaced anyway. Raises
    UnknownArchitectureError when the spec names nothing known, ArchitectureBuildError when
    the architecture's own code fails.
    """
    with _large_parameters_on_meta() if on_meta else contextlib.nullcontext(), _cuda_calls_stay_on_cpu():
        return _build(spec, num_classes)


def _build(spec: ArchSpec, num_classes: int | None) -> nn.Module:
    """Dispatch on the spec's kind; a failure of a known architecture's code becomes an ArchitectureBuildError."""
    try:
        if spec.kind == "robustbench":
            return _build_robustbench(spec)
        if spec.kind == "timm":
            return _build_timm(spec, num_classes)
        if spec.kind == "torchvision":
            return _build_torchvision(spec, num_classes)
        return _build_from_module(spec)
    except UnknownArchitectureError:
        raise
    except ArchitectureBuildError as exc:
        raise ArchitectureBuildError(f"building {spec} failed: {exc}") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ArchitectureBuildError(f"building {spec} failed: {type(exc).__name__}: {first}") from exc


def _build_robustbench(spec: ArchSpec) -> nn.Module:
    """A RobustBench zoo entry: through timm where robustbench.load_model uses timm, else its own factory."""
    entry = robustbench_entry(spec.dataset, spec.threat_model, spec.name)
    timm_name = robustbench_timm_name(spec)
    if timm_name:  # robustbench.load_model serves these through timm, as we do
        import timm
        from robustbench.model_zoo.enums import BenchmarkDataset
        from robustbench.utils import DATASET_CLASSES

        return timm.create_model(timm_name, pretrained=False,
                                 num_classes=DATASET_CLASSES[BenchmarkDataset(spec.dataset)])
    with _no_pretrained_downloads(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # and their prints (parameter counts) are silenced
        return entry["model"]()


def _build_timm(spec: ArchSpec, num_classes: int | None) -> nn.Module:
    import timm

    if not timm.is_model(spec.name):
        raise UnknownArchitectureError(f"timm has no model {spec.name!r} (see timm.list_models())")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    return timm.create_model(spec.name, pretrained=False, **kwargs)


def _build_torchvision(spec: ArchSpec, num_classes: int | None) -> nn.Module:
    import torchvision

    if spec.name not in torchvision.models.list_models():
        raise UnknownArchitectureError(
            f"torchvision has no model {spec.name!r} (see torchvision.models.list_models())")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    return torchvision.models.get_model(spec.name, weights=None, **kwargs)


def _build_from_module(spec: ArchSpec) -> nn.Module:
    """``<python.module>:<factory>``: import the module and call the factory."""
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
