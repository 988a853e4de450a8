"""Pair differences: per robust/normal pair (from pipeline.stats.pairing), depth bucket and metric, robust
minus normal."""

from __future__ import annotations

import pandas as pd

from pipeline.stats.profile import BUCKET_LABELS, METRICS

DIFFERENCE_COLUMNS = ["robust_model_id", "normal_model_id", "dataset", "depth_bucket", "bucket", "metric",
                      "robust", "normal", "difference"]


def pair_differences(pairs: pd.DataFrame, profile: pd.DataFrame) -> pd.DataFrame:
    """Per pair, bucket and metric: robust minus normal."""
    if pairs.empty:
        return pd.DataFrame(columns=DIFFERENCE_COLUMNS)
    long = profile.melt(id_vars=["model_id", "depth_bucket"], value_vars=list(METRICS), var_name="metric")
    merged = pairs.merge(long.rename(columns={"model_id": "robust_model_id", "value": "robust"}),
                         on="robust_model_id")
    merged = merged.merge(long.rename(columns={"model_id": "normal_model_id", "value": "normal"}),
                          on=["normal_model_id", "depth_bucket", "metric"])
    merged["difference"] = merged.robust - merged.normal
    merged["bucket"] = merged.depth_bucket.map(lambda b: BUCKET_LABELS[int(b)])
    return merged[DIFFERENCE_COLUMNS].sort_values(["dataset", "robust_model_id", "normal_model_id", "metric",
                                                   "depth_bucket"]).reset_index(drop=True)
