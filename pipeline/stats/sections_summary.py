"""Report sections that summarise: the headline table, the demo's directions, the findings, the selection,
the pairing and the run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.stats.document import ReportContext, Section
from pipeline.stats.options import StatsOptions
from pipeline.stats.pairing import PAPER
from pipeline.stats.profile import METRIC_NAMES
from pipeline.stats.selection import describe_pools, pooled_threat_models


def _interval(value: float, lo: float, hi: float, fmt: str) -> str:
    if value != value:
        return "n/a"
    return f"{value:{fmt}}" + (f" [{lo:{fmt}}, {hi:{fmt}}]" if lo == lo else "")


def _verdict_cell(row: pd.Series) -> str:
    if row.verdict == "cannot say":
        return f"cannot say: {row.note}"
    paper = {"yes": " (as the paper)", "opposite": " (opposite to the paper)"}.get(row.matches_paper, "")
    return row.verdict + paper + (f"; {row.note}" if row.note else "")


def headline_display(headline: pd.DataFrame, level: float) -> pd.DataFrame:
    """The headline table as the report shows it: one formatted cell per quantity."""
    pct = f"{level:.0%}"
    rows = []
    for _, r in headline.iterrows():
        n_sig = int(r.buckets_higher + r.buckets_lower)
        buckets = f"{n_sig} of {r.buckets_tested} tested" + (f": {r.significant_buckets}" if n_sig else "")
        rows.append({"dataset": r.dataset, "metric": METRIC_NAMES[r.metric], "paper": r.paper,
                     "direction": r.direction or "n/a",
                     f"robust − normal [{pct} CI]": _interval(r.difference, r.difference_lo, r.difference_hi,
                                                              "+.4f"),
                     f"Cliff's δ [{pct} CI]": _interval(r.cliffs_delta, r.delta_lo, r.delta_hi, "+.2f"),
                     "significant buckets": buckets, "n robust / normal": f"{r.n_robust} / {r.n_normal}",
                     "verdict": _verdict_cell(r)})
    return pd.DataFrame(rows)


def headline_section(ctx: ReportContext) -> Section:
    """The answer at a glance: per dataset and metric, direction, effect size, significant buckets, verdict."""
    options = ctx.options
    return Section("At a glance", paragraphs=[
        "Robust minus normal per training dataset and metric. direction (the sign of Cliff's δ) and the effect "
        "sizes are of the whole model (all usable 3x3 layers, weighted as in the buckets), one value per model: the difference "
        f"of the means and Cliff's δ = P(robust > normal) − P(robust < normal), each with a {1 - options.alpha:.0%} "
        "percentile-bootstrap interval (models resampled within each side). significant buckets: depth buckets "
        f"where the Mann-Whitney U test, Holm-corrected over the buckets, is below {options.alpha}, of those "
        f"tested (at least {options.min_models} models on each side). The verdict follows those tests alone; "
        "paper: the direction Gavrikov & Keuper (2022) report."],
        tables=[("Headline", headline_display(ctx.result.tables["headline"], 1 - options.alpha))],
        table_class="headline")


def directions_section(ctx: ReportContext) -> Section | None:
    """The demo's paired comparison (shown only when run from ``filterlens demo``)."""
    directions = ctx.result.tables.get("demo_directions")
    if directions is None or directions.empty:
        return None
    shown = pd.DataFrame({
        "scope": directions.scope, "metric": directions.metric.map(lambda m: METRIC_NAMES.get(m, m)),
        "robust": directions.robust_mean, "normal": directions.normal_mean,
        "pairs agreeing": [f"{a}/{p}" for a, p in zip(directions.pairs_agreeing, directions.pairs, strict=True)],
        "paper expects": directions.expected, "verdict": directions.verdict})
    return Section("The demo's directions", paragraphs=[
        "From filterlens demo: robust vs normal over the same pairs as this report (same architecture and seed), "
        "per metric over all 3x3 layers, the first conv layer and the deepest 3x3 layer. 'shows up': the mean "
        "paired difference has the paper's sign and most pairs agree; a count, not a test (the tests are above "
        "and below). Also in directions.csv."], tables=[("Paper's directions in the demo zoo", shown)])


def findings_section(ctx: ReportContext) -> Section:
    """Every finding in one short sentence."""
    return Section("Findings", bullets=[f.text for f in ctx.result.findings])


def _counts(models: pd.DataFrame) -> pd.DataFrame:
    table = models.assign(kind=np.where(models.robust, "robust", "normal")).pivot_table(
        index="dataset", columns="kind", values="model_id", aggfunc="count", fill_value=0)
    for kind in ("robust", "normal"):
        if kind not in table:
            table[kind] = 0
    return table[["robust", "normal"]].reset_index()


def selection_section(ctx: ReportContext) -> Section:
    """What was selected (models per dataset) and the notes on left-out layers."""
    result = ctx.result
    models = result.tables["models"]
    return Section("Selection", paragraphs=[
        f"Dataset {ctx.root}; selection: {result.selection}; {len(models)} models "
        f"({int(models.robust.sum())} robust, {int((~models.robust).sum())} normal). Threat models pooled: "
        f"{describe_pools(pooled_threat_models(models))} (robust: adversarially trained; corruption-robust "
        "models only when brought in). Depth buckets: the first conv "
        "layer alone (0), then deciles of conv_depth_norm. Only 3x3 layers without NaN/Inf weights carry metrics."],
        bullets=result.notes, tables=[("Models per training dataset", _counts(models))])


def pairs_source(options: StatsOptions) -> str:
    """Where the pairs came from, in words."""
    if options.pairs_csv == PAPER:
        return "from the paper's pairings, Gavrikov & Keuper 2022 (CC BY-SA 4.0)"
    return (f"from {options.pairs_csv}" if options.pairs_csv else
            "same architecture and training dataset, and the same seed where the models record one")


def pairing_section(ctx: ReportContext) -> Section:
    """How many pairs, from where, and the unpaired models."""
    t = ctx.result.tables
    pairing = Section("Pairing", paragraphs=[
        f"{len(t['pairs'])} robust/normal pairs ({pairs_source(ctx.options)}); {len(t['unpaired'])} models "
        "unpaired. The pairs weight the distribution shift and choose the gallery. Tables: tables/pairs.*, "
        "tables/unpaired.*, tables/pair_differences.*."])
    if not t["unpaired"].empty:
        pairing.tables.append(("Unpaired models", t["unpaired"].head(40)))
    return pairing


def run_section(ctx: ReportContext) -> Section:
    """The filterlens version and the timings of the run."""
    timing = ", ".join(f"{k} {v:.2f}s" if isinstance(v, float) else f"{k} {v}"
                       for k, v in ctx.result.timings.items())
    return Section("Run", paragraphs=[f"filterlens {__version__}; {timing}."])
