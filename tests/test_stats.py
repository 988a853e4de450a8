"""filterlens stats: exact values against independent NumPy/pandas/scipy computations on small fixtures."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import scipy.stats
from stats_fixtures import planted_zoo, tiny_weights, write_model

from pipeline.dataset.store import DatasetStore
from pipeline.stats.corrections import holm
from pipeline.stats.options import StatsOptions
from pipeline.stats.pairing import auto_pairs, table_pairs
from pipeline.stats.profile import BUCKET_LABELS
from pipeline.stats.run import run_stats
from pipeline.stats.shift import (
    distribution,
    orient_components,
    pca_from_statistics,
    symmetric_kl,
    weighted_divergence,
)

FAST = {"permutations": 49, "figures": False}


# --- independent reference computations ------------------------------------------------------------
def reference_bucket(conv_index: int, n_conv: int) -> int:
    """Depth bucket with exact fractions: 0 for the first conv, else the decile of conv_index / (n_conv - 1)."""
    if conv_index == 0:
        return 0
    depth = Fraction(conv_index, n_conv - 1)
    return int(np.ceil(depth * 10))


def read_all(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three tables; layers with their reference bucket (depth per ensemble member) and whether they count
    (3x3, finite, and not a normally trained member of a robust model)."""
    models = pads.dataset(str(root / "models"), format="parquet").to_table().to_pandas()
    layers = pads.dataset(str(root / "layers"), format="parquet", partitioning=None).to_table().to_pandas()
    filters = pads.dataset(str(root / "filters"), format="parquet", partitioning=None).to_table().to_pandas()
    n_conv = layers.groupby(["model_id", "member"]).size().to_dict()
    layers["bucket"] = [reference_bucket(c, n_conv[(m, k)]) for m, k, c in zip(
        layers.model_id, layers.member, layers.conv_index, strict=True)]
    robust = layers.model_id.map(dict(zip(models.model_id, models.robust, strict=True))).astype(bool)
    layers["usable"] = ((layers.kernel_h == 3) & (layers.kernel_w == 3) & (layers.n_nonfinite == 0)
                        & ~(robust & ~layers.member_robust.astype(bool)))
    return models, layers, filters


def reference_profile(layers: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model_id, bucket), g in layers[layers.usable].groupby(["model_id", "bucket"]):
        rows.append({"model_id": model_id, "depth_bucket": bucket,
                     "sparsity": g.n_sparse.sum() / g.n_filters.sum(),
                     "variance_entropy": (g.n_nonsparse * g.variance_entropy).sum() / g.n_nonsparse.sum(),
                     "orthogonality": (g.out_channels * g.orthogonality).sum() / g.out_channels.sum()})
    return pd.DataFrame(rows)


def usable_filters(layers: pd.DataFrame, filters: pd.DataFrame) -> pd.DataFrame:
    keys = layers.loc[layers.usable, ["model_id", "member", "conv_index", "bucket"]]
    merged = filters.merge(keys, on=["model_id", "member", "conv_index"])
    return merged[~merged["sparse"]].reset_index(drop=True)


def reference_pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA on the raw scaled filters by SVD: (mean, components, explained variance ratio)."""
    scaled = x / np.abs(x).max(axis=1, keepdims=True)
    mean = scaled.mean(axis=0)
    _, s, vt = np.linalg.svd(scaled - mean, full_matrices=False)
    return mean, orient_components(vt), s**2 / np.sum(s**2)


def reference_distribution(values: np.ndarray, row_weights: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The paper's get_discrete_probability_distribution, with per-filter weights for pair multiplicity."""
    v, _ = np.histogram(values, bins=70, range=(lo, hi), density=True, weights=row_weights)
    v = v.astype(np.double)
    v[v == 0] = np.finfo(np.float32).eps
    return v / v.sum()


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("planted") / "ds"
    store = planted_zoo(root, n_per_side=6, datasets=("cifar10", "cifar100"))
    rng = np.random.default_rng(7)
    # A robust model of a second architecture with a NaN layer, unpaired; and a model with no 3x3 layer.
    weights = tiny_weights(rng, diverse=True)
    weights[3] = weights[3].copy()
    weights[3][0, 0, 1, 1] = np.nan
    write_model(store, "zoo/cifar10/odd", "cifar10", weights, robust=True, architecture="OtherNet",
                clean_acc=85.0, robust_acc=45.0)
    write_model(store, "zoo/cifar10/pointwise", "cifar10", [np.ones((4, 3, 1, 1), np.float32)] * 2, robust=False,
                architecture="Pointwise")
    out = tmp_path_factory.mktemp("planted_report")
    result = run_stats(str(root), str(out), StatsOptions(permutations=199))
    return root, out, result


