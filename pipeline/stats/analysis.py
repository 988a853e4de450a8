"""The paper's robustness statistics over a filter dataset (docs/design.md, "Analyses").

``run_stats(root, out_dir, StatsOptions(...))`` selects models, then computes

* the depth profile: per model and depth bucket (first conv alone, then deciles of
  conv_depth_norm) sparsity, variance entropy and orthogonality, aggregated as the
  paper does, and robust vs normal per training dataset (Mann-Whitney U per bucket,
  Holm-corrected across the buckets of a dataset and metric);
* the pairing of robust with normal models (pipeline.stats.pairing: same architecture and
  dataset, or a table);
* PCA bases (all / robust / normal) from the per-layer sufficient statistics;
* the distribution shift (symmetric KL of coefficient histograms, see pipeline.stats.shift)
  per dataset, overall and per bucket, with a permutation test of the model labels;
* correlations of every metric with clean and robust accuracy across robust models;
* first-layer galleries; and writes every table (Parquet + CSV), the figures and a
  one-page report (pipeline.stats.report).

The SQL lives in ``pipeline/stats/sql/*.sql``; it runs in DuckDB over the dataset's views.
The two passes over the filters run the numba kernels of pipeline.stats.shift (or, with
``engine="duckdb"``, ``sql/coefficient_*.sql``; same numbers).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import combinations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
from scipy import stats as scistats

from pipeline.dataset.query import FilterDataset
from pipeline.errors import ConfigError, EmptySelectionError, StatsError
from pipeline.stats.shift import (
    PCABasis,
    ScanStats,
    ScanTarget,
    numba_available,
    pca_from_statistics,
    row_groups,
    sum_statistics,
    weighted_divergence,
)

log = logging.getLogger(__name__)

N_BUCKETS = 11
BUCKET_LABELS = ["0"] + [f"({b / 10:.1f}, {(b + 1) / 10:.1f}]" for b in range(10)]
"""Depth bucket names: the first conv alone, then the deciles of conv_depth_norm."""
METRICS = ("sparsity", "variance_entropy", "orthogonality")
METRIC_NAMES = {"sparsity": "sparsity", "variance_entropy": "variance entropy", "orthogonality": "orthogonality"}
ACCURACIES = ("clean_acc", "robust_acc")


@dataclass
class StatsOptions:
    """What to select and how to compare (the flags of ``filterlens stats``)."""

    where: str | None = None
    datasets: list[str] = field(default_factory=list)
    threat_models: list[str] = field(default_factory=list)
    pairs_csv: str | None = None
    kl_groups: str = "pairs"
    coef_range: tuple[float, float] | None = None
    gallery: list[str] = field(default_factory=list)
    gallery_pairs: int = 2
    alpha: float = 0.05
    min_models: int = 3
    min_correlation_models: int = 5
    permutations: int = 199
    threads: int | None = None
    seed: int = 0
    figures: bool = True
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.engine not in ("auto", "numba", "duckdb"):
            raise ConfigError(f"--engine must be auto, numba or duckdb, not {self.engine!r}")
        if self.engine == "numba" and not numba_available():
            raise ConfigError("--engine numba: numba is not installed (pip install numba) ; use --engine duckdb")
        if self.kl_groups not in ("pairs", "all"):
            raise ConfigError(f"--kl-groups must be 'pairs' or 'all', not {self.kl_groups!r}")
        if self.coef_range is not None and not self.coef_range[1] > self.coef_range[0]:
            raise ConfigError(f"--coef-range LO HI needs LO < HI, got {self.coef_range}")


@dataclass
class Finding:
    """One plain-language statement of the report, with the numbers behind it."""

    analysis: str
    dataset: str
    subject: str
    verdict: str  # e.g. "robust higher", "robust lower", "mixed", "no difference", "cannot say"
    text: str


@dataclass
class Gallery:
    model_id: str
    robust: bool
    dataset: str
    layer_name: str
    conv_index: int
    in_channels: int
    weights: np.ndarray  # (c_out, c_in, 3, 3)


@dataclass
class StatsResult:
    tables: dict[str, pd.DataFrame]
    findings: list[Finding]
    bases: dict[str, PCABasis | None]
    galleries: list[list[Gallery]]  # rows: (robust, normal) pairs or single models
    notes: list[str]
    timings: dict[str, float | int | str]
    coefficient_range: tuple[float, float] | None
    selection: str


# --- SQL ---------------------------------------------------------------------------------------
@cache
def load_sql(name: str) -> str:
    """The text of ``pipeline/stats/sql/<name>.sql``."""
    return resources.files("pipeline.stats").joinpath("sql", f"{name}.sql").read_text()


def run_sql(ds: FilterDataset, name: str, params: dict | None = None) -> pd.DataFrame | None:
    """Run one SQL file; a DataFrame for queries, None for statements."""
    try:
        relation = ds.con.execute(load_sql(name), params or {})
        return relation.df() if relation.description else None
    except duckdb.Error as exc:
        raise StatsError(f"query {name}.sql failed: {str(exc).splitlines()[0]}") from None


def select_models(ds: FilterDataset, options: StatsOptions) -> pd.DataFrame:
    """Create the temp table selected_models (and the view selected_layers); return the models."""
    where = (options.where or "").strip() or "true"
    text = load_sql("select_models").replace("{where}", where)
    try:
        statements = ds.con.extract_statements(text)
    except duckdb.Error as exc:
        raise ConfigError(f"--where {where!r} does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise ConfigError(f"--where must be one predicate on the models table, not {where!r}")
    try:
        ds.con.execute(text, {"datasets": list(options.datasets), "threat_models": list(options.threat_models)})
    except duckdb.Error as exc:
        raise ConfigError(f"--where {where!r} is not a valid predicate on the models table: "
                          f"{str(exc).splitlines()[0]}") from None
    run_sql(ds, "selected_layers")
    models = ds.con.execute("SELECT * FROM selected_models ORDER BY dataset, robust DESC, model_id").df()
    if models.empty:
        n_all = ds.con.execute("SELECT count(*) FROM models").fetchall()[0][0]
        raise EmptySelectionError(
            f"the selection ({describe_selection(options)}) matches none of the {n_all} models in {ds.root}; "
            "check --where/--datasets/--threat-models against `filterlens sql DATASET 'SELECT dataset, "
            "threat_model, robust, count(*) FROM models GROUP BY ALL'`")
    return models


def describe_selection(options: StatsOptions) -> str:
    parts = []
    if options.where:
        parts.append(f"where {options.where}")
    if options.datasets:
        parts.append("datasets " + ", ".join(options.datasets))
    if options.threat_models:
        parts.append("robust threat models " + ", ".join(options.threat_models))
    return "; ".join(parts) or "all models"


# --- depth profile and robust vs normal -----------------------------------------------------------
def model_profile(profile: pd.DataFrame) -> pd.DataFrame:
    """Whole-model aggregates from the per-bucket sums (same weighting as the buckets)."""
    keys = ["model_id", "dataset", "robust", "threat_model", "architecture", "clean_acc", "robust_acc"]
    sums = ["n_layers", "n_layers_nonfinite", "sum_filters", "sum_sparse", "sum_nonsparse", "sum_weighted_entropy",
            "sum_out_channels", "sum_weighted_orthogonality"]
    whole = profile.groupby(keys, dropna=False, sort=False)[sums].sum().reset_index()
    add_metrics(whole)
    return whole


def add_metrics(frame: pd.DataFrame) -> None:
    """Metric columns from the sum columns (null where the denominator is zero)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["sparsity"] = np.where(frame.sum_filters > 0, frame.sum_sparse / frame.sum_filters, np.nan)
        frame["variance_entropy"] = np.where(frame.sum_nonsparse > 0,
                                             frame.sum_weighted_entropy / frame.sum_nonsparse, np.nan)
        frame["orthogonality"] = np.where(frame.sum_out_channels > 0,
                                          frame.sum_weighted_orthogonality / frame.sum_out_channels, np.nan)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg q-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if not len(valid):
        return q.tolist()
    order = valid[np.argsort(p[valid])[::-1]]
    m = len(valid)
    running = 1.0
    for rank, i in enumerate(order):
        running = min(running, p[i] * m / (m - rank))
        q[i] = running
    return q.tolist()


