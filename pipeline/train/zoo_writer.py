"""Trained models into a zoo file the build reads: entries (``ZooEntry`` form), atomic writes, reuse checks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import yaml

from pipeline.atomic_write import write_bytes_atomic
from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.digest import sha256_file
from pipeline.errors import ConfigError
from pipeline.train.config import RECIPE_VERSION, TrainConfig
from pipeline.zoo.zoo_file import ZooEntry

if TYPE_CHECKING:
    from pipeline.train.run_one import TrainResult


def architecture_name(arch: str, model_class: str = "") -> str:
    """Human-readable architecture name: the demo factories' names, timm/torchvision names, else the model's class."""
    spec = parse_arch_spec(arch)
    if spec.kind == "module" and spec.name.startswith("pipeline.train.demo_models:"):
        from pipeline.train.demo_models import ARCHITECTURES

        factory = spec.name.split(":")[1]
        if factory in ARCHITECTURES:
            return ARCHITECTURES[factory][0]
    if spec.kind in ("timm", "torchvision") or not model_class:
        return spec.name.split(":")[-1]
    return model_class


def zoo_entry(config: TrainConfig, result: TrainResult, source: str, sha256: str) -> dict:
    """The zoo YAML entry of a trained model (a ZooEntry in zoo-file form)."""
    step_size = config.eval_step_size if config.eval_step_size is not None else 2.5 * config.eps / max(1, config.eval_steps)
    metadata = {
        "seed": config.seed,
        "epochs": config.epochs,
        "adversarial_training": config.adversarial,
        "attack_steps": config.attack_steps if config.adversarial else 0,
        "step_size": round(config.step_size, 7) if config.adversarial else None,
        "eval_attack": f"PGD-Linf-{config.eval_steps} (step {step_size:.6f}, random start)",
        "n_eval_robust": result.n_eval_robust,
        "n_train": result.n_train_images,
        "n_test": result.n_eval_clean,
        "data_seed": config.data_seed,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "train_seconds": round(result.train_seconds, 2),
        "eval_seconds": round(result.eval_seconds, 2),
        "device": result.device,
        "n_params": result.n_params,
        "config_hash": config.config_hash(),
        "recipe_version": RECIPE_VERSION,
    }
    entry = ZooEntry(
        model_id=config.model_id, sources=[source], sha256=sha256, arch=config.arch, dataset=config.dataset,
        threat_model=config.threat_model, robust=config.adversarial, input_shape=(3, config.image_size, config.image_size),
        architecture=architecture_name(config.arch, result.model_class), clean_acc=round(result.clean_acc, 2),
        robust_acc=round(result.robust_acc, 2), eps=round(config.eps, 7), extra_data=False, metadata=metadata,
    )
    return entry.to_yaml_dict()


def read_zoo(path: str) -> dict:
    """The zoo file as a dict with ``name`` and ``models`` (an empty zoo when the file does not exist)."""
    if not os.path.exists(path):
        return {"name": None, "models": []}
    try:
        with open(path) as fh:
            zoo = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"zoo file {path} is not valid YAML ({str(exc).splitlines()[0]}); fix or delete it") from None
    if not isinstance(zoo, dict) or not isinstance(zoo.get("models", []), list):
        raise ConfigError(f"zoo file {path} must be a mapping with a 'models' list")
    zoo.setdefault("models", [])
    return zoo


def write_zoo(path: str, name: str, entries: Sequence[dict]) -> None:
    """Write the zoo YAML atomically; keys in a stable order, and an unchanged zoo is not rewritten."""
    data = yaml.safe_dump({"name": name, "models": list(entries)}, sort_keys=False, default_flow_style=False,
                          width=120).encode()
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            if fh.read() == data:
                return  # unchanged: leave the file (and its mtime) alone
    write_bytes_atomic(path, data)


def reusable(entry: dict | None, config: TrainConfig, zoo_dir: str) -> bool:
    """True when ``entry`` was trained from the same recipe and its checkpoint is present with the recorded digest."""
    if not entry or entry.get("id") != config.model_id:
        return False
    if (entry.get("metadata") or {}).get("config_hash") != config.config_hash():
        return False
    source = entry.get("source")
    if not isinstance(source, str) or "://" in source:
        return False
    path = source if os.path.isabs(source) else os.path.join(zoo_dir, source)
    return os.path.isfile(path) and sha256_file(path) == entry.get("sha256")
