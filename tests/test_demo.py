"""``filterlens demo``: trains a zoo, builds it through build_zoo, measures the paper's directions; reruns reuse."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore
from pipeline.demo import DemoConfig, _verdict, run_demo, stats_available

TINY_DEMO = dict(archs=("tiny_cnn",), seeds=(0, 1), epochs=1, n_train=300, n_test=100, n_eval_robust=50,
                 eval_steps=2, attack_steps=1, backend="local", device="cpu", progress=False, probe_images=32)
FILTERS_PER_MODEL = 8 * 3 + 8 * 8 + 16 * 8 + 16 * 16


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[DemoConfig, object]:
    config = DemoConfig(out=str(tmp_path_factory.mktemp("demo")), **TINY_DEMO)
    return config, run_demo(config)


def test_demo_builds_the_zoo_dataset_through_the_build(demo) -> None:
    config, result = demo
    assert len(result.zoo.trained) == 4 and result.zoo.reused == []
    data = open_dataset(config.dataset_path)
    models = data.sql("SELECT model_id, robust, depth_source, arch_spec, n_filters, clean_acc, metadata_json "
                      "FROM models ORDER BY model_id").fetchall()
    assert [m[0] for m in models] == sorted(e["id"] for e in result.zoo.entries)
    for model_id, robust, depth_source, spec, n_filters, clean_acc, metadata in models:
        entry = next(e for e in result.zoo.entries if e["id"] == model_id)
        assert robust == entry["robust"] and clean_acc == entry["clean_acc"]
        assert (depth_source, spec, n_filters) == ("forward", "pipeline.train.demo_models:tiny_cnn", FILTERS_PER_MODEL)
        assert json.loads(metadata)["config_hash"] == entry["metadata"]["config_hash"]
    assert data.sql("SELECT count(*) FROM filters").fetchall()[0][0] == 4 * FILTERS_PER_MODEL
    assert data.sql("SELECT count(*) FROM layers").fetchall()[0][0] == 4 * 4
    assert (Path(config.out) / "directions.csv").is_file()
    assert (result.report is not None) == stats_available()


def test_directions_match_an_independent_computation(demo) -> None:
    config, result = demo
    data = open_dataset(config.dataset_path)
    layers = data.sql("SELECT model_id, conv_index, n_filters, n_sparse, n_nonsparse, variance_entropy, "
                      "orthogonality, out_channels FROM layers").df()
    models = data.sql("SELECT model_id, robust, metadata_json FROM models").df()
    models["seed"] = [json.loads(m)["seed"] for m in models.metadata_json]
    first = layers[layers.conv_index == 0].merge(models, on="model_id")
    per_model = pd.DataFrame({
        "model_id": first.model_id, "robust": first.robust, "seed": first.seed,
        "sparsity": first.n_sparse / first.n_filters,
        "variance_entropy": first.variance_entropy, "orthogonality": first.orthogonality,
    })
    measured = {(d.scope, d.metric): d for d in result.directions}
    assert len(measured) == 9 + 3  # the paper's 3 metrics x 3 scopes, and the probe's gain per perturbation
    probes = data.sql("SELECT p.model_id, m.robust, m.metadata_json, p.gain_mean FROM probes p JOIN models m "
                      "USING (model_id) WHERE p.stage = 'conv_relu' AND p.perturbation = 'transfer'").df()
    probes["seed"] = [json.loads(m)["seed"] for m in probes.metadata_json]
    gains_robust = probes[probes.robust].set_index("seed").gain_mean
    gains_normal = probes[~probes.robust].set_index("seed").gain_mean
    transfer = measured[("first conv + ReLU", "gain (transfer)")]
    assert transfer.robust_mean == pytest.approx(gains_robust.mean(), abs=1e-12)
    assert transfer.verdict == _verdict((gains_robust - gains_normal).tolist(), -1)
    for metric, sign in (("sparsity", -1), ("variance_entropy", 1), ("orthogonality", 1)):
        robust = per_model[per_model.robust].set_index("seed")[metric]
        normal = per_model[~per_model.robust].set_index("seed")[metric]
        d = measured[("first conv layer", metric)]
        assert d.robust_mean == pytest.approx(robust.mean(), abs=1e-12)
        assert d.normal_mean == pytest.approx(normal.mean(), abs=1e-12)
        diffs = (robust - normal).tolist()
        assert d.pairs == 2 and d.pairs_agreeing == sum(1 for x in diffs if x * sign > 0)
        assert d.verdict == _verdict(diffs, sign)
    # whole-model orthogonality is weighted by output channels
    everything = layers.merge(models, on="model_id")
    one = everything[everything.model_id == models.model_id.iloc[0]]
    weighted = (one.orthogonality * one.out_channels).sum() / one.out_channels.sum()
    robust_flag = bool(models.robust.iloc[0])
    same_side = [m for m, r in zip(models.model_id, models.robust, strict=True) if r == robust_flag]
    side_values = [((g.orthogonality * g.out_channels).sum() / g.out_channels.sum())
                   for _, g in everything[everything.model_id.isin(same_side)].groupby("model_id")]
    assert weighted in side_values
    side = measured[("all 3x3 layers", "orthogonality")]
    assert (side.robust_mean if robust_flag else side.normal_mean) == pytest.approx(sum(side_values) / 2, abs=1e-12)


def test_verdicts() -> None:
    assert _verdict([], 1) == "no pairs"
    assert _verdict([0.0, 0.0], -1) == "no difference"
    assert _verdict([0.1, 0.2, -0.01], 1) == "shows up"
    assert _verdict([-0.1, -0.2, 0.01], 1) == "opposite"
    assert _verdict([0.3, -0.1, -0.1], 1) == "mixed"
    assert _verdict([-0.1, -0.2], -1) == "shows up"


def test_rerun_reuses_checkpoints_and_adds_no_rows(demo) -> None:
    config, first = demo
    zoo_dir, dataset = Path(config.zoo_path).parent, Path(config.dataset_path)
    zoo_before = _snapshot(zoo_dir)
    models_before = {m: s.write_id for m, s in DatasetStore(str(dataset)).stored_models().items()}
    again = run_demo(config)
    assert again.zoo.trained == [] and len(again.zoo.reused) == 4
    assert _snapshot(zoo_dir) == zoo_before
    assert {m: s.write_id for m, s in DatasetStore(str(dataset)).stored_models().items()} == models_before
    data = open_dataset(str(dataset))
    assert data.sql("SELECT count(*) FROM filters").fetchall()[0][0] == 4 * FILTERS_PER_MODEL
    assert data.sql("SELECT count(*), count(DISTINCT model_id) FROM models").fetchall()[0] == (4, 4)
    assert [(d.robust_mean, d.normal_mean) for d in again.directions] == \
        [(d.robust_mean, d.normal_mean) for d in first.directions]


def test_fewer_seeds_prunes_the_dataset_to_the_zoo(demo) -> None:
    config, _ = demo
    smaller = replace(config, seeds=(0,), stats=False)
    result = run_demo(smaller)
    assert result.zoo.trained == [] and len(result.zoo.reused) == 2
    ids = sorted(DatasetStore(config.dataset_path).stored_models())
    assert ids == sorted(e["id"] for e in result.zoo.entries)
    assert all(d.pairs == 1 for d in result.directions)


def test_demo_command(tmp_path: Path, cli) -> None:
    res = cli("demo", "--out", tmp_path / "d", "--archs", "tiny_cnn", "--seeds", "1", "--epochs", "1",
              "--n-train", "200", "--n-test", "50", "--n-eval-robust", "20", "--eval-steps", "1",
              "--attack-steps", "1", "--backend", "local", "--no-stats", "--no-progress")
    assert res.code == 0, res.err
    assert res.out.startswith("filterlens demo: 2 small CNNs (tiny_cnn;")
    assert "does not reproduce the paper's numbers" in res.out
    assert "filterlens-demo/synthetic/Linf/tiny_cnn-adv-s0" in res.out
    assert "first conv layer   orthogonality" in res.out
    assert "no statistics report" in res.out
    assert (tmp_path / "d" / "zoo" / "zoo.yaml").is_file()
    bad = cli("demo", "--out", tmp_path / "e", "--archs", "resnet9000", "--backend", "local")
    assert bad.code == 2 and "unknown demo architecture" in bad.err
