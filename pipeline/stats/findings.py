"""The report's findings: one plain-language statement per dataset and analysis (depth profile,
distribution shift, correlation), with the numbers behind it and a short verdict."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipeline.stats.options import StatsOptions
from pipeline.stats.profile import METRIC_NAMES, METRICS
from pipeline.stats.shift import PCABasis


@dataclass
class Finding:
    """One plain-language statement of the report, with the numbers behind it."""

    analysis: str
    dataset: str
    subject: str
    verdict: str  # e.g. "robust higher", "robust lower", "mixed", "no difference", "cannot say"
    text: str


def _fmt(value: float) -> str:
    return f"{value:+.3g}" if value == value else "n/a"


def _depth_verdict(name: str, n_higher: int, n_lower: int) -> tuple[str, str]:
    """The verdict and the sentence's head from the numbers of significantly higher and lower buckets."""
    if n_higher and not n_lower:
        return "robust higher", f"robust models have higher {name} than normal ones"
    if n_lower and not n_higher:
        return "robust lower", f"robust models have lower {name} than normal ones"
    if n_lower and n_higher:
        return "mixed", f"robust and normal models differ in {name} in both directions"
    return "no difference", f"no significant difference in {name} between robust and normal models"


def _depth_finding(dataset: str, metric: str, rows: pd.DataFrame, n_r: int, n_n: int,
                   options: StatsOptions) -> Finding:
    """The finding of one dataset and metric from its comparison rows (buckets with data on both sides)."""
    name = METRIC_NAMES[metric]
    if n_n == 0 or n_r == 0:
        missing = "normally trained" if n_n == 0 else "robust"
        return Finding("depth profile", dataset, metric, "cannot say",
                       f"{dataset}, {name}: cannot compare robust and normal models, the selection has "
                       f"no {missing} {dataset} models ({n_r} robust, {n_n} normal).")
    if rows.empty:
        return Finding("depth profile", dataset, metric, "cannot say",
                       f"{dataset}, {name}: no depth bucket has 3x3 layers with metrics on both sides.")
    tested = rows[rows.p_value.notna()]
    if tested.empty:
        return Finding("depth profile", dataset, metric, "cannot say",
                       f"{dataset}, {name}: too few models to test ({n_r} robust, {n_n} normal; at least "
                       f"{options.min_models} of each with data in a bucket are needed).")
    higher = rows[rows.difference > 0]
    sig_hi = tested[tested.significant & (tested.difference > 0)]
    sig_lo = tested[tested.significant & (tested.difference < 0)]
    biggest = rows.loc[rows.difference.abs().idxmax()]
    verdict, head = _depth_verdict(name, len(sig_hi), len(sig_lo))
    significant = pd.concat([sig_hi, sig_lo]).sort_values("depth_bucket")
    where = ""
    if 0 < len(significant) < len(rows):
        labels = list(significant.bucket)
        where = " (buckets " + ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "") + ")"
    counts = (f"significant in {len(significant)} of {len(rows)} depth buckets with data{where} "
              f"(Mann-Whitney U, Holm, alpha {options.alpha}; {len(sig_hi)} higher, {len(sig_lo)} lower); "
              f"robust mean higher in {len(higher)} of {len(rows)}; largest difference "
              f"{_fmt(biggest.difference)} in bucket {biggest.bucket}; {n_r} robust vs {n_n} normal models")
    return Finding("depth profile", dataset, metric, verdict, f"{dataset}: {head}: {counts}.")


def depth_findings(models: pd.DataFrame, comparison: pd.DataFrame, options: StatsOptions) -> list[Finding]:
    """Per dataset and metric: is the robust depth profile higher, lower, mixed, the same, or untestable?"""
    out = []
    for dataset in sorted(models.dataset.unique()):
        part = models[models.dataset == dataset]
        n_r, n_n = int(part.robust.sum()), int((~part.robust).sum())
        for metric in METRICS:
            rows = comparison[(comparison.dataset == dataset) & (comparison.metric == metric)]
            rows = rows[(rows.n_robust > 0) & (rows.n_normal > 0)]
            out.append(_depth_finding(dataset, metric, rows, n_r, n_n, options))
    return out