def compare_robust_normal(profile: pd.DataFrame, alpha: float, min_models: int) -> pd.DataFrame:
    """Per dataset, depth bucket and metric: robust vs normal models (Mann-Whitney U, Holm over buckets)."""
    rows = []
    for (dataset, bucket), group in profile.groupby(["dataset", "depth_bucket"], sort=True):
        for metric in METRICS:
            robust = group.loc[group.robust, metric].dropna().to_numpy(float)
            normal = group.loc[~group.robust, metric].dropna().to_numpy(float)
            row = {"dataset": dataset, "depth_bucket": int(bucket), "bucket": BUCKET_LABELS[int(bucket)],
                   "metric": metric, "n_robust": len(robust), "n_normal": len(normal),
                   "mean_robust": robust.mean() if len(robust) else np.nan,
                   "mean_normal": normal.mean() if len(normal) else np.nan,
                   "median_robust": np.median(robust) if len(robust) else np.nan,
                   "median_normal": np.median(normal) if len(normal) else np.nan, "p_value": np.nan}
            row["difference"] = row["mean_robust"] - row["mean_normal"]
            if len(robust) >= min_models and len(normal) >= min_models:
                if np.ptp(np.concatenate([robust, normal])) > 0:
                    row["p_value"] = float(scistats.mannwhitneyu(robust, normal, alternative="two-sided").pvalue)
                else:
                    row["p_value"] = 1.0
            rows.append(row)
    table = pd.DataFrame(rows, columns=["dataset", "depth_bucket", "bucket", "metric", "n_robust", "n_normal",
                                        "mean_robust", "mean_normal", "median_robust", "median_normal",
                                        "difference", "p_value"])
    table["p_holm"] = np.nan
    for _, index in table.groupby(["dataset", "metric"]).groups.items():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p_value"].tolist())
    table["significant"] = table.p_holm < alpha
    return table