@pytest.fixture(scope="module")
def null(tmp_path_factory: pytest.TempPathFactory) -> object:
    root = tmp_path_factory.mktemp("null") / "ds"
    planted_zoo(root, n_per_side=6, seed=3, planted=False)
    return run_stats(str(root), str(tmp_path_factory.mktemp("null_report")), StatsOptions(permutations=199))


# --- depth profile --------------------------------------------------------------------------------
def test_depth_buckets_and_weighted_means_match_pandas(planted: tuple) -> None:
    root, _, result = planted
    _, layers, _ = read_all(root)
    expected = reference_profile(layers).sort_values(["model_id", "depth_bucket"]).reset_index(drop=True)
    got = result.tables["depth_profile"].sort_values(["model_id", "depth_bucket"]).reset_index(drop=True)
    assert got[["model_id", "depth_bucket"]].values.tolist() == expected[["model_id", "depth_bucket"]].values.tolist()
    for metric in ("sparsity", "variance_entropy", "orthogonality"):
        np.testing.assert_allclose(got[metric], expected[metric], rtol=1e-12)
    # the tiny architecture: 5 convs -> first conv alone, then 1/4, 2/4 (the 1x1), 3/4, 4/4
    buckets = sorted(got[got.model_id == "zoo/cifar10/robust0"].depth_bucket)
    assert buckets == [0, 3, 8, 10] and [BUCKET_LABELS[b] for b in buckets][1] == "(0.2, 0.3]"


def test_nonfinite_layers_are_left_out_and_counted(planted: tuple) -> None:
    _, _, result = planted
    coverage = result.tables["layer_coverage"].set_index("model_id")
    assert coverage.loc["zoo/cifar10/odd", "n_layers_nonfinite"] == 1
    assert coverage.loc["zoo/cifar10/odd", "n_layers_with_metrics"] == 3
    assert coverage.loc["zoo/cifar10/pointwise", "n_layers_with_metrics"] == 0
    assert any("zoo/cifar10/odd" in n and "NaN/Inf" in n for n in result.notes)
    assert any("zoo/cifar10/pointwise" in n and "no 3x3 conv layers" in n for n in result.notes)
    assert "zoo/cifar10/pointwise" not in set(result.tables["depth_profile"].model_id)


def test_robust_vs_normal_tests_match_scipy_with_holm(planted: tuple) -> None:
    _, _, result = planted
    profile, table = result.tables["depth_profile"], result.tables["robust_vs_normal"]
    part = profile[(profile.dataset == "cifar100")]
    p = []
    for bucket in sorted(part.depth_bucket.unique()):
        g = part[part.depth_bucket == bucket]
        p.append(scipy.stats.mannwhitneyu(g.variance_entropy[g.robust], g.variance_entropy[~g.robust]).pvalue)
    rows = table[(table.dataset == "cifar100") & (table.metric == "variance_entropy")].sort_values("depth_bucket")
    np.testing.assert_allclose(rows.p_value, p)
    np.testing.assert_allclose(rows.p_holm, np.minimum(1, np.maximum.accumulate(
        np.sort(p) * np.arange(len(p), 0, -1)))[np.argsort(np.argsort(p))])


def test_holm_adjustment_by_hand() -> None:
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])


# --- planted difference / no difference -----------------------------------------------------------
def test_planted_difference_is_found_in_the_right_direction(planted: tuple) -> None:
    _, _, result = planted
    verdicts = {(f.dataset, f.subject): f.verdict for f in result.findings}
    for dataset in ("cifar10", "cifar100"):
        assert verdicts[(dataset, "variance_entropy")] == "robust higher"
        assert verdicts[(dataset, "orthogonality")] == "robust higher"
        assert verdicts[(dataset, "sparsity")] == "robust lower"
        assert verdicts[(dataset, "divergence")] == "shift"


def test_no_planted_difference_no_claim(null: object) -> None:
    verdicts = {f.subject: f.verdict for f in null.findings if f.dataset == "cifar10"}
    assert verdicts == {"sparsity": "no difference", "variance_entropy": "no difference",
                        "orthogonality": "no difference", "divergence": "no difference"}
    assert not null.tables["robust_vs_normal"].significant.any()


# --- pairing ---------------------------------------------------------------------------------------
def test_auto_pairing_by_architecture_and_dataset(planted: tuple) -> None:
    _, _, result = planted
    pairs = result.tables["pairs"]
    assert len(pairs) == 2 * 6 * 6
    assert set(pairs.source) == {"auto"}
    assert (pairs.robust_model_id.str.split("/").str[1] == pairs.normal_model_id.str.split("/").str[1]).all()
    unpaired = result.tables["unpaired"].set_index("model_id")
    assert "no normal OtherNet model on cifar10" in unpaired.loc["zoo/cifar10/odd", "reason"]
    assert "no robust Pointwise model" in unpaired.loc["zoo/cifar10/pointwise", "reason"]


