"""What a probe run is asked to do (``ProbeConfig``); standard library only (the CLI reads its defaults).

The ``key`` of a config names everything that changes the numbers: a model whose
committed probe rows were computed under another key is probed again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from pipeline.errors import ConfigError

KINDS = ("pgd", "random", "transfer")
"""Perturbations: PGD against the model itself, uniform random signs, and one fixed PGD set from a reference model."""
STAGES = ("conv", "conv_relu")
"""Where the first stage is read: the first executed conv's output, and ReLU of it."""
DATA_KINDS = ("synthetic", "cifar10", "cifar100", "imagenet")
DEFAULT_EPS = 8 / 255
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the first-stage probe (docs/design.md, "The first-stage probe")."""

    data: str = "synthetic"
    """``synthetic``, ``cifar10:DIR``, ``cifar100:DIR`` (torchvision layout) or ``imagenet:DIR`` (an ImageFolder)."""
    n_images: int = 512
    eps: float = DEFAULT_EPS
    """L-infinity radius on [0, 1] images."""
    kinds: tuple[str, ...] = KINDS
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    """Step of PGD; default 2.5 eps / steps (Madry et al.)."""
    seed: int = 0
    batch_size: int = 128
    reference: str | None = None
    """model_id of the model the ``transfer`` perturbations are computed on (default: the first probed model)."""
    transfer_set: str | None = field(default=None, compare=False)
    """File of the prepared transfer set, relative to the dataset root (set by the run, not by users)."""

    def __post_init__(self) -> None:
        kind = self.data.split(":", 1)[0]
        if kind not in DATA_KINDS:
            raise ConfigError(f"--probe-data {self.data!r}: use synthetic, cifar10:DIR, cifar100:DIR or imagenet:DIR")
        if kind != "synthetic" and ":" not in self.data:
            raise ConfigError(f"--probe-data {kind} needs a folder: {kind}:DIR (filterlens never downloads data)")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ConfigError(f"--probe {','.join(self.kinds)}: perturbations are {', '.join(KINDS)}")
        if self.n_images < 1 or self.batch_size < 1 or self.pgd_steps < 1:
            raise ConfigError("--probe-images, the batch size and --probe-steps must be at least 1")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"--probe-eps {self.eps}: must be in (0, 1] (images are in [0, 1])")

    @property
    def data_kind(self) -> str:
        return self.data.split(":", 1)[0]

    @property
    def data_dir(self) -> str | None:
        return self.data.split(":", 1)[1] if ":" in self.data else None

    @property
    def step_size(self) -> float:
        return self.pgd_step_size if self.pgd_step_size is not None else 2.5 * self.eps / self.pgd_steps

    def numbers(self) -> dict:
        """The settings that change the numbers (not the batch size, not where files are)."""
        values = asdict(self)
        for name in ("batch_size", "transfer_set"):
            values.pop(name)
        values["kinds"] = sorted(self.kinds)
        values["pgd_step_size"] = self.step_size
        return values

    def key(self) -> str:
        """A short digest of ``numbers()``: committed probe rows under another key are out of date."""
        text = json.dumps(self.numbers(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_transfer(self, transfer_set: str | None, reference: str | None) -> ProbeConfig:
        """This config with the prepared transfer set (None: the run goes on without the ``transfer`` kind)."""
        kinds = self.kinds if transfer_set else tuple(k for k in self.kinds if k != "transfer")
        if not kinds:
            raise ConfigError("the transfer set could not be prepared and no other perturbation was asked for")
        return replace(self, transfer_set=transfer_set, reference=reference, kinds=kinds)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``--probe pgd,random`` / ``all`` -> the perturbation kinds."""
    if text in ("all", ""):
        return KINDS
    return tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
