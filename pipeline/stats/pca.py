"""PCA bases (all / robust / normal selected filters) from the per-layer sufficient statistics, and their
tables; no pass over the filters."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.stats.shift import PCABasis, pca_from_statistics, sum_statistics


def pca_bases(layer_stats: pd.DataFrame) -> dict[str, PCABasis | None]:
    """Bases of all / robust / normal selected filters from the per-layer statistics (None: too few filters)."""
    bases: dict[str, PCABasis | None] = {}
    for name, mask in (("all", np.ones(len(layer_stats), bool)), ("robust", layer_stats.robust.to_numpy(bool)),
                       ("normal", ~layer_stats.robust.to_numpy(bool))):
        part = layer_stats[mask]
        count, total, scatter = sum_statistics(part.n_nonsparse, part.pca_sum, part.pca_scatter)
        bases[name] = pca_from_statistics(count, total, scatter) if count >= 2 else None
    return bases


def basis_tables(bases: dict[str, PCABasis | None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The explained variance and the components (with the mean) of each basis, one row per component."""
    variance, components = [], []
    for name, basis in bases.items():
        if basis is None:
            continue
        cumulative = np.cumsum(basis.explained_variance_ratio)
        for k in range(9):
            variance.append({"basis": name, "component": k, "n_filters": basis.n,
                             "explained_variance": basis.explained_variance[k],
                             "explained_variance_ratio": basis.explained_variance_ratio[k],
                             "cumulative_ratio": cumulative[k]})
            components.append({"basis": name, "component": k,
                               **{f"v{j}": basis.components[k, j] for j in range(9)},
                               **{f"mean{j}": basis.mean[j] for j in range(9)}})
    return pd.DataFrame(variance), pd.DataFrame(components)