def test_pairing_edge_cases() -> None:
    models = pd.DataFrame({"model_id": ["r1", "r2", "n1", "n2"], "model": ["r1", "r2", "n1", "n2"],
                           "robust": [True, True, False, False], "dataset": ["c10", "c10", "c10", "c100"],
                           "architecture": ["WRN-28-10", None, " wrn-28-10 ", "WRN-28-10"]})
    pairs, unpaired = auto_pairs(models)
    assert pairs[["robust_model_id", "normal_model_id"]].values.tolist() == [["r1", "n1"]]
    assert dict(zip(unpaired.model_id, unpaired.reason, strict=True)) == {
        "r2": "architecture unknown", "n2": "no robust WRN-28-10 model on c100 in the selection"}


def test_pairs_table_overrides_and_reports_unmatched(tmp_path: Path) -> None:
    rb = "robustbench/cifar10/Linf/Carmon2019Unlabeled"
    models = pd.DataFrame({"model_id": ["a/r1", "a/n1", "a/n2", rb], "model": ["a--r1", "a--n1", "a--n2", "rb"],
                           "robust": [True, False, False, True], "dataset": ["c10"] * 4,
                           "architecture": ["X", "X", "Y", "X"]})
    csv = tmp_path / "pairs.csv"
    csv.write_text(",Robust,Normal,Arch,Dataset\n0,a--r1,a/n2,Y,c10\n1,a/r1,missing,X,c10\n2,a/n1,a/r1,X,c10\n"
                   "3,robustbench_Carmon2019Unlabeled_cifar10_linf_13,a/n1,X,c10\n")
    from pipeline.stats.pairing import read_pairs_table
    pairs, unpaired = table_pairs(models, read_pairs_table(str(csv)))
    assert pairs[["robust_model_id", "normal_model_id", "source"]].values.tolist() == [
        ["a/r1", "a/n2", "table"], [rb, "a/n1", "table"]]
    reasons = list(unpaired.reason)
    assert "pairs table names a model that is not in the selection" in reasons
    assert any("not (robust, normal)" in r for r in reasons)
    assert len(unpaired) == 2  # both bad rows; every selected model is in a pair


# --- PCA -----------------------------------------------------------------------------------------------
def test_pca_from_sufficient_statistics_equals_pca_on_raw_filters(planted: tuple) -> None:
    root, _, result = planted
    models, layers, filters = read_all(root)
    usable = usable_filters(layers, filters)
    robust = dict(zip(models.model_id, models.robust, strict=True))
    for name, mask in (("all", np.ones(len(usable), bool)), ("robust", usable.model_id.map(robust).to_numpy(bool)),
                       ("normal", ~usable.model_id.map(robust).to_numpy(bool))):
        x = usable.loc[mask, [f"w{i}" for i in range(9)]].to_numpy(np.float64)
        mean, components, ratio = reference_pca(x)
        basis = result.bases[name]
        assert basis.n == len(x)
        np.testing.assert_allclose(basis.mean, mean, atol=1e-12)
        np.testing.assert_allclose(basis.explained_variance_ratio, ratio, atol=1e-12)
        np.testing.assert_allclose(basis.components, components, atol=1e-9)


def test_pca_needs_two_filters() -> None:
    from pipeline.errors import StatsError
    with pytest.raises(StatsError, match="at least 2"):
        pca_from_statistics(1, np.ones(9), np.ones((9, 9)))


# --- distribution shift -------------------------------------------------------------------------
def test_kl_of_identical_distributions_is_zero_and_kl_is_symmetric() -> None:
    rng = np.random.default_rng(0)
    p, q = rng.random(70), rng.random(70)
    p, q = p / p.sum(), q / q.sum()
    assert symmetric_kl(p, p) == 0.0
    assert symmetric_kl(p, q) == pytest.approx(symmetric_kl(q, p), rel=1e-15)
    assert symmetric_kl(p, q) == pytest.approx(scipy.stats.entropy(p, q) + scipy.stats.entropy(q, p), rel=1e-12)
    counts = rng.integers(0, 5, (9, 70))
    edges = np.linspace(-1, 1, 71)
    d, per = weighted_divergence(counts, counts, edges, np.full(9, 1 / 9))
    assert d == 0.0 and (per == 0).all()
    assert weighted_divergence(counts, np.zeros((9, 70)), edges, np.ones(9))[0] is None
    dist = distribution(np.array([0, 2, 0, 2]), np.array([0.0, 1, 2, 3, 4]))
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(dist, np.array([eps, 0.5, eps, 0.5]) / (1 + 2 * eps))


