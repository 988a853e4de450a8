"""``compute``: every analysis over a selection, in memory: a ``StatsResult`` of DataFrames, no files.

``compute(root_or_dataset, StatsOptions(...))`` selects models (selection.py), then computes

* the depth profile (profile.py): per model and depth bucket (first conv alone, then deciles
  of conv_depth_norm) sparsity, variance entropy and orthogonality, aggregated as the paper
  does, and robust vs normal per training dataset (Mann-Whitney U per bucket, Holm-corrected
  across the buckets of a dataset and metric);
* the headline (headline.py): per dataset and metric the effect sizes with bootstrap intervals
  (effect_size.py), the significant buckets and a verdict;
* the pairing of robust with normal models (pairing.py: same architecture, dataset and seed, or
  a table) and the per-pair differences (differences.py);
* PCA bases (all / robust / normal) from the per-layer sufficient statistics (pca.py);
* the distribution shift (divergence.py: symmetric KL of coefficient histograms, see shift.py)
  per dataset, overall and per bucket, with a permutation test of the model labels;
* correlations of every metric with clean and robust accuracy across robust models
  (correlations.py);
* first-layer galleries (galleries.py) and the findings in words (findings.py).

The SQL lives in ``pipeline/stats/sql/*.sql`` (queries.py); it runs in DuckDB over the
dataset's views. The two passes over the filters run the numba kernels of shift.py (or, with
``engine="duckdb"``, ``sql/coefficient_*.sql`` set up by scan.py; same numbers).
``pipeline.stats.run.run_stats`` is this followed by the tables, figures and report.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import pandas as pd

from pipeline.dataset.query import FilterDataset, open_dataset
from pipeline.stats.correlations import correlations
from pipeline.stats.differences import pair_differences
from pipeline.stats.divergence import distribution_shift, group_histograms
from pipeline.stats.findings import correlation_findings, depth_findings, shift_findings
from pipeline.stats.galleries import galleries, gallery_models
from pipeline.stats.headline import headline_table
from pipeline.stats.options import StatsOptions
from pipeline.stats.pairing import make_pairs
from pipeline.stats.pca import basis_tables, pca_bases
from pipeline.stats.probes import (
    compare_probes,
    probe_examples,
    probe_findings,
    probe_rows,
    with_robust,
)
from pipeline.stats.profile import BUCKET_LABELS, N_BUCKETS, compare_robust_normal, model_profile
from pipeline.stats.queries import run_sql
from pipeline.stats.result import StatsResult
from pipeline.stats.scan import (
    duckdb_coefficient_histograms,
    duckdb_coefficient_range,
    file_opener,
    scan_engine,
    scan_targets,
)
from pipeline.stats.selection import (
    describe_selection,
    left_out_note,
    non_robust_member_note,
    select_models,
)
from pipeline.stats.shift import (
    N_BINS,
    bin_edges,
    numba_coefficient_histograms,
    numba_coefficient_range,
)


@dataclass
class ShiftOutcome:
    """The distribution-shift part of a run: tables, the histogram range, or why it was not computed."""

    shift: pd.DataFrame = field(default_factory=pd.DataFrame)
    histograms: pd.DataFrame = field(default_factory=pd.DataFrame)
    coef_range: tuple[float, float] | None = None
    reason: str | None = None


def coverage_notes(coverage: pd.DataFrame) -> list[str]:
    """Warnings for models left out (no 3x3 layer with metrics) or partly left out (NaN/Inf layers)."""
    notes = []
    for row in coverage[coverage.n_layers_with_metrics == 0].itertuples():
        why = ("no 3x3 conv layers" if row.n_layers_nonfinite == 0 else
               f"its {row.n_layers_nonfinite} 3x3 layers have NaN/Inf weights")
        notes.append(f"{row.model_id} has no layer with metrics ({why}); it is left out of every analysis.")
    nonfinite = coverage[(coverage.n_layers_nonfinite > 0) & (coverage.n_layers_with_metrics > 0)]
    for row in nonfinite.itertuples():
        notes.append(f"{row.model_id}: {row.n_layers_nonfinite} 3x3 layer(s) with NaN/Inf weights are left out.")
    return notes


def shift_analysis(ds: FilterDataset, models: pd.DataFrame, pairs: pd.DataFrame, basis: object,
                   options: StatsOptions, timings: dict) -> ShiftOutcome:
    """Range pass (unless --coef-range), histogram pass, then the symmetric KL per group."""
    if basis is None:
        return ShiftOutcome(reason="no distribution shift: the selection has fewer than 2 non-sparse 3x3 filters.")
    if not models.robust.any() or models.robust.all():
        return ShiftOutcome(reason="no distribution shift: the selection has only "
                                   f"{'robust' if models.robust.all() else 'normally trained'} models.")
    targets = scan_targets(ds, models)
    engine = scan_engine(options)
    timings["engine"] = engine
    if options.coef_range:
        coef_range = tuple(float(x) for x in options.coef_range)
    else:
        if engine == "numba":
            lo, hi, range_stats = numba_coefficient_range(targets, file_opener(ds), basis, options.threads)
        else:
            lo, hi, range_stats = duckdb_coefficient_range(ds, targets, basis)
        coef_range = (lo, hi)
        timings.update(range_pass=range_stats.seconds, range_pass_cpu=range_stats.cpu_seconds,
                       range_pass_filters=range_stats.rows)
    edges = bin_edges(*coef_range, N_BINS)
    if engine == "numba":
        counts, hist_stats = numba_coefficient_histograms(targets, file_opener(ds), basis, edges, N_BUCKETS, options.threads)
    else:
        counts, hist_stats = duckdb_coefficient_histograms(ds, targets, basis, edges)
    timings.update(histogram_pass=hist_stats.seconds, histogram_pass_cpu=hist_stats.cpu_seconds,
                   histogram_pass_filters=hist_stats.rows)
    return ShiftOutcome(distribution_shift(counts, targets, models, pairs, basis, edges, options),
                        group_histograms(counts, targets, models, edges), coef_range)


def probe_analysis(ds: FilterDataset, models: pd.DataFrame, pairs: pd.DataFrame,
                   options: StatsOptions) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """The selected models' probes rows, robust vs normal on them, and the examples of the first pairs."""
    probes = with_robust(probe_rows(ds.con, models.model_id.tolist()), models)
    comparison = compare_probes(probes, pairs, options.alpha, options.min_models)
    return probes, comparison, probe_examples(ds, pairs) if not probes.empty else []


