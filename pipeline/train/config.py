"""What one training run is: ``TrainConfig`` (validated, hashed into the zoo entry), and ``zoo_plan``. Light: no torch."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.errors import ConfigError

RECIPE_VERSION = 1
"""Bumped whenever the training code changes what a configuration produces; part of the config hash."""

# Keys of TrainConfig that do not change the trained weights' recipe (where and how fast it runs).
_RUNTIME_KEYS = ("threads", "device", "data_root")


@dataclass
class TrainConfig:
    """One model to train: architecture, data, recipe and the attack used for training and for evaluation."""

    arch: str
    dataset: str = "synthetic"
    seed: int = 0
    adversarial: bool = False
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps: float = 8 / 255
    attack_steps: int = 7
    step_size: float = 2 / 255
    eval_steps: int = 10
    eval_step_size: float | None = None
    n_eval_robust: int | None = 1000
    n_train: int | None = None
    n_test: int | None = None
    data_seed: int = 0
    image_size: int = 32
    augment: bool | None = None
    data_root: str | None = None
    threads: int | None = None
    device: str = "auto"
    id_prefix: str = "filterlens-demo"

    def __post_init__(self) -> None:
        parse_arch_spec(self.arch)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.adversarial and (self.eps <= 0 or self.attack_steps < 1 or self.step_size <= 0):
            raise ConfigError("adversarial training needs eps > 0, attack_steps >= 1 and step_size > 0")
        if self.eval_steps < 0 or self.eps < 0:
            raise ConfigError("eval_steps and eps must be >= 0")
        if self.dataset in ("cifar10", "cifar100") and not self.data_root:
            raise ConfigError(f"{self.dataset} needs --data-root, a folder with CIFAR in torchvision's layout "
                              "(filterlens never downloads it)")
        if self.dataset not in ("synthetic", "cifar10", "cifar100"):
            raise ConfigError(f"unknown training dataset {self.dataset!r}; use synthetic, cifar10 or cifar100")
        if self.dataset == "synthetic" and (not self.n_train or not self.n_test):
            self.n_train = self.n_train or 5000
            self.n_test = self.n_test or 1000

    @property
    def arch_name(self) -> str:
        """Short architecture name for ids and file names (the factory or zoo name)."""
        spec = parse_arch_spec(self.arch)
        return spec.name.split(":")[-1]

    @property
    def threat_model(self) -> str:
        return "Linf" if self.adversarial else "none"

    @property
    def model_id(self) -> str:
        kind = "adv" if self.adversarial else "normal"
        return f"{self.id_prefix}/{self.dataset}/{self.threat_model}/{self.arch_name}-{kind}-s{self.seed}"

    @property
    def checkpoint_name(self) -> str:
        kind = "adv" if self.adversarial else "normal"
        return f"{self.dataset}-{self.threat_model}-{self.arch_name}-{kind}-s{self.seed}.pt"

    def recipe(self) -> dict:
        """The fields that determine the trained weights (everything but where/how fast it runs)."""
        values = dataclasses.asdict(self)
        for key in _RUNTIME_KEYS:
            values.pop(key)
        values["recipe_version"] = RECIPE_VERSION
        return values

    def config_hash(self) -> str:
        """Short stable hash of ``recipe()``: a zoo entry with the same hash needs no retraining."""
        text = json.dumps(self.recipe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


DEMO_MODELS_MODULE = "pipeline.train.demo_models"
DEMO_ARCHS = ("small_vgg", "small_resnet", "small_wrn")
"""The demo zoo's architectures (factories of ``pipeline.train.demo_models``)."""


def demo_arch_spec(name: str) -> str:
    """``small_vgg`` -> ``pipeline.train.demo_models:small_vgg`` (the form --arch and zoo files take)."""
    if not name.isidentifier():
        raise KeyError(f"bad demo architecture name {name!r}")
    return f"{DEMO_MODELS_MODULE}:{name}"


def zoo_plan(archs: Sequence[str], seeds: Sequence[int], base: TrainConfig,
             adversarial: Sequence[bool] = (False, True)) -> list[TrainConfig]:
    """Every (arch, adversarial, seed) combination of ``base``: normal and robust counterparts share all else."""
    return [dataclasses.replace(base, arch=arch, seed=seed, adversarial=adv)
            for arch in archs for adv in adversarial for seed in seeds]
