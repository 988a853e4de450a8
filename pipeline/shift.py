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
    group_of_conv: np.ndarray  # int64, indexed by conv_index; -1 for layers left out


def _kernels():  # noqa: ANN202 - compiled lazily so that importing this module stays cheap
    from numba import njit

    @njit(nogil=True, cache=True)
    def coefficient_range(w0, w1, w2, w3, w4, w5, w6, w7, w8, conv, sparse, group_of_conv, v, mean, out):
        lo, hi = out[0], out[1]
        x = np.empty(9)
        y = np.empty(9)
        for i in range(w0.shape[0]):
            if sparse[i] or group_of_conv[conv[i]] < 0:
                continue
            x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8] = w0[i], w1[i], w2[i], w3[i], w4[i], w5[i], w6[i], w7[i], w8[i]
            scale = 0.0
            for j in range(9):
                scale = max(scale, abs(x[j]))
            for j in range(9):
                y[j] = x[j] / scale - mean[j]
            for k in range(9):
                c = 0.0
                for j in range(9):
                    c += v[k, j] * y[j]
                lo = min(lo, c)
                hi = max(hi, c)
        out[0], out[1] = lo, hi

    @njit(nogil=True, cache=True)
    def coefficient_histogram(w0, w1, w2, w3, w4, w5, w6, w7, w8, conv, sparse, group_of_conv, v, mean,
                              edges, counts):
        n_bins = edges.shape[0] - 1
        lo = edges[0]
        norm = n_bins / (edges[n_bins] - edges[0])
        x = np.empty(9)
        y = np.empty(9)
        for i in range(w0.shape[0]):
            g = group_of_conv[conv[i]]
            if sparse[i] or g < 0:
                continue
            x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8] = w0[i], w1[i], w2[i], w3[i], w4[i], w5[i], w6[i], w7[i], w8[i]
            scale = 0.0
            for j in range(9):
                scale = max(scale, abs(x[j]))
            for j in range(9):
                y[j] = x[j] / scale - mean[j]
            for k in range(9):
                c = 0.0
                for j in range(9):
                    c += v[k, j] * y[j]
                # numpy.histogram's rule: floor on the scaled value, then correct against the edges.
                b = int((c - lo) * norm)
                if b < 0:
                    b = 0
                elif b > n_bins - 1:
                    b = n_bins - 1
                if c < edges[b] and b > 0:
                    b -= 1
                elif b < n_bins - 1 and c >= edges[b + 1]:
                    b += 1
                counts[g, k, b] += 1

    return coefficient_range, coefficient_histogram


_KERNELS = None
_KERNELS_LOCK = threading.Lock()


def kernels():  # noqa: ANN201
    """The compiled scan kernels (compiled on first use, cached on disk by numba)."""
    global _KERNELS
    with _KERNELS_LOCK:
        if _KERNELS is None:
            _KERNELS = _kernels()
    return _KERNELS


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ScanStats:
    rows: int = 0
    seconds: float = 0.0


def _row_groups(targets: Sequence[ScanTarget], open_file) -> list[tuple[int, str, int, int]]:  # noqa: ANN001
    """(target index, path, row group, rows) for every row group of every target."""
    work = []
    for t, target in enumerate(targets):
        for path in target.files:
            with open_file(path) as f:
                meta = pq.ParquetFile(f).metadata
            work.extend((t, path, rg, meta.row_group(rg).num_rows) for rg in range(meta.num_row_groups))
    return work


def _columns(table: pa.Table) -> list[np.ndarray]:
    arrays = [table.column(c).to_numpy() for c in WEIGHT_COLUMNS]
    arrays.append(table.column("conv_index").to_numpy())
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

    work = _row_groups(targets, open_file)
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
        with open_file(path) as f:
            table = pq.ParquetFile(f).read_row_group(rg, columns=SCAN_COLUMNS, use_threads=False)
        fn(state(), t, _columns(table))
        bar.update(rows)

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(run, work):
                pass
    except (OSError, pa.ArrowException) as exc:
        raise StatsError(f"reading the filters failed: {exc}") from exc
    finally:
        bar.close()
    return states, ScanStats(total_rows, time.perf_counter() - started)


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