# --- pairing ------------------------------------------------------------------------------------
def pair_differences(pairs: pd.DataFrame, profile: pd.DataFrame) -> pd.DataFrame:
    """Per pair, bucket and metric: robust minus normal."""
    if pairs.empty:
        return pd.DataFrame(columns=["robust_model_id", "normal_model_id", "dataset", "depth_bucket", "bucket",
                                     "metric", "robust", "normal", "difference"])
    long = profile.melt(id_vars=["model_id", "depth_bucket"], value_vars=list(METRICS), var_name="metric")
    merged = pairs.merge(long.rename(columns={"model_id": "robust_model_id", "value": "robust"}),
                         on="robust_model_id")
    merged = merged.merge(long.rename(columns={"model_id": "normal_model_id", "value": "normal"}),
                          on=["normal_model_id", "depth_bucket", "metric"])
    merged["difference"] = merged.robust - merged.normal
    merged["bucket"] = merged.depth_bucket.map(lambda b: BUCKET_LABELS[int(b)])
    return merged[["robust_model_id", "normal_model_id", "dataset", "depth_bucket", "bucket", "metric", "robust",
                   "normal", "difference"]].sort_values(["dataset", "robust_model_id", "normal_model_id", "metric",
                                                         "depth_bucket"]).reset_index(drop=True)


# --- PCA ----------------------------------------------------------------------------------------
def pca_bases(layer_stats: pd.DataFrame) -> dict[str, PCABasis | None]:
    """Bases of all / robust / normal selected filters from the per-layer statistics (None: too few filters)."""
    bases: dict[str, PCABasis | None] = {}
    for name, mask in (("all", np.ones(len(layer_stats), bool)), ("robust", layer_stats.robust.to_numpy(bool)),
                       ("normal", ~layer_stats.robust.to_numpy(bool))):
        part = layer_stats[mask]
        count, total, scatter = sum_statistics(part.n_nonsparse, part.pca_sum, part.pca_scatter)
        bases[name] = pca_from_statistics(count, total, scatter) if count >= 2 else None
    return bases


