"""The report's content: in-memory ``compute``, the headline table and its effect sizes, the one pairing rule,
short findings, the figures (what they mark, checked on the drawn artists) and the modular sections."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import stats_fixtures
from stats_fixtures import planted_zoo, tiny_weights, write_model

from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore
from pipeline.dataset.writer import ModelWriter
from pipeline.stats import compute
from pipeline.stats.effect_size import cliffs_delta, effect
from pipeline.stats.options import StatsOptions
from pipeline.stats.pairing import auto_pairs
from pipeline.stats.profile import BUCKET_LABELS
from pipeline.stats.run import run_stats

FAST = {"permutations": 19, "figures": False}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("planted") / "ds"
    planted_zoo(root, n_per_side=5, datasets=("cifar10", "cifar100"))
    return root, compute(str(root), StatsOptions(**FAST))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A full report with figures on a one-dataset planted zoo, with the demo's directions table."""
    root = tmp_path_factory.mktemp("report") / "ds"
    planted_zoo(root, n_per_side=4)
    out = tmp_path_factory.mktemp("report_out")
    directions = pd.DataFrame([{"metric": "orthogonality", "scope": "all 3x3 layers", "robust_mean": 0.9,
                                "normal_mean": 0.8, "pairs": 4, "pairs_agreeing": 4,
                                "expected": "robust models have more orthogonal filters", "verdict": "shows up"}])
    result = run_stats(str(root), str(out), StatsOptions(permutations=19),
                       extra_tables={"demo_directions": directions})
    return out, result


# --- effect sizes ----------------------------------------------------------------------------------
def test_cliffs_delta_is_the_mann_whitney_statistic_rescaled() -> None:
    rng = np.random.default_rng(1)
    robust, normal = rng.integers(0, 5, 9).astype(float), rng.integers(0, 5, 7).astype(float)  # with ties
    u = scipy.stats.mannwhitneyu(robust, normal).statistic
    assert cliffs_delta(robust, normal) == pytest.approx(2 * u / (9 * 7) - 1)
    assert cliffs_delta(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert cliffs_delta(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0


def test_effect_intervals_bracket_the_estimate_and_need_two_models_a_side() -> None:
    separated = effect(np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0]), seed=3)
    assert (separated.cliffs_delta, separated.delta_lo, separated.delta_hi) == (1.0, 1.0, 1.0)
    assert separated.difference == pytest.approx(6.0 - 1.5)
    assert 3.0 <= separated.difference_lo <= separated.difference <= separated.difference_hi <= 6.0
    rng = np.random.default_rng(0)
    mixed = effect(rng.normal(0.3, 1, 12), rng.normal(0, 1, 10), level=0.9, seed=0)
    assert mixed.delta_lo <= mixed.cliffs_delta <= mixed.delta_hi and mixed.delta_lo < mixed.delta_hi
    single = effect(np.array([1.0, 2.0]), np.array([0.5]), seed=0)
    assert single.cliffs_delta == 1.0 and np.isnan(single.delta_lo) and np.isnan(single.difference_hi)
    a, b = rng.normal(size=5), rng.normal(size=5)
    assert effect(a, b, seed=7) == effect(a, b, seed=7)  # a fixed seed: the same interval every run


