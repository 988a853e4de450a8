"""The headline table: per training dataset and metric, what a reader needs at a glance.

One row per (dataset, metric): the direction (the sign of Cliff's delta: which side's models
rank higher), the whole-model means of each side (the model profile, all
usable 3x3 layers, weighted as in the buckets), the difference of means and Cliff's delta
with bootstrap intervals (effect_size.py), how many depth buckets differ significantly
(Mann-Whitney U, Holm over the buckets: profile.py) in which direction, the model counts,
and a verdict that follows the bucket tests only. ``paper`` is the direction the paper
reports (Gavrikov & Keuper 2022: robust models have fewer sparse, more diverse and more
orthogonal filters).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.stats.effect_size import effect
from pipeline.stats.options import StatsOptions
from pipeline.stats.profile import METRICS

PAPER_SIGNS = {"sparsity": -1, "variance_entropy": +1, "orthogonality": +1}
"""The sign of robust minus normal the paper reports for each metric."""

HEADLINE_COLUMNS = ["dataset", "metric", "paper", "direction", "n_robust", "n_normal", "mean_robust", "mean_normal",
                    "difference", "difference_lo", "difference_hi", "cliffs_delta", "delta_lo", "delta_hi",
                    "buckets_with_data", "buckets_tested", "buckets_higher", "buckets_lower", "significant_buckets",
                    "verdict", "matches_paper", "note"]


def depth_verdict(n_higher: int, n_lower: int) -> str:
    """The verdict from the numbers of significantly higher and lower buckets."""
    if n_higher and n_lower:
        return "mixed"
    if n_higher:
        return "robust higher"
    return "robust lower" if n_lower else "no difference"


def _direction(value: float) -> str:
    if value != value:
        return ""
    return "higher" if value > 0 else "lower" if value < 0 else "equal"


def _matches(verdict: str, sign: int) -> str:
    """'yes' when the verdict is the paper's direction, 'opposite' when it is the other one, else ''."""
    claimed = {"robust higher": +1, "robust lower": -1}.get(verdict)
    if claimed is None:
        return ""
    return "yes" if claimed == sign else "opposite"


def _row(dataset: str, metric: str, values: pd.DataFrame, buckets: pd.DataFrame, constant: bool,
         n_models: tuple[int, int], options: StatsOptions) -> dict:
    """One headline row; ``values``: the dataset's whole-model rows, ``buckets``: its comparison rows."""
    robust = values.loc[values.robust, metric].dropna().to_numpy(float)
    normal = values.loc[~values.robust, metric].dropna().to_numpy(float)
    e = effect(robust, normal, level=1 - options.alpha, seed=options.seed)
    buckets = buckets[(buckets.n_robust > 0) & (buckets.n_normal > 0)]
    tested = buckets[buckets.p_value.notna()]
    higher = tested[tested.significant & (tested.difference > 0)]
    lower = tested[tested.significant & (tested.difference < 0)]
    significant = pd.concat([higher, lower]).sort_values("depth_bucket")
    verdict, note = depth_verdict(len(higher), len(lower)), ""
    n_r, n_n = n_models
    if n_r == 0 or n_n == 0:
        verdict, note = "cannot say", f"no {'normally trained' if n_n == 0 else 'robust'} {dataset} models"
    elif buckets.empty:
        verdict, note = "cannot say", "no depth bucket with 3x3 layers on both sides"
    elif tested.empty:
        verdict, note = "cannot say", (f"too few models to test ({n_r} robust, {n_n} normal; "
                                       f"{options.min_models} of each needed)")
    elif constant:
        note = f"{robust[0] if len(robust) else normal[0]:.4g} in every model and bucket"
    return {"dataset": dataset, "metric": metric, "paper": _direction(PAPER_SIGNS[metric]),
            "direction": _direction(e.cliffs_delta), "n_robust": e.n_robust, "n_normal": e.n_normal,
            "mean_robust": e.mean_robust, "mean_normal": e.mean_normal, "difference": e.difference,
            "difference_lo": e.difference_lo, "difference_hi": e.difference_hi, "cliffs_delta": e.cliffs_delta,
            "delta_lo": e.delta_lo, "delta_hi": e.delta_hi, "buckets_with_data": len(buckets),
            "buckets_tested": len(tested), "buckets_higher": len(higher), "buckets_lower": len(lower),
            "significant_buckets": ", ".join(significant.bucket), "verdict": verdict,
            "matches_paper": _matches(verdict, PAPER_SIGNS[metric]), "note": note}


def headline_table(models: pd.DataFrame, profile: pd.DataFrame, whole: pd.DataFrame, comparison: pd.DataFrame,
                   options: StatsOptions) -> pd.DataFrame:
    """Per dataset and metric: direction, effect sizes with intervals, significant buckets, sizes, verdict."""
    rows = []
    for dataset in sorted(models.dataset.unique()):
        chosen = models[models.dataset == dataset]
        n_models = (int(chosen.robust.sum()), int((~chosen.robust).sum()))
        values = whole[whole.dataset == dataset]
        layers = profile[profile.dataset == dataset]
        for metric in METRICS:
            observed = layers[metric].dropna().to_numpy(float)
            constant = len(observed) > 0 and bool(np.ptp(observed) == 0)
            buckets = comparison[(comparison.dataset == dataset) & (comparison.metric == metric)]
            rows.append(_row(dataset, metric, values, buckets, constant, n_models, options))
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)
