"""The stats report: tables (Parquet + CSV), figures (PNG) and report.md / report.html.

Figures are drawn with matplotlib's Agg backend (no display needed); report.md
links them from ``figures/``, report.html embeds them as base64 PNG so that it is
one self-contained file.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import asdict, dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline import __version__  # noqa: E402
from pipeline.stats.analysis import (  # noqa: E402
    BUCKET_LABELS,
    METRIC_NAMES,
    METRICS,
    Gallery,
    StatsOptions,
    StatsResult,
)

ROBUST_COLOR, NORMAL_COLOR = "C1", "C0"


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


# --- figures --------------------------------------------------------------------------------------
def _save(fig: plt.Figure, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, "figures", f"{name}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def depth_profile_figure(profile: pd.DataFrame, out_dir: str) -> str | None:
    """Box plots like the paper's: metrics in rows, training datasets in columns, robust vs normal per bucket."""
    if profile.empty:
        return None
    datasets = sorted(profile.dataset.unique())
    fig, axes = plt.subplots(3, len(datasets), figsize=(4.2 * len(datasets) + 1, 9), squeeze=False)
    for col, dataset in enumerate(datasets):
        part = profile[profile.dataset == dataset]
        for row, metric in enumerate(METRICS):
            ax = axes[row, col]
            for side, (robust, color) in enumerate(((False, NORMAL_COLOR), (True, ROBUST_COLOR))):
                data, positions = [], []
                for bucket in range(len(BUCKET_LABELS)):
                    values = part.loc[(part.robust == robust) & (part.depth_bucket == bucket), metric].dropna()
                    if len(values):
                        data.append(values.to_numpy())
                        positions.append(bucket + (side - 0.5) * 0.36)
                if data:
                    box = ax.boxplot(data, positions=positions, widths=0.32, patch_artist=True, showmeans=True,
                                     manage_ticks=False, flierprops={"marker": ".", "markersize": 3},
                                     meanprops={"marker": "^", "markerfacecolor": "black", "markeredgecolor": "black",
                                                "markersize": 3})
                    for patch in box["boxes"]:
                        patch.set_facecolor(color)
                    for median in box["medians"]:
                        median.set_color("black")
            ax.set_xticks(range(len(BUCKET_LABELS)))
            ax.set_xticklabels(BUCKET_LABELS if row == 2 else [], rotation=35, ha="right", fontsize=7)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(METRIC_NAMES[metric])
            if row == 0:
                ax.set_title(dataset)
    axes[2, 0].set_xlabel("convolution depth bucket")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (NORMAL_COLOR, ROBUST_COLOR)]
    fig.legend(handles, ["normal", "robust"], loc="upper right")
    fig.tight_layout()
    return _save(fig, out_dir, "depth_profile")


def variance_figure(result: StatsResult, out_dir: str) -> str | None:
    bases = {k: b for k, b in result.bases.items() if b is not None}
    if not bases:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, basis in bases.items():
        ax.plot(range(1, 10), np.cumsum(basis.explained_variance_ratio), marker="o", label=f"{name} (n={basis.n})")
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative share of explained variance")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out_dir, "pca_explained_variance")


def basis_figure(result: StatsResult, out_dir: str) -> str | None:
    bases = {k: b for k, b in result.bases.items() if b is not None}
    if not bases:
        return None
    fig, axes = plt.subplots(len(bases), 9, figsize=(10, 1.35 * len(bases) + 0.3), squeeze=False)
    limit = max(np.abs(b.components).max() for b in bases.values())
    for row, (name, basis) in enumerate(bases.items()):
        for k in range(9):
            ax = axes[row, k]
            ax.imshow(basis.components[k].reshape(3, 3), vmin=-limit, vmax=limit, cmap="coolwarm")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{basis.explained_variance_ratio[k]:.2f}", fontsize=8)
            if row == 0:
                ax.set_title(f"v{k}", fontsize=9)
        axes[row, 0].set_ylabel(name)
    fig.tight_layout()
    return _save(fig, out_dir, "pca_basis")


def shift_figure(shift: pd.DataFrame, out_dir: str) -> str | None:
    """Divergence by depth bucket, one bar per dataset (like the paper's divergence_by_depth)."""
    if shift.empty or shift.divergence.isna().all():
        return None
    per_bucket = shift[shift.depth_bucket >= 0]
    datasets = sorted(per_bucket.dataset.unique())
    width = 0.8 / max(1, len(datasets))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, dataset in enumerate(datasets):
        part = per_bucket[per_bucket.dataset == dataset].set_index("depth_bucket")
        values = [part.divergence.get(b, np.nan) for b in range(len(BUCKET_LABELS))]
        ax.bar(np.arange(len(BUCKET_LABELS)) + i * width, values, width, label=dataset, zorder=3)
    ax.set_xticks(np.arange(len(BUCKET_LABELS)) + width * (len(datasets) - 1) / 2)
    ax.set_xticklabels(BUCKET_LABELS, rotation=25, ha="right", fontsize=8)
    ax.set_xlabel("convolution depth bucket")
    ax.set_ylabel("weighted symmetric KL (robust vs normal)")
    ax.grid(alpha=0.3, zorder=0)
    ax.legend()
    return _save(fig, out_dir, "distribution_shift_by_depth")


