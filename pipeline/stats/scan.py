"""The two passes over the filters, set up and (``engine="duckdb"``) run as DuckDB SQL.

``scan_targets`` says which files and layers each selected model contributes; the numba
engine (pipeline.stats.shift) and the DuckDB engine (``sql/coefficient_*.sql`` over the
views prepared here) then give the same coefficient range and histograms.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from pipeline.dataset.query import FilterDataset
from pipeline.stats.options import StatsOptions
from pipeline.stats.profile import N_BUCKETS
from pipeline.stats.queries import load_sql, run_sql
from pipeline.stats.shift import PCABasis, ScanStats, ScanTarget, numba_available, row_groups

log = logging.getLogger(__name__)


def scan_targets(ds: FilterDataset, models: pd.DataFrame) -> list[ScanTarget]:
    """Per selected model: its filters files and layer -> depth bucket (-1: left out).

    A layer is (member, conv_index); ensembles number it ``member * member_stride + conv_index``
    (single models and rows of schema version 1: stride 0, conv_index alone).
    """
    layers = run_sql(ds, "scan_layers")
    stored = ds.stored_models()
    targets = []
    for model_id in models.model_id:
        rows = layers[layers.model_id == model_id]
        model = stored.get(model_id)
        if rows.empty or model is None:
            continue
        stride = int(rows.conv_index.max()) + 1 if int(rows.member.max()) > 0 else 0
        layer = rows.member.to_numpy(np.int64) * stride + rows.conv_index.to_numpy(np.int64)
        group = np.full(int(layer.max()) + 1, -1, dtype=np.int64)
        usable = rows.has_metrics.to_numpy(bool)
        group[layer[usable]] = rows.depth_bucket.to_numpy(np.int64)[usable]
        targets.append(ScanTarget(model_id, tuple(ds.store.filter_files(model)), group, stride))
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


def _register_groups(ds: FilterDataset, targets: list[ScanTarget]) -> None:
    """The temp table _scan_groups: (target, layer number) -> group target * N_BUCKETS + depth bucket."""
    groups = [(i, conv, i * N_BUCKETS + int(bucket)) for i, t in enumerate(targets)
              for conv, bucket in enumerate(t.group_of_conv) if bucket >= 0]
    ds.con.register("_scan_groups_df", pd.DataFrame(groups, columns=["target", "conv_index", "grp"]).astype(
        {"target": "int64", "conv_index": "int32", "grp": "int64"}))
    ds.con.execute("CREATE OR REPLACE TEMP TABLE _scan_groups AS SELECT * FROM _scan_groups_df")


def _set_basis_variables(ds: FilterDataset, basis: PCABasis, edges: np.ndarray | None) -> None:
    """The basis (v<k><j>, m<j>) and, with ``edges``, the histogram bins as session variables of the SQL."""
    basis_row = {f"v{k}{j}": basis.components[k, j] for k in range(9) for j in range(9)}
    basis_row.update({f"m{j}": basis.mean[j] for j in range(9)})
    if edges is not None:
        n_bins = len(edges) - 1
        basis_row.update(lo=edges[0], hi=edges[-1], n_bins=n_bins, norm=n_bins / (edges[-1] - edges[0]),
                         step=(edges[-1] - edges[0]) / n_bins)
    for name, value in basis_row.items():  # session variables, read with getvariable() in the SQL
        ds.con.execute(f"SET VARIABLE {name} = {float(value)!r}::DOUBLE" if name != "n_bins" else
                       f"SET VARIABLE {name} = {int(value)}::BIGINT")


def _create_filters_view(ds: FilterDataset, targets: list[ScanTarget]) -> None:
    """The view _scan_filters: every target's filters rows, tagged with the target's number; conv_index is
    the target's layer number (``member * member_stride + conv_index``, see scan_targets)."""
    branches = []
    for i, target in enumerate(targets):
        layer = f"conv_index + member * {int(target.member_stride)}" if target.member_stride else "conv_index + 0"
        columns = ", ".join([f"{layer} AS conv_index", "sparse", *[f"w{j}" for j in range(9)]])
        if ds.store.local:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in target.files)
            source = f"read_parquet([{listing}], hive_partitioning = false)"
        else:
            source = f"_scan_arrow_{i}"
            ds.con.register(source, pads.dataset(list(target.files), filesystem=ds.store.fs, format="parquet"))
        branches.append(f"SELECT {i}::BIGINT AS target, {columns} FROM {source}")
    ds.con.execute("CREATE OR REPLACE TEMP VIEW _scan_filters AS " + "\nUNION ALL ".join(branches))


def _prepare_duckdb_scan(ds: FilterDataset, targets: list[ScanTarget], basis: PCABasis,
                         edges: np.ndarray | None) -> ScanStats:
    """The temp table _scan_groups, the basis as variables, the view _scan_filters and (sql/scan_coefficients.sql)
    the view _scan_coefficients that sql/coefficient_*.sql read.

    _scan_filters tags each model's rows with its target number (one UNION ALL branch per
    model): joining on the dictionary-encoded model_id column trips an internal error of
    DuckDB 2.0 ("dict-surviving cache"), and integers join faster anyway.
    """
    _register_groups(ds, targets)
    _set_basis_variables(ds, basis, edges)
    _create_filters_view(ds, targets)
    ds.con.execute(load_sql("scan_coefficients"))
    return ScanStats(rows=sum(w[3] for w in row_groups(targets, file_opener(ds))))


def duckdb_coefficient_range(ds: FilterDataset, targets: list[ScanTarget], basis: PCABasis,
                             ) -> tuple[float, float, ScanStats]:
    """sql/coefficient_range.sql: the same range as the numba engine, as one DuckDB query."""
    stats = _prepare_duckdb_scan(ds, targets, basis, None)
    started, cpu_started = time.perf_counter(), time.process_time()
    lo, hi, _ = ds.con.execute(load_sql("coefficient_range")).fetchall()[0]
    stats.seconds, stats.cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return (np.inf if lo is None else float(lo)), (-np.inf if hi is None else float(hi)), stats


def duckdb_coefficient_histograms(ds: FilterDataset, targets: list[ScanTarget], basis: PCABasis,
                                  edges: np.ndarray) -> tuple[np.ndarray, ScanStats]:
    """sql/coefficient_histogram.sql: counts of shape (n_targets, N_BUCKETS, 9, n_bins), as the numba engine."""
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