def basis_tables(bases: dict[str, PCABasis | None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    variance, components = [], []
    for name, basis in bases.items():
        if basis is None:
            continue
        cumulative = np.cumsum(basis.explained_variance_ratio)
        for k in range(9):
            variance.append({"basis": name, "component": k, "n_filters": basis.n,
                             "explained_variance": basis.explained_variance[k],
                             "explained_variance_ratio": basis.explained_variance_ratio[k],
                             "cumulative_ratio": cumulative[k]})
            components.append({"basis": name, "component": k,
                               **{f"v{j}": basis.components[k, j] for j in range(9)},
                               **{f"mean{j}": basis.mean[j] for j in range(9)}})
    return pd.DataFrame(variance), pd.DataFrame(components)


# --- distribution shift -------------------------------------------------------------------------
def scan_targets(ds: FilterDataset, models: pd.DataFrame) -> list[ScanTarget]:
    """Per selected model: its filters files and conv_index -> depth bucket (-1: left out)."""
    layers = run_sql(ds, "scan_layers")
    stored = ds.store.stored_models()
    targets = []
    for model_id in models.model_id:
        rows = layers[layers.model_id == model_id]
        model = stored.get(model_id)
        if rows.empty or model is None:
            continue
        group = np.full(int(rows.conv_index.max()) + 1, -1, dtype=np.int64)
        usable = rows[rows.has_metrics]
        group[usable.conv_index.to_numpy(int)] = usable.depth_bucket.to_numpy(int)
        targets.append(ScanTarget(model_id, tuple(ds.store.filter_files(model)), group))
    return targets


def file_opener(ds: FilterDataset):  # noqa: ANN201 - a callable path -> file
    """How the scans open filters files: memory-mapped locally (measured faster), the store's filesystem else."""
    if ds.store.local:
        return pa.memory_map
    return ds.store.fs.open_input_file


def scan_engine(options: StatsOptions) -> str:
    """The engine of the filter scans: numba when installed (auto), else DuckDB SQL."""
    if options.engine != "auto":
        return options.engine
    if numba_available():
        return "numba"
    log.warning("numba is not installed: the filter scans run as DuckDB SQL, several times slower")
    return "duckdb"


def _prepare_duckdb_scan(ds: FilterDataset, targets: list[ScanTarget], basis: PCABasis,
                         edges: np.ndarray | None) -> ScanStats:
    """The temp table _scan_groups, the basis as variables, the view _scan_filters and (sql/scan_coefficients.sql)
    the view _scan_coefficients that sql/coefficient_*.sql read.

    _scan_filters tags each model's rows with its target number (one UNION ALL branch per
    model): joining on the dictionary-encoded model_id column trips an internal error of
    DuckDB 2.0 ("dict-surviving cache"), and integers join faster anyway.
    """
    groups = [(i, conv, i * N_BUCKETS + int(bucket)) for i, t in enumerate(targets)
              for conv, bucket in enumerate(t.group_of_conv) if bucket >= 0]
    ds.con.register("_scan_groups_df", pd.DataFrame(groups, columns=["target", "conv_index", "grp"]).astype(
        {"target": "int64", "conv_index": "int32", "grp": "int64"}))
    ds.con.execute("CREATE OR REPLACE TEMP TABLE _scan_groups AS SELECT * FROM _scan_groups_df")
    basis_row = {f"v{k}{j}": basis.components[k, j] for k in range(9) for j in range(9)}
    basis_row.update({f"m{j}": basis.mean[j] for j in range(9)})
    if edges is not None:
        n_bins = len(edges) - 1
        basis_row.update(lo=edges[0], hi=edges[-1], n_bins=n_bins, norm=n_bins / (edges[-1] - edges[0]),
                         step=(edges[-1] - edges[0]) / n_bins)
    for name, value in basis_row.items():  # session variables, read with getvariable() in the SQL
        ds.con.execute(f"SET VARIABLE {name} = {float(value)!r}::DOUBLE" if name != "n_bins" else
                       f"SET VARIABLE {name} = {int(value)}::BIGINT")
    columns = ", ".join(["conv_index + 0 AS conv_index", "sparse", *[f"w{j}" for j in range(9)]])
    branches = []
    for i, target in enumerate(targets):
        if ds.store.local:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in target.files)
            source = f"read_parquet([{listing}], hive_partitioning = false)"
        else:
            source = f"_scan_arrow_{i}"
            ds.con.register(source, pads.dataset(list(target.files), filesystem=ds.store.fs, format="parquet"))
        branches.append(f"SELECT {i}::BIGINT AS target, {columns} FROM {source}")
    ds.con.execute("CREATE OR REPLACE TEMP VIEW _scan_filters AS " + "\nUNION ALL ".join(branches))
    ds.con.execute(load_sql("scan_coefficients"))
    return ScanStats(rows=sum(w[3] for w in row_groups(targets, file_opener(ds))))


def duckdb_coefficient_range(ds: FilterDataset, targets: list[ScanTarget], basis: PCABasis,
                             ) -> tuple[float, float, ScanStats]:
    """sql/coefficient_range.sql: the same range as the numba engine, as one DuckDB query."""
    import time

    stats = _prepare_duckdb_scan(ds, targets, basis, None)
    started, cpu_started = time.perf_counter(), time.process_time()
    lo, hi, _ = ds.con.execute(load_sql("coefficient_range")).fetchall()[0]
    stats.seconds, stats.cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return (np.inf if lo is None else float(lo)), (-np.inf if hi is None else float(hi)), stats


def duckdb_coefficient_histograms(ds: FilterDataset, targets: list[ScanTarget], basis: PCABasis,
                                  edges: np.ndarray) -> tuple[np.ndarray, ScanStats]:
    """sql/coefficient_histogram.sql: counts of shape (n_targets, N_BUCKETS, 9, n_bins), as the numba engine."""
    import time

    stats = _prepare_duckdb_scan(ds, targets, basis, edges)
    started, cpu_started = time.perf_counter(), time.process_time()
    rows = ds.con.execute(load_sql("coefficient_histogram")).fetchnumpy()
    stats.seconds, stats.cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    n_bins = len(edges) - 1
    below, above = rows["below_edge"].astype(bool), rows["above_edge"].astype(bool)
    bins = rows["bin"].astype(np.int64)
    bins = bins - (below & (bins > 0))  # numpy.histogram's correction against the exact edges
    bins = bins + (above & ~below & (bins != n_bins - 1))
    keep = ~rows["outside"].astype(bool)
    counts = np.zeros((len(targets) * N_BUCKETS, 9, n_bins), dtype=np.int64)
    np.add.at(counts, (rows["grp"].astype(np.int64)[keep], rows["k"].astype(np.int64)[keep], bins[keep]),
              rows["n"].astype(np.int64)[keep])
    return counts.reshape(len(targets), N_BUCKETS, 9, len(edges) - 1), stats


def group_weights(models: pd.DataFrame, pairs: pd.DataFrame, dataset: str, kl_groups: str,
                  ) -> tuple[dict[str, int], dict[str, int]]:
    """Weights of the models of each side: pair multiplicity (the paper) or 1 per model (--kl-groups all)."""
    if kl_groups == "pairs":
        part = pairs[pairs.dataset == dataset]
        return part.robust_model_id.value_counts().to_dict(), part.normal_model_id.value_counts().to_dict()
    part = models[models.dataset == dataset]
    return ({m: 1 for m in part.model_id[part.robust]}, {m: 1 for m in part.model_id[~part.robust]})


def permutation_p_value(counts: np.ndarray, weights: np.ndarray, n_robust: int, observed: float,
                        edges: np.ndarray, ratio: np.ndarray, permutations: int, seed: int) -> float:
    """How often relabelling the models (same group sizes) gives a divergence at least as large.

    ``counts``: (n_models, 9, n_bins) of the models of both sides, ``weights`` their
    weights; the first ``n_robust`` are the robust ones. Exact over all splits when
    there are at most ``permutations`` of them, else Monte Carlo with ``seed``.
    """
    n = len(counts)
    n_splits = math.comb(n, n_robust)
    if n_splits <= permutations:
        splits = [np.isin(np.arange(n), c) for c in combinations(range(n), n_robust)]
        hits = 0
        for mask in splits:
            d, _ = weighted_divergence(np.tensordot(weights[mask], counts[mask], 1),
                                       np.tensordot(weights[~mask], counts[~mask], 1), edges, ratio)
            hits += d is not None and d >= observed - 1e-12
        return hits / len(splits)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        mask = np.zeros(n, bool)
        mask[rng.choice(n, n_robust, replace=False)] = True
        d, _ = weighted_divergence(np.tensordot(weights[mask], counts[mask], 1),
                                   np.tensordot(weights[~mask], counts[~mask], 1), edges, ratio)
        hits += d is not None and d >= observed - 1e-12
    return (hits + 1) / (permutations + 1)


def distribution_shift(counts: np.ndarray, targets: list[ScanTarget], models: pd.DataFrame, pairs: pd.DataFrame,
                       basis: PCABasis, edges: np.ndarray, options: StatsOptions) -> pd.DataFrame:
    """Robust vs normal divergence per dataset: overall (all buckets) and per depth bucket."""
    index = {t.model_id: i for i, t in enumerate(targets)}
    ratio = basis.explained_variance_ratio
    rows = []
    for dataset in sorted(models.dataset.unique()):
        robust_w, normal_w = group_weights(models, pairs, dataset, options.kl_groups)
        robust_ids = [m for m in robust_w if m in index]
        normal_ids = [m for m in normal_w if m in index]
        ids = robust_ids + normal_ids
        weights = np.array([robust_w[m] for m in robust_ids] + [normal_w[m] for m in normal_ids], float)
        per_model = counts[[index[m] for m in ids]] if ids else np.zeros((0, N_BUCKETS, 9, len(edges) - 1))
        for bucket in [None, *range(N_BUCKETS)]:
            model_counts = per_model.sum(axis=1) if bucket is None else per_model[:, bucket]
            robust = np.tensordot(weights[:len(robust_ids)], model_counts[:len(robust_ids)], 1) if robust_ids \
                else np.zeros((9, len(edges) - 1))
            normal = np.tensordot(weights[len(robust_ids):], model_counts[len(robust_ids):], 1) if normal_ids \
                else np.zeros((9, len(edges) - 1))
            row = {"dataset": dataset, "depth_bucket": -1 if bucket is None else bucket,
                   "bucket": "all" if bucket is None else BUCKET_LABELS[bucket],
                   "n_robust_models": int((model_counts[:len(robust_ids)].sum(axis=(1, 2)) > 0).sum()),
                   "n_normal_models": int((model_counts[len(robust_ids):].sum(axis=(1, 2)) > 0).sum()),
                   "n_robust_filters": int(model_counts[:len(robust_ids), 0].sum()),
                   "n_normal_filters": int(model_counts[len(robust_ids):, 0].sum()),
                   "divergence": np.nan, "p_value": np.nan}
            divergence, per_coefficient = weighted_divergence(robust, normal, edges, ratio)
            row.update({f"kl_c{k}": per_coefficient[k] for k in range(9)})
            if divergence is not None:
                row["divergence"] = divergence
                has = model_counts.sum(axis=(1, 2)) > 0
                n_r = int(has[:len(robust_ids)].sum())
                if n_r >= 1 and int(has.sum()) - n_r >= 1 and options.permutations > 0:
                    row["p_value"] = permutation_p_value(model_counts[has], weights[has], n_r, divergence, edges,
                                                         ratio, options.permutations, options.seed)
            rows.append(row)
    return pd.DataFrame(rows)


def group_histograms(counts: np.ndarray, targets: list[ScanTarget], models: pd.DataFrame,
                     edges: np.ndarray) -> pd.DataFrame:
    """Per dataset and robust/normal (each model once): the 9 coefficient histograms, long format."""
    robust = dict(zip(models.model_id, models.robust, strict=True))
    dataset = dict(zip(models.model_id, models.dataset, strict=True))
    rows = []
    keys = sorted({(dataset[t.model_id], bool(robust[t.model_id])) for t in targets})
    for d, r in keys:
        idx = [i for i, t in enumerate(targets) if dataset[t.model_id] == d and robust[t.model_id] == r]
        hist = counts[idx].sum(axis=(0, 1))
        for k in range(9):
            for b in range(len(edges) - 1):
                rows.append((d, r, k, b, edges[b], edges[b + 1], int(hist[k, b])))
    return pd.DataFrame(rows, columns=["dataset", "robust", "coefficient", "bin", "bin_lo", "bin_hi", "count"])


# --- correlations -------------------------------------------------------------------------------
def correlations(profile: pd.DataFrame, whole: pd.DataFrame, min_models: int) -> pd.DataFrame:
    """Spearman and Pearson correlation of each metric (per bucket and whole model) with the accuracies,
    across robust models, per dataset and over all datasets."""
    frames = [profile.assign(bucket=profile.depth_bucket.map(lambda b: BUCKET_LABELS[int(b)])),
              whole.assign(depth_bucket=-1, bucket="all")]
    data = pd.concat(frames, ignore_index=True)
    data = data[data.robust]
    rows = []
    for scope in [*sorted(data.dataset.unique()), "all datasets"]:
        part = data if scope == "all datasets" else data[data.dataset == scope]
        for (bucket, label), group in part.groupby(["depth_bucket", "bucket"], sort=True):
            for metric in METRICS:
                for accuracy in ACCURACIES:
                    pair = group[[metric, accuracy]].dropna()
                    row = {"dataset": scope, "depth_bucket": int(bucket), "bucket": label, "metric": metric,
                           "accuracy": accuracy, "n": len(pair), "spearman_rho": np.nan, "spearman_p": np.nan,
                           "pearson_r": np.nan, "pearson_p": np.nan}
                    x, y = pair[metric].to_numpy(float), pair[accuracy].to_numpy(float)
                    if len(pair) >= min_models and np.ptp(x) > 0 and np.ptp(y) > 0:
                        rho = scistats.spearmanr(x, y)
                        r = scistats.pearsonr(x, y)
                        row.update(spearman_rho=float(rho.statistic), spearman_p=float(rho.pvalue),
                                   pearson_r=float(r.statistic), pearson_p=float(r.pvalue))
                    rows.append(row)
    table = pd.DataFrame(rows, columns=["dataset", "depth_bucket", "bucket", "metric", "accuracy", "n",
                                        "spearman_rho", "spearman_p", "pearson_r", "pearson_p"])
    table["spearman_q"] = benjamini_hochberg(table.spearman_p.tolist()) if len(table) else []
    return table


# --- galleries ----------------------------------------------------------------------------------
def gallery_models(models: pd.DataFrame, pairs: pd.DataFrame, options: StatsOptions) -> list[list[str]]:
    """Rows of the gallery: the first ``gallery_pairs`` pairs of each dataset (robust, normal), or the
    --gallery models, one per row."""
    if options.gallery:
        unknown = sorted(set(options.gallery) - set(models.model_id))
        if unknown:
            raise ConfigError(f"--gallery: {', '.join(unknown)} not in the selection")
        return [[m] for m in options.gallery]
    rows: list[list[str]] = []
    for dataset in sorted(models.dataset.unique()):
        part = pairs[pairs.dataset == dataset].drop_duplicates("robust_model_id").head(options.gallery_pairs)
        rows += [[row.robust_model_id, row.normal_model_id] for row in part.itertuples()]
    return rows


def galleries(ds: FilterDataset, models: pd.DataFrame, rows: list[list[str]]) -> list[list[Gallery]]:
    """The first 3x3 conv layer (with metrics) of each model of each row, as weight arrays."""
    wanted = list(dict.fromkeys(m for row in rows for m in row))
    if not wanted:
        return []
    first = run_sql(ds, "first_layer", {"model_ids": wanted}).set_index("model_id")
    info = models.set_index("model_id")
    stored = ds.store.stored_models()
    loaded: dict[str, Gallery] = {}
    for model_id in wanted:
        if model_id not in first.index:
            continue
        layer = first.loc[model_id]
        files = ds.store.filter_files(stored[model_id])
        table = pads.dataset(files, filesystem=ds.store.fs, format="parquet").to_table(
            columns=["out_channel", "in_channel", *[f"w{i}" for i in range(9)]],
            filter=pads.field("conv_index") == int(layer.conv_index))
        frame = table.to_pandas().sort_values(["out_channel", "in_channel"])
        c_out, c_in = int(frame.out_channel.max()) + 1, int(frame.in_channel.max()) + 1
        weights = frame[[f"w{i}" for i in range(9)]].to_numpy(np.float32).reshape(c_out, c_in, 3, 3)
        loaded[model_id] = Gallery(model_id, bool(info.loc[model_id, "robust"]), str(info.loc[model_id, "dataset"]),
                                   str(layer.layer_name), int(layer.conv_index), c_in, weights)
    return [[loaded[m] for m in row if m in loaded] for row in rows if any(m in loaded for m in row)]


# --- findings -----------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return f"{value:+.3g}" if value == value else "n/a"


def depth_findings(models: pd.DataFrame, comparison: pd.DataFrame, options: StatsOptions) -> list[Finding]:
    out = []
    for dataset in sorted(models.dataset.unique()):
        part = models[models.dataset == dataset]
        n_r, n_n = int(part.robust.sum()), int((~part.robust).sum())
        for metric in METRICS:
            name = METRIC_NAMES[metric]
            rows = comparison[(comparison.dataset == dataset) & (comparison.metric == metric)]
            rows = rows[(rows.n_robust > 0) & (rows.n_normal > 0)]
            if n_n == 0 or n_r == 0:
                missing = "normally trained" if n_n == 0 else "robust"
                out.append(Finding("depth profile", dataset, metric, "cannot say",
                                   f"{dataset}, {name}: cannot compare robust and normal models, the selection has "
                                   f"no {missing} {dataset} models ({n_r} robust, {n_n} normal)."))
                continue
            if rows.empty:
                out.append(Finding("depth profile", dataset, metric, "cannot say",
                                   f"{dataset}, {name}: no depth bucket has 3x3 layers with metrics on both sides."))
                continue
            tested = rows[rows.p_value.notna()]
            if tested.empty:
                out.append(Finding("depth profile", dataset, metric, "cannot say",
                                   f"{dataset}, {name}: too few models to test ({n_r} robust, {n_n} normal; at least "
                                   f"{options.min_models} of each with data in a bucket are needed)."))
                continue
            higher = rows[rows.difference > 0]
            sig_hi = tested[tested.significant & (tested.difference > 0)]
            sig_lo = tested[tested.significant & (tested.difference < 0)]
            biggest = rows.loc[rows.difference.abs().idxmax()]
            if len(sig_hi) and not len(sig_lo):
                verdict, head = "robust higher", f"robust models have higher {name} than normal ones"
            elif len(sig_lo) and not len(sig_hi):
                verdict, head = "robust lower", f"robust models have lower {name} than normal ones"
            elif len(sig_lo) and len(sig_hi):
                verdict, head = "mixed", f"robust and normal models differ in {name} in both directions"
            else:
                verdict, head = "no difference", f"no significant difference in {name} between robust and normal models"
            significant = pd.concat([sig_hi, sig_lo]).sort_values("depth_bucket")
            where = ""
            if 0 < len(significant) < len(rows):
                labels = list(significant.bucket)
                where = " (buckets " + ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "") + ")"
            counts = (f"significant in {len(significant)} of {len(rows)} depth buckets with data{where} "
                      f"(Mann-Whitney U, Holm, alpha {options.alpha}; {len(sig_hi)} higher, {len(sig_lo)} lower); "
                      f"robust mean higher in {len(higher)} of {len(rows)}; largest difference "
                      f"{_fmt(biggest.difference)} in bucket {biggest.bucket}; {n_r} robust vs {n_n} normal models")
            out.append(Finding("depth profile", dataset, metric, verdict, f"{dataset}: {head}: {counts}."))
    return out