def gallery_tiles(gallery: Gallery, limit: int = 64) -> tuple[np.ndarray, bool]:
    """Tiles of a first layer: (n, 3, 3, 3) RGB in [0, 1] when it has 3 input channels, else (n, 3, 3) filters."""
    w = gallery.weights
    if gallery.in_channels == 3 and w.shape[1] == 3:
        kernels = np.transpose(w[:limit], (0, 2, 3, 1)).astype(np.float64)  # c_out, 3, 3, RGB
        scale = np.abs(kernels).reshape(len(kernels), -1).max(axis=1)
        scale[scale == 0] = 1
        return kernels / (2 * scale[:, None, None, None]) + 0.5, True
    return w.reshape(-1, 3, 3)[:limit].astype(np.float64), False


def mosaic(tiles: np.ndarray, rgb: bool, cols: int = 16) -> np.ndarray:
    """One RGB image of 3x3 tiles with a 1-pixel white gap (grey tiles through a diverging colormap)."""
    if not rgb:
        limit = np.abs(tiles).max() or 1.0
        tiles = plt.get_cmap("coolwarm")((tiles / limit + 1) / 2)[..., :3]
    rows = int(np.ceil(len(tiles) / cols))
    image = np.ones((rows * 4 + 1, min(cols, len(tiles)) * 4 + 1, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        image[1 + 4 * r:4 + 4 * r, 1 + 4 * c:4 + 4 * c] = tile
    return image


def gallery_figure(rows: list[list[Gallery]], out_dir: str) -> str | None:
    """First-layer filters, one mosaic per model; a pair's robust and normal model side by side."""
    if not rows:
        return None
    cols = max(len(row) for row in rows)
    images = [[mosaic(*gallery_tiles(g)) for g in row] for row in rows]
    heights = [max(i.shape[0] for i in row) for row in images]
    fig, axes = plt.subplots(len(rows), cols, figsize=(8 * cols, sum(0.13 * h + 0.4 for h in heights)),
                             squeeze=False)
    for r, (row, row_images) in enumerate(zip(rows, images, strict=True)):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(row):
                continue
            g = row[c]
            ax.imshow(row_images[c], interpolation="nearest")
            rgb = g.in_channels == 3 and g.weights.shape[1] == 3
            ax.set_title(f"{'robust' if g.robust else 'normal'} | {g.model_id} | {g.layer_name} "
                         f"({'RGB' if rgb else 'per filter'})", fontsize=9, loc="left")
    fig.tight_layout()
    return _save(fig, out_dir, "first_layer_gallery")


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


def build_sections(result: StatsResult, out_dir: str, root: str, options: StatsOptions) -> list[Section]:
    t = result.tables
    models = t["models"]
    figures = options.figures
    sections = [Section("Selection", paragraphs=[
        f"Dataset {root}; selection: {result.selection}; {len(models)} models "
        f"({int(models.robust.sum())} robust, {int((~models.robust).sum())} normal). Depth buckets: the first conv "
        "layer alone (0), then deciles of conv_depth_norm. Only 3x3 layers without NaN/Inf weights carry metrics."],
        bullets=result.notes, tables=[("Models per training dataset", _counts(models))])]
    sections.append(Section("Findings", bullets=[f.text for f in result.findings]))

    depth = Section("Depth profile: robust vs normal", paragraphs=[
        "Per model and bucket: sparsity = sum of sparse / sum of filters, variance entropy weighted by non-sparse "
        "filters, orthogonality weighted by output channels. Robust vs normal per training dataset and bucket: "
        f"Mann-Whitney U, Holm-corrected over the buckets of each dataset and metric (alpha {options.alpha}); "
        f"tested only with at least {options.min_models} models on each side. Full tables: "
        "tables/depth_profile.*, tables/robust_vs_normal.*."])
    if figures and (path := depth_profile_figure(t["depth_profile"], out_dir)):
        depth.figures.append(("Metrics by depth bucket (orange robust, blue normal)", path))
    significant = t["robust_vs_normal"][t["robust_vs_normal"].significant]
    if not significant.empty:
        depth.tables.append(("Significant robust vs normal differences", significant[
            ["dataset", "bucket", "metric", "n_robust", "n_normal", "mean_robust", "mean_normal", "p_holm"]]))
    sections.append(depth)

    pairs = t["pairs"]
    pairing = Section("Pairing", paragraphs=[
        f"{len(pairs)} robust/normal pairs "
        f"({'from ' + options.pairs_csv if options.pairs_csv else 'same architecture and training dataset'}); "
        f"{len(t['unpaired'])} models unpaired. Tables: tables/pairs.*, tables/unpaired.*, tables/pair_differences.*."])
    if not t["unpaired"].empty:
        pairing.tables.append(("Unpaired models", t["unpaired"].head(40)))
    sections.append(pairing)

    pca = Section("PCA basis of scaled non-sparse filters", paragraphs=[
        "Computed from the per-layer sufficient statistics (no pass over the filters). Numbers under the basis "
        "images are explained-variance ratios. Tables: tables/pca_explained_variance.*, tables/pca_components.*."])
    if figures:
        for caption, path in (("Cumulative explained variance", variance_figure(result, out_dir)),
                              ("Basis (rows: all, robust, normal)", basis_figure(result, out_dir))):
            if path:
                pca.figures.append((caption, path))
    sections.append(pca)

    shift = Section("Distribution shift", paragraphs=[
        "Filters projected on the full basis; per coefficient a 70-bin histogram over the global coefficient "
        f"range {_range(result.coefficient_range)}, empty bins set to float32 eps, normalised; symmetric KL per "
        "coefficient weighted by the explained-variance ratio. Groups: "
        + ("the models of the robust/normal pairs, each counted once per pair (as the paper)"
           if options.kl_groups == "pairs" else "all robust vs all normal models, each once")
        + ". p: share of model relabellings with a divergence at least as large."])
    if figures and (path := shift_figure(t["distribution_shift"], out_dir)):
        shift.figures.append(("Divergence by depth bucket", path))
    if not t["distribution_shift"].empty:
        shift.tables.append(("Divergence per dataset (all buckets)", t["distribution_shift"].query(
            "depth_bucket == -1")[["dataset", "n_robust_models", "n_normal_models", "n_robust_filters",
                                   "n_normal_filters", "divergence", "p_value"]]))
    sections.append(shift)

    corr = t["correlations"]
    correlation = Section("Correlation with accuracy (robust models)", paragraphs=[
        "Spearman (and Pearson) correlation of each metric, per bucket and whole model, with clean and robust "
        "accuracy, per dataset and over all datasets; q: Benjamini-Hochberg over the whole table. "
        "Full table: tables/correlations.*."])
    top = corr[corr.spearman_q.notna()].sort_values("spearman_q").head(10)
    if not top.empty:
        correlation.tables.append(("Strongest correlations", top[
            ["dataset", "bucket", "metric", "accuracy", "n", "spearman_rho", "spearman_q", "pearson_r"]]))
    sections.append(correlation)

    gallery = Section("First-layer filters", paragraphs=[
        "The first 3x3 conv layer of chosen models, robust and normal model of a pair side by side (RGB "
        "per output channel when the layer has 3 input channels, each kernel scaled to its own max |w|; "
        "else one tile per filter, first 64)."])
    if figures and (path := gallery_figure(result.galleries, out_dir)):
        gallery.figures.append(("First-layer filters", path))
    elif not result.galleries:
        gallery.paragraphs.append("No models to show (no pairs and no --gallery models).")
    sections.append(gallery)
    timing = ", ".join(f"{k} {v:.2f}s" if isinstance(v, float) else f"{k} {v}" for k, v in result.timings.items())
    sections.append(Section("Run", paragraphs=[f"filterlens {__version__}; {timing}."]))
    return sections


def _range(value: tuple[float, float] | None) -> str:
    return f"[{value[0]:.4g}, {value[1]:.4g}]" if value else "(not computed)"


def write_report(result: StatsResult, out_dir: str, root: str, options: StatsOptions) -> None:
    """report.md, report.html and run.json (selection, coefficient range, timings, options)."""
    title = "filterlens robustness statistics"
    with open(os.path.join(out_dir, "run.json"), "w") as f:
        json.dump({"dataset": root, "selection": result.selection, "filterlens": __version__,
                   "models": len(result.tables["models"]), "coefficient_range": result.coefficient_range,
                   "timings": result.timings, "notes": result.notes, "options": asdict(options)}, f, indent=2,
                  default=str)
    sections = build_sections(result, out_dir, root, options)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_markdown(title, sections, out_dir))
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(render_html(title, sections))

