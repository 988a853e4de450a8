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

import torch

SPARSITY_THRESHOLD = 0.01
"""A filter is sparse when its max |weight| is at most this fraction of the layer's max |weight|."""

MAX_VARIANCE_ENTROPY = math.log10(9)
"""Upper bound of the variance entropy of 3x3 filters (uniform variance over 9 components)."""


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

    The Gram matrix of the raw kernels is formed once in the weight's precision
    (float32, as the reference computes) and normalised by the norms on its
    diagonal in float64, which avoids normalising the whole weight first; entries
    agree with the reference to ~1e-7.
    """
    c_out = weight.shape[0]
    rows = weight.reshape(c_out, -1)
    if rows.dtype not in (torch.float32, torch.float64):
        rows = rows.to(torch.float32)
    gram = (rows @ rows.T).to(torch.float64)
    norms = gram.diagonal().clamp_min(0).sqrt()
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    gram = gram / torch.outer(norms, norms)
    gram.diagonal().sub_(1)
    deviation = gram.abs().sum()
    if c_out < 2:
        return float(1 - deviation.item()), True
    return float(1 - deviation.item() / (c_out * (c_out - 1))), False


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


def column_statistics(columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum x, sum x x^T) of filters held as columns ``(k, n)`` in float64: the same sums as ``pca_statistics``.

    With the n filters contiguous along each row, the k x k scatter is a product whose inner
    dimension is contiguous in both operands (BLAS's fastest case: ~2x ``x.T @ x`` on a tall (n, k)).
    """
    return columns.sum(dim=1), columns @ columns.T


def layer_metrics(weight: torch.Tensor, threshold: float = SPARSITY_THRESHOLD) -> tuple[LayerMetrics, torch.Tensor]:
    """Every metric of one conv layer, plus the per-filter sparse mask (on the weight's device).

    Built from additive sums so each quantity takes one pass over the layer: the
    entropies come from (n, sum x, sum x x^T) in float64, which equal the centred
    SVD of the reference up to float64 round-off. Layers with NaN/Inf weights get
    only their counts: their metrics would be meaningless, so they stay null and
    the mask is all False.

    The filters are copied once to float64 as 9 contiguous columns (products of float32
    values are exact in float64, so only the sums round); the scaled set divides those
    columns by each filter's max|f|, with sparse filters divided by infinity (exact zeros,
    which add nothing to the sums) instead of being gathered out.
    """
    filters = flatten_filters(weight)
    n = filters.shape[0]
    maxima = filter_abs_max(filters) if n else filters.new_zeros(0)
    if n == 0 or not bool(torch.isfinite(maxima).all()):  # NaN and Inf both surface in the maxima
        n_nonfinite = int((~torch.isfinite(filters)).sum().item())
        return LayerMetrics(n_filters=n, n_nonfinite=n_nonfinite), torch.zeros(
            n, dtype=torch.bool, device=weight.device)

    mask = sparse_mask_from_maxima(maxima, threshold)
    n_sparse = int(mask.sum().item())
    columns = torch.empty((filters.shape[1], n), dtype=torch.float64, device=filters.device)
    columns.copy_(filters.T)  # one pass: transpose and widen
    maxima64 = maxima.to(torch.float64)
    divisor = maxima64 if n_sparse == 0 else maxima64.masked_fill(mask, math.inf)
    pca_sum, pca_scatter = column_statistics(columns / divisor)
    n_nonsparse = n - n_sparse
    entropy, degenerate = variance_entropy_from_statistics(n_nonsparse, pca_sum, pca_scatter)
    raw_sum, raw_scatter = column_statistics(columns)
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