def shift_findings(models: pd.DataFrame, shift: pd.DataFrame, basis: PCABasis | None, options: StatsOptions,
                   reason: str | None) -> list[Finding]:
    out = []
    if reason:
        return [Finding("distribution shift", "all", "divergence", "cannot say", reason)]
    for dataset in sorted(models.dataset.unique()):
        rows = shift[shift.dataset == dataset]
        overall = rows[rows.depth_bucket == -1]
        if overall.empty or overall.divergence.isna().all():
            what = "robust/normal pairs" if options.kl_groups == "pairs" else "robust and normal models"
            out.append(Finding("distribution shift", dataset, "divergence", "cannot say",
                               f"{dataset}: no divergence computed, the selection has no {what} with 3x3 filters "
                               f"on this dataset."))
            continue
        o = overall.iloc[0]
        per_bucket = rows[(rows.depth_bucket >= 0) & rows.divergence.notna()]
        top = per_bucket.loc[per_bucket.divergence.idxmax()] if not per_bucket.empty else None
        significant = o.p_value == o.p_value and o.p_value < options.alpha
        chance = (f"larger than label permutations give (p = {o.p_value:.3g})" if significant else
                  f"not distinguishable from relabelled models (permutation p = {o.p_value:.3g})"
                  if o.p_value == o.p_value else "no permutation test possible")
        text = (f"{dataset}: coefficient distributions of robust vs normal filters differ by a weighted symmetric KL "
                f"of {o.divergence:.4g}, {chance}; {o.n_robust_models} robust vs {o.n_normal_models} normal models"
                f" ({o.n_robust_filters} vs {o.n_normal_filters} non-sparse filters)")
        if top is not None:
            text += f"; largest in depth bucket {top.bucket} ({top.divergence:.4g})"
        sig_buckets = per_bucket[per_bucket.p_value < options.alpha]
        text += f"; {len(sig_buckets)} of {len(per_bucket)} buckets below p {options.alpha} (not corrected)."
        out.append(Finding("distribution shift", dataset, "divergence", "shift" if significant else "no difference",
                           text))
    return out