def test_coefficient_histograms_and_divergences_match_an_independent_computation(planted: tuple) -> None:
    root, _, result = planted
    models, layers, filters = read_all(root)
    usable = usable_filters(layers, filters)
    x = usable[[f"w{i}" for i in range(9)]].to_numpy(np.float64)
    mean, components, ratio = reference_pca(x)
    coef = (x / np.abs(x).max(axis=1, keepdims=True) - mean) @ components.T
    lo, hi = coef.min(), coef.max()
    assert result.coefficient_range == pytest.approx((lo, hi), abs=1e-12)

    robust = usable.model_id.map(dict(zip(models.model_id, models.robust, strict=True))).to_numpy(bool)
    dataset = usable.model_id.map(dict(zip(models.model_id, models.dataset, strict=True))).to_numpy()
    hist = result.tables["coefficient_histograms"]
    for (d, r), part in hist.groupby(["dataset", "robust"]):
        rows = (dataset == d) & (robust == r)
        for k in range(9):
            expected, _ = np.histogram(coef[rows, k], bins=70, range=(lo, hi))
            assert part[part.coefficient == k].sort_values("bin")["count"].tolist() == expected.tolist()

    # divergences: paired models weighted by the number of pairs they are in (as the paper's .loc[list])
    pairs = result.tables["pairs"]
    shift = result.tables["distribution_shift"].set_index(["dataset", "depth_bucket"])
    for d in ("cifar10", "cifar100"):
        part = pairs[pairs.dataset == d]
        w_robust, w_normal = part.robust_model_id.value_counts(), part.normal_model_id.value_counts()
        for bucket in (-1, 0, 10):
            in_bucket = np.ones(len(usable), bool) if bucket == -1 else (usable.bucket == bucket).to_numpy()
            rw = usable.model_id.map(w_robust).fillna(0).to_numpy() * in_bucket
            nw = usable.model_id.map(w_normal).fillna(0).to_numpy() * in_bucket
            expected = sum(ratio[k] * (scipy.stats.entropy(p := reference_distribution(coef[:, k], rw, lo, hi),
                                                            q := reference_distribution(coef[:, k], nw, lo, hi))
                                       + scipy.stats.entropy(q, p)) for k in range(9))
            assert shift.loc[(d, bucket), "divergence"] == pytest.approx(expected, rel=1e-9)


def test_all_groups_weight_each_model_once(planted: tuple, tmp_path: Path) -> None:
    root, _, result = planted
    other = run_stats(str(root), str(tmp_path), StatsOptions(kl_groups="all", coef_range=result.coefficient_range,
                                                             **FAST))
    shift = other.tables["distribution_shift"].set_index(["dataset", "depth_bucket"])
    assert shift.loc[("cifar10", -1), "n_robust_models"] == 7  # the unpaired robust model counts too
    assert shift.loc[("cifar100", -1), "divergence"] == pytest.approx(
        result.tables["distribution_shift"].set_index(["dataset", "depth_bucket"]).loc[("cifar100", -1),
                                                                                         "divergence"])


# --- correlations ----------------------------------------------------------------------------------
def test_correlations_match_scipy(planted: tuple) -> None:
    _, _, result = planted
    whole = result.tables["model_profile"]
    robust = whole[whole.robust & (whole.dataset == "cifar10")]
    corr = result.tables["correlations"].set_index(["dataset", "bucket", "metric", "accuracy"])
    row = corr.loc[("cifar10", "all", "orthogonality", "robust_acc")]
    expected = scipy.stats.spearmanr(robust.orthogonality, robust.robust_acc)
    assert row.n == len(robust) == 7
    assert row.spearman_rho == pytest.approx(expected.statistic)
    assert row.pearson_r == pytest.approx(scipy.stats.pearsonr(robust.orthogonality, robust.robust_acc).statistic)


# --- the report and the CLI ---------------------------------------------------------------------
def test_report_and_tables_are_written(planted: tuple) -> None:
    _, out, result = planted
    for name in result.tables:
        assert (out / "tables" / f"{name}.parquet").is_file() and (out / "tables" / f"{name}.csv").is_file()
    back = pd.read_parquet(out / "tables" / "depth_profile.parquet")
    assert len(back) == len(result.tables["depth_profile"])
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "cifar10, variance entropy: robust higher, as in the paper" in md
    assert "![Metrics by depth bucket" in md and (out / "figures" / "depth_profile.png").is_file()
    assert html.count("data:image/png;base64,") >= 5
    assert "first_layer_gallery" in md


def test_cli_writes_the_report(cli: object, planted: tuple, tmp_path: Path) -> None:
    root, _, _ = planted
    res = cli("stats", root, "--out", tmp_path / "r", "--datasets", "cifar100", "--permutations", "0",
              "--no-figures")
    assert res.code == 0, res.err
    assert "12 models" in res.out and "cifar100, orthogonality: robust higher" in res.out
    assert (tmp_path / "r" / "report.html").is_file()


