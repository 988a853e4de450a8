"""The RobustBench catalog and zoo files: every installed entry, mapped to architecture and sources (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.checkpoints.robustbench import import_robustbench
from pipeline.errors import ConfigError
from pipeline.fetch.download import mirror_path, parse_hf_uri, resolve_remote
from pipeline.zoo.leaderboard import load_model_info
from pipeline.zoo.robustbench import robustbench_catalog
from pipeline.zoo.zoo_file import load_zoo_file, select

MODEL_INFO = Path(__file__).parent / "data" / "robustbench_model_info.jsonl"


@pytest.fixture(scope="module")
def catalog() -> list:
    return robustbench_catalog(model_info=MODEL_INFO)


def installed_entries() -> list[tuple[str, str, str, dict]]:
    zoo = import_robustbench()
    return [(d.value, t.value, n, e) for d, ts in zoo.model_dicts.items() for t, ms in ts.items() for n, e in ms.items()]


def test_every_installed_entry_is_listed_once_by_its_checkpoint(catalog: list) -> None:
    installed = installed_entries()
    listed_boards = [(b["dataset"], b["threat_model"], b["name"]) for e in catalog for b in e.metadata["leaderboards"]]
    assert sorted(listed_boards) == sorted((d, t, n) for d, t, n, _ in installed)  # each exactly once
    assert len({e.model_id for e in catalog}) == len(catalog)
    # entries merge only when they share the very same checkpoint sources
    keys = [(e.dataset, tuple(e.sources)) for e in catalog if e.sources]
    assert len(keys) == len(set(keys))
    assert len(catalog) < len(installed)  # e.g. Standard is one checkpoint ranked on several leaderboards


def test_entries_map_to_architecture_and_sources(catalog: list) -> None:
    by_id = {e.model_id: e for e in catalog}
    for dataset, threat_model, name, raw in installed_entries():
        entry = by_id.get(f"robustbench/{dataset}/{threat_model}/{name}")
        if entry is None:
            continue  # a duplicate of an entry listed under another leaderboard
        assert entry.arch == f"robustbench:{dataset}:{threat_model}:{name}"
        gdrive = raw.get("gdrive_id")
        if isinstance(gdrive, list):
            assert entry.sources == [f"gdrive:{g}" for g in gdrive]
        elif gdrive:
            assert entry.sources == [f"gdrive:{gdrive}"]
    chen = by_id["robustbench/cifar10/Linf/Chen2020Adversarial"]
    assert len(chen.sources) == 3  # a three-model ensemble, one file each
    xcit = by_id["robustbench/cifar10/Linf/Debenedetti2022Light_XCiT-S12"]
    assert xcit.sources == ["https://github.com/RobustBench/robustbench/releases/download/v1.1/"
                            "debenedetti2022light-xcit-s-cifar10-linf.pth.tar"]
    assert by_id["robustbench/imagenet/Linf/Standard_R50"].sources == [
        "https://download.pytorch.org/models/resnet50-0676ba61.pth"]


def test_leaderboard_metadata_is_joined(catalog: list) -> None:
    rows = {(r["dataset"], r["threat_model"], r["model"]): r
            for r in map(json.loads, MODEL_INFO.read_text().splitlines())}
    by_id = {e.model_id: e for e in catalog}
    carmon = by_id["robustbench/cifar10/Linf/Carmon2019Unlabeled"]
    info = rows[("cifar10", "Linf", "Carmon2019Unlabeled")]
    assert carmon.clean_acc == float(info["clean_acc"]) and carmon.robust_acc == float(info["autoattack_acc"])
    assert carmon.eps == pytest.approx(8 / 255) and carmon.extra_data is info["additional_data"]
    assert carmon.architecture == info["architecture"] and carmon.robust and carmon.threat_model == "Linf"
    standard = by_id["robustbench/cifar10/Linf/Standard"]
    assert (standard.robust, standard.threat_model) == (False, "none")
    assert {b["threat_model"] for b in standard.metadata["leaderboards"]} >= {"Linf", "L2"}
    with_info = [e for e in catalog if e.clean_acc is not None]
    assert len(with_info) == len(catalog)


def test_robust_means_adversarially_trained(catalog: list) -> None:
    """Linf/L2 entries are robust; corruptions entries keep their threat model and are not; Standard is none."""
    kinds = {(e.threat_model, e.robust) for e in catalog}
    assert kinds == {("Linf", True), ("L2", True), ("corruptions", False), ("none", False)}
    by_id = {e.model_id: e for e in catalog}
    augmix = by_id["robustbench/cifar10/corruptions/Hendrycks2020AugMix_WRN"]
    assert (augmix.threat_model, augmix.robust, augmix.robust_acc, augmix.eps) == ("corruptions", False, 88.82, None)
    assert by_id["robustbench/cifar100/corruptions/Hendrycks2020AugMix_WRN"].clean_acc == 76.28


def test_catalog_filters(catalog: list) -> None:
    linf10 = select(catalog, datasets=["cifar10"], threat_models=["Linf"])
    assert linf10 and all(e.dataset == "cifar10" for e in linf10)
    assert "robustbench/cifar10/Linf/Standard" in {e.model_id for e in linf10}
    assert [e.model_id for e in select(catalog, models=["Carmon2019Unlabeled"])] == [
        "robustbench/cifar10/Linf/Carmon2019Unlabeled"]
    assert len(select(catalog, limit=5)) == 5
    with pytest.raises(ConfigError, match="no model named NoSuch"):
        select(catalog, models=["NoSuch"])


def test_zoo_cli_lists_the_catalog_offline(cli) -> None:  # noqa: ANN001
    result = cli("zoo", "list", "robustbench", "--model-info", MODEL_INFO, "--dataset", "imagenet",
                 "--threat-model", "Linf", "--format", "json")
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert result.code == 0 and rows and all(r["dataset"] == "imagenet" for r in rows)
    shown = cli("zoo", "show", "robustbench", "Carmon2019Unlabeled", "--model-info", MODEL_INFO)
    assert yaml.safe_load(shown.out)[0]["clean_acc"] == 89.69


def test_model_info_from_a_directory_tree(tmp_path: Path) -> None:
    folder = tmp_path / "model_info" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    (folder / "Foo2024.json").write_text(json.dumps({"clean_acc": "90.1", "autoattack_acc": "60.2"}))
    info = load_model_info(tmp_path / "model_info")
    assert info[("cifar10", "Linf", "Foo2024")]["clean_acc"] == "90.1"


def test_zoo_file_validation(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"x")
    good = tmp_path / "zoo.yaml"
    good.write_text(yaml.safe_dump({"defaults": {"dataset": "cifar100"}, "models": [
        {"id": "a", "source": "w.pt", "eps": "8/255", "threat_model": "Linf"},
        {"id": "b", "source": ["https://x.org/m0.pt", "gdrive:abc"], "robust": False},
        {"id": "c", "source": "w.pt", "threat_model": "corruptions"}]}))
    a, b, c = load_zoo_file(good)
    assert a.sources == [str(tmp_path / "w.pt")] and a.dataset == "cifar100" and a.robust
    assert a.eps == pytest.approx(8 / 255) and not b.robust and b.sources[1] == "gdrive:abc"
    assert (c.threat_model, c.robust) == ("corruptions", False)  # robust means adversarially trained
    for bad, message in [({"models": [{"id": "a"}]}, "missing 'source'"),
                         ({"models": [{"id": "a", "source": "x", "colour": 1}]}, "unknown keys"),
                         ({"models": [{"id": "a", "source": "x", "threat_model": "L3"}]}, "threat_model"),
                         ({"models": [{"id": "a", "source": "x"}, {"id": "a", "source": "y"}]}, "appears twice"),
                         ({"nope": 1}, "'models' list"),
                         ({"models": [{"id": "a", "source": "x", "threat_model": "corruptions", "robust": True}]},
                          "robust: true means adversarially trained")]:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=message):
            load_zoo_file(path)


def test_mirror_paths() -> None:
    assert mirror_path("gdrive:1AbC") == "gdrive/1AbC"
    assert mirror_path("https://host.org/a/b.pt") == "http/host.org/a/b.pt"
    assert mirror_path("hf://org/repo@v1/sub/w.safetensors") == "hf/org/repo/v1/sub/w.safetensors"
    assert mirror_path("s3://bucket/key.pt") == "s3/bucket/key.pt"
    assert parse_hf_uri("hf://org/repo/w.bin") == ("org/repo", None, "w.bin")
    assert resolve_remote("gdrive:1AbC", "http://127.0.0.1:9/") == "http://127.0.0.1:9/gdrive/1AbC"
    assert resolve_remote("gdrive:1AbC", None).startswith("https://drive.usercontent.google.com/download?id=1AbC")
