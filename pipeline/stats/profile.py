"""The depth profile: depth buckets, the three metrics per model and bucket, and robust vs normal per bucket.

Buckets are the first conv alone, then the deciles of conv_depth_norm; the per-bucket
sums come from ``sql/depth_profile.sql``. Robust vs normal is a Mann-Whitney U per
dataset, bucket and metric, Holm-corrected across the buckets of a dataset and metric.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scistats

from pipeline.stats.corrections import holm

N_BUCKETS = 11
BUCKET_LABELS = ["0"] + [f"({b / 10:.1f}, {(b + 1) / 10:.1f}]" for b in range(10)]
"""Depth bucket names: the first conv alone, then the deciles of conv_depth_norm."""
METRICS = ("sparsity", "variance_entropy", "orthogonality")
METRIC_NAMES = {"sparsity": "sparsity", "variance_entropy": "variance entropy", "orthogonality": "orthogonality"}
ACCURACIES = ("clean_acc", "robust_acc")
COMPARISON_COLUMNS = ["dataset", "depth_bucket", "bucket", "metric", "n_robust", "n_normal", "mean_robust",
                      "mean_normal", "median_robust", "median_normal", "difference", "p_value"]


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


def _compare_bucket(group: pd.DataFrame, dataset: str, bucket: int, metric: str, min_models: int) -> dict:
    """One row of the comparison: sizes, means, medians and the unadjusted Mann-Whitney p-value.

    Tested only with ``min_models`` on each side; all values equal on both sides gives p = 1.
    """
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
    return row


def compare_robust_normal(profile: pd.DataFrame, alpha: float, min_models: int) -> pd.DataFrame:
    """Per dataset, depth bucket and metric: robust vs normal models (Mann-Whitney U, Holm over buckets)."""
    rows = [_compare_bucket(group, dataset, bucket, metric, min_models)
            for (dataset, bucket), group in profile.groupby(["dataset", "depth_bucket"], sort=True)
            for metric in METRICS]
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    table["p_holm"] = np.nan
    for _, index in table.groupby(["dataset", "metric"]).groups.items():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p_value"].tolist())
    table["significant"] = table.p_holm < alpha
    return table