def test_empty_selection_is_a_clear_error(cli: object, planted: tuple, tmp_path: Path) -> None:
    root, _, _ = planted
    res = cli("stats", root, "--out", tmp_path / "r", "--datasets", "imagenet")
    assert res.code == 6
    assert "matches none of the 26 models" in res.err and "Traceback" not in res.err
    res = cli("stats", root, "--out", tmp_path / "r", "--where", "no_such_column > 1")
    assert res.code == 2 and "--where" in res.err
    res = cli("stats", root, "--out", tmp_path / "r", "--where", "true); DROP TABLE x; SELECT (1")
    assert res.code == 2


def test_only_robust_models_say_so_without_numbers(planted: tuple, tmp_path: Path) -> None:
    root, _, _ = planted
    result = run_stats(str(root), str(tmp_path), StatsOptions(where="robust", **FAST))
    verdicts = {(f.analysis, f.dataset, f.subject): f for f in result.findings}
    finding = verdicts[("depth profile", "cifar10", "variance_entropy")]
    assert finding.verdict == "cannot say" and "no normally trained cifar10 models" in finding.text
    assert verdicts[("distribution shift", "all", "divergence")].verdict == "cannot say"
    assert result.tables["distribution_shift"].empty and result.tables["pairs"].empty
    assert result.tables["robust_vs_normal"].p_value.isna().all()
    assert (tmp_path / "report.md").is_file()


def test_models_without_3x3_layers_only(tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path / "ds"))
    for i, robust in enumerate((True, False)):
        write_model(store, f"m{i}", "cifar10", [np.ones((4, 3, 1, 1), np.float32)], robust=robust)
    result = run_stats(str(tmp_path / "ds"), str(tmp_path / "out"), StatsOptions(**FAST))
    assert result.tables["depth_profile"].empty
    assert all(b is None for b in result.bases.values())
    assert {f.verdict for f in result.findings} == {"cannot say"}
    assert len([n for n in result.notes if "no 3x3 conv layers" in n]) == 2
    assert (tmp_path / "out" / "report.html").is_file()


def test_decile_edges_fall_in_the_lower_bucket(tmp_path: Path) -> None:
    """11 convs: depths 0, 0.1, ..., 1.0 (3/10 is 0.30000000000000004 in floating point) -> one layer per bucket."""
    rng = np.random.default_rng(1)
    store = DatasetStore(str(tmp_path / "ds"))
    for i, robust in enumerate((True, False)):
        write_model(store, f"m{i}", "cifar10", [rng.standard_normal((4, 3 if k == 0 else 4, 3, 3)).astype(np.float32)
                                                for k in range(11)], robust=robust)
    result = run_stats(str(tmp_path / "ds"), str(tmp_path / "out"), StatsOptions(**FAST))
    profile = result.tables["depth_profile"]
    assert sorted(profile[profile.model_id == "m0"].depth_bucket) == list(range(11))
    assert [reference_bucket(k, 11) for k in range(11)] == list(range(11))
    assert (profile.n_layers == 1).all()


def test_duckdb_engine_gives_the_same_numbers(planted: tuple, tmp_path: Path) -> None:
    root, _, result = planted
    other = run_stats(str(root), str(tmp_path), StatsOptions(engine="duckdb", permutations=199, figures=False))
    assert other.timings["engine"] == "duckdb" and result.timings["engine"] == "numba"
    assert other.coefficient_range == result.coefficient_range
    pd.testing.assert_frame_equal(other.tables["coefficient_histograms"], result.tables["coefficient_histograms"])
    pd.testing.assert_frame_equal(other.tables["distribution_shift"], result.tables["distribution_shift"])


def test_a_dataset_behind_a_uri_gives_the_same_numbers(tmp_path: Path) -> None:
    stores = [DatasetStore(str(tmp_path / "local")), DatasetStore("memory://filterlens-stats-test/ds")]
    for store in stores:
        rng = np.random.default_rng(5)
        for i in range(3):
            write_model(store, f"r{i}", "cifar10", tiny_weights(rng, True), True)
            write_model(store, f"n{i}", "cifar10", tiny_weights(rng, False), False)
    local, remote = (run_stats(root, str(tmp_path / f"out{i}"), StatsOptions(**FAST))
                     for i, root in enumerate([str(tmp_path / "local"), "memory://filterlens-stats-test/ds"]))
    for name in ("depth_profile", "coefficient_histograms", "distribution_shift"):
        pd.testing.assert_frame_equal(local.tables[name], remote.tables[name])
    ids = [[g.model_id for g in row] for row in remote.galleries]
    assert ids == [[g.model_id for g in row] for row in local.galleries] == [["r0", "n0"], ["r1", "n1"]]
    assert all(g.weights.shape == (8, 3, 3, 3) and g.robust == g.model_id.startswith("r")
               for row in remote.galleries for g in row)


