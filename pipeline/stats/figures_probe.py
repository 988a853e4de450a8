"""The probe figure: per dataset, how much of each perturbation robust and normal models' first stage passes on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.stats.figures import FIG_WIDTH, NORMAL_COLOR, ROBUST_COLOR, plt, save_figure, stars

KIND_ORDER = ("transfer", "pgd", "random")
STAGE_LABELS = {"conv": "conv", "conv_relu": "conv + ReLU"}


def probe_figure(probes: pd.DataFrame, comparison: pd.DataFrame, out_dir: str, alpha: float = 0.05) -> str | None:
    """Gain (relative change / relative input perturbation) per model, robust beside normal, per perturbation and
    stage; one row of panels per dataset, with n per group and the Holm-corrected significance marks."""
    if probes.empty or probes.gain_mean.dropna().empty:
        return None
    datasets = sorted(probes.dataset.unique())
    kinds = [k for k in KIND_ORDER if k in set(probes.perturbation)]
    fig, axes = plt.subplots(len(datasets), len(kinds), figsize=(FIG_WIDTH, 3.2 * len(datasets)), squeeze=False)
    for r, dataset in enumerate(datasets):
        for c, kind in enumerate(kinds):
            ax = axes[r][c]
            part = probes[(probes.dataset == dataset) & (probes.perturbation == kind)]
            for s, stage in enumerate(STAGE_LABELS):
                for offset, robust, color in ((-0.18, True, ROBUST_COLOR), (0.18, False, NORMAL_COLOR)):
                    values = part.loc[(part.stage == stage) & (part.robust == robust), "gain_mean"].dropna()
                    x = s + offset
                    jitter = np.linspace(-0.06, 0.06, len(values)) if len(values) > 1 else np.zeros(len(values))
                    ax.scatter(x + jitter, values, s=14, color=color, alpha=0.8, zorder=3,
                               label=("robust" if robust else "normal") if (r, c, s) == (0, 0, 0) else None)
                    if len(values):
                        ax.hlines(values.median(), x - 0.12, x + 0.12, color="black", linewidth=1.6, zorder=4)
                    ax.annotate(f"n={len(values)}", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom", fontsize=7, color="0.3")
                test = comparison[(comparison.dataset == dataset) & (comparison.perturbation == kind)
                                  & (comparison.stage == stage) & (comparison.metric == "gain_mean")]
                if len(test) and not np.isnan(test.p_holm.iloc[0]):
                    label = stars(float(test.p_holm.iloc[0]), alpha) or f"p={test.p_holm.iloc[0]:.2g}"
                    ax.annotate(label, (s, 1), xycoords=("data", "axes fraction"), xytext=(0, -12),
                                textcoords="offset points", ha="center", fontsize=8)
            ax.axhline(1.0, color="0.6", linewidth=0.8, linestyle="--", zorder=1)
            ax.set_xticks(range(len(STAGE_LABELS)), list(STAGE_LABELS.values()))
            ax.set_xlim(-0.6, len(STAGE_LABELS) - 0.4)
            ax.set_title(f"{dataset}: {kind}", fontsize=10)
            if c == 0:
                ax.set_ylabel("gain (1 = passed on in full)")
    fig.legend(loc="upper center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 1.02))
    fig.suptitle("First-stage response to L-inf perturbations (lower: more of the perturbation removed)",
                 y=1.06, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_dir, "probe_gain")


def _short(model_id: str) -> str:
    return model_id.rsplit("/", 1)[-1][:40]


def _filter_tile(weight: np.ndarray) -> np.ndarray:
    """A 3x3 filter (C_in, 3, 3) as an image: RGB for 3 input channels (each scaled to [0, 1]), else the mean."""
    w = weight.astype(np.float32)
    w = w.transpose(1, 2, 0) if w.shape[0] == 3 else w.mean(0)
    span = float(np.abs(w).max()) or 1.0
    return (w / span + 1) / 2


def probe_example_figure(examples: list[tuple[str, str, dict, dict]], out_dir: str, channels: int = 8) -> str | None:
    """The paper's notebook figure for the first pairs: per model, rows = first-conv filters, ReLU(conv) of the
    clean image, of the perturbed image, and their difference, for the first ``channels`` output channels;
    the robust model beside its normal counterpart, one shared colour scale per row and pair."""
    if not examples:
        return None
    n_pairs = len(examples)
    columns = 2 * channels + 1
    fig, axes = plt.subplots(4 * n_pairs, columns, figsize=(FIG_WIDTH, 0.75 * 4 * n_pairs + 0.3), squeeze=False)
    for p, (robust_id, normal_id, robust, normal) in enumerate(examples):
        k = min(channels, robust["clean"].shape[0], normal["clean"].shape[0])
        rows = ("filters", "clean", "perturbed", "difference")
        for r, what in enumerate(rows):
            ax_row = axes[4 * p + r]
            if what == "difference":
                values = [np.abs(e["perturbed"][:k].astype(np.float32) - e["clean"][:k].astype(np.float32))
                          for e in (robust, normal)]
            elif what != "filters":
                values = [e[what][:k].astype(np.float32) for e in (robust, normal)]
            top = max(float(v.max()) for v in values) if what != "filters" else 1.0
            for side, (example, model_id) in enumerate(((robust, robust_id), (normal, normal_id))):
                for c in range(channels):
                    ax = ax_row[side * (channels + 1) + c]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if c >= k:
                        ax.axis("off")
                        continue
                    if what == "filters":
                        tile = _filter_tile(example["filters"][c])
                        ax.imshow(tile, cmap=None if tile.ndim == 3 else "coolwarm", vmin=0, vmax=1)
                    else:
                        ax.imshow(values[side][c], cmap="magma" if what == "difference" else "viridis",
                                  vmin=0, vmax=top or 1.0)
                    if c == 0:
                        ax.set_ylabel(what, fontsize=7)
                    if r == 0 and c == 0:
                        kind = str(example["perturbation"])
                        ax.set_title(f"{'robust' if side == 0 else 'normal'}: {_short(model_id)} ({kind})",
                                     fontsize=8, loc="left")
            ax_row[channels].axis("off")
    fig.subplots_adjust(wspace=0.05, hspace=0.35)
    return save_figure(fig, out_dir, "probe_first_stage")
