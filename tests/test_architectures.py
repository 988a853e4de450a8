"""Architecture specs, key alignment, strict binding, and offline instantiation of zoo entries."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zoo_fixtures import tiny_net

from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.checkpoints.architectures import input_shape_for, instantiate
from pipeline.checkpoints.bind import (
    BindReport,
    align_keys,
    bind_members,
    bind_state_dict,
)
from pipeline.checkpoints.trace import bind_and_trace, build_for_binding, trace_convs
from pipeline.errors import (
    ArchitectureBuildError,
    ArchitectureMismatchError,
    ForwardPassError,
    UnknownArchitectureError,
    describe,
)


@pytest.mark.parametrize(("spec", "kind", "name"), [
    ("robustbench:cifar10:Linf:Carmon2019Unlabeled", "robustbench", "Carmon2019Unlabeled"),
    ("timm:resnet18", "timm", "resnet18"),
    ("torchvision:wide_resnet50_2", "torchvision", "wide_resnet50_2"),
    ("my_pkg.models:make_net", "module", "my_pkg.models:make_net"),
])
def test_parse_arch_spec(spec: str, kind: str, name: str) -> None:
    parsed = parse_arch_spec(spec)
    assert (parsed.kind, parsed.name, str(parsed)) == (kind, name, spec)


@pytest.mark.parametrize("spec", ["robustbench:cifar10:Carmon", "timm:", "resnet", "a:b:c", "pkg:1bad"])
def test_bad_specs_explain_the_accepted_forms(spec: str) -> None:
    with pytest.raises(UnknownArchitectureError, match="robustbench:<dataset>:<threat_model>:<name>"):
        parse_arch_spec(spec)


def test_unknown_leaderboard_and_library_models() -> None:
    with pytest.raises(UnknownArchitectureError, match="no leaderboard cifar10/Linf3"):
        instantiate(parse_arch_spec("robustbench:cifar10:Linf3:X"))
    with pytest.raises(UnknownArchitectureError, match="timm has no model"):
        instantiate(parse_arch_spec("timm:not_a_model_xyz"))
    with pytest.raises(UnknownArchitectureError, match="torchvision has no model"):
        instantiate(parse_arch_spec("torchvision:not_a_model_xyz"))
    with pytest.raises(UnknownArchitectureError, match="cannot import"):
        instantiate(parse_arch_spec("no_such_module_xyz:f"))


@pytest.mark.parametrize("spec", [
    "robustbench:cifar10:Linf:Debenedetti2022Light_XCiT-S12",  # zoo factory asks timm for pretrained=True
    "robustbench:imagenet:Linf:Standard_R50",                  # zoo factory asks torchvision for pretrained=True
])
def test_zoo_factories_that_want_pretrained_weights_build_offline(spec: str) -> None:
    model = instantiate(parse_arch_spec(spec))
    assert isinstance(model, nn.Module) and sum(p.numel() for p in model.parameters()) > 1_000_000


def test_align_keys_picks_the_prefix_change_matching_most_keys() -> None:
    target = set(tiny_net().state_dict())
    sd = {f"module.model.{k}": v for k, v in tiny_net().state_dict().items()}
    aligned, desc = align_keys(sd, target)
    assert set(aligned) == target and desc == "strip 'module.model.'"
    wrapped = {f"model.{k}" for k in target}
    aligned, desc = align_keys(tiny_net().state_dict(), wrapped)
    assert set(aligned) == wrapped and desc == "add 'model.'"


def test_bind_counts_missing_parameters_exactly_and_records_missing_buffers() -> None:
    class WithBuffer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_net()
            self.register_buffer("mean", torch.zeros(3))

    model = WithBuffer()
    sd = {k: v for k, v in model.state_dict().items() if k not in ("net.conv1.weight", "net.fc.bias", "mean")}
    with pytest.raises(ArchitectureMismatchError, match=r"missing 2 parameters: net\.conv1\.weight, net\.fc\.bias\)"):
        bind_state_dict(model, sd, "model", BindReport())
    report = BindReport()
    sd = {k: v for k, v in model.state_dict().items() if k != "mean"}
    bind_state_dict(model, sd, "model", report)
    assert report.missing_buffers == ["mean"]


def test_bind_loads_the_values() -> None:
    source, target = tiny_net(), tiny_net()
    bind_state_dict(target, {f"module.{k}": v for k, v in source.state_dict().items()}, "model", BindReport())
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)


def test_robustbench_tolerates_only_its_known_extra_keys() -> None:
    spec = parse_arch_spec("robustbench:cifar10:Linf:Carmon2019Unlabeled")
    sd = {**tiny_net().state_dict(), "conv1.scores": torch.zeros(8, 3, 3, 3)}
    report = bind_members(tiny_net(), spec, [sd], [sd])
    assert report.tolerated_unexpected == ["conv1.scores"]
    with pytest.raises(ArchitectureMismatchError, match="unexpected 1 keys: other"):
        bind_members(tiny_net(), spec, [{**sd, "other": torch.zeros(1)}], [sd])


def test_ensemble_needs_a_member_per_state_dict() -> None:
    spec = parse_arch_spec("zoo_fixtures:tiny_ensemble")
    from zoo_fixtures import tiny_ensemble

    with pytest.raises(ArchitectureMismatchError, match="3 state dicts given"):
        bind_members(tiny_ensemble(), spec, [tiny_net().state_dict()] * 3, [{}] * 3)


def test_input_shapes() -> None:
    assert input_shape_for(None, "cifar100") == (3, 32, 32)
    assert input_shape_for(parse_arch_spec("robustbench:imagenet:Linf:Salman2020Do_R18"), None) == (3, 224, 224)
    with pytest.raises(ForwardPassError, match="--input-shape"):
        input_shape_for(None, "my-private-data", tiny_net())


def test_forward_failure_is_a_clear_error() -> None:
    with pytest.raises(ForwardPassError, match="dummy forward pass with input 1x5x8x8 failed"):
        trace_convs(tiny_net(), (5, 8, 8), torch.device("cpu"))


def test_weight_sharing_counts_a_conv_once_at_first_use() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(self.b(self.a(x)))

    traced = trace_convs(Shared(), (3, 8, 8), torch.device("cpu"))
    assert [c.name for c in traced.convs] == ["a", "b"] and traced.n_params_unused == 0


# --- building on meta, and the fallback to an ordinary build ------------------------------------------------
class _ReadsItsWeights(nn.Module):
    """Reads a weight value while it is built (as some zoo code does), so it cannot be built on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)  # 1728 weights: large enough to go to meta
        self.fc = nn.Linear(64, 10)
        self.norm = float(self.conv.weight.abs().sum().item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def reads_its_weights() -> nn.Module:
    return _ReadsItsWeights()


def broken_factory() -> nn.Module:
    raise RuntimeError("no kernel image is available for execution on the device")


def test_large_parameters_go_to_meta_small_ones_and_buffers_stay_real() -> None:
    model = instantiate(parse_arch_spec("zoo_fixtures:tiny_net"), on_meta=True)
    meta = {n for n, p in model.named_parameters() if p.is_meta}
    assert meta == {"conv3.weight", "unused.weight"}  # 1152 and 2304 weights; the others are below 1024
    issue_example = instantiate(parse_arch_spec("robustbench:imagenet:Linf:Singh2023Revisiting_ConvNeXt-T-ConvStem"),
                                on_meta=True)  # failed with "Cannot copy out of meta tensor" under torch.device("meta")
    assert sum(p.numel() for p in issue_example.parameters()) == 28_627_432  # as built normally
    assert not any(b.is_meta for b in issue_example.buffers())


def test_a_meta_build_failure_falls_back_to_an_ordinary_build() -> None:
    spec = parse_arch_spec("test_architectures:reads_its_weights")
    with pytest.raises(ArchitectureBuildError, match=r"^building test_architectures:reads_its_weights failed: "
                                                     r"RuntimeError: Tensor.item\(\) cannot be called on meta"):
        instantiate(spec, on_meta=True)
    model, on_meta = build_for_binding(spec)
    assert not on_meta and not any(p.is_meta for p in model.parameters())
    source = reads_its_weights()
    bound = bind_and_trace(spec, [source.state_dict()], [{}], torch.device("cpu"), dataset="cifar10")
    assert [c.name for c in bound.traced.convs] == ["conv"]
    assert torch.equal(bound.traced.convs[0].weight, source.conv.weight)


def test_when_both_builds_fail_the_error_names_the_real_cause() -> None:
    spec = parse_arch_spec("test_architectures:broken_factory")
    with pytest.raises(ArchitectureBuildError) as caught:
        bind_and_trace(spec, [tiny_net().state_dict()], [{}], torch.device("cpu"), dataset="cifar10")
    assert str(caught.value) == ("building test_architectures:broken_factory failed: RuntimeError: "
                                 "no kernel image is available for execution on the device")
    assert not isinstance(caught.value, UnknownArchitectureError)
    assert describe(caught.value) == ("bind", "ArchitectureBuildError", False)
    assert ArchitectureBuildError.exit_code == UnknownArchitectureError.exit_code == 3
    with pytest.raises(UnknownArchitectureError, match="robustbench cifar10/Linf has no model 'NoSuch'"):
        bind_and_trace(parse_arch_spec("robustbench:cifar10:Linf:NoSuch"), [{}], [{}], torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_zoo_code_that_calls_cuda_builds_without_a_gpu() -> None:
    original = torch.Tensor.cuda
    model = instantiate(parse_arch_spec("robustbench:cifar10:Linf:Bai2023Improving_edm"), on_meta=True)
    assert model.comp_model.models[0].mean.device.type == "cpu"  # BiT's constants, .cuda() in its constructor
    assert model.comp_model.alpha_scale.item() == pytest.approx(0.04)  # small parameters keep their values
    assert torch.Tensor.cuda is original  # restored afterwards


def test_a_shape_only_trace_keeps_scalars_real() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)
            self.b = nn.Conv2d(4, 4, 1)
            self.register_buffer("skip_b", torch.tensor(1))
            self.scale = torch.full((1, 3, 1, 1), 2.0)  # a plain tensor attribute, outside the buffers

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x * self.scale)
            return x if self.skip_b else self.b(x)

    traced = trace_convs(Gated(), (3, 8, 8), torch.device("meta"))
    assert [c.name for c in traced.convs] == ["a"] and traced.convs[0].weight.is_meta
    assert traced.n_params_unused == 4 * 4 + 4


