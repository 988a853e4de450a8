"""Every entry of the installed RobustBench zoo binds and traces, from a state dict in the layout RobustBench stores.

For each checkpoint of the catalog the test builds the entry's architecture (no download), writes its
weights the way RobustBench's files hold them (wrappers, ``module.``/``model.`` prefixes, inner models
without the normalisation wrapper, old timm layouts, ensembles in several files) and runs them through
the real path: ``checkpoint_members`` (unwrapping) and ``bind_and_trace`` for every leaderboard the
checkpoint is ranked on. Weights stay on the meta device (shape-only) wherever the forward pass allows;
the four whose forward pass needs values run on CPU (TRACED_ON_CPU).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.checkpoints.arch_spec import ArchSpec
from pipeline.checkpoints.load import checkpoint_members
from pipeline.checkpoints.robustbench import robustbench_entry, robustbench_timm_name
from pipeline.checkpoints.trace import BoundModel, bind_and_trace, build_for_binding
from pipeline.zoo.robustbench import robustbench_catalog

MODEL_INFO = Path(__file__).parent / "data" / "robustbench_model_info.jsonl"
TOTAL_ENTRIES = 206
"""Entries of the installed robustbench 1.1.1 zoo (all datasets and threat models)."""

EXCEPTIONS: dict[str, str] = {}
"""``dataset/threat_model/name`` -> why it cannot bind and trace here (listed in README.md)."""

_MIXEDNUTS_CPU = "its logit maps call .cpu() on the logits, which a meta tensor cannot do"
TRACED_ON_CPU: dict[str, str] = {
    "cifar10/Linf/Kang2021Stable": "torchdiffeq's adaptive ODE solver reads activation values (.item())",
    "cifar10/Linf/Bai2024MixedNUTS": _MIXEDNUTS_CPU,
    "cifar100/Linf/Bai2024MixedNUTS": _MIXEDNUTS_CPU,
    "imagenet/Linf/Bai2024MixedNUTS": _MIXEDNUTS_CPU,
}
"""Entries whose forward pass needs real values: traced on CPU (meta weights become zeros); all others shape-only."""

WITHOUT_3X3 = {f"imagenet/{board}" for board in (
    "Linf/Liu2023Comprehensive_ConvNeXt-B", "Linf/Liu2023Comprehensive_ConvNeXt-L", "Linf/Amini2024MeanSparse_ConvNeXt-L",
    "Linf/Liu2023Comprehensive_Swin-B", "Linf/Liu2023Comprehensive_Swin-L", "Linf/Mo2022When_Swin-B",
    "Linf/RodriguezMunoz2024Characterizing_Swin-B", "Linf/RodriguezMunoz2024Characterizing_Swin-L",
    "Linf/Xu2024MIMIR_Swin-B", "Linf/Xu2024MIMIR_Swin-L", "Linf/Amini2024MeanSparse_Swin-L", "Linf/Mo2022When_ViT-B",
    "Linf/Bai2024MixedNUTS", "corruptions/Tian2022Deeper_DeiT-S", "corruptions/Tian2022Deeper_DeiT-B")}
"""Entries whose convs are all patchify/depthwise 7x7/1x1 (ConvNeXt, Swin, ViT, DeiT): extracted with n_filters = 0."""

# --- what robustbench.utils.load_model does per entry, inverted ------------------------------------------
NO_MODEL_PREFIX = {  # imagenet entries whose files are keyed like the whole model (load_model adds no "model.")
    "Singh2023Revisiting_ConvNeXt-T-ConvStem", "Singh2023Revisiting_ViT-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-S-ConvStem", "Singh2023Revisiting_ConvNeXt-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-L-ConvStem", "Peng2023Robust", "Chen2024Data_WRN_50_2",
    "Xu2024MIMIR_Swin-B", "Xu2024MIMIR_Swin-L"}
OLD_TIMM_SWIN = {  # imagenet entries load_model passes through timm's swin checkpoint_filter_fn
    "Liu2023Comprehensive_Swin-B", "Liu2023Comprehensive_Swin-L", "Mo2022When_Swin-B",
    "RodriguezMunoz2024Characterizing_Swin-B", "RodriguezMunoz2024Characterizing_Swin-L"}
KNOWN_FAILING = {  # load_model lets these lack their mu/sigma buffers (its known_failing_models)
    "Andriushchenko2020Understanding", "Augustin2020Adversarial", "Engstrom2019Robustness", "Pang2020Boosting",
    "Rice2020Overfitting", "Rony2019Decoupling", "Wong2020Fast", "Hendrycks2020AugMix_WRN",
    "Hendrycks2020AugMix_ResNeXt", "Chen2020Efficient", "Wu2020Adversarial", "Augustin2020Adversarial_34_10",
    "Augustin2020Adversarial_34_10_extra", "Diffenderfer2021Winning_LRR", "Diffenderfer2021Winning_Binary",
    "Huang2022Revisiting_WRN-A4"}


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.state_dict())


def _inner(model: nn.Module) -> nn.Module:
    """The model behind RobustBench's ``normalize_model`` wrapper (itself when unwrapped)."""
    return model.model if isinstance(model, nn.Sequential) and hasattr(model, "normalize") else model


