"""Metrics against hand-worked cases and an independent NumPy implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.extract.metrics import (
    MAX_VARIANCE_ENTROPY,
    layer_metrics,
    orthogonality,
    sparsity,
    variance_entropy,
    variance_entropy_from_statistics,
)


# --- an independent reference, written from docs/design.md with NumPy SVD -------------------------
def np_sparse(w: np.ndarray) -> np.ndarray:
    f = w.reshape(-1, 9).astype(np.float64)
    return np.abs(f).max(1) <= 0.01 * np.abs(f).max()


def np_entropy(x: np.ndarray) -> float:
    if len(x) < 2:
        return 0.0
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    v = s**2 / (len(x) - 1)
    if v.sum() == 0:
        return 0.0
    p = v / v.sum()
    p = p[p > 0]
    return float(-(p * np.log10(p)).sum())


def np_scaled_nonsparse(w: np.ndarray) -> np.ndarray:
    f = w.reshape(-1, 9).astype(np.float64)[~np_sparse(w)]
    return f / np.abs(f).max(1, keepdims=True)


def np_orthogonality(w: np.ndarray) -> float:
    r = w.reshape(w.shape[0], -1).astype(np.float64)
    n = np.linalg.norm(r, axis=1, keepdims=True)
    n[n == 0] = 1
    r = r / n
    c = np.abs(r @ r.T - np.eye(len(r))).sum() / (len(r) * (len(r) - 1))
    return float(1 - c)


def one_hot_filters(positions: list[int], c_in: int = 1) -> torch.Tensor:
    w = torch.zeros(len(positions), c_in, 3, 3)
    for o, pos in enumerate(positions):
        w[o, 0].view(-1)[pos] = 1.0
    return w


# --- hand-worked cases ------------------------------------------------------------------------
def test_orthogonal_kernels_give_orthogonality_one() -> None:
    value, degenerate = orthogonality(one_hot_filters([0, 4, 8, 2]))
    assert value == 1.0 and not degenerate


def test_identical_kernels_give_orthogonality_zero() -> None:
    w = torch.ones(5, 2, 3, 3)
    value, _ = orthogonality(w)
    assert value == pytest.approx(0.0, abs=1e-12)


def test_zero_kernels_count_minus_one_on_the_diagonal() -> None:
    # 3 zero rows: |0 - I| sums to 3, over 3*2 pairs -> C = 0.5 (the reference code's convention)
    value, _ = orthogonality(torch.zeros(3, 1, 3, 3))
    assert value == pytest.approx(0.5)


def test_single_output_channel_orthogonality_is_flagged() -> None:
    assert orthogonality(torch.randn(1, 4, 3, 3)) == (pytest.approx(1.0), True)
    assert orthogonality(torch.zeros(1, 4, 3, 3)) == (0.0, True)


def test_identical_filters_have_zero_entropy() -> None:
    f = torch.tensor([[1.0, -2, 3, 0, 1, 0, 0, 2, 1]]).repeat(10, 1)
    assert variance_entropy(f) == (0.0, True)


def test_uniform_variance_over_nine_directions_gives_log10_9() -> None:
    eye = torch.eye(9, dtype=torch.float64)
    f = torch.cat([eye, -eye])
    value, degenerate = variance_entropy(f)
    assert value == pytest.approx(MAX_VARIANCE_ENTROPY, abs=1e-12) and not degenerate


def test_two_equal_directions_give_log10_2() -> None:
    eye = torch.eye(9, dtype=torch.float64)[:2]
    value, _ = variance_entropy(torch.cat([eye, -eye]))
    assert value == pytest.approx(math.log10(2), abs=1e-12)


def test_fewer_than_two_filters_is_degenerate() -> None:
    assert variance_entropy(torch.randn(1, 9)) == (0.0, True)
    assert variance_entropy(torch.zeros(0, 9)) == (0.0, True)


def test_known_sparse_count_uses_less_or_equal() -> None:
    maxima = [1.0, 0.01, 0.0099, 0.5, 0.0, 0.0101]
    w = torch.zeros(len(maxima), 1, 3, 3, dtype=torch.float64)
    for o, m in enumerate(maxima):
        w[o, 0, 1, 1] = -m  # sign must not matter
    n_sparse, ratio = sparsity(w)
    assert n_sparse == 3  # 0.01 (boundary), 0.0099, 0.0
    assert ratio == pytest.approx(0.5)


def test_all_zero_layer_is_fully_sparse_and_flagged() -> None:
    metrics, mask = layer_metrics(torch.zeros(4, 3, 3, 3))
    assert metrics.n_filters == 12 and metrics.n_sparse == 12 and metrics.sparsity == 1.0
    assert metrics.n_nonsparse == 0
    assert metrics.variance_entropy == 0.0 and metrics.entropy_degenerate is True
    assert metrics.variance_entropy_raw == 0.0
    assert metrics.pca_sum == [0.0] * 9 and metrics.pca_scatter == [0.0] * 81
    assert metrics.orthogonality == pytest.approx(1 - 4 / 12)
    assert mask.all()


def test_one_filter_layer() -> None:
    w = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3) - 4
    metrics, mask = layer_metrics(w)
    assert (metrics.n_filters, metrics.n_sparse, metrics.n_nonsparse) == (1, 0, 1)
    assert metrics.entropy_degenerate is True and metrics.variance_entropy == 0.0
    assert metrics.orthogonality == pytest.approx(1.0) and metrics.orthogonality_degenerate is True
    assert metrics.pca_sum == pytest.approx([x / 4 for x in range(-4, 5)])
    assert not mask.any()


def test_depthwise_layer_counts_one_filter_per_channel() -> None:
    torch.manual_seed(1)
    w = torch.randn(16, 1, 3, 3)
    metrics, mask = layer_metrics(w)
    assert metrics.n_filters == 16 and mask.shape == (16,)
    assert metrics.orthogonality == pytest.approx(np_orthogonality(w.numpy()), abs=1e-7)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_weights_are_flagged_not_computed(bad: float) -> None:
    w = torch.randn(4, 2, 3, 3)
    w[1, 1, 0, 2] = bad
    w[3, 0, 2, 2] = bad
    metrics, mask = layer_metrics(w)
    assert metrics.n_nonfinite == 2
    assert metrics.sparsity is None and metrics.variance_entropy is None and metrics.orthogonality is None
    assert metrics.weight_abs_max is None
    assert not mask.any()


# --- against the independent NumPy implementation ---------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_layers_match_numpy_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((24, 12, 3, 3)).astype(np.float32)
    w[rng.random((24, 12)) < 0.3] *= 1e-3  # plant sparse filters
    metrics, mask = layer_metrics(torch.from_numpy(w))
    assert np.array_equal(mask.numpy(), np_sparse(w))
    assert metrics.n_sparse == int(np_sparse(w).sum())
    x = np_scaled_nonsparse(w)
    assert metrics.n_nonsparse == len(x)
    assert metrics.variance_entropy == pytest.approx(np_entropy(x), abs=1e-10)
    assert metrics.variance_entropy_raw == pytest.approx(np_entropy(w.reshape(-1, 9).astype(np.float64)), abs=1e-10)
    assert metrics.orthogonality == pytest.approx(np_orthogonality(w), abs=1e-7)  # float32 Gram, as the reference
    assert np.allclose(metrics.pca_sum, x.sum(0), atol=1e-10)
    assert np.allclose(np.reshape(metrics.pca_scatter, (9, 9)), x.T @ x, atol=1e-9)
    assert 0 <= metrics.variance_entropy <= MAX_VARIANCE_ENTROPY
    assert metrics.weight_abs_max == pytest.approx(float(np.abs(w).max()))
    assert metrics.weight_std == pytest.approx(float(w.astype(np.float64).std()), rel=1e-9)


def test_entropy_from_pooled_statistics_equals_entropy_of_pooled_filters() -> None:
    torch.manual_seed(3)
    a, b = torch.randn(50, 9, dtype=torch.float64), torch.randn(30, 9, dtype=torch.float64) * 2 + 1
    total = a.sum(0) + b.sum(0)
    scatter = a.T @ a + b.T @ b
    pooled, _ = variance_entropy_from_statistics(80, total, scatter)
    direct, _ = variance_entropy(torch.cat([a, b]))
    assert pooled == pytest.approx(direct, abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(4)
    w = torch.randn(64, 32, 3, 3)
    cpu, cpu_mask = layer_metrics(w)
    gpu, gpu_mask = layer_metrics(w.cuda())
    assert torch.equal(cpu_mask, gpu_mask.cpu())
    for field in ("sparsity", "variance_entropy", "variance_entropy_raw", "orthogonality"):
        assert getattr(gpu, field) == pytest.approx(getattr(cpu, field), abs=1e-9)


# --- the blocked CPU formulations (issue 15) against the same reference ----------------------------
@pytest.mark.parametrize("shape", [(160, 120), (320, 64), (640, 40), (333, 7)])
def test_wide_and_tall_layers_match_numpy_reference(shape: tuple[int, int]) -> None:
    """Layers of more than STATISTICS_CHUNK filters (blocked sums) and of 320+ outputs (upper Gram blocks only)."""
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal((*shape, 3, 3)).astype(np.float32)
    w[rng.random(shape) < 0.2] *= 1e-3
    w[5] = 0  # a zero output kernel: its diagonal counts |0 - 1|
    metrics, mask = layer_metrics(torch.from_numpy(w))
    assert np.array_equal(mask.numpy(), np_sparse(w))
    x = np_scaled_nonsparse(w)
    raw = w.reshape(-1, 9).astype(np.float64)
    assert metrics.n_nonsparse == len(x)
    assert metrics.variance_entropy == pytest.approx(np_entropy(x), abs=1e-10)
    assert metrics.variance_entropy_raw == pytest.approx(np_entropy(raw), abs=1e-10)
    reference = np_orthogonality(w)
    assert metrics.orthogonality == pytest.approx(reference, rel=1e-6, abs=1e-7)
    assert np.allclose(metrics.pca_sum, x.sum(0), rtol=1e-12, atol=1e-9)
    assert np.allclose(np.reshape(metrics.pca_scatter, (9, 9)), x.T @ x, rtol=1e-12, atol=1e-8)
    assert metrics.weight_mean == pytest.approx(float(raw.mean()), rel=1e-9, abs=1e-15)
    assert metrics.weight_std == pytest.approx(float(raw.std()), rel=1e-9)


def test_sparsity_boundary_is_exact_in_float32() -> None:
    """The float32 comparison with the bound's float32 floor gives the float64 comparison's answer."""
    below = np.float32(0.01)  # 0.0099999998 <= 0.01 * 1.0: sparse
    above = np.nextafter(below, np.float32(1))  # 0.0100000007 > 0.01: not sparse
    w = torch.zeros(4, 1, 3, 3)
    w[0, 0, 0, 0] = 1.0
    w[1, 0, 1, 1] = float(below)
    w[2, 0, 2, 2] = -float(above)
    w[3, 0, 0, 1] = float(np.nextafter(below, np.float32(0)))
    _, mask = layer_metrics(w)
    assert mask.tolist() == [False, True, False, True]
    assert np.array_equal(mask.numpy(), np_sparse(w.numpy()))


def test_float64_and_float16_weights() -> None:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((20, 10, 3, 3))
    w[rng.random((20, 10)) < 0.3] *= 1e-3
    m64, mask64 = layer_metrics(torch.from_numpy(w))
    assert np.array_equal(mask64.numpy(), np_sparse(w))
    assert m64.weight_abs_max == float(np.abs(w).max())  # the maxima are not overwritten by the sparse divisor
    assert m64.variance_entropy == pytest.approx(np_entropy(np_scaled_nonsparse(w)), abs=1e-10)
    half = torch.from_numpy(w.astype(np.float16))
    m16, mask16 = layer_metrics(half)
    ref = half.float().numpy()
    assert np.array_equal(mask16.numpy(), np_sparse(ref))
    assert m16.variance_entropy == pytest.approx(np_entropy(np_scaled_nonsparse(ref)), abs=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_on_a_wide_layer() -> None:
    """CPU sums and Gram blocks (blocked) against the GPU's single products."""
    torch.manual_seed(5)
    w = torch.randn(640, 64, 3, 3)
    w[:, :8] *= 1e-3
    cpu, cpu_mask = layer_metrics(w)
    gpu, gpu_mask = layer_metrics(w.cuda())
    assert torch.equal(cpu_mask, gpu_mask.cpu())
    for field in ("sparsity", "variance_entropy", "variance_entropy_raw", "orthogonality", "weight_mean", "weight_std"):
        assert getattr(gpu, field) == pytest.approx(getattr(cpu, field), rel=1e-6, abs=1e-9), field


@pytest.mark.parametrize("n", [0, 1, 16383, 16384, 16385, 40000])
def test_filter_columns_and_their_maxima_equal_the_row_layout(n: int) -> None:
    from pipeline.extract.metrics import (
        TRANSPOSE_BLOCK,
        column_abs_maxima,
        filter_abs_max,
        filter_columns,
    )

    assert TRANSPOSE_BLOCK == 16384  # the sizes above straddle its block edges
    filters = torch.randn(n, 9, generator=torch.Generator().manual_seed(n))
    if n > 3:
        filters[1] = 0.0
        filters[2, 4] = -7.5  # the maximum is a negative weight
        filters[3, 8] = float("nan")
    columns = filter_columns(filters)
    assert columns.shape == (9, n) and columns.is_contiguous()
    assert torch.equal(columns.nan_to_num(99.0), filters.T.nan_to_num(99.0))
    got, want = column_abs_maxima(columns), filter_abs_max(filters)
    assert torch.equal(got.nan_to_num(-1.0), want.nan_to_num(-1.0))
    if n > 3:
        assert got[1].item() == 0.0 and got[2].item() == 7.5 and math.isnan(got[3].item())
