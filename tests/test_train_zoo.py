"""The trained zoo: checkpoints + YAML in the build's format, extraction through the normal path, reuse, Ray tasks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipeline.dataset.store import DatasetStore
from pipeline.errors import ConfigError, TrainingError
from pipeline.extract.extractor import extract_model
from pipeline.ray_cluster import task_resources
from pipeline.train.config import TrainConfig, zoo_plan
from pipeline.train.config import demo_arch_spec as arch_spec
from pipeline.train.demo_models import tiny_cnn
from pipeline.train.train_zoo import train_zoo
from pipeline.train.zoo_writer import read_zoo
from pipeline.zoo.zoo_file import ENTRY_KEYS, load_zoo_file

BASE = TrainConfig(arch=arch_spec("tiny_cnn"), n_train=300, n_test=100, epochs=1, batch_size=50,
                   eps=8 / 255, attack_steps=1, step_size=8 / 255, eval_steps=2, n_eval_robust=50,
                   threads=1, device="cpu", id_prefix="t")


def _plan(seeds: tuple[int, ...] = (0,)) -> list[TrainConfig]:
    return zoo_plan([arch_spec("tiny_cnn")], list(seeds), BASE)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, _sha(p)) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zoo")
    train_zoo(_plan(), str(folder / "zoo.yaml"), name="tiny", backend="local", progress=False)
    return folder


def test_zoo_file_has_exactly_the_build_keys(zoo_dir: Path) -> None:
    doc = yaml.safe_load((zoo_dir / "zoo.yaml").read_text())
    assert list(doc) == ["name", "models"] and doc["name"] == "tiny"
    assert [m["id"] for m in doc["models"]] == ["t/synthetic/none/tiny_cnn-normal-s0",
                                                "t/synthetic/Linf/tiny_cnn-adv-s0"]
    for entry, robust in zip(doc["models"], (False, True), strict=True):
        assert tuple(entry) == tuple(k for k in ENTRY_KEYS if k not in ("paper", "venue"))  # the zoo-file order
        assert entry["source"] == f"checkpoints/{'synthetic-Linf-tiny_cnn-adv-s0' if robust else 'synthetic-none-tiny_cnn-normal-s0'}.pt"
        assert entry["sha256"] == _sha(zoo_dir / entry["source"])
        assert entry["arch"] == "pipeline.train.demo_models:tiny_cnn"
        assert (entry["dataset"], entry["robust"], entry["threat_model"]) == ("synthetic", robust,
                                                                              "Linf" if robust else "none")
        assert entry["input_shape"] == "3x32x32" and entry["architecture"] == "TinyCNN-4 (8/16)"
        assert entry["eps"] == 0.0313725 and entry["extra_data"] is False
        assert 0.0 <= entry["robust_acc"] <= 100.0 and 0.0 <= entry["clean_acc"] <= 100.0
        meta = entry["metadata"]
        assert (meta["seed"], meta["epochs"], meta["n_train"]) == (0, 1, 300)
        assert meta["attack_steps"] == (1 if robust else 0)
        assert meta["config_hash"] == replace(BASE, adversarial=robust).config_hash()
        assert meta["train_seconds"] > 0 and (meta["n_test"], meta["n_eval_robust"]) == (100, 50)


def test_the_lead_zoo_reader_accepts_it(zoo_dir: Path) -> None:
    entries = load_zoo_file(zoo_dir / "zoo.yaml")
    assert [e.robust for e in entries] == [False, True]
    assert entries[1].sources == [str((zoo_dir / "checkpoints" / "synthetic-Linf-tiny_cnn-adv-s0.pt").resolve())]
    assert entries[1].eps == pytest.approx(8 / 255, abs=1e-7)


def test_checkpoints_extract_through_the_forward_path(zoo_dir: Path, tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path / "ds"))
    for entry in load_zoo_file(zoo_dir / "zoo.yaml"):
        result = extract_model(entry.request(entry.sources), store, device="cpu", progress=False)
        assert result.n_conv_layers == 4
        # tiny_cnn: 3->8, 8->8, 8->16, 16->16 (all 3x3)
        assert result.n_filters == 8 * 3 + 8 * 8 + 16 * 8 + 16 * 16
    models = {r["model_id"]: r for r in store.models().to_pylist()}
    adv = models["t/synthetic/Linf/tiny_cnn-adv-s0"]
    assert adv["depth_source"] == "forward" and adv["arch_spec"] == "pipeline.train.demo_models:tiny_cnn"
    assert adv["n_params"] == sum(p.numel() for p in tiny_cnn().parameters()) and adv["n_params_unused"] == 0
    assert adv["robust"] is True and adv["threat_model"] == "Linf" and adv["input_shape"] == "1x3x32x32"


def test_rerun_reuses_unchanged_models_and_trains_only_new_ones(zoo_dir: Path) -> None:
    zoo = zoo_dir / "zoo.yaml"
    before = _files(zoo_dir / "checkpoints")
    zoo_bytes = zoo.read_bytes()
    again = train_zoo(_plan(), str(zoo), name="tiny", backend="local", progress=False)
    assert again.trained == [] and len(again.reused) == 2
    assert _files(zoo_dir / "checkpoints") == before
    assert zoo.read_bytes() == zoo_bytes

    grown = train_zoo(_plan((0, 1)), str(zoo), name="tiny", backend="local", progress=False)
    assert sorted(grown.trained) == ["t/synthetic/Linf/tiny_cnn-adv-s1", "t/synthetic/none/tiny_cnn-normal-s1"]
    after = _files(zoo_dir / "checkpoints")
    assert {k: after[k] for k in before} == before
    assert len(read_zoo(str(zoo))["models"]) == 4


def test_a_changed_recipe_or_a_changed_checkpoint_is_retrained(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo.yaml"
    plan = [replace(BASE, adversarial=False)]
    first = train_zoo(plan, str(zoo), backend="local", progress=False).entries[0]
    ckpt = tmp_path / first["source"]

    changed = train_zoo([replace(plan[0], lr=0.05)], str(zoo), backend="local", progress=False)
    assert changed.trained == [plan[0].model_id]
    assert changed.entries[0]["metadata"]["config_hash"] != first["metadata"]["config_hash"]

    ckpt.write_bytes(b"tampered")
    redone = train_zoo([replace(plan[0], lr=0.05)], str(zoo), backend="local", progress=False)
    assert redone.trained == [plan[0].model_id]
    assert _sha(ckpt) == redone.entries[0]["sha256"] == changed.entries[0]["sha256"]


def test_other_entries_are_kept_or_dropped(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"name": "mine", "models": [{"id": "lab/x", "source": "x.pt"}]}))
    plan = [replace(BASE, epochs=1)]
    train_zoo(plan, str(zoo), name="mine", backend="local", progress=False)
    assert [m["id"] for m in read_zoo(str(zoo))["models"]] == [plan[0].model_id, "lab/x"]
    train_zoo(plan, str(zoo), name="mine", backend="local", progress=False, keep_other_entries=False)
    assert [m["id"] for m in read_zoo(str(zoo))["models"]] == [plan[0].model_id]


def test_a_failed_model_keeps_the_others_and_raises(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo.yaml"
    bad = replace(BASE, lr=float("nan"), seed=7)  # NaN loss: diverges in the first epoch
    with pytest.raises(TrainingError, match="1 of 2 models failed"):
        train_zoo([replace(BASE), bad], str(zoo), backend="local", progress=False)
    assert [m["id"] for m in read_zoo(str(zoo))["models"]] == [BASE.model_id]
    assert not (tmp_path / "checkpoints" / bad.checkpoint_name).exists()


def test_bad_plans_and_zoo_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        train_zoo([BASE, BASE], str(tmp_path / "zoo.yaml"), backend="local", progress=False)
    with pytest.raises(ConfigError, match="backend"):
        train_zoo([BASE], str(tmp_path / "zoo.yaml"), backend="spark", progress=False)
    (tmp_path / "bad.yaml").write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        train_zoo([BASE], str(tmp_path / "bad.yaml"), backend="local", progress=False)


def test_ray_tasks_give_the_same_models_as_local(zoo_dir: Path, tmp_path: Path, ray_cluster: None) -> None:
    """One Ray task per model, CPU-only cluster (no GPU requested); single-threaded CPU training is bit-identical."""
    summary = train_zoo(_plan(), str(tmp_path / "zoo.yaml"), name="tiny", backend="ray", progress=False)
    assert summary.backend == "ray" and len(summary.trained) == 2
    local = {m["id"]: m for m in read_zoo(str(zoo_dir / "zoo.yaml"))["models"]}
    for entry in summary.entries:
        assert entry["sha256"] == local[entry["id"]]["sha256"]
        assert (entry["clean_acc"], entry["robust_acc"]) == (local[entry["id"]]["clean_acc"],
                                                             local[entry["id"]]["robust_acc"])
        assert entry["metadata"]["device"] == "cpu"
    assert os.path.getsize(tmp_path / summary.entries[0]["source"]) > 0


def test_gpu_per_task_only_when_the_cluster_has_one() -> None:
    assert task_resources({"CPU": 2.0}) == (0, "cpu")
    assert task_resources({"CPU": 16.0, "GPU": 0.5}) == (0, "cpu")
    assert task_resources({"CPU": 16.0, "GPU": 4.0}) == (1, "cuda")


TRAIN_ARGS = ["--arch", "pipeline.train.demo_models:tiny_cnn", "--kind", "adversarial", "--epochs", "1", "--n-train",
              "100", "--n-test", "40", "--n-eval-robust", "20", "--eval-steps", "1", "--attack-steps", "1",
              "--batch-size", "50", "--id-prefix", "lab", "--backend", "local", "--no-progress"]


def test_train_command_writes_a_zoo(tmp_path: Path, cli) -> None:
    res = cli("train", *TRAIN_ARGS, "--seeds", "2", "--zoo", tmp_path / "zoo.yaml")
    assert res.code == 0, res.err
    assert "2 trained, 0 reused" in res.out and "lab/synthetic/Linf/tiny_cnn-adv-s1" in res.out
    doc = read_zoo(str(tmp_path / "zoo.yaml"))
    assert doc["name"] == "lab" and [m["robust"] for m in doc["models"]] == [True, True]
    again = cli("train", *TRAIN_ARGS, "--seeds", "2", "--zoo", tmp_path / "zoo.yaml")
    assert "0 trained, 2 reused" in again.out
    bad = cli("train", "--arch", "pipeline.train.demo_models:tiny_cnn", "--dataset", "cifar10", "--zoo",
              tmp_path / "c.yaml", "--backend", "local")
    assert bad.code == 2 and "--data-root" in bad.err


def test_ray_job_entrypoint_runs_filterlens_train(tmp_path: Path) -> None:
    """jobs/train_zoo.py is what `ray job submit -- python jobs/train_zoo.py ...` runs (here without a cluster)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, str(root / "jobs" / "train_zoo.py"), *TRAIN_ARGS, "--zoo",
                           str(tmp_path / "zoo.yaml")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [m["id"] for m in read_zoo(str(tmp_path / "zoo.yaml"))["models"]] == ["lab/synthetic/Linf/tiny_cnn-adv-s0"]
