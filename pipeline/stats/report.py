"""The stats report: tables (Parquet + CSV) and report.md / report.html around the figures.

The figures come from pipeline.stats.figures (matplotlib, Agg backend); report.md
links them from ``figures/``, report.html embeds them as base64 PNG so that it is
one self-contained file.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.stats.figures import (
    basis_figure,
    depth_profile_figure,
    gallery_figure,
    shift_figure,
    variance_figure,
)
from pipeline.stats.options import StatsOptions
from pipeline.stats.pairing import PAPER
from pipeline.stats.result import StatsResult
from pipeline.stats.selection import describe_pools, pooled_threat_models


def write_tables(result: StatsResult, out_dir: str) -> None:
    """Every table as ``tables/<name>.parquet`` and ``tables/<name>.csv``."""
    directory = os.path.join(out_dir, "tables")
    os.makedirs(directory, exist_ok=True)
    for name, frame in result.tables.items():
        frame = frame.copy()
        for column in frame.columns:  # lists/arrays (e.g. pca_sum) do not belong in CSV; keep Parquet exact
            if frame[column].dtype == object and len(frame) and isinstance(frame[column].iloc[0], (list, np.ndarray)):
                frame[column] = frame[column].map(lambda v: None if v is None else list(v))
        frame.to_parquet(os.path.join(directory, f"{name}.parquet"), index=False)
        frame.to_csv(os.path.join(directory, f"{name}.csv"), index=False)


# --- the document -------------------------------------------------------------------------------
@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def render_markdown(title: str, sections: list[Section], out_dir: str) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        lines += [f"- {b}" for b in s.bullets] + ([""] if s.bullets else [])
        for caption, path in s.figures:
            lines += [f"![{caption}]({os.path.relpath(path, out_dir)})", ""]
        for caption, frame in s.tables:
            lines += [f"**{caption}**", "", markdown_table(frame), ""]
    return "\n".join(lines)


def render_html(title: str, sections: list[Section]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}"
             "img{max-width:100%}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            parts.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in s.bullets) + "</ul>")
        for caption, path in s.figures:
            with open(path, "rb") as f:
                data = base64.b64encode(f.read()).decode()
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        for caption, frame in s.tables:
            parts.append(f"<p><b>{html.escape(caption)}</b></p>{html_table(frame)}")
    parts.append("</body></html>")
    return "\n".join(parts)


def _counts(models: pd.DataFrame) -> pd.DataFrame:
    table = models.assign(kind=np.where(models.robust, "robust", "normal")).pivot_table(
        index="dataset", columns="kind", values="model_id", aggfunc="count", fill_value=0)
    for kind in ("robust", "normal"):
        if kind not in table:
            table[kind] = 0
    return table[["robust", "normal"]].reset_index()


def _selection_sections(result: StatsResult, root: str) -> list[Section]:
    """What was selected (models per dataset, notes on left-out layers), then every finding."""
    models = result.tables["models"]
    selection = Section("Selection", paragraphs=[
        f"Dataset {root}; selection: {result.selection}; {len(models)} models "
        f"({int(models.robust.sum())} robust, {int((~models.robust).sum())} normal). Threat models pooled: "
        f"{describe_pools(pooled_threat_models(models))} (robust: adversarially trained; corruption-robust "
        "models only when brought in). Depth buckets: the first conv "
        "layer alone (0), then deciles of conv_depth_norm. Only 3x3 layers without NaN/Inf weights carry metrics."],
        bullets=result.notes, tables=[("Models per training dataset", _counts(models))])
    return [selection, Section("Findings", bullets=[f.text for f in result.findings])]


def _depth_section(result: StatsResult, out_dir: str, options: StatsOptions) -> Section:
    """How the depth profile is aggregated and tested, its box plots and the significant differences."""
    t = result.tables
    depth = Section("Depth profile: robust vs normal", paragraphs=[
        "Per model and bucket: sparsity = sum of sparse / sum of filters, variance entropy weighted by non-sparse "
        "filters, orthogonality weighted by output channels. Robust vs normal per training dataset and bucket: "
        f"Mann-Whitney U, Holm-corrected over the buckets of each dataset and metric (alpha {options.alpha}); "
        f"tested only with at least {options.min_models} models on each side. Full tables: "
        "tables/depth_profile.*, tables/robust_vs_normal.*."])
    if options.figures and (path := depth_profile_figure(t["depth_profile"], out_dir)):
        depth.figures.append(("Metrics by depth bucket (orange robust, blue normal)", path))
    significant = t["robust_vs_normal"][t["robust_vs_normal"].significant]
    if not significant.empty:
        depth.tables.append(("Significant robust vs normal differences", significant[
            ["dataset", "bucket", "metric", "n_robust", "n_normal", "mean_robust", "mean_normal", "p_holm"]]))
    return depth


def _pairing_section(result: StatsResult, options: StatsOptions) -> Section:
    """How many pairs, from where, and the unpaired models."""
    t = result.tables
    pairing = Section("Pairing", paragraphs=[
        f"{len(t['pairs'])} robust/normal pairs "
        f"({_pairs_source(options)}); "
        f"{len(t['unpaired'])} models unpaired. Tables: tables/pairs.*, tables/unpaired.*, tables/pair_differences.*."])
    if not t["unpaired"].empty:
        pairing.tables.append(("Unpaired models", t["unpaired"].head(40)))
    return pairing


def _pairs_source(options: StatsOptions) -> str:
    if options.pairs_csv == PAPER:
        return "from the paper's pairings, Gavrikov & Keuper 2022 (CC BY-SA 4.0)"
    return f"from {options.pairs_csv}" if options.pairs_csv else "same architecture and training dataset"


def _pca_section(result: StatsResult, out_dir: str, options: StatsOptions) -> Section:
    """The PCA bases: cumulative explained variance and the basis images."""
    pca = Section("PCA basis of scaled non-sparse filters", paragraphs=[
        "Computed from the per-layer sufficient statistics (no pass over the filters). Numbers under the basis "
        "images are explained-variance ratios. Tables: tables/pca_explained_variance.*, tables/pca_components.*."])
    if options.figures:
        for caption, path in (("Cumulative explained variance", variance_figure(result, out_dir)),
                              ("Basis (rows: all, robust, normal)", basis_figure(result, out_dir))):
            if path:
                pca.figures.append((caption, path))
    return pca


def _shift_section(result: StatsResult, out_dir: str, options: StatsOptions) -> Section:
    """How the divergence is computed and grouped, its figure by depth and the per-dataset table."""
    shift_table = result.tables["distribution_shift"]
    shift = Section("Distribution shift", paragraphs=[
        "Filters projected on the full basis; per coefficient a 70-bin histogram over the global coefficient "
        f"range {_range(result.coefficient_range)}, empty bins set to float32 eps, normalised; symmetric KL per "
        "coefficient weighted by the explained-variance ratio. Groups: "
        + ("the models of the robust/normal pairs, each counted once per pair (as the paper)"
           if options.kl_groups == "pairs" else "all robust vs all normal models, each once")
        + ". p: share of model relabellings with a divergence at least as large."])
    if options.figures and (path := shift_figure(shift_table, out_dir)):
        shift.figures.append(("Divergence by depth bucket", path))
    if not shift_table.empty:
        shift.tables.append(("Divergence per dataset (all buckets)", shift_table.query(
            "depth_bucket == -1")[["dataset", "n_robust_models", "n_normal_models", "n_robust_filters",
                                   "n_normal_filters", "divergence", "p_value"]]))
    return shift


def _correlation_section(result: StatsResult) -> Section:
    """What is correlated with what, and the ten strongest correlations by q."""
    corr = result.tables["correlations"]
    correlation = Section("Correlation with accuracy (robust models)", paragraphs=[
        "Spearman (and Pearson) correlation of each metric, per bucket and whole model, with clean and robust "
        "accuracy, per dataset and over all datasets; q: Benjamini-Hochberg over the whole table. "
        "Full table: tables/correlations.*."])
    top = corr[corr.spearman_q.notna()].sort_values("spearman_q").head(10)
    if not top.empty:
        correlation.tables.append(("Strongest correlations", top[
            ["dataset", "bucket", "metric", "accuracy", "n", "spearman_rho", "spearman_q", "pearson_r"]]))
    return correlation


def _gallery_section(result: StatsResult, out_dir: str, options: StatsOptions) -> Section:
    """The first-layer mosaics, or why there are none."""
    gallery = Section("First-layer filters", paragraphs=[
        "The first 3x3 conv layer of chosen models, robust and normal model of a pair side by side (RGB "
        "per output channel when the layer has 3 input channels, each kernel scaled to its own max |w|; "
        "else one tile per filter, first 64)."])
    if options.figures and (path := gallery_figure(result.galleries, out_dir)):
        gallery.figures.append(("First-layer filters", path))
    elif not result.galleries:
        gallery.paragraphs.append("No models to show (no pairs and no --gallery models).")
    return gallery


def _run_section(result: StatsResult) -> Section:
    """The filterlens version and the timings of the run."""
    timing = ", ".join(f"{k} {v:.2f}s" if isinstance(v, float) else f"{k} {v}" for k, v in result.timings.items())
    return Section("Run", paragraphs=[f"filterlens {__version__}; {timing}."])


def build_sections(result: StatsResult, out_dir: str, root: str, options: StatsOptions) -> list[Section]:
    """The report's sections in order; figures are drawn into ``out_dir`` unless ``options.figures`` is off."""
    return [*_selection_sections(result, root), _depth_section(result, out_dir, options),
            _pairing_section(result, options), _pca_section(result, out_dir, options),
            _shift_section(result, out_dir, options), _correlation_section(result),
            _gallery_section(result, out_dir, options), _run_section(result)]


def _range(value: tuple[float, float] | None) -> str:
    return f"[{value[0]:.4g}, {value[1]:.4g}]" if value else "(not computed)"


def write_report(result: StatsResult, out_dir: str, root: str, options: StatsOptions) -> None:
    """report.md, report.html and run.json (selection, coefficient range, timings, options)."""
    title = "filterlens robustness statistics"
    with open(os.path.join(out_dir, "run.json"), "w") as f:
        json.dump({"dataset": root, "selection": result.selection, "filterlens": __version__,
                   "models": len(result.tables["models"]),
                   "pooled_threat_models": pooled_threat_models(result.tables["models"]),
                   "coefficient_range": result.coefficient_range,
                   "timings": result.timings, "notes": result.notes, "options": asdict(options)}, f, indent=2,
                  default=str)
    sections = build_sections(result, out_dir, root, options)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_markdown(title, sections, out_dir))
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(render_html(title, sections))