# --- the headline --------------------------------------------------------------------------------
def test_headline_matches_an_independent_computation(planted: tuple) -> None:
    _, result = planted
    headline = result.tables["headline"]
    assert list(zip(headline.dataset, headline.metric, strict=True)) == [
        (d, m) for d in ("cifar10", "cifar100") for m in ("sparsity", "variance_entropy", "orthogonality")]
    whole = result.tables["model_profile"]
    comparison = result.tables["robust_vs_normal"]
    for row in headline.itertuples():
        part = whole[whole.dataset == row.dataset]
        r = part.loc[part.robust, row.metric].to_numpy(float)
        n = part.loc[~part.robust, row.metric].to_numpy(float)
        pairs = [np.sign(a - b) for a in r for b in n]
        assert row.cliffs_delta == pytest.approx(sum(pairs) / len(pairs))
        assert row.difference == pytest.approx(r.mean() - n.mean())
        assert (row.n_robust, row.n_normal) == (5, 5)
        assert row.delta_lo <= row.cliffs_delta <= row.delta_hi
        buckets = comparison[(comparison.dataset == row.dataset) & (comparison.metric == row.metric)]
        assert row.buckets_tested == buckets.p_value.notna().sum() == 4
        assert row.buckets_higher == (buckets.significant & (buckets.difference > 0)).sum()
        assert row.buckets_lower == (buckets.significant & (buckets.difference < 0)).sum()
    entropy = headline.set_index(["dataset", "metric"]).loc[("cifar10", "variance_entropy")]
    assert (entropy.paper, entropy.direction, entropy.verdict, entropy.matches_paper) == (
        "higher", "higher", "robust higher", "yes")
    sparsity = headline.set_index(["dataset", "metric"]).loc[("cifar100", "sparsity")]
    assert (sparsity.paper, sparsity.direction, sparsity.cliffs_delta, sparsity.matches_paper) == (
        "lower", "lower", -1.0, "yes")


def test_headline_cannot_say_without_normal_models(tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path / "ds"))
    rng = np.random.default_rng(0)
    for i in range(3):
        write_model(store, f"zoo/c10/r{i}", "cifar10", tiny_weights(rng, True), robust=True)
    result = compute(str(tmp_path / "ds"), StatsOptions(**FAST))
    headline = result.tables["headline"]
    assert set(headline.verdict) == {"cannot say"} and set(headline.note) == {"no normally trained cifar10 models"}
    assert [f.text for f in result.findings if f.analysis == "depth profile"][0] == (
        "cifar10, sparsity: cannot say (no normally trained cifar10 models).")


