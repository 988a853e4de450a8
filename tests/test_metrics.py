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
