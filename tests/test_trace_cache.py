"""The forward-order trace cache (pipeline/checkpoints/trace_cache.py): hits build nothing, misses when anything
the trace depends on changes, identical rows either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save, zoo_model

from pipeline.checkpoints import trace_cache
from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.checkpoints.load import load_checkpoint
from pipeline.dataset.query import open_dataset
from pipeline.extract.extractor import ordered_convs
from pipeline.zoo.spec import ModelRequest

PREACT = "robustbench:cifar10:Linf:Andriushchenko2020Understanding"  # PreAct-ResNet-18
SPEC = parse_arch_spec(PREACT)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sd = zoo_model(PREACT).state_dict()
    return save({"last": sd}, tmp_path_factory.mktemp("ckpt") / "preact.pt")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FILTERLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FILTERLENS_TRACE_CACHE", raising=False)
    return tmp_path / "cache" / "traces"


@pytest.fixture
def traces(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the real bind-and-trace calls behind the cache."""
    calls: list[str] = []
    real = trace_cache.bind_and_trace

    def counting(spec, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(str(spec))
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(trace_cache, "bind_and_trace", counting)
    return calls


def _trace(state_dicts: list[dict], **kwargs: object) -> trace_cache.BoundModel:
    return trace_cache.cached_bind_and_trace(SPEC, state_dicts, [{"last": sd} for sd in state_dicts],
                                             torch.device("cpu"), dataset="cifar10", **kwargs)


def _state_dict(checkpoint: Path) -> dict:
    return load_checkpoint([str(checkpoint)]).state_dicts[0]


def test_hit_gives_the_same_convs_without_building(checkpoint: Path, cache: Path, traces: list[str]) -> None:
    sd = _state_dict(checkpoint)
    first = _trace([sd])
    assert traces == [PREACT] and first.model is not None and len(list(cache.glob("*.json"))) == 1
    second = _trace([sd])
    assert traces == [PREACT] and second.model is None  # nothing built
    assert [c.name for c in second.traced.convs] == [c.name for c in first.traced.convs]
    for a, b in zip(first.traced.convs, second.traced.convs, strict=True):
        assert (a.groups, a.stride, a.dilation, a.has_bias, a.member, a.source_dtype) == \
               (b.groups, b.stride, b.dilation, b.has_bias, b.member, b.source_dtype)
        assert torch.equal(a.weight, b.weight)
    assert (second.traced.n_params, second.traced.n_params_unused, second.input_shape) == \
           (first.traced.n_params, first.traced.n_params_unused, first.input_shape)
    assert second.report == first.report


def test_changed_version_signature_or_inputs_miss(checkpoint: Path, cache: Path, traces: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sd = _state_dict(checkpoint)
    _trace([sd])
    _trace([sd], input_shape=(3, 40, 40))  # another dummy input: may run other convs
    assert len(traces) == 2
    extra = {**sd, "conv1.scores": torch.zeros(3)}  # a key RobustBench tolerates: binds, but another signature
    bound = _trace([extra])
    assert len(traces) == 3 and bound.report.tolerated_unexpected == ["conv1.scores"]
    assert trace_cache.checkpoint_signature([sd], []) != trace_cache.checkpoint_signature(
        [{**sd, "conv1.weight": sd["conv1.weight"][:, :2]}], [])  # same keys, another shape
    assert trace_cache.checkpoint_signature([sd], []) != trace_cache.checkpoint_signature(
        [{k: v.half() if k == "linear.weight" else v for k, v in sd.items()}], [])  # another dtype
    real = trace_cache.package_versions()
    monkeypatch.setattr(trace_cache, "package_versions", lambda: {**real, "robustbench": "9.9.9"})
    _trace([sd])
    assert len(traces) == 4
    monkeypatch.setattr(trace_cache, "package_versions", lambda: {**real, "timm": "0.0.1"})
    _trace([sd])
    assert len(traces) == 5
    monkeypatch.setattr(trace_cache, "package_versions", lambda: real)
    _trace([sd])  # back to the installed versions: the first entry again
    assert len(traces) == 5 and len(list(cache.glob("*.json"))) == 5


def test_what_is_never_cached(checkpoint: Path, cache: Path, traces: list[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    sd = _state_dict(checkpoint)
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    _trace([half])
    _trace([half])  # weights cast on binding are not the checkpoint's tensors as is: traced each time
    assert len(traces) == 2 and not list(cache.glob("*.json"))
    meta = trace_cache.cached_bind_and_trace(SPEC, [sd], [{"last": sd}], torch.device("meta"), dataset="cifar10")
    assert meta.model is not None and not list(cache.glob("*.json"))  # shape-only traces are not stored
    monkeypatch.setenv("FILTERLENS_TRACE_CACHE", "0")
    _trace([sd])
    _trace([sd])
    assert len(traces) == 5
    assert not list(cache.glob("*.json"))


def test_a_broken_or_foreign_entry_is_traced_again(checkpoint: Path, cache: Path, traces: list[str]) -> None:
    sd = _state_dict(checkpoint)
    _trace([sd])
    (path,) = cache.glob("*.json")
    path.write_text("{not json")
    assert _trace([sd]).model is not None and len(traces) == 2
    stored = json.loads(path.read_text())
    stored["key"]["spec"] = "robustbench:cifar10:Linf:Other"  # a colliding file name with another key
    path.write_text(json.dumps(stored))
    assert _trace([sd]).model is not None and len(traces) == 3
    stored = json.loads(path.read_text())
    stored["entry"]["convs"][0]["source"] = [0, "no.such.key"]  # an entry that does not fit the checkpoint
    path.write_text(json.dumps(stored))
    assert _trace([sd]).model is not None and len(traces) == 4


def test_callers_that_run_the_model_always_get_it(checkpoint: Path, cache: Path) -> None:
    """The probe and the transfer set run the bound model: the default ordered_convs never uses the cache."""
    request = ModelRequest("t/preact", checkpoints=[str(checkpoint)], arch=PREACT, dataset="cifar10")
    loaded = load_checkpoint([str(checkpoint)])
    assert ordered_convs(request, loaded, torch.device("cpu"), trace_cache=True).model is not None  # fills it
    assert ordered_convs(request, loaded, torch.device("cpu"), trace_cache=True).model is None  # a hit
    ordered = ordered_convs(request, loaded, torch.device("cpu"))
    assert ordered.model is not None and ordered.depth_source == "forward"


EXTRACT = """
import sys
from pipeline.cli.main import main
code = 0
try:
    main(["extract", sys.argv[1], "--arch", sys.argv[2], "--out", sys.argv[3], "--model-id", "t/preact",
          "--dataset", "cifar10", "--device", "cpu"])
except SystemExit as exc:
    code = exc.code or 0
print("IMPORTED", "robustbench" in sys.modules)
sys.exit(code)
"""


def _rows(root: Path) -> dict[str, list[dict]]:
    with open_dataset(str(root)) as ds:
        return {
            "layers": ds.con.sql("SELECT * FROM layers ORDER BY member, conv_index").to_arrow_table().to_pylist(),
            "filters": ds.con.sql("SELECT * FROM filters ORDER BY member, conv_index, out_channel, in_channel")
            .to_arrow_table().to_pylist(),
            "models": ds.con.sql("SELECT * EXCLUDE (extract_seconds, extracted_at) FROM models")
            .to_arrow_table().to_pylist(),
        }


def test_second_extraction_imports_no_robustbench_and_writes_the_same_rows(checkpoint: Path, tmp_path: Path) -> None:
    env = {**os.environ, "FILTERLENS_CACHE": str(tmp_path / "cache"), "TQDM_DISABLE": "1"}
    env.pop("FILTERLENS_TRACE_CACHE", None)
    imported = []
    for i in (1, 2):
        proc = subprocess.run([sys.executable, "-c", EXTRACT, str(checkpoint), PREACT, str(tmp_path / f"ds{i}")],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        imported.append(proc.stdout.split("IMPORTED ")[-1].strip())
    assert imported == ["True", "False"]
    first, second = _rows(tmp_path / "ds1"), _rows(tmp_path / "ds2")
    assert len(first["filters"]) > 1_000_000 and len(first["layers"]) == 20
    for table in ("layers", "filters"):
        assert first[table] == second[table], table
    (row1,), (row2,) = first["models"], second["models"]
    differing = {k for k in row1 if row1[k] != row2[k]}
    assert differing <= {"write_id"}, differing
