"""RobustBench leaderboard metadata and the paper's pairings as package data: the catalog's offline default,
``filterlens zoo refresh`` against a local server, and what ``extract --arch robustbench:...`` records."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import torch
from checkpoint_server import CheckpointServer
from conftest import save, zoo_model

import pipeline.zoo
from pipeline.cli.extract import request_from_args
from pipeline.cli.main import build_parser
from pipeline.errors import ConfigError
from pipeline.zoo.leaderboard import (
    PAPER_PAIRS,
    SNAPSHOT,
    cached_model_info_path,
    data_file,
    leaderboard_info,
    shipped_model_info,
)
from pipeline.zoo.robustbench import installed_keys, robustbench_catalog

ROOT = Path(__file__).resolve().parent.parent
TESTS_DATA = Path(__file__).parent / "data"
CARMON = ("cifar10", "Linf", "Carmon2019Unlabeled")
DING = ("cifar10", "Linf", "Ding2020MMA")
SNAPSHOT_IN_USE = "the shipped snapshot (RobustBench model_info of 2025-03-31) stays in use"


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $FILTERLENS_CACHE, empty: no test sees the user's own refresh."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FILTERLENS_CACHE", str(cache))
    return cache


# --- package data ----------------------------------------------------------------------------------
def test_the_snapshot_and_the_pairings_ship_as_package_data() -> None:
    assert Path(str(data_file(SNAPSHOT))).parent == Path(pipeline.zoo.__file__).parent / "data"
    assert data_file(SNAPSHOT).read_bytes() == (TESTS_DATA / "robustbench_model_info.jsonl").read_bytes()
    assert data_file(PAPER_PAIRS).read_bytes() == (TESTS_DATA / "paper_robust_vs_normal_pairings.csv").read_bytes()
    readme = data_file("README.md").read_text()
    assert "CC BY-SA 4.0" in readme and "Gavrikov" in readme and "MIT-licensed" in readme
    package_data = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert '"pipeline.zoo" = ["data/*.jsonl", "data/*.csv", "data/README.md"]' in package_data
    info = shipped_model_info()
    assert len(info) == 236 and set(installed_keys()) <= set(info)  # every installed entry has metadata
    # the five CIFAR-100 entries that said "cifar10" upstream are CIFAR-100's again
    assert info[("cifar100", "Linf", "Hendrycks2019Using")]["clean_acc"] == "59.23"
    assert info[("cifar10", "Linf", "Hendrycks2019Using")]["clean_acc"] == "87.11"
    assert info[("cifar10", "corruptions", "Hendrycks2020AugMix_WRN")]["clean_acc"] == "95.08"


def test_the_catalog_defaults_to_the_shipped_snapshot_offline() -> None:
    default = robustbench_catalog()
    explicit = robustbench_catalog(model_info=TESTS_DATA / "robustbench_model_info.jsonl")
    assert [asdict(e) for e in default] == [asdict(e) for e in explicit]
    assert [e.model_id for e in default if not e.architecture] == []  # every entry named, offline
    carmon = {e.model_id: e for e in default}["robustbench/cifar10/Linf/Carmon2019Unlabeled"]
    assert (carmon.architecture, carmon.clean_acc, carmon.robust_acc, carmon.extra_data, carmon.venue) == (
        "WideResNet-28-10", 89.69, 59.53, True, "NeurIPS 2019")


def test_zoo_list_offline_shows_the_real_architecture(cli) -> None:  # noqa: ANN001
    res = cli("zoo", "list", "robustbench", "--dataset", "cifar10",
              "--models", "Carmon2019Unlabeled,Amini2024MeanSparse_S-WRN-70-16")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split() == ["id", "architecture", "threat", "robust", "clean", "robust_acc", "srcs"]
    rows = {line.split()[0]: line for line in lines[2:-1]}
    assert rows["robustbench/cifar10/Linf/Carmon2019Unlabeled"].split() == [
        "robustbench/cifar10/Linf/Carmon2019Unlabeled", "WideResNet-28-10", "Linf", "True", "89.69", "59.53", "1"]
    assert rows["robustbench/cifar10/L2/Amini2024MeanSparse_S-WRN-70-16"].split()[1:3] == [
        "MeanSparse", "WideResNet-70-16"]  # 27 characters, not cut
    assert "robustbench:" not in res.out and lines[-1] == "(2 models)"


# --- zoo refresh ---------------------------------------------------------------------------------
def model_info_server(changes: dict | None = None, leave_out: tuple = (), **behaviours: str) -> CheckpointServer:
    """RobustBench's model_info/ folder as the shipped snapshot says, with ``changes`` per key."""
    server = CheckpointServer()
    for key, row in shipped_model_info().items():
        if key in leave_out:
            continue
        body = {k: v for k, v in row.items() if k not in ("dataset", "threat_model", "model")}
        body.update((changes or {}).get(key, {}))
        path = "/model_info/" + "/".join(key) + ".json"
        server.add(path, json.dumps(body).encode(), behaviours.get(path, "ok"))
    return server