PAPER_PAIRS = Path(__file__).resolve().parent / "data" / "paper_robust_vs_normal_pairings.csv"


def test_the_papers_pairings_table_reads_and_matches_robustbench_ids() -> None:
    from pipeline.stats.pairing import read_pairs_table
    table = read_pairs_table(str(PAPER_PAIRS))
    assert list(table.columns) == ["Robust", "Normal", "Arch", "Dataset"] and len(table) == 71
    first = table.iloc[0]
    name = first.Robust.removeprefix("robustbench_").removesuffix("_cifar10_linf_13")
    models = pd.DataFrame({"model_id": [f"robustbench/cifar10/Linf/{name}", first.Normal],
                           "model": ["r", "n"], "robust": [True, False], "dataset": ["cifar10"] * 2,
                           "architecture": [first.Arch] * 2})
    pairs, unpaired = table_pairs(models, table)
    assert pairs[["robust_model_id", "normal_model_id"]].values.tolist() == [[f"robustbench/cifar10/Linf/{name}",
                                                                              first.Normal]]
    assert len(unpaired) == 70 and set(unpaired.reason) == {"pairs table names a model that is not in the selection"}


def test_a_given_coefficient_range_drops_values_outside_as_numpy_does(planted: tuple, tmp_path: Path) -> None:
    root, _, _ = planted
    models, layers, filters = read_all(root)
    usable = usable_filters(layers, filters)
    x = usable[[f"w{i}" for i in range(9)]].to_numpy(np.float64)
    mean, components, _ = reference_pca(x)
    coef = (x / np.abs(x).max(axis=1, keepdims=True) - mean) @ components.T
    result = run_stats(str(root), str(tmp_path), StatsOptions(coef_range=(-0.5, 0.7), **FAST))
    assert "range_pass" not in result.timings and result.coefficient_range == (-0.5, 0.7)
    robust = usable.model_id.map(dict(zip(models.model_id, models.robust, strict=True))).to_numpy(bool)
    hist = result.tables["coefficient_histograms"]
    in_cifar100 = usable.model_id.str.startswith("zoo/cifar100/").to_numpy()
    for r in (True, False):
        part = hist[(hist.dataset == "cifar100") & (hist.robust == r)]
        for k in (0, 4, 8):
            expected, _ = np.histogram(coef[in_cifar100 & (robust == r), k], bins=70, range=(-0.5, 0.7))
            assert part[part.coefficient == k].sort_values("bin")["count"].tolist() == expected.tolist()


