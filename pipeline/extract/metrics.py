"""The paper's filter-quality metrics as pure functions on tensors.

Everything here takes a conv weight tensor of shape (c_out, c_in/groups, kh, kw)
on any device and returns plain numbers (or small tensors); computation is in
float64 on the weight's own device. Definitions follow docs/design.md, which follows
the reference code of Gavrikov & Keuper (torchconvquality):

* sparsity: filter f is sparse iff max|f| <= 0.01 * max|W|;
* variance entropy: non-sparse filters scaled by their own max|f|, centred;
  singular values s, v = s^2/(n'-1), p = v/sum v, H = -sum p log10 p;
* orthogonality: 1 - sum|R R^T - I| / (c_out (c_out - 1)) over L2-normalised
  flattened output kernels (zero rows stay zero, so their diagonal counts |0-1|).

Degenerate layers get a defined value and a flag instead of NaN; layers with
NaN/Inf weights get no metric values (and a count of the bad weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SPARSITY_THRESHOLD = 0.01
"""A filter is sparse when its max |weight| is at most this fraction of the layer's max |weight|."""

MAX_VARIANCE_ENTROPY = math.log10(9)
"""Upper bound of the variance entropy of 3x3 filters (uniform variance over 9 components)."""


def _float32_floor(bound: float) -> float:
    """The largest float32 not above ``bound``: for every float32 x, x <= it exactly when x <= ``bound``."""
    narrow = np.float32(bound)
    if float(narrow) > bound:
        narrow = np.nextafter(narrow, np.float32(-np.inf))
    return float(narrow)


