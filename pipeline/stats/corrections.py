"""Multiple-testing corrections of p-values: Holm-Bonferroni (depth profile) and Benjamini-Hochberg
(correlations)."""

from __future__ import annotations

import numpy as np


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg q-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if not len(valid):
        return q.tolist()
    order = valid[np.argsort(p[valid])[::-1]]
    m = len(valid)
    running = 1.0
    for rank, i in enumerate(order):
        running = min(running, p[i] * m / (m - rank))
        q[i] = running
    return q.tolist()