# --- threat models: corruption-robust models apart; the report says what it pooled -----------------
@pytest.fixture(scope="module")
def mixed_threats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 Linf + 1 L2 robust, 3 normal, and 3 corruption-robust models (one stored the old way, robust = true)."""
    root = tmp_path_factory.mktemp("threats") / "ds"
    store = DatasetStore(str(root))
    rng = np.random.default_rng(11)
    for i in range(3):
        write_model(store, f"t/linf{i}", "cifar10", tiny_weights(rng, True), True)
        write_model(store, f"t/normal{i}", "cifar10", tiny_weights(rng, False), False)
        write_model(store, f"t/corr{i}", "cifar10", tiny_weights(rng, True), i == 2, threat_model="corruptions")
    write_model(store, "t/l2", "cifar10", tiny_weights(rng, True), True, threat_model="L2")
    return root


def pools(result: object) -> dict:
    from pipeline.stats.selection import pooled_threat_models
    return pooled_threat_models(result.tables["models"])


def test_corruption_robust_models_are_in_neither_pool_by_default(mixed_threats: Path, tmp_path: Path) -> None:
    result = run_stats(str(mixed_threats), str(tmp_path), StatsOptions(**FAST))
    assert sorted(result.tables["models"].model_id) == ["t/l2", "t/linf0", "t/linf1", "t/linf2", "t/normal0",
                                                        "t/normal1", "t/normal2"]
    assert pools(result) == {"robust": {"L2": 1, "Linf": 3}, "normal": {"none": 3}}
    assert result.selection == "all models; corruption-robust models (threat_model corruptions) left out"
    assert result.notes[0] == ("3 corruption-robust model(s) (threat_model corruptions) left out of both pools; "
                               "--include-corruptions or --threat-models corruptions brings them into the robust pool.")
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["pooled_threat_models"] == {"robust": {"L2": 1, "Linf": 3}, "normal": {"none": 3}}
    assert "Threat models pooled: robust: L2 1, Linf 3; normal: none 3 (robust: adversarially trained" in (
        tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("options", "robust_pool", "selection"), [
    ({"include_corruptions": True}, {"L2": 1, "Linf": 3, "corruptions": 3},
     "all models; corruption-robust models (threat_model corruptions) in the robust pool"),
    ({"threat_models": ["corruptions"]}, {"corruptions": 3},
     "robust threat models corruptions; corruption-robust models (threat_model corruptions) in the robust pool"),
    ({"threat_models": ["Linf"], "include_corruptions": True}, {"Linf": 3, "corruptions": 3},
     "robust threat models Linf, corruptions; corruption-robust models (threat_model corruptions) in the robust pool"),
    ({"threat_models": ["Linf"]}, {"Linf": 3},
     "robust threat models Linf; corruption-robust models (threat_model corruptions) left out"),
])
def test_corruption_robust_models_join_the_robust_pool_when_asked(mixed_threats: Path, tmp_path: Path,
                                                                  options: dict, robust_pool: dict,
                                                                  selection: str) -> None:
    result = run_stats(str(mixed_threats), str(tmp_path), StatsOptions(**options, **FAST))
    assert pools(result) == {"robust": robust_pool, "normal": {"none": 3}}
    assert result.selection == selection
    models = result.tables["models"]
    assert models[models.threat_model == "corruptions"].robust.all()  # the pool, whatever was stored
    assert any(n.startswith("3 corruption-robust") for n in result.notes) == ("corruptions" not in robust_pool)


def test_cli_threat_model_flags(cli: object, mixed_threats: Path, tmp_path: Path) -> None:
    res = cli("stats", mixed_threats, "--out", tmp_path / "r", "--include-corruptions", "--no-figures",
              "--permutations", "0")
    assert res.code == 0, res.err
    assert res.out.splitlines()[0] == (f"10 models (robust: L2 1, Linf 3, corruptions 3; normal: none 3); report: "
                                       f"{tmp_path / 'r'}/report.md, {tmp_path / 'r'}/report.html")
    bad = cli("stats", mixed_threats, "--out", tmp_path / "r", "--threat-models", "linf")
    assert bad.code == 2 and "--threat-models linf: not a threat model (one of Linf, L2, corruptions, none)" in bad.err


def test_pairs_paper_uses_the_shipped_table(cli: object, tmp_path: Path) -> None:
    from pipeline.stats.pairing import read_pairs_table

    pd.testing.assert_frame_equal(read_pairs_table("paper"), read_pairs_table(str(PAPER_PAIRS)))
    store = DatasetStore(str(tmp_path / "ds"))
    rng = np.random.default_rng(2)
    robust = "robustbench/cifar10/Linf/Andriushchenko2020Understanding"
    normal = "hso_normal_training_robustbench_Andriushchenko2020Understanding_cifar10_13"
    write_model(store, robust, "cifar10", tiny_weights(rng, True), True, architecture="PreActResNet-18")
    write_model(store, normal, "cifar10", tiny_weights(rng, False), False, architecture="PreActResNet-18")
    res = cli("stats", tmp_path / "ds", "--out", tmp_path / "r", "--pairs", "paper", "--no-figures",
              "--permutations", "0")
    assert res.code == 0, res.err
    pairs = pd.read_csv(tmp_path / "r" / "tables" / "pairs.csv")
    assert pairs.values.tolist() == [[robust, normal, "PreActResNet-18", "cifar10", "table"]]
    assert "1 robust/normal pairs (from the paper's pairings, Gavrikov & Keuper 2022 (CC BY-SA 4.0))" in (
        tmp_path / "r" / "report.md").read_text()


# --- ensembles: depth per member; members not adversarially trained stay out of the robust pool ----
@pytest.fixture(scope="module")
def ensembles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 robust and 3 normal models; a robust ensemble of two robust members; a MixedNUTS-like robust ensemble
    whose member 0 (structured, normal-like filters) was normally trained; a normal ensemble of two members."""
    root = tmp_path_factory.mktemp("ensembles") / "ds"
    store = planted_zoo(root, n_per_side=3)
    rng = np.random.default_rng(21)
    two = [0] * 5 + [1] * 5
    write_model(store, "zoo/cifar10/ens", "cifar10", tiny_weights(rng, True) + tiny_weights(rng, True), True,
                members=two)
    write_model(store, "zoo/cifar10/mixed", "cifar10", tiny_weights(rng, False) + tiny_weights(rng, True), True,
                members=two, non_robust_members=(0,))
    write_model(store, "zoo/cifar10/normal_ens", "cifar10", tiny_weights(rng, False)[:3] + tiny_weights(rng, False),
                False, members=[0] * 3 + [1] * 5)
    return root