def compute(dataset: str | FilterDataset, options: StatsOptions | None = None) -> StatsResult:
    """Every analysis of the selection as DataFrames (``result.tables``), findings, bases and galleries.

    ``dataset`` is a root (path or URI) or an open ``FilterDataset`` (left open). Nothing is written.
    """
    options = options or StatsOptions()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        ds = dataset if isinstance(dataset, FilterDataset) else stack.enter_context(
            open_dataset(dataset, threads=options.threads))
        models = select_models(ds, options)
        coverage = run_sql(ds, "layer_coverage")
        notes = [note for note in [left_out_note(ds, options), non_robust_member_note(ds)] if note]
        notes += coverage_notes(coverage)
        profile = run_sql(ds, "depth_profile")
        profile = profile[profile.n_layers > 0].reset_index(drop=True)
        profile["bucket"] = profile.depth_bucket.map(lambda b: BUCKET_LABELS[int(b)])
        whole = model_profile(profile)
        comparison = compare_robust_normal(profile, options.alpha, options.min_models)
        headline = headline_table(models, profile, whole, comparison, options)
        pairs, unpaired = make_pairs(models, options.pairs_csv)
        differences = pair_differences(pairs, profile)
        timings["layers"] = time.perf_counter() - started

        bases = pca_bases(run_sql(ds, "pca_statistics"))
        explained, components = basis_tables(bases)
        for name, basis in bases.items():
            if basis is None:
                notes.append(f"no PCA basis for {name} filters: fewer than 2 non-sparse 3x3 filters in the selection.")
        shift = shift_analysis(ds, models, pairs, bases["all"], options, timings)
        corr = correlations(profile, whole, options.min_correlation_models)
        gallery = galleries(ds, models, gallery_models(models, pairs, options))
        probes, probe_comparison, examples = probe_analysis(ds, models, pairs, options)

    findings = (depth_findings(headline)
                + shift_findings(models, shift.shift, bases["all"], options, shift.reason)
                + correlation_findings(models, corr, options)
                + probe_findings(probe_comparison, probes))
    paired = set(pairs.robust_model_id) | set(pairs.normal_model_id)
    model_table = models.drop(columns=[c for c in ("metadata_json",) if c in models]).assign(
        paired=models.model_id.isin(paired))
    tables = {
        "headline": headline,
        "models": model_table,
        "layer_coverage": coverage,
        "depth_profile": profile,
        "model_profile": whole,
        "robust_vs_normal": comparison,
        "pairs": pairs,
        "unpaired": unpaired,
        "pair_differences": differences,
        "pca_explained_variance": explained,
        "pca_components": components,
        "distribution_shift": shift.shift,
        "coefficient_histograms": shift.histograms,
        "correlations": corr,
        "probes": probes,
        "probe_comparison": probe_comparison,
        "findings": pd.DataFrame([vars(f) for f in findings], columns=["analysis", "dataset", "subject", "verdict",
                                                                      "text"]),
    }
    timings["total"] = time.perf_counter() - started
    return StatsResult(tables, findings, bases, gallery, notes, timings, shift.coef_range,
                       describe_selection(options), examples)