def flatten_filters(weight: torch.Tensor) -> torch.Tensor:
    """(c_out, c_in/groups, kh, kw) -> (c_out * c_in/groups, kh * kw), row-major per filter."""
    if weight.ndim != 4:
        raise ValueError(f"expected a 4D conv weight, got shape {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2] * weight.shape[3])


def sparse_mask(filters: torch.Tensor, threshold: float = SPARSITY_THRESHOLD) -> torch.Tensor:
    """Boolean mask of sparse filters: max|f| <= threshold * max|W| (all filters of an all-zero layer)."""
    return sparse_mask_from_maxima(filter_abs_max(filters), threshold)


def filter_abs_max(filters: torch.Tensor) -> torch.Tensor:
    """max|f| of every flattened filter (exact: no arithmetic; NaN propagates)."""
    return filters.abs().amax(dim=1)


TRANSPOSE_BLOCK = 16384
"""Filters per block of the CPU transposition in ``filter_columns`` (blocks in cache: 4x faster than one transposed
copy of a 4M-filter layer on 2 cores)."""


def filter_columns(filters: torch.Tensor) -> torch.Tensor:
    """(n, k) flattened filters as (k, n): one contiguous row per kernel position.

    The filters table stores the positions as columns w0..w8, and the per-filter maxima are
    cheapest across these rows, so both share this one copy.
    """
    n, k = filters.shape
    if filters.device.type != "cpu":
        return filters.T.contiguous()
    columns = torch.empty((k, n), dtype=filters.dtype)
    for start in range(0, n, TRANSPOSE_BLOCK):
        columns[:, start:start + TRANSPOSE_BLOCK].copy_(filters[start:start + TRANSPOSE_BLOCK].T)
    return columns


def column_abs_maxima(columns: torch.Tensor) -> torch.Tensor:
    """max|f| of every filter from ``filter_columns``'s (k, n) layout (equal to ``filter_abs_max``; NaN propagates)."""
    if columns.shape[0] == 0:
        return columns.new_zeros(columns.shape[1])
    maxima = columns[0].abs()
    for row in columns[1:]:
        torch.maximum(maxima, row.abs(), out=maxima)
    return maxima


def sparse_mask_from_maxima(filter_max: torch.Tensor, threshold: float = SPARSITY_THRESHOLD) -> torch.Tensor:
    """Sparse mask from per-filter maxima; the comparison is done in float64 so the boundary is exact."""
    maxima = filter_max.to(torch.float64)
    layer_max = maxima.max() if maxima.numel() else maxima.new_zeros(())
    return maxima <= threshold * layer_max


def sparsity(weight: torch.Tensor, threshold: float = SPARSITY_THRESHOLD) -> tuple[int, float]:
    """(number of sparse filters, fraction of sparse filters) of a conv layer."""
    mask = sparse_mask(flatten_filters(weight), threshold)
    n_sparse = int(mask.sum().item())
    return n_sparse, n_sparse / mask.numel() if mask.numel() else 0.0


def scale_filters(filters: torch.Tensor) -> torch.Tensor:
    """Divide every filter by its own max|f| (L-infinity); all-zero filters stay zero."""
    filter_max = filters.abs().amax(dim=1, keepdim=True)
    return filters / torch.where(filter_max > 0, filter_max, torch.ones_like(filter_max))


def entropy_from_variances(variances: torch.Tensor) -> tuple[float, bool]:
    """log10 entropy of the variance ratios; (0.0, True) when the total variance is zero.

    Negative round-off in eigenvalues is clipped to zero and 0 * log 0 counts as 0.
    """
    variances = variances.clamp_min(0)
    total = variances.sum()
    if not total > 0:
        return 0.0, True
    ratio = variances / total
    terms = torch.where(ratio > 0, ratio * torch.log10(torch.where(ratio > 0, ratio, 1)), 0)
    return float(-terms.sum().item()), False


def centred_scatter(filters: torch.Tensor) -> torch.Tensor:
    """(X - mean)^T (X - mean) in float64: the k x k matrix whose eigenvalues are the squared singular values."""
    x = filters.to(torch.float64)
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred


def variance_entropy(filters: torch.Tensor) -> tuple[float, bool]:
    """Variance entropy of a set of flattened filters (n, k): (H, degenerate).

    H = -sum p log10 p with p the PCA variance ratios; degenerate (H = 0) when
    fewer than two filters are given or they have no variance.
    """
    n = filters.shape[0]
    if n < 2:
        return 0.0, True
    eigenvalues = torch.linalg.eigvalsh(centred_scatter(filters))
    return entropy_from_variances(eigenvalues / (n - 1))


def variance_entropy_from_statistics(count: int, total: torch.Tensor, scatter: torch.Tensor) -> tuple[float, bool]:
    """Variance entropy from additive sufficient statistics (n, sum x, sum x x^T).

    Lets several layers (or models) be pooled without touching their filters.
    """
    if count < 2:
        return 0.0, True
    total = total.to(torch.float64)
    centred = scatter.to(torch.float64) - torch.outer(total, total) / count
    centred = (centred + centred.T) / 2
    return entropy_from_variances(torch.linalg.eigvalsh(centred) / (count - 1))


def orthogonality(weight: torch.Tensor) -> tuple[float, bool]:
    """1 - mean off-diagonal |R R^T - I| of the L2-normalised output kernels: (value, degenerate).

    As in the reference code a zero kernel stays zero, so its diagonal entry adds
    |0 - 1| = 1 to the sum. With a single output channel there are no pairs: the
    value is then 1 - sum|R R^T - I| (1 for a non-zero kernel, 0 for a zero one),
    flagged as degenerate.

    The Gram matrix of the raw kernels is formed in the weight's precision (float32, as
    the reference computes) and normalised by the norms on its diagonal in float64, which
    avoids normalising the whole weight first; entries agree with the reference to ~1e-7.
    It is symmetric, so for wide layers on CPU only its upper blocks are computed
    (``_gram_blocks``: (k + 1) / 2k of the products for k blocks) and the off-diagonal sum
    sum_ij |G_ij| / (n_i n_j) is taken block by block as matrix-vector products with the
    inverse norms.
    """
    c_out = weight.shape[0]
    rows = weight.reshape(c_out, -1)
    if rows.dtype not in (torch.float32, torch.float64):
        rows = rows.to(torch.float32)
    blocks, bounds = _gram_blocks(rows)
    squared = torch.cat([blocks[(i, i)].diagonal() for i in range(len(bounds))]).to(torch.float64)
    inverse = torch.where(squared > 0, squared, 1).rsqrt()
    deviation = (squared * inverse * inverse - 1).abs().sum()
    for (i, j), block in blocks.items():
        magnitudes = block.abs().to(torch.float64)
        if i == j:
            magnitudes.diagonal().zero_()
        left, right = inverse[bounds[i][0]:bounds[i][1]], inverse[bounds[j][0]:bounds[j][1]]
        deviation = deviation + (1 if i == j else 2) * (left @ (magnitudes @ right))
    if c_out < 2:
        return float(1 - deviation.item()), True
    return float(1 - deviation.item() / (c_out * (c_out - 1))), False


GRAM_BLOCK_ROWS = 160
"""Row blocks of the orthogonality Gram matrix on CPU: layers of at least twice this many output channels compute
its upper blocks only, in up to 4 blocks (on 2 cores, 640 channels: 9.5 ms instead of 13.4; 320: 1.4 instead of 1.6)."""


def _gram_blocks(rows: torch.Tensor) -> tuple[dict[tuple[int, int], torch.Tensor], list[tuple[int, int]]]:
    """The upper blocks (i <= j) of rows @ rows.T by row blocks, and each block's (start, stop) rows."""
    c_out = rows.shape[0]
    k = max(1, min(4, c_out // GRAM_BLOCK_ROWS)) if rows.device.type == "cpu" else 1
    size = max(1, -(-c_out // k))
    bounds = [(start, min(c_out, start + size)) for start in range(0, c_out, size)] or [(0, 0)]
    parts = [rows[start:stop] for start, stop in bounds]
    return {(i, j): parts[i] @ parts[j].T for i in range(len(parts)) for j in range(i, len(parts))}, bounds


def pca_statistics(scaled_filters: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Additive sufficient statistics of a filter set: (n, sum x, sum x x^T), in float64."""
    x = scaled_filters.to(torch.float64)
    ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    return x.shape[0], x.T @ ones, x.T @ x  # BLAS products: much faster than a column sum of a tall matrix


@dataclass
class LayerMetrics:
    """All per-layer values the layers table holds for one 3x3 conv."""

    n_filters: int
    n_nonfinite: int
    n_sparse: int | None = None
    sparsity: float | None = None
    n_nonsparse: int | None = None
    variance_entropy: float | None = None
    variance_entropy_raw: float | None = None
    entropy_degenerate: bool | None = None
    orthogonality: float | None = None
    orthogonality_degenerate: bool | None = None
    pca_sum: list[float] | None = None
    pca_scatter: list[float] | None = None
    weight_abs_max: float | None = None
    weight_mean: float | None = None
    weight_std: float | None = None


def weight_statistics(weight: torch.Tensor) -> tuple[float, float, float]:
    """(max|W|, mean, population std) of a finite weight tensor, in float64."""
    w = weight.to(torch.float64)
    return float(w.abs().max().item()), float(w.mean().item()), float(w.std(correction=0).item())


STATISTICS_CHUNK = 16384
"""Filters per block of the blocked passes on CPU: a block's float64 rows stay in cache, and no buffer the size of the
layer is allocated (on 2 cores the 640x640 layer's sums take 8.5 ms instead of 22)."""


def _chunk(filters: torch.Tensor) -> int:
    return STATISTICS_CHUNK if filters.device.type == "cpu" else max(1, filters.shape[0])


def raw_and_scaled_statistics(filters: torch.Tensor, divisor: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum x, sum x x^T, sum y, sum y y^T) in float64 for the filters x (n, k) and y = x / ``divisor`` (n,).

    Block by block the float64 rows [x, x / divisor, 1] are formed and their (2k+1)^2 Gram
    matrix accumulated, so the sums come out of the same product as the scatters. A divisor
    of infinity gives an exact zero row of y.
    """
    n, k = filters.shape
    chunk = _chunk(filters)
    block = torch.empty((min(chunk, n), 2 * k + 1), dtype=torch.float64, device=filters.device)
    block[:, 2 * k] = 1
    gram = torch.zeros((2 * k + 1, 2 * k + 1), dtype=torch.float64, device=filters.device)
    for start in range(0, n, chunk):
        rows = block[:min(n, start + chunk) - start]
        rows[:, :k] = filters[start:start + chunk]
        torch.div(rows[:, :k], divisor[start:start + chunk].unsqueeze(1), out=rows[:, k:2 * k])
        gram.addmm_(rows.T, rows)
    return gram[2 * k, :k], gram[:k, :k], gram[2 * k, k:2 * k], gram[k:2 * k, k:2 * k]


def layer_metrics(weight: torch.Tensor, threshold: float = SPARSITY_THRESHOLD, columns: torch.Tensor | None = None
                  ) -> tuple[LayerMetrics, torch.Tensor]:
    """Every metric of one conv layer, plus the per-filter sparse mask (on the weight's device).

    Built from additive sums so each quantity takes one pass over the layer: the
    entropies come from (n, sum x, sum x x^T) in float64, which equal the centred
    SVD of the reference up to float64 round-off. Layers with NaN/Inf weights get
    only their counts: their metrics would be meaningless, so they stay null and
    the mask is all False.

    Both sets' sums come from one blocked float64 product (``raw_and_scaled_statistics``;
    products of float32 values are exact in float64, only the additions round): sparse
    filters are divided by infinity, which makes their scaled rows exact zeros, instead
    of being gathered out, and no float64 copy of the layer is made. ``columns``: the layer's
    ``filter_columns``, when the caller made them already (for the filters rows).
    """
    filters = flatten_filters(weight)
    n = filters.shape[0]
    maxima = column_abs_maxima(columns if columns is not None else filter_columns(filters))
    layer_max = float(maxima.max().item()) if n else math.nan
    if not math.isfinite(layer_max):  # NaN and Inf both surface in the layer's max (no filters: NaN)
        n_nonfinite = int((~torch.isfinite(filters)).sum().item())
        return LayerMetrics(n_filters=n, n_nonfinite=n_nonfinite), torch.zeros(
            n, dtype=torch.bool, device=weight.device)

    bound = threshold * layer_max  # in float64, as sparse_mask_from_maxima
    # float32 maxima against the float32 floor of the bound: the same outcome without a float64 copy
    mask = maxima <= _float32_floor(bound) if maxima.dtype == torch.float32 else maxima.to(torch.float64) <= bound
    n_sparse = int(mask.sum().item())
    n_nonsparse = n - n_sparse
    divisor = maxima.to(torch.float64)
    if n_sparse:
        divisor = divisor.masked_fill(mask, math.inf)  # not in place: float64 maxima are the same tensor
    raw_sum, raw_scatter, pca_sum, pca_scatter = raw_and_scaled_statistics(filters, divisor)
    entropy, degenerate = variance_entropy_from_statistics(n_nonsparse, pca_sum, pca_scatter)
    entropy_raw, _ = variance_entropy_from_statistics(n, raw_sum, raw_scatter)
    ortho, ortho_degenerate = orthogonality(weight)
    n_weights = n * filters.shape[1]
    mean = raw_sum.sum() / n_weights
    variance = (raw_scatter.diagonal().sum() / n_weights - mean * mean).clamp_min(0)
    metrics = LayerMetrics(
        n_filters=n,
        n_nonfinite=0,
        n_sparse=n_sparse,
        sparsity=n_sparse / n,
        n_nonsparse=n_nonsparse,
        variance_entropy=entropy,
        variance_entropy_raw=entropy_raw,
        entropy_degenerate=degenerate,
        orthogonality=ortho,
        orthogonality_degenerate=ortho_degenerate,
        pca_sum=pca_sum.cpu().tolist(),
        pca_scatter=pca_scatter.reshape(-1).cpu().tolist(),
        weight_abs_max=float(maxima.max().item()),
        weight_mean=float(mean.item()),
        weight_std=float(variance.sqrt().item()),
    )
    return metrics, mask