@pytest.mark.parametrize("engine", ["numba", "duckdb"])
def test_ensembles_match_the_per_member_reference(ensembles: Path, tmp_path: Path, engine: str) -> None:
    models, layers, filters = read_all(ensembles)
    result = run_stats(str(ensembles), str(tmp_path), StatsOptions(engine=engine, **FAST))
    expected = reference_profile(layers).sort_values(["model_id", "depth_bucket"]).reset_index(drop=True)
    got = result.tables["depth_profile"].sort_values(["model_id", "depth_bucket"]).reset_index(drop=True)
    assert got[["model_id", "depth_bucket"]].values.tolist() == expected[["model_id", "depth_bucket"]].values.tolist()
    for metric in ("sparsity", "variance_entropy", "orthogonality"):
        np.testing.assert_allclose(got[metric], expected[metric], rtol=1e-12)
    by_model = got.groupby("model_id").n_layers.sum()
    assert (by_model["zoo/cifar10/ens"], by_model["zoo/cifar10/mixed"], by_model["zoo/cifar10/normal_ens"]) == (8, 4, 6)
    # bucket "0" holds each member's first conv: two layers for the two-member ensembles
    first = got[got.depth_bucket == 0].set_index("model_id").n_layers
    assert (first["zoo/cifar10/ens"], first["zoo/cifar10/mixed"], first["zoo/cifar10/normal_ens"]) == (2, 1, 2)

    usable = usable_filters(layers, filters)
    x = usable[[f"w{i}" for i in range(9)]].to_numpy(np.float64)
    mean, components, _ = reference_pca(x)
    assert result.bases["all"].n == len(x)
    coef = (x / np.abs(x).max(axis=1, keepdims=True) - mean) @ components.T
    lo, hi = coef.min(), coef.max()
    assert result.coefficient_range == pytest.approx((lo, hi), abs=1e-12)
    robust = usable.model_id.map(dict(zip(models.model_id, models.robust, strict=True))).to_numpy(bool)
    hist = result.tables["coefficient_histograms"]
    for r in (True, False):
        part = hist[hist.robust == r]
        for k in range(9):
            counts, _ = np.histogram(coef[robust == r, k], bins=70, range=(lo, hi))
            assert part[part.coefficient == k].sort_values("bin")["count"].tolist() == counts.tolist()
    assert ("left out of every analysis as not adversarially trained (layers.member_robust false) although their "
            "models are in the robust pool: zoo/cifar10/mixed member 0 (5 layers).") in result.notes


def test_a_normally_trained_member_counts_for_nothing(ensembles: Path, tmp_path: Path) -> None:
    """The MixedNUTS-like ensemble gives exactly the numbers of a single model made of its robust member."""
    rng = np.random.default_rng(21)
    for diverse in (True, True, False):  # the fixture's draws before it
        tiny_weights(rng, diverse)
    robust_member = tiny_weights(rng, True)
    root = tmp_path / "single"
    store = planted_zoo(root, n_per_side=3)
    write_model(store, "zoo/cifar10/mixed", "cifar10", robust_member, True)
    options = StatsOptions(kl_groups="all", **FAST)
    single = run_stats(str(root), str(tmp_path / "a"), options)
    with_member = run_stats(str(ensembles), str(tmp_path / "b"), StatsOptions(
        kl_groups="all", where="model_id NOT IN ('zoo/cifar10/ens', 'zoo/cifar10/normal_ens')", **FAST))
    for name in ("depth_profile", "coefficient_histograms", "distribution_shift", "robust_vs_normal"):
        pd.testing.assert_frame_equal(with_member.tables[name], single.tables[name])
    np.testing.assert_array_equal(with_member.bases["robust"].components, single.bases["robust"].components)


def test_the_gallery_shows_the_first_layer_of_the_first_member_left_in(ensembles: Path, tmp_path: Path) -> None:
    _, _, filters = read_all(ensembles)
    result = run_stats(str(ensembles), str(tmp_path), StatsOptions(
        gallery=["zoo/cifar10/mixed", "zoo/cifar10/ens"], coef_range=(-1.0, 1.0), **FAST))
    shown = {g.model_id: g for row in result.galleries for g in row}
    for model_id, member in (("zoo/cifar10/mixed", 1), ("zoo/cifar10/ens", 0)):
        g = shown[model_id]
        assert (g.member, g.conv_index, g.layer_name) == (member, 0, f"models.{member}.conv0")
        rows = filters[(filters.model_id == model_id) & (filters.member == member) & (filters.conv_index == 0)]
        expected = rows.sort_values(["out_channel", "in_channel"])[[f"w{i}" for i in range(9)]].to_numpy(np.float32)
        np.testing.assert_array_equal(g.weights, expected.reshape(8, 3, 3, 3))
