"""Correlations of every metric (per depth bucket and whole model) with clean and robust accuracy, across
the robust models, per dataset and over all datasets when there are several (Spearman with Benjamini-Hochberg
q, and Pearson)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scistats

from pipeline.stats.corrections import benjamini_hochberg
from pipeline.stats.profile import ACCURACIES, BUCKET_LABELS, METRICS

CORRELATION_COLUMNS = ["dataset", "depth_bucket", "bucket", "metric", "accuracy", "n", "spearman_rho",
                       "spearman_p", "pearson_r", "pearson_p"]


def _correlate(group: pd.DataFrame, scope: str, bucket: int, label: str, metric: str, accuracy: str,
               min_models: int) -> dict:
    """One row: both coefficients over the models with both values (NaN with too few or constant values)."""
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
    return row


def correlations(profile: pd.DataFrame, whole: pd.DataFrame, min_models: int) -> pd.DataFrame:
    """Spearman and Pearson correlation of each metric (per bucket and whole model) with the accuracies,
    across robust models, per dataset and (with more than one dataset) over all datasets."""
    frames = [profile.assign(bucket=profile.depth_bucket.map(lambda b: BUCKET_LABELS[int(b)])),
              whole.assign(depth_bucket=-1, bucket="all")]
    data = pd.concat(frames, ignore_index=True)
    data = data[data.robust]
    rows = []
    datasets = sorted(data.dataset.unique())
    for scope in datasets + (["all datasets"] if len(datasets) > 1 else []):
        part = data if scope == "all datasets" else data[data.dataset == scope]
        for (bucket, label), group in part.groupby(["depth_bucket", "bucket"], sort=True):
            rows += [_correlate(group, scope, bucket, label, metric, accuracy, min_models)
                     for metric in METRICS for accuracy in ACCURACIES]
    table = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    table["spearman_q"] = benjamini_hochberg(table.spearman_p.tolist()) if len(table) else []
    return table
