"""One trained model is one unit of work: ``train_one`` runs a ``TrainConfig`` and returns a ``TrainResult``.

The runners (``train_zoo``'s local loop, ``train/ray_runner.py``) call it; it
knows nothing of scheduling or the zoo file.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.checkpoints.architectures import instantiate
from pipeline.errors import ConfigError
from pipeline.train.config import TrainConfig
from pipeline.train.data import ImageData, load_split
from pipeline.train.recipe import evaluate, train_model

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one training run produced: the weights (torch.save bytes) and its measurements."""

    model_id: str
    state_dict_bytes: bytes
    clean_acc: float
    robust_acc: float
    train_seconds: float
    eval_seconds: float
    n_params: int
    device: str
    history: list[dict] = field(default_factory=list)
    model_class: str = ""
    n_eval_clean: int = 0
    n_eval_robust: int = 0
    n_train_images: int = 0


def resolve_train_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is visible; use cpu or auto")
    return torch.device(device)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """A freshly initialised (seeded) network for ``config.arch``; its output size must match the data."""
    torch.manual_seed(config.seed)
    spec = parse_arch_spec(config.arch)
    model = instantiate(spec, num_classes=num_classes if spec.kind in ("timm", "torchvision") else None)
    model.eval()  # the shape probe must not touch BatchNorm running statistics
    with torch.no_grad():
        out = model(torch.zeros(1, 3, config.image_size, config.image_size))
    if out.shape[-1] != num_classes:
        raise ConfigError(f"{config.arch} has {out.shape[-1]} outputs but {config.dataset} has {num_classes} classes; "
                          "use the matching factory (e.g. *_c100 for cifar100)")
    return model


_DATA_CACHE: dict[tuple, ImageData] = {}


def _data(config: TrainConfig, split: str) -> ImageData:
    """The split for ``config`` (cached per process: a Ray worker reuses it across its tasks)."""
    n = config.n_train if split == "train" else config.n_test
    key = (config.dataset, split, config.data_seed, n, config.image_size, config.data_root)
    if key not in _DATA_CACHE:
        if len(_DATA_CACHE) > 4:
            _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_split(config.dataset, split, seed=config.data_seed, n=n, data_root=config.data_root,
                                      image_size=config.image_size)
    return _DATA_CACHE[key]


def train_one(config: TrainConfig, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train and evaluate one model; deterministic for a given config on CPU with a fixed thread count."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_train_device(config.device)
    train_data, test_data = _data(config, "train"), _data(config, "test")
    model = build_model(config, train_data.num_classes)
    started = time.perf_counter()
    history = train_model(model, train_data, config, device, on_epoch)
    trained = time.perf_counter()
    clean, robust = evaluate(model, test_data, config, device)
    evaluated = time.perf_counter()
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buffer)
    log.info("%s: clean %.1f%%, PGD-%d robust %.1f%% (train %.1fs, eval %.1fs on %s)", config.model_id, clean,
             config.eval_steps, robust, trained - started, evaluated - trained, device)
    return TrainResult(config.model_id, buffer.getvalue(), clean, robust, trained - started, evaluated - trained,
                       sum(p.numel() for p in model.parameters()), str(device), history, type(model).__name__,
                       len(test_data), min(config.n_eval_robust or len(test_data), len(test_data)), len(train_data))
