"""Effect sizes of robust vs normal: the difference of means and Cliff's delta, with bootstrap intervals.

Cliff's delta is P(robust > normal) - P(robust < normal) over all (robust, normal) model pairs,
in [-1, 1]; it is the rank statistic of the Mann-Whitney U test the depth profile uses
(delta = 2U / (n_r n_n) - 1), so the size and the test speak of the same thing. The
intervals are percentile bootstraps that resample the models of each side independently
(with replacement, ``n_boot`` times, a fixed seed): descriptive, not a test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOT = 2000


@dataclass
class Effect:
    """Robust minus normal on one metric: means, the mean difference and Cliff's delta, each with its interval."""

    n_robust: int
    n_normal: int
    mean_robust: float
    mean_normal: float
    difference: float
    difference_lo: float
    difference_hi: float
    cliffs_delta: float
    delta_lo: float
    delta_hi: float


def cliffs_delta(robust: np.ndarray, normal: np.ndarray) -> float:
    """P(robust > normal) - P(robust < normal) over all pairs of one robust and one normal value."""
    if not len(robust) or not len(normal):
        return float("nan")
    return float(np.sign(np.subtract.outer(robust, normal)).mean())


def effect(robust: np.ndarray, normal: np.ndarray, level: float = 0.95, n_boot: int = N_BOOT,
           seed: int = 0) -> Effect:
    """The effect of one metric; intervals need at least 2 models on each side (else NaN)."""
    robust, normal = np.asarray(robust, float), np.asarray(normal, float)
    nan = float("nan")
    n_r, n_n = len(robust), len(normal)
    mean_r = float(robust.mean()) if n_r else nan
    mean_n = float(normal.mean()) if n_n else nan
    out = Effect(n_r, n_n, mean_r, mean_n, mean_r - mean_n, nan, nan, cliffs_delta(robust, normal), nan, nan)
    if n_r < 2 or n_n < 2:
        return out
    rng = np.random.default_rng(seed)
    w_r = rng.multinomial(n_r, np.full(n_r, 1 / n_r), size=n_boot)  # how often each model is drawn
    w_n = rng.multinomial(n_n, np.full(n_n, 1 / n_n), size=n_boot)
    differences = w_r @ robust / n_r - w_n @ normal / n_n
    signs = np.sign(np.subtract.outer(robust, normal))
    deltas = np.einsum("bi,ij,bj->b", w_r, signs, w_n) / (n_r * n_n)
    tails = [(1 - level) / 2, (1 + level) / 2]
    out.difference_lo, out.difference_hi = (float(v) for v in np.quantile(differences, tails))
    out.delta_lo, out.delta_hi = (float(v) for v in np.quantile(deltas, tails))
    return out
