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
from pipeline.checkpoints.trace import trace_convs
from pipeline.errors import ArchitectureMismatchError, ForwardPassError, UnknownArchitectureError


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
