"""The report's figures (PNG): depth-profile box plots, PCA variance and basis, divergence by depth, and
first-layer filter mosaics.

Drawn with matplotlib's Agg backend (no display needed) into ``<out_dir>/figures/``; each
function returns the file's path, or None when there is nothing to draw.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.stats.galleries import Gallery  # noqa: E402
from pipeline.stats.profile import BUCKET_LABELS, METRIC_NAMES, METRICS  # noqa: E402
from pipeline.stats.result import StatsResult  # noqa: E402

ROBUST_COLOR, NORMAL_COLOR = "C1", "C0"


def _save(fig: plt.Figure, out_dir: str, name: str) -> str:
    """Write ``figures/<name>.png`` and close the figure."""
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
    """Cumulative explained variance of each PCA basis against the number of components."""
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
    """The nine components of each basis as 3x3 images (one row per basis), with their variance ratios."""
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
