"""PCA basis of 3x3 filters and the distribution shift between robust and normal models.

Follows the paper's own code (``pca.ipynb`` of Gavrikov & Keuper):

* filters are scaled by their own max|w| and sparse filters are left out;
* the basis is a 9-component PCA of those scaled filters. Here it comes from the
  per-layer sufficient statistics (``layers.n_nonsparse``, ``pca_sum``,
  ``pca_scatter``), so no pass over the filters is needed. Component signs follow
  scikit-learn >= 1.5 (the largest-magnitude entry of each component is positive);
* coefficients are the projections of the centred scaled filters on the full basis;
* per coefficient, a 70-bin histogram over one global coefficient range (the
  min/max over every coefficient of every selected filter) is taken as a density,
  empty bins are set to float32 eps and the result is normalised;
* the divergence of two groups is the symmetric KL divergence (natural log) per
  coefficient, weighted by the explained-variance ratio of the full basis.

The range pass and the histogram pass are each one parallel, out-of-core scan of
the filters files (row group by row group). The fast engine is a compiled (numba)
kernel fed by pyarrow; the ``duckdb`` engine runs ``sql/coefficient_*.sql``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import StatsError

log = logging.getLogger(__name__)

N_BINS = 70
"""Histogram bins per coefficient (the paper's choice)."""
N_COMPONENTS = 9
EMPTY_BIN = float(np.finfo(np.float32).eps)
"""Value given to empty histogram bins before normalising (the paper's choice)."""
WEIGHT_COLUMNS = [f"w{i}" for i in range(9)]
SCAN_COLUMNS = [*WEIGHT_COLUMNS, "conv_index", "sparse"]


# --- PCA from sufficient statistics ---------------------------------------------------------
@dataclass(frozen=True)
class PCABasis:
    """A 9-component PCA of scaled non-sparse filters."""

    n: int
    mean: np.ndarray  # (9,)
    components: np.ndarray  # (9, 9), one component per row, by decreasing variance
    explained_variance: np.ndarray  # (9,), unbiased (n - 1)
    explained_variance_ratio: np.ndarray  # (9,)


def orient_components(components: np.ndarray) -> np.ndarray:
    """Flip each row so that its largest-magnitude entry is positive (scikit-learn >= 1.5's svd_flip)."""
    rows = np.asarray(components, dtype=np.float64).copy()
    pivots = np.argmax(np.abs(rows), axis=1)
    signs = np.sign(rows[np.arange(len(rows)), pivots])
    signs[signs == 0] = 1
    return rows * signs[:, None]


def pca_from_statistics(count: int, total: np.ndarray, scatter: np.ndarray) -> PCABasis:
    """PCA from (n, sum x, sum x x^T): the same basis as PCA on the n filters themselves."""
    if count < 2:
        raise StatsError(f"a PCA basis needs at least 2 non-sparse 3x3 filters, got {count}")
    total = np.asarray(total, dtype=np.float64).reshape(9)
    scatter = np.asarray(scatter, dtype=np.float64).reshape(9, 9)
    covariance = (scatter - np.outer(total, total) / count) / (count - 1)
    covariance = (covariance + covariance.T) / 2
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    variance = np.clip(eigenvalues[order], 0, None)
    components = orient_components(eigenvectors[:, order].T)
    ratio = variance / variance.sum() if variance.sum() > 0 else np.zeros(9)
    return PCABasis(int(count), total / count, components, variance, ratio)


def sum_statistics(n_nonsparse: Iterable[int], sums: Iterable[Sequence[float]],
                   scatters: Iterable[Sequence[float]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Add per-layer statistics (they are additive)."""
    count, total, scatter = 0, np.zeros(9), np.zeros(81)
    for n, s, q in zip(n_nonsparse, sums, scatters, strict=True):
        if not n:
            continue
        count += int(n)
        total += np.asarray(s, dtype=np.float64)
        scatter += np.asarray(q, dtype=np.float64)
    return count, total, scatter.reshape(9, 9)


def project(filters: np.ndarray, basis: PCABasis) -> np.ndarray:
    """Coefficients of raw (unscaled) non-sparse filters (n, 9) on the basis: V (w/max|w| - mean)."""
    w = np.asarray(filters, dtype=np.float64)
    scaled = w / np.abs(w).max(axis=1, keepdims=True)
    return (scaled - basis.mean) @ basis.components.T


# --- histograms and divergence --------------------------------------------------------------
def bin_edges(lo: float, hi: float, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width edges as numpy.histogram makes them."""
    if not hi > lo:
        hi = lo + 1.0 if lo == hi else hi
    return np.linspace(lo, hi, n_bins + 1)


def distribution(counts: np.ndarray, edges: np.ndarray) -> np.ndarray | None:
    """The paper's discrete distribution of one histogram: density, empty bins -> float32 eps, normalised.

    None when the histogram is empty (there is nothing to compare).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    density = counts / np.diff(edges) / total
    density[density == 0] = EMPTY_BIN
    return density / density.sum()


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats for two strictly positive distributions."""
    return float(np.sum(p * np.log(p / q)))


def symmetric_kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) + KL(q || p)."""
    return kl_divergence(p, q) + kl_divergence(q, p)


def weighted_divergence(counts_a: np.ndarray, counts_b: np.ndarray, edges: np.ndarray,
                        weights: np.ndarray) -> tuple[float | None, np.ndarray]:
    """Sum over coefficients of weight_k * symmetric KL of the two groups' distributions.

    ``counts_*`` have shape (9, n_bins). Returns (divergence or None when a group has
    no filters, per-coefficient symmetric KL).
    """
    per_coefficient = np.full(len(weights), np.nan)
    for k in range(len(weights)):
        p, q = distribution(counts_a[k], edges), distribution(counts_b[k], edges)
        if p is None or q is None:
            return None, per_coefficient
        per_coefficient[k] = symmetric_kl(p, q)
    return float(np.dot(weights, per_coefficient)), per_coefficient


# --- the scans over the filters --------------------------------------------------------------
@dataclass(frozen=True)
class ScanTarget:
    """One model's filters files and how its layers map to histogram groups (-1: left out)."""

    model_id: str
    files: tuple[str, ...]
    group_of_conv: np.ndarray  # int64, indexed by layer number; -1 for layers left out
    member_stride: int = 0  # layer number = member * member_stride + conv_index (0: conv_index alone)


def _kernels():  # noqa: ANN202 - compiled lazily so that importing this module stays cheap
    # Longer than 60 lines on purpose: the numba kernels are closures defined (and compiled) together
    # on first use, so importing this module never pays for numba; each kernel is short on its own.
    from numba import njit

    block = 512

    @njit(nogil=True, cache=True)
    def centred_scaled(w0, w1, w2, w3, w4, w5, w6, w7, w8, conv, sparse, group_of_conv, mean, start, m, y, grp):
        """Rows start..start+m: y[:, i] = w / max|w| - mean for the filters that count (grp >= 0), else 0."""
        for i in range(m):
            r = start + i
            a0, a1, a2 = np.float64(w0[r]), np.float64(w1[r]), np.float64(w2[r])
            a3, a4, a5 = np.float64(w3[r]), np.float64(w4[r]), np.float64(w5[r])
            a6, a7, a8 = np.float64(w6[r]), np.float64(w7[r]), np.float64(w8[r])
            s = max(max(max(abs(a0), abs(a1)), max(abs(a2), abs(a3))),
                    max(max(abs(a4), abs(a5)), max(max(abs(a6), abs(a7)), abs(a8))))
            ci = conv[r]
            g = group_of_conv[ci] if 0 <= ci < group_of_conv.shape[0] else -1  # rows of unknown layers: out
            ok = (not sparse[r]) and g >= 0 and s > 0 and s < np.inf
            grp[i] = g if ok else -1
            if ok:
                y[0, i], y[1, i], y[2, i] = a0 / s - mean[0], a1 / s - mean[1], a2 / s - mean[2]
                y[3, i], y[4, i], y[5, i] = a3 / s - mean[3], a4 / s - mean[4], a5 / s - mean[5]
                y[6, i], y[7, i], y[8, i] = a6 / s - mean[6], a7 / s - mean[7], a8 / s - mean[8]
            else:
                for j in range(9):
                    y[j, i] = 0.0

    @njit(nogil=True, cache=True)
    def coefficient(v, k, y, i):
        return (v[k, 0] * y[0, i] + v[k, 1] * y[1, i] + v[k, 2] * y[2, i] + v[k, 3] * y[3, i]
                + v[k, 4] * y[4, i] + v[k, 5] * y[5, i] + v[k, 6] * y[6, i] + v[k, 7] * y[7, i]
                + v[k, 8] * y[8, i])

    @njit(nogil=True, cache=True)
    def coefficient_range(w0, w1, w2, w3, w4, w5, w6, w7, w8, conv, sparse, group_of_conv, v, mean, out):
        lo, hi = out[0], out[1]
        y = np.empty((9, block))
        grp = np.empty(block, np.int64)
        n = w0.shape[0]
        for start in range(0, n, block):
            m = min(block, n - start)
            centred_scaled(w0, w1, w2, w3, w4, w5, w6, w7, w8, conv, sparse, group_of_conv, mean, start, m, y, grp)
            for k in range(9):
                for i in range(m):
                    c = coefficient(v, k, y, i)
                    lo = min(lo, c if grp[i] >= 0 else np.inf)
                    hi = max(hi, c if grp[i] >= 0 else -np.inf)
        out[0], out[1] = lo, hi

    @njit(nogil=True, cache=True)
    def coefficient_histogram(w0, w1, w2, w3, w4, w5, w6, w7, w8, conv, sparse, group_of_conv, v, mean,
                              edges, counts):
        n_bins = edges.shape[0] - 1
        lo, hi = edges[0], edges[n_bins]
        norm = n_bins / (hi - lo)
        step = (edges[n_bins] - lo) / n_bins  # edges[b] == b * step + lo, as numpy.linspace makes them
        y = np.empty((9, block))
        grp = np.empty(block, np.int64)
        bins = np.empty((9, block), np.int64)
        n = w0.shape[0]
        for start in range(0, n, block):
            m = min(block, n - start)
            centred_scaled(w0, w1, w2, w3, w4, w5, w6, w7, w8, conv, sparse, group_of_conv, mean, start, m, y, grp)
            for k in range(9):
                for i in range(m):
                    c = coefficient(v, k, y, i)
                    # numpy.histogram's rule: floor of the scaled value, then corrected against the edges;
                    # values outside [lo, hi] are not counted (-1).
                    b = np.int64(min(max((c - lo) * norm, 0.0), n_bins - 1.0))
                    b -= np.int64(c < b * step + lo) * np.int64(b > 0)
                    b += np.int64(c >= (b + 1) * step + lo) * np.int64(b != n_bins - 1)
                    bins[k, i] = b if (c >= lo) & (c <= hi) else -1
            for i in range(m):
                g = grp[i]
                if g >= 0:
                    for k in range(9):
                        if bins[k, i] >= 0:
                            counts[g, k, bins[k, i]] += 1

    return coefficient_range, coefficient_histogram


_KERNELS = None
_KERNELS_LOCK = threading.Lock()


def kernels():  # noqa: ANN201
    """The compiled scan kernels (compiled on first use, cached on disk by numba)."""
    global _KERNELS
    with _KERNELS_LOCK:
        if _KERNELS is None:
            _KERNELS = _kernels()
            _warm_up(*_KERNELS)
    return _KERNELS


def _warm_up(range_kernel, histogram_kernel) -> None:  # noqa: ANN001
    """Compile (or load from numba's cache) for the column types of the filters table, outside any timing."""
    w = [np.ones(1, np.float32) for _ in range(9)]
    conv, sparse, group = np.zeros(1, np.int32), np.zeros(1, np.bool_), np.zeros(1, np.int64)
    for a in [*w, conv]:  # columns arrive from Arrow as read-only arrays: a type of its own to numba
        a.flags.writeable = False
    v, mean = np.eye(9), np.zeros(9)
    range_kernel(*w, conv, sparse, group, v, mean, np.array([np.inf, -np.inf]))
    histogram_kernel(*w, conv, sparse, group, v, mean, bin_edges(-1.0, 1.0), np.zeros((1, 9, N_BINS), np.int64))


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ScanStats:
    """Rows scanned, wall seconds and CPU seconds (all threads) of one pass."""

    rows: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def row_groups(targets: Sequence[ScanTarget], open_file) -> list[tuple[int, str, int, int]]:  # noqa: ANN001
    """(target index, path, row group, rows) for every row group of every target."""
    work = []
    for t, target in enumerate(targets):
        for path in target.files:
            with open_file(path) as f:
                meta = pq.ParquetFile(f).metadata
            work.extend((t, path, rg, meta.row_group(rg).num_rows) for rg in range(meta.num_row_groups))
    return work


def _columns(table: pa.Table, member_stride: int = 0) -> list[np.ndarray]:
    """The kernels' arguments: 9 weight columns, the layer number (ScanTarget.member_stride), sparse."""
    arrays = [table.column(c).to_numpy() for c in WEIGHT_COLUMNS]
    conv = table.column("conv_index").to_numpy()
    if member_stride:
        conv = (conv + table.column("member").to_numpy() * np.int32(member_stride)).astype(np.int32)
        conv.flags.writeable = False  # the type the kernels were compiled for (Arrow's read-only arrays)
    arrays.append(conv)
    arrays.append(table.column("sparse").to_numpy(zero_copy_only=False))
    return arrays


def scan(targets: Sequence[ScanTarget], open_file, fn, make_state, threads: int | None = None,  # noqa: ANN001
         progress: str | None = None) -> tuple[list, ScanStats]:
    """Run ``fn(state, target_index, columns)`` over every row group, in a pool of threads.

    Each thread reads row groups with pyarrow (which releases the GIL) and runs the
    compiled kernel (which releases it too), so the threads run in parallel; each
    keeps its own state, and the states are returned for the caller to combine.
    Memory stays at about one decoded row group per thread.
    """
    import time

    from tqdm import tqdm

    work = row_groups(targets, open_file)
    threads = max(1, threads or os.cpu_count() or 1)
    local = threading.local()
    states: list = []
    states_lock = threading.Lock()
    total_rows = sum(w[3] for w in work)
    bar = tqdm(total=total_rows, unit="filter", unit_scale=True, desc=progress, disable=progress is None or None,
               leave=False)

    def state() -> object:
        if not hasattr(local, "state"):
            local.state = make_state()
            with states_lock:
                states.append(local.state)
        return local.state

    def run(item: tuple[int, str, int, int]) -> None:
        t, path, rg, rows = item
        stride = targets[t].member_stride
        with open_file(path) as f:
            table = pq.ParquetFile(f).read_row_group(rg, SCAN_COLUMNS + ["member"] * bool(stride), use_threads=False)
        fn(state(), t, _columns(table, stride))
        bar.update(rows)

    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(run, work):
                pass
    except (OSError, pa.ArrowException) as exc:
        raise StatsError(f"reading the filters failed: {exc}") from exc
    finally:
        bar.close()
    return states, ScanStats(total_rows, time.perf_counter() - started, time.process_time() - cpu_started)


def numba_coefficient_range(targets: Sequence[ScanTarget], open_file, basis: PCABasis,  # noqa: ANN001
                            threads: int | None = None) -> tuple[float, float, ScanStats]:
    """Global min and max of all 9 coefficients over the selected non-sparse filters."""
    range_kernel, _ = kernels()
    v = np.ascontiguousarray(basis.components)
    mean = np.ascontiguousarray(basis.mean)

    def fn(state: np.ndarray, t: int, cols: list[np.ndarray]) -> None:
        range_kernel(*cols, targets[t].group_of_conv, v, mean, state)

    states, stats = scan(targets, open_file, fn, lambda: np.array([np.inf, -np.inf]), threads, "coefficient range")
    lo = min((s[0] for s in states), default=np.inf)
    hi = max((s[1] for s in states), default=-np.inf)
    return float(lo), float(hi), stats


def numba_coefficient_histograms(targets: Sequence[ScanTarget], open_file, basis: PCABasis,  # noqa: ANN001
                                 edges: np.ndarray, n_groups: int, threads: int | None = None,
                                 ) -> tuple[np.ndarray, ScanStats]:
    """Counts of shape (n_targets, n_groups, 9, n_bins): every target's histograms per group."""
    _, histogram_kernel = kernels()
    v = np.ascontiguousarray(basis.components)
    mean = np.ascontiguousarray(basis.mean)
    n_bins = len(edges) - 1

    def fn(state: np.ndarray, t: int, cols: list[np.ndarray]) -> None:
        histogram_kernel(*cols, targets[t].group_of_conv, v, mean, edges, state[t])

    def make_state() -> np.ndarray:
        return np.zeros((len(targets), n_groups, 9, n_bins), dtype=np.int64)

    states, stats = scan(targets, open_file, fn, make_state, threads, "coefficient histograms")
    counts = make_state()
    for s in states:
        counts += s
    return counts, stats
