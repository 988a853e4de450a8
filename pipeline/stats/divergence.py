"""The distribution shift between robust and normal filters: per dataset, overall and per depth bucket,
the weighted symmetric KL of the coefficient histograms (pipeline.stats.shift), with a permutation test
of the model labels."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd

from pipeline.stats.options import StatsOptions
from pipeline.stats.profile import BUCKET_LABELS, N_BUCKETS
from pipeline.stats.shift import PCABasis, ScanTarget, weighted_divergence


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


def _shift_row(dataset: str, bucket: int | None, model_counts: np.ndarray, weights: np.ndarray, n_robust: int,
               edges: np.ndarray, ratio: np.ndarray, options: StatsOptions) -> dict:
    """One row of the shift table: ``model_counts`` (n_models, 9, n_bins), the first ``n_robust`` robust;
    ``bucket`` None is the whole model."""
    n_normal = len(model_counts) - n_robust
    robust = np.tensordot(weights[:n_robust], model_counts[:n_robust], 1) if n_robust \
        else np.zeros((9, len(edges) - 1))
    normal = np.tensordot(weights[n_robust:], model_counts[n_robust:], 1) if n_normal \
        else np.zeros((9, len(edges) - 1))
    row = {"dataset": dataset, "depth_bucket": -1 if bucket is None else bucket,
           "bucket": "all" if bucket is None else BUCKET_LABELS[bucket],
           "n_robust_models": int((model_counts[:n_robust].sum(axis=(1, 2)) > 0).sum()),
           "n_normal_models": int((model_counts[n_robust:].sum(axis=(1, 2)) > 0).sum()),
           "n_robust_filters": int(model_counts[:n_robust, 0].sum()),
           "n_normal_filters": int(model_counts[n_robust:, 0].sum()),
           "divergence": np.nan, "p_value": np.nan}
    divergence, per_coefficient = weighted_divergence(robust, normal, edges, ratio)
    row.update({f"kl_c{k}": per_coefficient[k] for k in range(9)})
    if divergence is not None:
        row["divergence"] = divergence
        has = model_counts.sum(axis=(1, 2)) > 0
        n_r = int(has[:n_robust].sum())
        if n_r >= 1 and int(has.sum()) - n_r >= 1 and options.permutations > 0:
            row["p_value"] = permutation_p_value(model_counts[has], weights[has], n_r, divergence, edges,
                                                 ratio, options.permutations, options.seed)
    return row


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
            rows.append(_shift_row(dataset, bucket, model_counts, weights, len(robust_ids), edges, ratio, options))
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
