"""Distribution-shift figures: divergence by depth (with n and p per bucket), the KL heatmap (coefficient x
depth bucket) and robust-vs-normal coefficient histograms, one set per training dataset."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from pipeline.stats.figures import FIG_WIDTH, NORMAL_COLOR, ROBUST_COLOR, plt, save_figure
from pipeline.stats.profile import BUCKET_LABELS


def _count(n: float) -> str:
    n = int(n)
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


def shift_figure(shift: pd.DataFrame, out_dir: str, alpha: float = 0.05) -> str | None:
    """Divergence per depth bucket, one panel per dataset: bars below p < alpha solid, the others pale and
    hatched; p above each bar, the filters per bucket (robust + normal) under its label, the
    whole-model divergence as a dashed line."""
    if shift.empty or shift.divergence.isna().all():
        return None
    datasets = sorted(shift.dataset.unique())
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8.6, 3.3 * len(datasets) + 0.4), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets, strict=True):
        rows = shift[shift.dataset == dataset]
        part = rows[rows.depth_bucket >= 0].set_index("depth_bucket")
        overall = rows[rows.depth_bucket == -1]
        x = np.arange(len(BUCKET_LABELS))
        labels = []
        for b in x:
            if b not in part.index or part.divergence.get(b) != part.divergence.get(b):
                ax.text(b, 0.02, "no data", rotation=90, ha="center", va="bottom", fontsize=7, color="0.45",
                        transform=ax.get_xaxis_transform())
                labels.append(f"{BUCKET_LABELS[b]}\nn 0")
                continue
            r = part.loc[b]
            significant = r.p_value == r.p_value and r.p_value < alpha
            ax.bar(b, r.divergence, 0.7, color=ROBUST_COLOR if significant else "none", zorder=3,
                   edgecolor=ROBUST_COLOR, hatch=None if significant else "///", alpha=1 if significant else 0.7)
            p = f"p {r.p_value:.2g}" if r.p_value == r.p_value else "no test"
            ax.annotate(p, (b, r.divergence), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7, fontweight="bold" if significant else "normal")
            labels.append(f"{BUCKET_LABELS[b]}\nn {_count(r.n_robust_filters + r.n_normal_filters)}")
        if len(overall) and overall.divergence.iloc[0] == overall.divergence.iloc[0]:
            ax.axhline(overall.divergence.iloc[0], color="0.3", ls="--", lw=1, zorder=2,
                       label=f"all buckets: {overall.divergence.iloc[0]:.3g}")
            ax.legend(loc="upper right", fontsize=8, frameon=False)
            o = overall.iloc[0]
            ax.set_title(f"{dataset}: {o.n_robust_models} robust vs {o.n_normal_models} normal models",
                         fontsize=10, loc="left")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("weighted symmetric KL")
        top = np.nanmax(part.divergence.to_numpy(float)) if len(part) else 1.0
        ax.set_ylim(0, (top if top > 0 else 1.0) * 1.18)
        ax.grid(alpha=0.3, axis="y", zorder=0)
    axes[-1, 0].set_xlabel("convolution depth bucket (n: non-sparse filters, robust + normal)")
    fig.tight_layout()
    return save_figure(fig, out_dir, "distribution_shift_by_depth")


def kl_heatmap_figure(shift: pd.DataFrame, ratio: np.ndarray | None, out_dir: str) -> str | None:
    """Symmetric KL per PCA coefficient (rows) and depth bucket (columns), one panel per dataset, log colour
    scale, empty buckets grey."""
    per_bucket = shift[shift.depth_bucket >= 0] if not shift.empty else shift
    if per_bucket.empty or per_bucket.divergence.isna().all():
        return None
    datasets = sorted(per_bucket.dataset.unique())
    columns = [f"kl_c{k}" for k in range(9)]
    grids = {}
    for dataset in datasets:
        part = per_bucket[per_bucket.dataset == dataset].set_index("depth_bucket")
        grids[dataset] = np.array([[part[c].get(b, np.nan) for b in range(len(BUCKET_LABELS))] for c in columns],
                                  float)
    values = np.concatenate([g[np.isfinite(g) & (g > 0)] for g in grids.values()])
    if not len(values):
        return None
    norm = LogNorm(vmin=max(values.min(), values.max() * 1e-4), vmax=values.max())
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8.6, 3.6 * len(datasets) + 0.3), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets, strict=True):
        grid = grids[dataset]
        image = ax.imshow(np.where(grid > 0, grid, np.nan), cmap=cmap, norm=norm, aspect="auto")
        for (k, b), v in np.ndenumerate(grid):
            if v == v:
                bright = v > 0 and norm(v) > 0.6
                ax.text(b, k, f"{v:.2g}", ha="center", va="center", fontsize=6.5,
                        color="black" if bright else "white")
        ax.set_xticks(range(len(BUCKET_LABELS)))
        ax.set_xticklabels(BUCKET_LABELS, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(9))
        ax.set_yticklabels([f"c{k}" + (f" ({ratio[k]:.0%})" if ratio is not None else "") for k in range(9)],
                           fontsize=7)
        ax.set_title(dataset, fontsize=10, loc="left")
        fig.colorbar(image, ax=ax, label="symmetric KL", pad=0.01)
    axes[-1, 0].set_xlabel("convolution depth bucket (grey: no filters)")
    fig.tight_layout()
    return save_figure(fig, out_dir, "kl_heatmap")


def histogram_figures(histograms: pd.DataFrame, shift: pd.DataFrame, ratio: np.ndarray | None,
                      out_dir: str) -> list[tuple[str, str]]:
    """Per dataset, the 9 coefficient histograms of robust and normal filters overlaid (densities, log
    scale), each titled with its share of variance and its symmetric KL: (dataset, path) pairs."""
    out = []
    if histograms.empty:
        return out
    for dataset in sorted(histograms.dataset.unique()):
        part = histograms[histograms.dataset == dataset]
        if set(part.robust) != {True, False}:
            continue
        overall = shift[(shift.dataset == dataset) & (shift.depth_bucket == -1)] if not shift.empty else shift
        fig, axes = plt.subplots(3, 3, figsize=(FIG_WIDTH * 0.85, 6.6), sharex=True)
        for k, ax in enumerate(axes.flat):
            for robust, color, label in ((False, NORMAL_COLOR, "normal"), (True, ROBUST_COLOR, "robust")):
                h = part[(part.robust == robust) & (part.coefficient == k)].sort_values("bin")
                total = h["count"].sum()
                widths = (h.bin_hi - h.bin_lo).to_numpy(float)
                density = h["count"].to_numpy(float) / (total * widths) if total else np.zeros(len(h))
                ax.stairs(np.where(density > 0, density, np.nan), np.append(h.bin_lo, h.bin_hi.iloc[-1]),
                          color=color, lw=1.3, label=label)
            ax.set_yscale("log")
            kl = overall[f"kl_c{k}"].iloc[0] if len(overall) else np.nan
            share = f", {ratio[k]:.0%} var." if ratio is not None else ""
            ax.set_title(f"c{k}{share}, KL {kl:.2g}", fontsize=8.5)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=7, frameon=False, loc="upper left")
        for ax in axes[-1]:
            ax.set_xlabel("coefficient", fontsize=8)
        for ax in axes[:, 0]:
            ax.set_ylabel("density", fontsize=8)
        fig.suptitle(f"{dataset}: coefficients of the scaled non-sparse filters on the PCA basis", fontsize=10)
        fig.tight_layout()
        name = "coefficient_histograms_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset)
        out.append((dataset, save_figure(fig, out_dir, name)))
    return out