# --- compute: in memory, nothing written -------------------------------------------------------------
def test_compute_writes_nothing_and_takes_an_open_dataset(planted: tuple, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root, result = planted
    monkeypatch.chdir(tmp_path)
    before = sorted(p for p in root.rglob("*"))
    with open_dataset(str(root)) as ds:
        again = compute(ds, StatsOptions(**FAST))
        assert ds.sql("SELECT count(*) FROM models").fetchall() == [(20,)]  # still open
    assert sorted(p for p in root.rglob("*")) == before and list(tmp_path.iterdir()) == []
    for name in ("headline", "depth_profile", "robust_vs_normal", "pairs", "distribution_shift"):
        pd.testing.assert_frame_equal(again.tables[name], result.tables[name])
    assert {"headline", "models", "correlations", "findings"} <= set(result.tables)


# --- the one pairing rule -------------------------------------------------------------------------------
def test_pairing_by_architecture_and_seed() -> None:
    meta = [json.dumps({"seed": s}) if s is not None else None for s in (0, 1, 2, 0, 1, None, None)]
    models = pd.DataFrame({"model_id": ["r0", "r1", "r2", "n0", "n1", "rx", "nx"],
                           "model": ["r0", "r1", "r2", "n0", "n1", "rx", "nx"],
                           "robust": [True, True, True, False, False, True, False], "dataset": ["c10"] * 7,
                           "architecture": ["A"] * 5 + ["B", "B"], "metadata_json": meta})
    pairs, unpaired = auto_pairs(models)
    assert pairs[["robust_model_id", "normal_model_id"]].values.tolist() == [
        ["r0", "n0"], ["r1", "n1"], ["r2", "n0"], ["r2", "n1"], ["rx", "nx"]]  # r2: no seed-2 partner, all of A
    assert unpaired.empty


def _seeded_zoo(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two architectures x two seeds x robust/normal, each model's seed in metadata_json (as the demo's)."""
    class SeededWriter(ModelWriter):
        def commit(self, layers: object, model_row: dict, *args: object, **kwargs: object) -> object:
            seed = int(self.model_id.rsplit("-s", 1)[1])
            return super().commit(layers, {**model_row, "metadata_json": json.dumps({"seed": seed})}, *args,
                                  **kwargs)

    monkeypatch.setattr(stats_fixtures, "ModelWriter", SeededWriter)
    store = DatasetStore(str(root))
    rng = np.random.default_rng(5)
    for arch in ("A", "B"):
        for seed in (0, 1):
            for robust in (True, False):
                write_model(store, f"demo/{arch}-{'adv' if robust else 'normal'}-s{seed}", "synthetic",
                            tiny_weights(rng, robust), robust, architecture=arch)


def test_the_demo_and_stats_pair_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.demo import demo_pairs, paper_directions

    _seeded_zoo(tmp_path / "ds", monkeypatch)
    result = compute(str(tmp_path / "ds"), StatsOptions(**FAST))
    stats_pairs = sorted(zip(result.tables["pairs"].robust_model_id, result.tables["pairs"].normal_model_id,
                             strict=True))
    with open_dataset(str(tmp_path / "ds")) as ds:
        assert sorted(demo_pairs(ds)) == stats_pairs == [
            (f"demo/{a}-adv-s{s}", f"demo/{a}-normal-s{s}") for a in ("A", "B") for s in (0, 1)]
    assert {d.pairs for d in paper_directions(str(tmp_path / "ds"))} == {4}


# --- findings and tables -----------------------------------------------------------------------------------
def test_findings_are_short_sentences(planted: tuple) -> None:
    _, result = planted
    texts = [f.text for f in result.findings]
    assert all(len(t) <= 160 and t.endswith(".") for t in texts), texts
    assert not any("largest difference" in t for t in texts)
    assert "cifar10, variance entropy: robust higher, as in the paper in 4 of 4 tested buckets" in texts[1]


def test_correlations_over_all_datasets_only_with_several(planted: tuple, tmp_path: Path) -> None:
    _, result = planted
    assert "all datasets" in set(result.tables["correlations"].dataset)
    one = compute(str(planted[0]), StatsOptions(datasets=["cifar10"], **FAST)).tables["correlations"]
    assert set(one.dataset) == {"cifar10"}
    assert not one.duplicated(["depth_bucket", "metric", "accuracy"]).any()


# --- figures: what they mark ------------------------------------------------------------------------------
def _drawn(monkeypatch: pytest.MonkeyPatch, module: object) -> list[plt.Figure]:
    """Keep the figures a figure function draws instead of saving them."""
    kept: list[plt.Figure] = []
    monkeypatch.setattr(module, "save_figure", lambda fig, out_dir, name: kept.append(fig) or name)
    return kept


def test_depth_figure_marks_n_significance_and_empty_buckets(planted: tuple, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    import pipeline.stats.figures as figures

    _, result = planted
    kept = _drawn(monkeypatch, figures)
    profile, comparison = result.tables["depth_profile"], result.tables["robust_vs_normal"]
    profile = profile.assign(sparsity=0.0)  # constant: no panel for it
    assert figures.depth_profile_figure(profile, comparison, "unused") == "depth_profile"
    axes = kept[0].axes
    assert len(axes) == 2 * 2  # variance entropy and orthogonality x two datasets
    texts = [t.get_text() for t in axes[0].texts]  # cifar10, variance entropy
    used = sorted(profile[profile.dataset == "cifar10"].depth_bucket.unique())
    assert texts.count("no layers") == len(BUCKET_LABELS) - len(used)
    assert texts.count("5") == 2 * len(used)  # n per box: 5 robust and 5 normal models in every used bucket
    tests = comparison[(comparison.dataset == "cifar10") & (comparison.metric == "variance_entropy")]
    assert sum(t.startswith("*") for t in texts) == int(tests.significant.sum()) == 4
    legend = kept[0].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["normal", "robust", "mean, 95% CI"]
    assert legend.get_window_extent().y1 < min(ax.get_window_extent().y0 for ax in axes)  # below every panel
    assert figures.constant_metrics(profile) == {"sparsity": 0.0}


def test_shift_figure_shows_n_and_p_per_bucket(planted: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.stats.figures_shift as figures_shift

    _, result = planted
    kept = _drawn(monkeypatch, figures_shift)
    shift = result.tables["distribution_shift"]
    figures_shift.shift_figure(shift, "unused")
    ax = kept[0].axes[0]  # cifar10
    rows = shift[(shift.dataset == "cifar10") & (shift.depth_bucket >= 0)].set_index("depth_bucket")
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    for b in range(len(BUCKET_LABELS)):
        if b in rows.index and rows.divergence[b] == rows.divergence[b]:
            n = rows.n_robust_filters[b] + rows.n_normal_filters[b]
            assert ticks[b] == f"{BUCKET_LABELS[b]}\nn {n}"
        else:
            assert ticks[b] == f"{BUCKET_LABELS[b]}\nn 0"
    p_labels = [t.get_text() for t in ax.texts if t.get_text().startswith("p ")]
    assert p_labels == [f"p {p:.2g}" for p in rows.p_value.dropna()]


def test_kl_heatmap_and_histograms_one_per_dataset(planted: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.stats.figures_shift as figures_shift

    _, result = planted
    kept = _drawn(monkeypatch, figures_shift)
    shift, ratio = result.tables["distribution_shift"], result.bases["all"].explained_variance_ratio
    assert figures_shift.kl_heatmap_figure(shift, ratio, "unused") == "kl_heatmap"
    image = kept[0].axes[0].images[0].get_array()
    expected = shift[(shift.dataset == "cifar10") & (shift.depth_bucket >= 0)].set_index("depth_bucket")
    assert image.shape == (9, len(BUCKET_LABELS))
    for b in expected.index:
        np.testing.assert_allclose(image[:, b], expected.loc[b, [f"kl_c{k}" for k in range(9)]].to_numpy(float))
    paths = figures_shift.histogram_figures(result.tables["coefficient_histograms"], shift, ratio, "unused")
    assert [d for d, _ in paths] == ["cifar10", "cifar100"]
    assert len(kept[1].axes) == 9 and "KL" in kept[1].axes[0].get_title()


# --- the written report -------------------------------------------------------------------------------
def test_report_opens_with_the_headline_and_draws_every_figure(report: tuple) -> None:
    out, result = report
    md = (out / "report.md").read_text()
    titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert titles[:3] == ["At a glance", "The demo's directions", "Findings"]
    assert "| synthetic |" not in md and "| cifar10 | variance entropy | higher | higher |" in md
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["accuracy_scatter.png", "coefficient_histograms_cifar10.png", "depth_profile.png",
                       "distribution_shift_by_depth.png", "first_layer_gallery.png", "kl_heatmap.png",
                       "pca_basis.png", "pca_spectrum.png"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures) and "class='headline'" in html
    assert pd.read_csv(out / "tables" / "headline.csv").shape[0] == 3
    assert (out / "tables" / "demo_directions.csv").is_file()


def test_the_gallery_shows_distinct_pairs(report: tuple) -> None:
    _, result = report
    shown = [g.model_id for row in result.galleries for g in row]
    assert len(shown) == 4 and len(set(shown)) == 4
    assert [[g.robust for g in row] for row in result.galleries] == [[True, False], [True, False]]


def test_a_section_is_added_with_a_few_lines(report: tuple, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stats import sections
    from pipeline.stats.document import Section
    from pipeline.stats.report import write_report

    _, result = report
    extra = [*sections.SECTIONS]
    extra.insert(extra.index(sections.shift_section) + 1,
                 lambda ctx: Section("Probes", paragraphs=[f"{len(ctx.result.tables['models'])} models probed."]))
    monkeypatch.setattr(sections, "SECTIONS", extra)
    write_report(result, str(tmp_path), "ds", StatsOptions(figures=False))
    titles = [line[3:] for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("## ")]
    assert titles[titles.index("Distribution shift") + 1] == "Probes"
    assert "8 models probed." in (tmp_path / "report.html").read_text()
