"""Code named in zoo files runs only with consent, and misbehaving architecture code fails only its model."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch
import yaml
from conftest import save
from zoo_fixtures import tiny_net

from pipeline.dataset.store import DatasetStore
from pipeline.errors import UntrustedCodeError
from pipeline.zoo.trust import require_consent, untrusted_code
from pipeline.zoo.zoo_file import ZooEntry


def write_zoo(tmp_path: Path, archs: dict[str, str]) -> Path:
    torch.manual_seed(0)
    checkpoint = save({"state_dict": tiny_net().state_dict()}, tmp_path / "tiny.pt")
    models = [{"id": model_id, "source": str(checkpoint), "arch": arch, "dataset": "cifar10"}
              for model_id, arch in archs.items()]
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": models}))
    return zoo


def test_consent_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILTERLENS_TRUSTED_MODULES", "lab.models, zoo_fixtures")
    entries = [ZooEntry(model_id=m, sources=["x"], arch=a) for m, a in (
        ("a", "robustbench:cifar10:Linf:Standard"), ("b", "timm:resnet18"), ("c", "torchvision:resnet18"),
        ("d", "pipeline.train.demo_models:tiny_cnn"), ("e", "pipeline.demo_models:tiny_cnn"),
        ("f", "lab.models.wrn:build"), ("g", "zoo_fixtures:tiny_net"), ("h", "os:getpid"),
        ("i", "lab.modelsx:build"), ("j", None))]
    assert untrusted_code(entries) == [("h", "os"), ("i", "lab.modelsx")]
    assert untrusted_code(entries, trust_all=True) == []
    with pytest.raises(UntrustedCodeError, match=r"h \(os\), i \(lab.modelsx\).*--trust-zoo-code.*=lab.modelsx,os"):
        require_consent(entries)


def test_a_zoo_naming_code_is_refused_before_anything_runs(tmp_path: Path, cli,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("FILTERLENS_TRUSTED_MODULES")
    marker = tmp_path / "ran"
    monkeypatch.setenv("HOSTILE_MARKER", str(marker))
    zoo = write_zoo(tmp_path, {"lab/good": "zoo_fixtures:tiny_net", "lab/evil": "hostile_factories:side_effect"})
    for argv in (["build", zoo, "--out", tmp_path / "ds", "--backend", "local", "--no-progress"],
                 ["build", zoo, "--out", tmp_path / "ds", "--dry-run"]):
        result = cli(*argv)
        assert result.code == 2, result.err
        assert result.err.count("\n") == 1 and "--trust-zoo-code" in result.err and "lab/evil" in result.err
    assert not marker.exists() and not DatasetStore(str(tmp_path / "ds")).exists()
    result = cli("build", zoo, "--out", tmp_path / "ds", "--backend", "local", "--no-progress", "--trust-zoo-code",
                 "--cache-dir", tmp_path / "cache")
    assert result.code == 0, result.err
    assert marker.read_text() == "ran" and sorted(DatasetStore(str(tmp_path / "ds")).stored_models()) == [
        "lab/evil", "lab/good"]


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_architecture_code_that_exits_hangs_or_raises_fails_only_its_model(tmp_path: Path, cli, backend: str,
                                                                           request: pytest.FixtureRequest) -> None:  # noqa: ANN001
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    zoo = write_zoo(tmp_path, {"lab/exits": "hostile_factories:exits", "lab/hangs": "hostile_factories:hangs",
                               "lab/raises": "hostile_factories:raises", "lab/good": "zoo_fixtures:tiny_net"})
    result = cli("build", zoo, "--out", tmp_path / "ds", "--backend", backend, "--no-progress", "--trust-zoo-code",
                 "--extract-timeout", "3", "--cache-dir", tmp_path / "cache")
    assert result.code == 3, result.err
    store = DatasetStore(str(tmp_path / "ds"))
    assert sorted(store.stored_models()) == ["lab/good"]
    failures = {r["model_id"]: (r["error_class"], r["stage"], r["transient"])
                for r in store.failures().select(["model_id", "error_class", "stage", "transient"]).to_pylist()}
    assert failures == {"lab/exits": ("ArchitectureBuildError", "bind", False),
                        "lab/hangs": ("ExtractionTimeoutError", "extract", False),
                        "lab/raises": ("ArchitectureBuildError", "bind", False)}
    assert "exit code 0" in store.failures().filter(
        pa.compute.equal(store.failures().column("model_id"), "lab/exits")).column("message")[0].as_py()


def test_a_rebuild_writes_new_zoo_metadata_into_complete_models_without_extracting(tmp_path: Path, cli) -> None:  # noqa: ANN001
    zoo = write_zoo(tmp_path, {"lab/a": "zoo_fixtures:tiny_net"})
    args = ["build", zoo, "--out", tmp_path / "ds", "--backend", "local", "--no-progress", "--cache-dir",
            tmp_path / "cache"]
    assert cli(*args).code == 0
    store = DatasetStore(str(tmp_path / "ds"))
    write_id = store.stored_model("lab/a").write_id
    doc = yaml.safe_load(zoo.read_text())
    doc["models"][0].update({"clean_acc": 88.25, "paper": "A paper"})
    zoo.write_text(yaml.safe_dump(doc))
    result = cli(*args)
    assert result.code == 0 and "0 models extracted, 1 skipped" in result.out
    row = store.models().to_pylist()[0]
    assert (row["clean_acc"], row["paper"], row["write_id"]) == (88.25, "A paper", write_id)
    assert store.build_records()[-1]["metadata_updated"] == 1