def old_swin_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm >= 0.9 Swin state dict as timm < 0.9 saved it (what timm's swin checkpoint_filter_fn converts)."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key.replace("head.fc.", "head.")] = value
        if key.endswith("attn.relative_position_bias_table"):  # old files carry the index buffers
            out[key.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49)
    return out


def original_xcit_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's XCiT keys as the official XCiT code saves them (``pos_embeder``, fused class-attention qkv)."""
    out = {k.replace("pos_embed.", "pos_embeder."): v for k, v in sd.items()}
    for qkey in [k for k in out if re.fullmatch(r"cls_attn_blocks\.\d+\.attn\.q\.(weight|bias)", k)]:
        parts = [out.pop(qkey.replace(".q.", f".{s}.")) for s in "qkv"]
        out[qkey.replace(".q.", ".qkv.")] = torch.cat(parts, 0)
    return out


def wrap(sd: dict[str, torch.Tensor], variant: int, imagenet: bool) -> object:
    """One of the layouts load_model accepts: bare, ``{"state_dict": ...}``, ``module.``/``model.`` prefixes."""
    if variant % 4 == 1:
        return {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 99}
    if variant % 4 == 2:
        return {"state_dict": sd}
    if variant % 4 == 3:
        return {f"{'module.' if imagenet else 'model.'}{k}": v for k, v in sd.items()}
    return sd


def with_scores(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pruned (CARD) model's file: every conv weight with its ``.scores``, which load_model tolerates."""
    scores = {k.removesuffix("weight") + "scores": v for k, v in sd.items() if k.endswith("weight") and v.ndim == 4}
    return {**sd, **scores}


def single_file(spec: ArchSpec, model: nn.Module, variant: int) -> object:
    """The one file of a single-checkpoint entry."""
    imagenet = spec.dataset == "imagenet"
    if imagenet and spec.name not in NO_MODEL_PREFIX:
        sd = _weights(_inner(model))  # load_model adds "model."; the normaliser's buffers are not in the file
        if spec.name in OLD_TIMM_SWIN:
            sd = old_swin_layout(sd)
    else:
        drop = ("mu", "sigma") if spec.name in KNOWN_FAILING or spec.name.startswith("Kireev2021") else ()
        sd = {k: v for k, v in _weights(model).items() if k not in drop}
    if spec.name.startswith("Diffenderfer2021"):
        sd = with_scores(sd)
    wrapped = wrap(sd, 0 if spec.name.startswith("Standard") else variant, imagenet)
    if spec.name.startswith("Kireev2021Effectiveness") or spec.name == "Andriushchenko2020Understanding":
        return {"last": wrapped, "best": {"state_dict": {}}}
    return wrapped


def timm_release_file(model: nn.Module) -> object:
    """The release file of a timm-served entry: the bare timm model in its original layout, under ``model``
    (AlexNet's is torchvision's own file: bare keys)."""
    inner = _inner(model)
    sd = _weights(inner)
    if type(inner).__name__ == "Xcit":
        sd = original_xcit_layout(sd)
    return sd if type(inner).__name__ == "TimmAlexNet" else {"model": sd}


def ensemble_files(spec: ArchSpec, model: nn.Module) -> list[object]:
    """The files of a multi-file ensemble, in load_model's order."""
    if spec.name.startswith("Bai2023Improving"):
        comp = model.comp_model
        return [wrap(_weights(comp.models[0]), 1, False), _weights(comp.models[1]),
                {"model": _weights(comp.policy_net), "bn": _weights(comp.bn)}]
    if spec.name.startswith("Bai2024MixedNUTS"):
        rob = _weights(model.rob_model)
        if spec.dataset == "imagenet":
            rob = old_swin_layout(_weights(_inner(model.rob_model)))
        return [_weights(model.std_model), rob]
    scores = with_scores if spec.name.startswith("Diffenderfer2021") else dict
    return [wrap(scores(_weights(member)), i, False) for i, member in enumerate(model.models)]


def stored_files(spec: ArchSpec, model: nn.Module, variant: int) -> list[object]:
    """What RobustBench's download(s) for ``spec`` hold, as loaded objects (one per file)."""
    if robustbench_timm_name(spec):
        return [timm_release_file(model)]
    if isinstance(robustbench_entry(spec.dataset, spec.threat_model, spec.name).get("gdrive_id"), list):
        return ensemble_files(spec, model)
    return [single_file(spec, model, variant)]


# --- running the catalog ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    key: str
    error: str = ""
    n_convs: int = 0
    n_conv3x3: int = 0
    members: dict[int, list[str]] = field(default_factory=dict)
    """Ensembles: the traced conv names of each member."""


def _trace(spec: ArchSpec, files: list[object], dataset: str, key: str) -> BoundModel:
    """Bind and trace through the real path: shape-only on meta, on CPU where the forward pass reads values."""
    members = [m for i, f in enumerate(files) for m in checkpoint_members(f, f"{spec.name}_m{i}.pt")]
    device = torch.device("cpu" if key in TRACED_ON_CPU else "meta")
    return bind_and_trace(spec, [m[1] for m in members], [m[0] for m in members], device, dataset=dataset)


def _check(bound: BoundModel, model: nn.Module) -> None:
    """Every traced conv is a Conv2d of the architecture, with its shape."""
    modules = dict(model.named_modules())
    for conv in bound.traced.convs:
        assert isinstance(modules[conv.name], nn.Conv2d), conv.name
        assert tuple(conv.weight.shape) == tuple(modules[conv.name].weight.shape), conv.name
    assert bound.traced.convs, "no conv ran"


def run_entry(entry: object, variant: int) -> list[Outcome]:
    """Bind one checkpoint of the catalog to every leaderboard entry it is ranked on."""
    outcomes = []
    first = ArchSpec("robustbench", entry.metadata["leaderboards"][0]["name"], entry.dataset,
                     entry.metadata["leaderboards"][0]["threat_model"])
    model, _ = build_for_binding(first)
    files = stored_files(first, model, variant)
    for board in entry.metadata["leaderboards"]:
        spec = ArchSpec("robustbench", board["name"], board["dataset"], board["threat_model"])
        outcome = Outcome(f"{spec.dataset}/{spec.threat_model}/{spec.name}")
        try:
            bound = _trace(spec, files, entry.dataset, outcome.key)
            _check(bound, model)
            outcome.n_convs = len(bound.traced.convs)
            outcome.n_conv3x3 = sum(tuple(c.weight.shape[2:]) == (3, 3) for c in bound.traced.convs)
            if len(files) > 1:
                for conv in bound.traced.convs:
                    outcome.members.setdefault(conv.member, []).append(conv.name)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            outcome.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        outcomes.append(outcome)
    return outcomes


class _Summary:
    """Adds the coverage line to pytest's terminal summary."""

    def __init__(self, line: Callable[[], str]) -> None:
        self.line = line

    def pytest_terminal_summary(self, terminalreporter) -> None:  # noqa: ANN001 - pytest's hook signature
        terminalreporter.write_line(self.line())


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest) -> dict[str, Outcome]:
    catalog = robustbench_catalog(model_info=MODEL_INFO)
    started = time.perf_counter()
    results: dict[str, Outcome] = {}
    for variant, entry in enumerate(catalog):
        results.update((o.key, o) for o in run_entry(entry, variant))
    seconds = time.perf_counter() - started
    n_ok = sum(not o.error for o in results.values())
    request.config.pluginmanager.register(
        _Summary(lambda: f"{n_ok}/{len(results)} entries bind and trace ({seconds:.0f}s, {len(TRACED_ON_CPU)} on CPU)"))
    return results


def test_every_catalog_entry_binds_and_traces(outcomes: dict[str, Outcome]) -> None:
    assert len(outcomes) == TOTAL_ENTRIES
    failed = {k: o.error for k, o in outcomes.items() if o.error}
    assert {k: v for k, v in failed.items() if k not in EXCEPTIONS} == {}
    assert sorted(failed) == sorted(EXCEPTIONS)  # a listed exception that now works must leave the list


def test_the_entries_without_3x3_convs_are_exactly_the_transformers_and_convnexts(outcomes: dict[str, Outcome]) -> None:
    assert {k for k, o in outcomes.items() if o.n_convs and not o.n_conv3x3} == WITHOUT_3X3
    assert outcomes["imagenet/Linf/Singh2023Revisiting_ConvNeXt-T-ConvStem"].n_conv3x3 == 2  # the ConvStem's
    assert outcomes["cifar10/Linf/Kang2021Stable"].n_conv3x3 == 1 + 2 * 33  # its WRN-70-16: stem, 33 blocks


ENSEMBLE_MEMBERS = {  # the submodule every conv of each member lies in (robustbench.utils.load_model's binding)
    "cifar10/Linf/Chen2020Adversarial": [f"branch{i}." for i in (1, 2, 3)],  # models[i] is branch<i+1>: its first name
    **{f"{d}/Linf/Bai2024MixedNUTS": ["std_model.", "rob_model."] for d in ("cifar10", "cifar100", "imagenet")},
    **{f"{d}/Linf/Bai2023Improving_{v}": ["comp_model.models.0.", "comp_model.models.1.", "comp_model.policy_net."]
       for d, v in (("cifar10", "edm"), ("cifar100", "edm"), ("cifar100", "trades"))},
    **{f"{d}/corruptions/Diffenderfer2021Winning_{v}_CARD_Deck": [f"models.{i}." for i in range(6)]
       for d in ("cifar10", "cifar100") for v in ("LRR", "Binary")},
}


def test_every_ensemble_member_owns_the_convs_of_its_submodule(outcomes: dict[str, Outcome]) -> None:
    assert {k for k, o in outcomes.items() if o.members} == set(ENSEMBLE_MEMBERS)
    for key, prefixes in ENSEMBLE_MEMBERS.items():
        members = outcomes[key].members
        assert sorted(members) == list(range(len(prefixes))), key
        for member, names in members.items():
            assert all(n.startswith(prefixes[member]) for n in names), (key, member)
