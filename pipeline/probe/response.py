"""How much of a perturbation a stage lets through: pure tensor functions (docs/design.md, "The first-stage probe").

For an image x, a perturbation d and a stage a (the first conv's output, or ReLU of it):

    relative change  r = ||a(x + d) - a(x)||_2 / ||a(x)||_2      (per image, over all channels and pixels)
    gain             g = r / (||d||_2 / ||x||_2)                  (1: the stage passes the perturbation
                                                                   through as strongly as the image itself)
    channel change   r_c = ||a_c(x + d) - a_c(x)||_2 / ||a_c(x)||_2   (per output channel)

A ratio with a zero denominator (a stage that outputs nothing for the image, a black
image) is undefined: it is left out of the means and counted, never taken as 0 or NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.probe.config import QUANTILES


def per_image_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each image (first dimension) over everything else, in float64."""
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1).double(), dim=1)


def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(numerator / denominator, defined): zero denominators give 0 with defined False."""
    defined = denominator > 0
    safe = torch.where(defined, denominator, torch.ones_like(denominator))
    return torch.where(defined, numerator / safe, torch.zeros_like(numerator)), defined


def relative_change(clean: torch.Tensor, perturbed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image ``||perturbed - clean|| / ||clean||`` and whether it is defined."""
    return ratio(per_image_norm(perturbed - clean), per_image_norm(clean))


def input_ratio(x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image ``||delta|| / ||x||`` (the relative size of the perturbation in input space)."""
    return ratio(per_image_norm(delta), per_image_norm(x))


def channel_change(clean: torch.Tensor, perturbed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and output channel (N, C) ``||a_c(x+d) - a_c(x)|| / ||a_c(x)||`` and whether it is defined."""
    n, c = clean.shape[:2]
    diff = torch.linalg.vector_norm((perturbed - clean).reshape(n, c, -1).double(), dim=2)
    base = torch.linalg.vector_norm(clean.reshape(n, c, -1).double(), dim=2)
    return ratio(diff, base)


@dataclass
class StageResponse:
    """Per-image ratios of one stage under one perturbation, accumulated over batches."""

    change: list[np.ndarray] = field(default_factory=list)
    change_defined: list[np.ndarray] = field(default_factory=list)
    gain: list[np.ndarray] = field(default_factory=list)
    gain_defined: list[np.ndarray] = field(default_factory=list)
    channel_sum: np.ndarray | None = None
    channel_count: np.ndarray | None = None

    def add(self, x: torch.Tensor, delta: torch.Tensor, clean: torch.Tensor, perturbed: torch.Tensor) -> None:
        """Add one batch: inputs, the perturbation actually applied, and the stage's clean and perturbed outputs."""
        change, defined = relative_change(clean, perturbed)
        size, size_defined = input_ratio(x, delta)
        gain, gain_defined = ratio(change, size)
        gain_defined &= defined & size_defined
        per_channel, channel_defined = channel_change(clean, perturbed)
        self.change.append(change.cpu().numpy())
        self.change_defined.append(defined.cpu().numpy())
        self.gain.append(gain.cpu().numpy())
        self.gain_defined.append(gain_defined.cpu().numpy())
        sums = torch.where(channel_defined, per_channel, torch.zeros_like(per_channel)).sum(0).cpu().numpy()
        counts = channel_defined.sum(0).cpu().numpy()
        self.channel_sum = sums if self.channel_sum is None else self.channel_sum + sums
        self.channel_count = counts if self.channel_count is None else self.channel_count + counts

    def summary(self) -> dict:
        """The probes row's numbers: means, quantiles, undefined counts, per-channel means (None where undefined)."""
        change = np.concatenate(self.change)[np.concatenate(self.change_defined)]
        gain = np.concatenate(self.gain)[np.concatenate(self.gain_defined)]
        n_images = int(sum(len(c) for c in self.change))
        row = {"n_undefined": n_images - int(change.size), "n_gain_undefined": n_images - int(gain.size)}
        row.update(describe(change, "rel_change"))
        row["gain_mean"] = float(gain.mean()) if gain.size else None
        row["gain_median"] = float(np.median(gain)) if gain.size else None
        if self.channel_sum is None:
            row["channel_rel_change"] = []
        else:
            row["channel_rel_change"] = [float(s / c) if c else None
                                         for s, c in zip(self.channel_sum, self.channel_count, strict=True)]
        return row


def describe(values: np.ndarray, prefix: str) -> dict:
    """Mean, standard deviation and the QUANTILES of ``values`` as ``<prefix>_mean``, ``<prefix>_q05``, ...;
    all None when there are no values."""
    empty = values.size == 0
    row = {f"{prefix}_mean": None if empty else float(values.mean()),
           f"{prefix}_std": None if empty else float(values.std())}
    for q in QUANTILES:
        row[f"{prefix}_q{round(q * 100):02d}"] = None if empty else float(np.quantile(values, q))
    return row