def test_refresh_fills_the_user_cache_which_then_wins(cli, user_cache: Path) -> None:  # noqa: ANN001
    server = model_info_server({CARMON: {"clean_acc": "90.00", "architecture": "WRN-28-10 (refreshed)"}},
                               leave_out=(DING,))
    base = f"{server.url}/model_info"
    try:
        res = cli("zoo", "refresh", "--base-url", base)
    finally:
        server.close()
    assert res.code == 0, res.err
    keys = sorted(set(installed_keys()))
    assert sorted(path for path, _ in server.requests) == sorted(f"/model_info/{'/'.join(k)}.json" for k in keys)
    cached = cached_model_info_path()
    assert cached == user_cache / "robustbench" / "model_info.jsonl"
    rows = [json.loads(line) for line in cached.read_text().splitlines()]
    assert [(r["dataset"], r["threat_model"], r["model"]) for r in rows] == [k for k in keys if k != DING]
    record = json.loads((cached.parent / "refresh.json").read_text())
    assert (record["base_url"], record["entries"], record["missing"]) == (base, 205, ["cifar10/Linf/Ding2020MMA"])
    assert res.out == (f"205 leaderboard entries from {base} -> {cached} (now used instead of the shipped "
                       "snapshot); 1 without metadata there: cifar10/Linf/Ding2020MMA\n")
    info = leaderboard_info()
    assert info[CARMON]["clean_acc"] == "90.00"
    assert info[DING] == shipped_model_info()[DING]  # what the refresh lacks, the snapshot still gives
    carmon = {e.model_id: e for e in robustbench_catalog()}["robustbench/cifar10/Linf/Carmon2019Unlabeled"]
    assert (carmon.clean_acc, carmon.architecture) == (90.0, "WRN-28-10 (refreshed)")
    listed = cli("zoo", "list", "robustbench", "--models", "Carmon2019Unlabeled")
    assert "WRN-28-10 (refreshed)" in listed.out
    assert request("--arch", "robustbench:cifar10:Linf:Carmon2019Unlabeled").clean_acc == 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refresh_offline_is_a_one_line_error_and_changes_nothing(cli, user_cache: Path) -> None:  # noqa: ANN001
    base = f"http://127.0.0.1:{free_port()}/model_info"
    res = cli("zoo", "refresh", "--base-url", base, "--timeout", "5")
    assert (res.code, res.out) == (3, "")
    assert res.err == (f"filterlens: error: zoo refresh: cannot reach {base} (ConnectionError); offline? Nothing "
                       f"was changed: {SNAPSHOT_IN_USE}\n")
    assert not user_cache.exists()


def test_a_failed_refresh_keeps_the_earlier_one(cli, user_cache: Path) -> None:  # noqa: ANN001
    cached = cached_model_info_path()
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps({"dataset": "cifar10", "threat_model": "Linf", "model": "X", "clean_acc": "1"}) + "\n")
    before = cached.read_bytes()
    bad = "/model_info/" + "/".join(CARMON) + ".json"
    server = model_info_server(**{bad: "html"})  # a login/quota page instead of JSON
    try:
        res = cli("zoo", "refresh", "--base-url", f"{server.url}/model_info")
        empty = cli("zoo", "refresh", "--base-url", f"{server.url}/elsewhere")
    finally:
        server.close()
    assert res.code == 3 and res.err == (f"filterlens: error: zoo refresh: {server.url}{bad} is not a model_info JSON "
                                         f"object; nothing was changed: the earlier refresh ({cached}) stays in use\n")
    assert empty.code == 3 and f"{server.url}/elsewhere has none of the 206 entries (HTTP 404 for all)" in empty.err
    assert cached.read_bytes() == before and not (cached.parent / "refresh.json").exists()


# --- extract --arch robustbench:... ---------------------------------------------------------------
def request(*argv: str) -> object:
    return request_from_args(build_parser().parse_args(["extract", "m.pt", "--out", "ds", *argv]))