# --- RobustBench's key remaps: timm's checkpoint filters --------------------------------------------------------
def test_an_old_timm_swin_layout_is_remapped_like_robustbench_does() -> None:
    from test_catalog_bind import old_swin_layout

    model = instantiate(parse_arch_spec("robustbench:imagenet:Linf:Liu2023Comprehensive_Swin-B"), on_meta=True)
    stored = old_swin_layout({k.removeprefix("model."): v for k, v in model.state_dict().items()
                              if k.startswith("model.")})
    assert "layers.0.downsample.reduction.weight" in stored and "head.weight" in stored
    stored["layers.0.downsample.reduction.weight"] = reduction = torch.randn(256, 512)
    report = BindReport()
    bind_state_dict(model, stored, "model", report)
    assert report.alignments == ["model: remapped by timm.models.swin_transformer.checkpoint_filter_fn, add 'model.'"]
    assert report.missing_buffers == ["normalize.mean", "normalize.std"]
    assert torch.equal(model.model.layers[1].downsample.reduction.weight, reduction)
    stored.pop("layers.0.downsample.reduction.weight")
    with pytest.raises(ArchitectureMismatchError, match=r"missing 1 parameters: model\.layers\.1\.downsample\."
                                                        r"reduction\.weight\);.*\(also after it was remapped by"):
        bind_state_dict(model, stored, "model", BindReport())


class _KeepsAWeightCopy(nn.Module):
    """Keeps a plain-attribute copy of a weight made while being built: meta on a meta build, so its forward fails."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.template = self.conv.weight.detach()[:1].clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.template.sum()


def keeps_a_weight_copy() -> nn.Module:
    return _KeepsAWeightCopy()


def test_a_forward_pass_that_fails_on_the_meta_build_is_retried_on_an_ordinary_build(
        caplog: pytest.LogCaptureFixture) -> None:
    spec = parse_arch_spec("test_architectures:keeps_a_weight_copy")
    assert build_for_binding(spec)[1]  # builds on meta ...
    source = keeps_a_weight_copy()
    with caplog.at_level("DEBUG", logger="pipeline.checkpoints.trace"):
        bound = bind_and_trace(spec, [source.state_dict()], [{}], torch.device("cpu"), dataset="cifar10")
    assert [c.name for c in bound.traced.convs] == ["conv"]  # ... but traces on the ordinary build
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "binding or tracing the meta-built test_architectures:keeps_a_weight_copy failed"]
