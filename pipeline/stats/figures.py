"""The report's figures (PNG), shared set-up and the depth-profile figure.

Drawn with matplotlib's Agg backend (no display needed) into ``<out_dir>/figures/``; each
function returns the file's path, or None when there is nothing to draw. Figures are at
most ``FIG_WIDTH`` inches wide at ``DPI``, so report.html shows them at their own size.
The other figures: figures_shift.py (divergence), figures_pca.py (PCA bases),
figures_accuracy.py (metric vs robust accuracy), figures_gallery.py (first-layer filters).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402
from scipy import stats as scistats  # noqa: E402

from pipeline.stats.profile import BUCKET_LABELS, METRIC_NAMES, METRICS  # noqa: E402

ROBUST_COLOR, NORMAL_COLOR = "C1", "C0"
DPI = 110
FIG_WIDTH = 10.4
"""Inches; 10.4 in at 110 dpi is 1144 px, the width report.html gives a figure."""


def save_figure(fig: plt.Figure, out_dir: str, name: str) -> str:
    """Write ``figures/<name>.png`` and close the figure."""
    path = os.path.join(out_dir, "figures", f"{name}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def constant_metrics(profile: pd.DataFrame) -> dict[str, float]:
    """Metrics with one value in every model and bucket (e.g. sparsity 0 everywhere): nothing to draw."""
    out = {}
    for metric in METRICS:
        values = profile[metric].dropna().to_numpy(float) if metric in profile else np.array([])
        if len(values) and np.ptp(values) == 0:
            out[metric] = float(values[0])
    return out


def stars(p: float, alpha: float) -> str:
    """Significance marks: * below alpha, ** below alpha/5, *** below alpha/50."""
    if not p == p or p >= alpha:
        return ""
    return "***" if p < alpha / 50 else "**" if p < alpha / 5 else "*"


def mean_interval(values: np.ndarray, level: float = 0.95, min_n: int = 3) -> tuple[float, float, float]:
    """Mean and its t interval (NaN bounds with fewer than ``min_n`` values: with 2, t is 12.7 and the
    interval says nothing but stretches the axis)."""
    mean = float(np.mean(values))
    if len(values) < max(2, min_n):
        return mean, float("nan"), float("nan")
    half = scistats.t.ppf((1 + level) / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return mean, mean - half, mean + half


def _depth_panel(ax: plt.Axes, part: pd.DataFrame, tests: pd.DataFrame, metric: str, alpha: float) -> None:
    """One metric of one dataset: boxes per bucket and side, mean with 95% CI, n per box, stars, empty buckets."""
    low = blended_transform_factory(ax.transData, ax.transAxes)
    for bucket in range(len(BUCKET_LABELS)):
        in_bucket = part[part.depth_bucket == bucket]
        if in_bucket[metric].notna().sum() == 0:
            ax.axvspan(bucket - 0.45, bucket + 0.45, color="0.92", zorder=0)
            ax.text(bucket, 0.5, "no layers", transform=low, rotation=90, ha="center", va="center", fontsize=7,
                    color="0.45")
            continue
        for side, (robust, color) in enumerate(((False, NORMAL_COLOR), (True, ROBUST_COLOR))):
            values = in_bucket.loc[in_bucket.robust == robust, metric].dropna().to_numpy(float)
            x = bucket + (side - 0.5) * 0.38
            ax.text(x, 0.015, str(len(values)), transform=low, ha="center", va="bottom", fontsize=7.5, color=color)
            if not len(values):
                continue
            box = ax.boxplot([values], positions=[x], widths=0.32, patch_artist=True, manage_ticks=False,
                             showfliers=False, medianprops={"color": "black"})
            box["boxes"][0].set_facecolor(color)
            box["boxes"][0].set_alpha(0.55)
            mean, lo, hi = mean_interval(values)
            ax.errorbar([x], [mean], yerr=None if lo != lo else [[mean - lo], [hi - mean]], fmt="D", color="black",
                        markersize=3, capsize=2.5, lw=1.1, zorder=4)
        row = tests[tests.depth_bucket == bucket]
        mark = stars(float(row.p_holm.iloc[0]), alpha) if len(row) else ""
        if mark:
            ax.text(bucket, 0.985, mark, transform=low, ha="center", va="top", fontsize=10, fontweight="bold")
    lo, hi = ax.get_ylim()
    span = (hi - lo) or 1.0
    ax.set_ylim(lo - 0.14 * span, hi + 0.12 * span)  # room for the counts below and the stars above


def depth_profile_figure(profile: pd.DataFrame, comparison: pd.DataFrame, out_dir: str,
                         alpha: float = 0.05) -> str | None:
    """Box plots like the paper's (metrics in rows, datasets in columns, robust vs normal per bucket), with
    the models per box, mean and 95% CI, Holm-significant buckets starred and empty buckets marked;
    metrics with one value everywhere are left out."""
    skip = constant_metrics(profile)
    metrics = [m for m in METRICS if m not in skip]
    if profile.empty or not metrics:
        return None
    datasets = sorted(profile.dataset.unique())
    width = min(FIG_WIDTH, 3.9 * len(datasets) + 1.2) if len(datasets) > 1 else 8.0
    fig, axes = plt.subplots(len(metrics), len(datasets), figsize=(width, 2.9 * len(metrics) + 0.8),
                             squeeze=False, sharex=True)
    for col, dataset in enumerate(datasets):
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            tests = comparison[(comparison.dataset == dataset) & (comparison.metric == metric)]
            _depth_panel(ax, profile[profile.dataset == dataset], tests, metric, alpha)
            ax.set_xticks(range(len(BUCKET_LABELS)))
            ax.set_xticklabels(BUCKET_LABELS, rotation=35, ha="right", fontsize=7)
            ax.grid(alpha=0.3)
            ax.set_xlim(-0.6, len(BUCKET_LABELS) - 0.4)
            if col == 0:
                ax.set_ylabel(METRIC_NAMES[metric])
            if row == 0:
                ax.set_title(dataset)
    for ax in axes[-1]:
        ax.set_xlabel("convolution depth bucket")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.55) for c in (NORMAL_COLOR, ROBUST_COLOR)]
    handles.append(plt.Line2D([], [], color="black", marker="D", markersize=3, lw=1.1))
    fig.legend(handles, ["normal", "robust", "mean, 95% CI"], loc="lower center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.045, 1, 1))
    return save_figure(fig, out_dir, "depth_profile")
