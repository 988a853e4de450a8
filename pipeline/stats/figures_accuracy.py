"""Metric vs robust accuracy: one panel per metric, each model a point (robust filled, normal hollow), one
colour per training dataset, with the robust models' Spearman correlation (correlations.py) per dataset."""

from __future__ import annotations

import pandas as pd

from pipeline.stats.figures import FIG_WIDTH, constant_metrics, plt, save_figure
from pipeline.stats.profile import METRIC_NAMES, METRICS


def accuracy_figure(whole: pd.DataFrame, corr: pd.DataFrame, out_dir: str) -> str | None:
    """Whole-model metrics against robust accuracy; None without models of known robust accuracy."""
    known = whole[whole.robust_acc.notna()]
    metrics = [m for m in METRICS if m not in constant_metrics(known)]
    if known.empty or not metrics:
        return None
    datasets = sorted(known.dataset.unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(min(FIG_WIDTH, 3.5 * len(metrics)), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        lines = []
        for i, dataset in enumerate(datasets):
            color = f"C{(i + 2) % 10}"
            part = known[known.dataset == dataset]
            for robust, face in ((True, color), (False, "none")):
                side = part[part.robust == robust]
                ax.scatter(side.robust_acc, side[metric], s=26, facecolors=face, edgecolors=color, linewidths=1.2,
                           label=f"{dataset} {'robust' if robust else 'normal'}")
            row = corr[(corr.dataset == dataset) & (corr.bucket == "all") & (corr.metric == metric)
                       & (corr.accuracy == "robust_acc")]
            if len(row) and row.spearman_rho.iloc[0] == row.spearman_rho.iloc[0]:
                r = row.iloc[0]
                lines.append(f"{dataset}: rho {r.spearman_rho:+.2f}, q {r.spearman_q:.2g}, n {r.n}")
        if lines:
            ax.set_title("\n".join(lines), fontsize=7.5, loc="left")
        ax.set_xlabel("robust accuracy (%)")
        ax.set_ylabel(METRIC_NAMES[metric])
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * ((len(labels) + 3) // 4), 1, 1))
    return save_figure(fig, out_dir, "accuracy_scatter")