def correlation_findings(models: pd.DataFrame, table: pd.DataFrame, options: StatsOptions) -> list[Finding]:
    robust = models[models.robust]
    with_acc = robust[robust.clean_acc.notna() | robust.robust_acc.notna()]
    if len(with_acc) < options.min_correlation_models:
        return [Finding("correlation", "all", "accuracy", "cannot say",
                        f"too few robust models with known accuracies to correlate ({len(with_acc)}; at least "
                        f"{options.min_correlation_models} needed).")]
    tested = table[table.spearman_q.notna()]
    strong = tested[tested.spearman_q < options.alpha].sort_values("spearman_q")
    if strong.empty:
        return [Finding("correlation", "all", "accuracy", "no difference",
                        f"no metric correlates with clean or robust accuracy across robust models after correcting "
                        f"{len(tested)} tests (Spearman, Benjamini-Hochberg q < {options.alpha}).")]
    out = []
    for row in strong.head(8).itertuples():
        direction = "positively" if row.spearman_rho > 0 else "negatively"
        out.append(Finding("correlation", row.dataset, f"{row.metric}/{row.accuracy}", direction,
                           f"{row.dataset}: {METRIC_NAMES[row.metric]} (bucket {row.bucket}) correlates {direction} "
                           f"with {row.accuracy.replace('_acc', ' accuracy')} across robust models (Spearman rho "
                           f"{row.spearman_rho:+.2f}, q {row.spearman_q:.3g}, Pearson r {row.pearson_r:+.2f}, "
                           f"n {row.n})."))
    return out
