"""PCA figures: the spectrum of the robust and normal bases (explained variance per component, and how well
their components align), and the basis images."""

from __future__ import annotations

import numpy as np

from pipeline.stats.figures import NORMAL_COLOR, ROBUST_COLOR, plt, save_figure
from pipeline.stats.result import StatsResult


def spectrum_entropy(ratio: np.ndarray) -> float:
    """log10 entropy of explained-variance ratios (the variance entropy of the pooled filters, 0 .. log10 9)."""
    p = np.asarray(ratio, float)
    p = p[p > 0]
    return float(-(p * np.log10(p)).sum())


def spectrum_figure(result: StatsResult, out_dir: str) -> str | None:
    """Left: explained-variance ratio per component of the robust and normal bases (log scale; a flatter
    spectrum is more diverse filters), with each spectrum's entropy. Right: |cosine| between the robust
    basis's components (rows) and the normal one's (columns): a diagonal of ones is the same basis."""
    robust, normal = result.bases.get("robust"), result.bases.get("normal")
    if robust is None or normal is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.2, 3.9), gridspec_kw={"width_ratios": [1.45, 1]})
    k = np.arange(9)
    for offset, basis, color, name in ((-0.2, normal, NORMAL_COLOR, "normal"), (0.2, robust, ROBUST_COLOR, "robust")):
        left.bar(k + offset, basis.explained_variance_ratio, 0.4, color=color, zorder=3,
                 label=f"{name}: entropy {spectrum_entropy(basis.explained_variance_ratio):.4f}, "
                       f"{basis.n:,} filters")
    left.set_yscale("log")
    left.set_xticks(k)
    left.set_xticklabels([f"c{i}" for i in k])
    left.set_xlabel("principal component (own basis)")
    left.set_ylabel("explained-variance ratio")
    left.grid(alpha=0.3, axis="y", zorder=0)
    left.legend(fontsize=8, frameon=False, loc="upper right")
    cosine = np.abs(robust.components @ normal.components.T)
    image = right.imshow(cosine, vmin=0, vmax=1, cmap="Greys")
    for (i, j), v in np.ndenumerate(cosine):
        right.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.6 else "black")
    right.set_xticks(k)
    right.set_yticks(k)
    right.set_xlabel("normal basis component")
    right.set_ylabel("robust basis component")
    right.tick_params(labelsize=7)
    fig.colorbar(image, ax=right, label="|cosine|", pad=0.02)
    fig.tight_layout()
    return save_figure(fig, out_dir, "pca_spectrum")


def basis_figure(result: StatsResult, out_dir: str) -> str | None:
    """The nine components of each basis as 3x3 images (one row per basis), with their variance ratios."""
    bases = {k: b for k, b in result.bases.items() if b is not None}
    if not bases:
        return None
    fig, axes = plt.subplots(len(bases), 9, figsize=(9.5, 1.3 * len(bases) + 0.4), squeeze=False)
    limit = max(np.abs(b.components).max() for b in bases.values())
    for row, (name, basis) in enumerate(bases.items()):
        for k in range(9):
            ax = axes[row, k]
            ax.imshow(basis.components[k].reshape(3, 3), vmin=-limit, vmax=limit, cmap="coolwarm")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{basis.explained_variance_ratio[k]:.2f}", fontsize=8)
            if row == 0:
                ax.set_title(f"c{k}", fontsize=9)
        axes[row, 0].set_ylabel(name)
    fig.tight_layout()
    return save_figure(fig, out_dir, "pca_basis")