def test_extract_records_the_entrys_metadata_unless_given() -> None:
    r = request("--arch", "robustbench:cifar10:Linf:Carmon2019Unlabeled")
    assert (r.dataset, r.threat_model, r.robust, r.architecture, r.clean_acc, r.robust_acc) == (
        "cifar10", "Linf", True, "WideResNet-28-10", 89.69, 59.53)
    assert (r.eps, r.extra_data, r.venue, r.paper) == (
        pytest.approx(8 / 255), True, "NeurIPS 2019", "Unlabeled Data Improves Adversarial Robustness")
    assert r.metadata == {"leaderboard": "robustbench/cifar10/Linf/Carmon2019Unlabeled",
                          "from_leaderboard": ["architecture", "clean_acc", "eps", "extra_data", "paper",
                                               "robust_acc", "venue"]}
    given = request("--arch", "robustbench:cifar10:Linf:Carmon2019Unlabeled", "--clean-acc", "1.5",
                    "--architecture", "WRN")
    assert (given.clean_acc, given.architecture, given.robust_acc) == (1.5, "WRN", 59.53)
    # the same architecture, but another model: only the architecture's name is the entry's
    normal = request("--arch", "robustbench:cifar10:Linf:Carmon2019Unlabeled", "--normal")
    assert (normal.threat_model, normal.robust, normal.architecture, normal.clean_acc, normal.eps) == (
        "none", False, "WideResNet-28-10", None, None)
    standard = request("--arch", "robustbench:cifar10:Linf:Standard")
    assert (standard.threat_model, standard.robust, standard.clean_acc) == ("none", False, 94.78)
    other = request("--arch", "timm:resnet18", "--threat-model", "Linf")
    assert (other.robust, other.architecture, other.clean_acc, other.metadata) == (True, None, None, {})


def test_corruptions_models_are_not_robust_in_extract() -> None:
    augmix = request("--arch", "robustbench:cifar10:corruptions:Hendrycks2020AugMix_WRN")
    assert (augmix.threat_model, augmix.robust, augmix.architecture, augmix.clean_acc, augmix.robust_acc) == (
        "corruptions", False, "WideResNet-40-2", 95.08, 88.82)
    assert request("--threat-model", "corruptions").robust is False
    for argv in (["--arch", "robustbench:cifar10:corruptions:Hendrycks2020AugMix_WRN", "--robust"],
                 ["--threat-model", "corruptions", "--robust"]):
        with pytest.raises(ConfigError, match="--robust means adversarially trained: it needs --threat-model "
                                              "Linf or L2, not corruptions"):
            request(*argv)
    with pytest.raises(ConfigError, match="not none"):
        request("--robust")


def test_extract_offline_records_names_so_that_pairing_works(cli, tmp_path: Path) -> None:  # noqa: ANN001
    spec = "robustbench:cifar10:Linf:Ding2020MMA"
    checkpoint = save(zoo_model(spec).state_dict(), tmp_path / "ding.pt")
    normal = save({k: torch.randn_like(v) if v.is_floating_point() else v
                   for k, v in zoo_model(spec).state_dict().items()}, tmp_path / "normal.pt")
    ds = tmp_path / "ds"
    assert cli("extract", checkpoint, "--out", ds, "--arch", spec, "--model-id", "robustbench/cifar10/Linf/Ding2020MMA",
               "--device", "cpu").code == 0
    assert cli("extract", normal, "--out", ds, "--arch", spec, "--normal", "--model-id", "lab/cifar10/wrn-28-4",
               "--device", "cpu").code == 0
    models = {r["model_id"]: r for r in pads.dataset(str(ds / "models"), format="parquet").to_table().to_pylist()}
    ding = models["robustbench/cifar10/Linf/Ding2020MMA"]
    assert (ding["architecture"], ding["clean_acc"], ding["robust_acc"], ding["venue"], ding["robust"]) == (
        "WideResNet-28-4", 84.36, 41.44, "ICLR 2020", True)
    other = models["lab/cifar10/wrn-28-4"]
    assert (other["architecture"], other["clean_acc"], other["threat_model"], other["robust"]) == (
        "WideResNet-28-4", None, "none", False)
    res = cli("stats", ds, "--out", tmp_path / "report", "--no-figures", "--permutations", "0")
    assert res.code == 0, res.err
    pairs = (tmp_path / "report" / "tables" / "pairs.csv").read_text().splitlines()
    assert pairs == ["robust_model_id,normal_model_id,architecture,dataset,source",
                     "robustbench/cifar10/Linf/Ding2020MMA,lab/cifar10/wrn-28-4,WideResNet-28-4,cifar10,auto"]