def shift_findings(models: pd.DataFrame, shift: pd.DataFrame, basis: PCABasis | None, options: StatsOptions,
                   reason: str | None) -> list[Finding]:
    """Per dataset: the overall divergence, whether label permutations explain it, and where it peaks."""
    out = []
    if reason:
        return [Finding("distribution shift", "all", "divergence", "cannot say", reason)]
    for dataset in sorted(models.dataset.unique()):
        rows = shift[shift.dataset == dataset]
        overall = rows[rows.depth_bucket == -1]
        if overall.empty or overall.divergence.isna().all():
            what = "robust/normal pairs" if options.kl_groups == "pairs" else "robust and normal models"
            out.append(Finding("distribution shift", dataset, "divergence", "cannot say",
                               f"{dataset}: no divergence computed, the selection has no {what} with 3x3 filters "
                               f"on this dataset."))
            continue
        o = overall.iloc[0]
        per_bucket = rows[(rows.depth_bucket >= 0) & rows.divergence.notna()]
        top = per_bucket.loc[per_bucket.divergence.idxmax()] if not per_bucket.empty else None
        significant = o.p_value == o.p_value and o.p_value < options.alpha
        chance = (f"larger than label permutations give (p = {o.p_value:.3g})" if significant else
                  f"not distinguishable from relabelled models (permutation p = {o.p_value:.3g})"
                  if o.p_value == o.p_value else "no permutation test possible")
        text = (f"{dataset}: coefficient distributions of robust vs normal filters differ by a weighted symmetric KL "
                f"of {o.divergence:.4g}, {chance}; {o.n_robust_models} robust vs {o.n_normal_models} normal models"
                f" ({o.n_robust_filters} vs {o.n_normal_filters} non-sparse filters)")
        if top is not None:
            text += f"; largest in depth bucket {top.bucket} ({top.divergence:.4g})"
        sig_buckets = per_bucket[per_bucket.p_value < options.alpha]
        text += f"; {len(sig_buckets)} of {len(per_bucket)} buckets below p {options.alpha} (not corrected)."
        out.append(Finding("distribution shift", dataset, "divergence", "shift" if significant else "no difference",
                           text))
    return out


def correlation_findings(models: pd.DataFrame, table: pd.DataFrame, options: StatsOptions) -> list[Finding]:
    """The strongest (at most 8) correlations that survive Benjamini-Hochberg, or why there are none."""
    robust = models[models.robust]
    with_acc = robust[robust.clean_acc.notna() | robust.robust_acc.notna()]
    if len(with_acc) < options.min_correlation_models:
        return [Finding("correlation", "all", "accuracy", "cannot say",
                        f"too few robust models with known accuracies to correlate ({len(with_acc)}; at least "
                        f"{options.min_correlation_models} needed).")]
    tested = table[table.spearman_q.notna()]
    strong = tested[tested.spearman_q < options.alpha].sort_values("spearman_q")
    if strong.empty:
        return [Finding("correlation", "all", "accuracy", "no difference",
                        f"no metric correlates with clean or robust accuracy across robust models after correcting "
                        f"{len(tested)} tests (Spearman, Benjamini-Hochberg q < {options.alpha}).")]
    out = []
    for row in strong.head(8).itertuples():
        direction = "positively" if row.spearman_rho > 0 else "negatively"
        out.append(Finding("correlation", row.dataset, f"{row.metric}/{row.accuracy}", direction,
                           f"{row.dataset}: {METRIC_NAMES[row.metric]} (bucket {row.bucket}) correlates {direction} "
                           f"with {row.accuracy.replace('_acc', ' accuracy')} across robust models (Spearman rho "
                           f"{row.spearman_rho:+.2f}, q {row.spearman_q:.3g}, Pearson r {row.pearson_r:+.2f}, "
                           f"n {row.n})."))
    return out
