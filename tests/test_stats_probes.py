"""Statistics of the probes table: robust vs normal per perturbation and stage, paired, and the report section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.stats.probes import compare_probes, probe_findings


def frame(gains_robust: list[float], gains_normal: list[float]) -> pd.DataFrame:
    rows = []
    for robust, gains in ((True, gains_robust), (False, gains_normal)):
        for i, gain in enumerate(gains):
            for stage in ("conv", "conv_relu"):
                rows.append({"model_id": f"{'r' if robust else 'n'}{i}", "dataset": "cifar10",
                             "perturbation": "transfer", "stage": stage, "rel_change_mean": gain / 10,
                             "gain_mean": gain, "clean_acc": 90.0, "perturbed_acc": 50.0, "robust": robust})
    return pd.DataFrame(rows)


def test_separated_groups_by_hand() -> None:
    probes = frame([0.2, 0.3, 0.4], [0.8, 0.9, 1.0])
    pairs = pd.DataFrame({"robust_model_id": ["r0", "r1", "r2"], "normal_model_id": ["n0", "n1", "n2"],
                          "dataset": "cifar10"})
    table = compare_probes(probes, pairs, alpha=0.05, min_models=3)
    assert len(table) == 4  # 2 stages x 2 metrics
    row = table[(table.stage == "conv_relu") & (table.metric == "gain_mean")].iloc[0]
    assert (row.n_robust, row.n_normal) == (3, 3)
    assert row.median_robust == pytest.approx(0.3) and row.median_normal == pytest.approx(0.9)
    assert row.ratio == pytest.approx(1 / 3)
    assert row.p_value == pytest.approx(0.1)  # exact two-sided Mann-Whitney, 3 vs 3 fully separated: 2/20
    assert row.p_holm == pytest.approx(0.4)  # 4 tests with the same p
    assert not row.significant and row.verdict == "no significant difference"
    assert row.n_pairs == 3 and row.pairs_robust_lower == 3
    assert row.median_pair_difference == pytest.approx(-0.6)
    assert row.p_pairs == pytest.approx(0.25)  # exact Wilcoxon signed-rank, 3 pairs all negative: 2/8


def test_significant_with_more_models_and_cannot_say_with_few() -> None:
    rng = np.random.default_rng(0)
    probes = frame(list(rng.uniform(0.1, 0.4, 8)), list(rng.uniform(0.7, 1.0, 8)))
    table = compare_probes(probes, pd.DataFrame(columns=["robust_model_id", "normal_model_id"]), 0.05, 3)
    assert table.significant.all() and set(table.verdict) == {"robust lets less through"}
    assert (table.n_pairs == 0).all()
    findings = probe_findings(table, probes.assign(perturbation="pgd"))
    assert findings[0].verdict == "robust lower" and "passes on 0." in findings[0].text
    few = compare_probes(frame([0.2, 0.3], [0.9]), pd.DataFrame(columns=["robust_model_id", "normal_model_id"]),
                         0.05, 3)
    assert few.p_value.isna().all()
    assert set(few.verdict) == {"cannot say (2 robust, 1 normal; 3 of each needed)"}
    assert probe_findings(few, frame([0.2], [0.9]))[0].verdict == "cannot say"


def test_stats_report_has_the_probe_section(tmp_path: Path, cli) -> None:  # noqa: ANN001
    from test_probe_runs import make_zoo

    zoo = make_zoo(tmp_path, n=3, extra={f"t/m{i}": {"architecture": "TinyNet"} for i in range(3)})  # pairable
    out = tmp_path / "ds"
    cli("build", zoo, "--out", out, "--backend", "local", "--probe", "random,transfer", "--probe-images", "8",
        "--no-progress")
    result = cli("stats", out, "--out", tmp_path / "stats")
    assert result.code == 0, result.err
    report = (tmp_path / "stats" / "report.md").read_text()
    assert "## First-stage probe" in report and "figures/probe_gain.png" in report
    assert "figures/probe_first_stage.png" in report  # the notebook's figure for the first pair
    assert (tmp_path / "stats" / "figures" / "probe_first_stage.png").stat().st_size > 10_000
    examples = sorted((out / "_probes" / "examples").rglob("*.npz"))
    assert len(examples) == 3
    arrays = np.load(examples[0])
    assert arrays["filters"].shape == (8, 3, 3, 3) and arrays["clean"].shape == (8, 32, 32)
    assert str(arrays["perturbation"]) == "transfer"
    table = pd.read_csv(tmp_path / "stats" / "tables" / "probe_comparison.csv")
    assert set(table.perturbation) == {"random", "transfer"} and len(table) == 8
    assert (table.n_robust + table.n_normal == 3).all()
