"""The report's findings: one short statement per dataset and analysis (depth profile, distribution
shift, correlation), with a verdict; the numbers behind them are in the tables."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipeline.stats.options import StatsOptions
from pipeline.stats.profile import METRIC_NAMES
from pipeline.stats.shift import PCABasis


@dataclass
class Finding:
    """One plain-language statement of the report."""

    analysis: str
    dataset: str
    subject: str
    verdict: str  # e.g. "robust higher", "robust lower", "mixed", "no difference", "cannot say"
    text: str


def _interval(value: float, lo: float, hi: float, digits: int = 2) -> str:
    if value != value:
        return "n/a"
    text = f"{value:+.{digits}f}"
    return text + (f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if lo == lo else "")


def _buckets(labels: str, limit: int = 3) -> str:
    names = [b for b in labels.split(", ") if b]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def depth_finding(row: pd.Series) -> Finding:
    """The sentence of one headline row (headline.py)."""
    head = f"{row.dataset}, {METRIC_NAMES[row.metric]}"
    if row.verdict == "cannot say":
        return Finding("depth profile", row.dataset, row.metric, row.verdict, f"{head}: cannot say ({row.note}).")
    if row.note:  # the same value everywhere
        return Finding("depth profile", row.dataset, row.metric, row.verdict,
                       f"{head}: {row.note}; nothing to compare.")
    delta = f"Cliff's delta {_interval(row.cliffs_delta, row.delta_lo, row.delta_hi)}"
    n_sig = row.buckets_higher + row.buckets_lower
    if row.verdict == "no difference":
        text = f"{head}: no significant difference (0 of {row.buckets_tested} tested buckets; {delta})."
    else:
        word = {"robust higher": "robust higher", "robust lower": "robust lower",
                "mixed": "differs both ways"}[row.verdict]
        paper = {"yes": ", as in the paper", "opposite": ", opposite to the paper"}.get(row.matches_paper, "")
        text = (f"{head}: {word}{paper} in {n_sig} of {row.buckets_tested} tested buckets "
                f"({_buckets(row.significant_buckets)}); {delta}.")
    return Finding("depth profile", row.dataset, row.metric, row.verdict, text)


def depth_findings(headline: pd.DataFrame) -> list[Finding]:
    """Per dataset and metric: is the robust depth profile higher, lower, mixed, the same, or untestable?"""
    return [depth_finding(row) for _, row in headline.iterrows()]


def shift_findings(models: pd.DataFrame, shift: pd.DataFrame, basis: PCABasis | None, options: StatsOptions,
                   reason: str | None) -> list[Finding]:
    """Per dataset: the overall divergence, whether label permutations explain it, and the strongest bucket."""
    if reason:
        return [Finding("distribution shift", "all", "divergence", "cannot say", reason)]
    out = []
    for dataset in sorted(models.dataset.unique()):
        rows = shift[shift.dataset == dataset]
        overall = rows[rows.depth_bucket == -1]
        if overall.empty or overall.divergence.isna().all():
            what = "robust/normal pairs" if options.kl_groups == "pairs" else "robust and normal models"
            out.append(Finding("distribution shift", dataset, "divergence", "cannot say",
                               f"{dataset}: filter distributions: cannot say (no {what} with 3x3 filters)."))
            continue
        o = overall.iloc[0]
        tested = o.p_value == o.p_value
        significant = tested and o.p_value < options.alpha
        per_bucket = rows[(rows.depth_bucket >= 0) & rows.divergence.notna()]
        sig_buckets = per_bucket[per_bucket.p_value < options.alpha]
        p = f", permutation p {o.p_value:.2g}" if tested else ", no permutation test"
        word = "differ" if significant else "not distinguishable" if tested else "not tested"
        text = (f"{dataset}: robust vs normal filter distributions {word} (KL {o.divergence:.3g}{p}); "
                f"{len(sig_buckets)} of {len(per_bucket)} buckets below p {options.alpha}")
        if not sig_buckets.empty:
            top = sig_buckets.loc[sig_buckets.divergence.idxmax()]
            text += f", strongest {top.bucket} (KL {top.divergence:.3g})"
        out.append(Finding("distribution shift", dataset, "divergence", "shift" if significant else "no difference",
                           text + "."))
    return out


def correlation_findings(models: pd.DataFrame, table: pd.DataFrame, options: StatsOptions) -> list[Finding]:
    """The strongest (at most 5) correlations that survive Benjamini-Hochberg, or why there are none."""
    robust = models[models.robust]
    with_acc = robust[robust.clean_acc.notna() | robust.robust_acc.notna()]
    if len(with_acc) < options.min_correlation_models:
        return [Finding("correlation", "all", "accuracy", "cannot say",
                        f"Accuracy correlations: cannot say ({len(with_acc)} robust models with known accuracies; "
                        f"{options.min_correlation_models} needed).")]
    tested = table[table.spearman_q.notna()]
    strong = tested[tested.spearman_q < options.alpha].sort_values("spearman_q")
    if strong.empty:
        return [Finding("correlation", "all", "accuracy", "no difference",
                        f"No metric correlates with accuracy across robust models ({len(tested)} tests, "
                        f"Benjamini-Hochberg q < {options.alpha}).")]
    out = []
    for row in strong.head(5).itertuples():
        direction = "positively" if row.spearman_rho > 0 else "negatively"
        where = "whole model" if row.bucket == "all" else f"bucket {row.bucket}"
        out.append(Finding("correlation", row.dataset, f"{row.metric}/{row.accuracy}", direction,
                           f"{row.dataset}: {METRIC_NAMES[row.metric]} ({where}) correlates {direction} with "
                           f"{row.accuracy.replace('_acc', ' accuracy')} (Spearman {row.spearman_rho:+.2f}, "
                           f"q {row.spearman_q:.2g}, n {row.n})."))
    if len(strong) > 5:
        out.append(Finding("correlation", "all", "accuracy", "more",
                           f"{len(strong) - 5} more correlations with q < {options.alpha}: tables/correlations.*."))
    return out
