"""Train small CNNs normally or with PGD-Linf adversarial training, evaluate them, write checkpoints and a zoo file.

The math (``pgd_linf``, ``train_model``, ``evaluate``) is plain PyTorch. One
trained model is one unit of work: ``train_one`` runs a ``TrainConfig`` and
returns the state dict bytes with the measured accuracies; ``train_zoo``
schedules several of them (one Ray task per model, or in-process), writes
each checkpoint atomically and keeps the zoo YAML in the format the build
reads. A model whose zoo entry, configuration hash and checkpoint digest are
unchanged is reused, not retrained.

Adversarial training follows Madry et al. (2018): every minibatch is replaced
by its PGD-Linf adversarial examples (random start in the eps-ball, ``attack_steps``
signed-gradient steps of ``step_size``, projection onto the ball and [0, 1]).
Defaults are the CIFAR recipe: eps 8/255, 7 steps of 2/255. Robust accuracy is
measured with a fresh PGD attack (``eval_steps`` steps) on the held-out split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from pipeline.atomic_write import write_bytes_atomic
from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.checkpoints.architectures import instantiate
from pipeline.digest import sha256_file
from pipeline.errors import ConfigError, TrainingError
from pipeline.train.config import RECIPE_VERSION, TrainConfig
from pipeline.train.data import ImageData, load_split
from pipeline.zoo.zoo_file import ZooEntry

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


# --- the math ------------------------------------------------------------------------------

def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
             generator: torch.Generator | None = None, random_start: bool = True) -> torch.Tensor:
    """PGD-Linf adversarial examples of ``x`` in the eps-ball intersected with [0, 1] (Madry et al.).

    Maximises the cross-entropy; the model's mode (train/eval) is left as given.
    ``steps = 0`` returns ``x`` (with the random start when ``random_start``).
    """
    if eps <= 0:
        return x.detach()
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1
        x_adv = (x + eps * noise).clamp(0.0, 1.0)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def _random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random translation by up to ``pad`` pixels (zero padding), as in the CIFAR recipe."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def _augment(x: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    x = _random_crop(x, 2, generator)
    if flip:
        mask = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    return x


def lr_at(step: int, total: int, peak: float, warmup_fraction: float = 0.15) -> float:
    """One-cycle schedule: linear warm-up to ``peak``, then cosine decay to zero at ``total``."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_model(model: nn.Module, data: ImageData, config: TrainConfig, device: torch.device,
                on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``model`` in place on ``data`` (normal or PGD-Linf adversarial); returns per-epoch loss/accuracy."""
    generator = torch.Generator().manual_seed(config.seed)
    attack_generator = torch.Generator().manual_seed(config.seed + 1)
    model.to(device, memory_format=torch.channels_last)  # ~25% faster convolutions on CPU, same math
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum, nesterov=True)
    augment = config.augment if config.augment is not None else config.dataset != "synthetic"
    # horizontal flips would turn a 45-degree grating into a 135-degree one: never for synthetic
    flip = config.dataset != "synthetic"
    n = len(data)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    step = 0
    history = []
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        seen = correct = 0
        loss_sum = 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            x, y = data.images[idx], data.labels[idx]
            if augment:
                x = _augment(x, generator, flip)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            if config.adversarial:
                model.eval()
                x = pgd_linf(model, x, y, config.eps, config.attack_steps, config.step_size, attack_generator)
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, config.lr)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": 100.0 * correct / seen}
        history.append(record)
        log.debug("%s epoch %d: %s", config.model_id, epoch + 1, record)
        if on_epoch is not None:
            on_epoch(record)
        if not math.isfinite(record["loss"]):
            raise TrainingError(f"{config.model_id}: training diverged (loss {record['loss']}) in epoch {epoch + 1}; "
                                "lower --lr")
    model.eval()
    return history


def accuracy(model: nn.Module, data: ImageData, device: torch.device, batch_size: int = 500,
             eps: float = 0.0, steps: int = 0, step_size: float = 0.0, seed: int = 0,
             limit: int | None = None) -> float:
    """Top-1 accuracy in percent on ``data`` (first ``limit`` images): clean, or under PGD-Linf when eps > 0."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    n = len(data) if limit is None else min(limit, len(data))
    if n == 0:
        return float("nan")
    correct = 0
    for start in range(0, n, batch_size):
        x = data.images[start:min(n, start + batch_size)].to(device).contiguous(memory_format=torch.channels_last)
        y = data.labels[start:min(n, start + batch_size)].to(device)
        if eps > 0:
            x = pgd_linf(model, x, y, eps, steps, step_size, generator)
        with torch.no_grad():
            correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / n


def evaluate(model: nn.Module, data: ImageData, config: TrainConfig, device: torch.device) -> tuple[float, float]:
    """(clean accuracy, PGD-Linf robust accuracy) in percent on the held-out split."""
    clean = accuracy(model, data, device)
    step_size = config.eval_step_size if config.eval_step_size is not None else 2.5 * config.eps / max(1, config.eval_steps)
    robust = accuracy(model, data, device, eps=config.eps, steps=config.eval_steps, step_size=step_size,
                      seed=config.seed + 2, limit=config.n_eval_robust)
    return clean, robust


# --- one unit of work ----------------------------------------------------------------------

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


# --- checkpoints and the zoo file ----------------------------------------------------------

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


# --- scheduling: one task per model --------------------------------------------------------

@dataclass
class ZooSummary:
    """Outcome of ``train_zoo``: which models were trained, reused or failed, and the zoo file."""

    zoo_path: str
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    entries: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = "local"


def _estimated_cost(config: TrainConfig) -> float:
    """Relative cost for longest-first scheduling: adversarial training costs ~(steps + 1) forward/backward passes."""
    return config.epochs * (config.n_train or 50000) * ((config.attack_steps + 1) if config.adversarial else 1)


def _run_local(configs: list[TrainConfig], progress: bool,
               on_done: Callable[[TrainConfig, TrainResult | BaseException], None]) -> str:
    with tqdm(total=len(configs), desc="training", unit="model", disable=None if progress else True) as bar:
        for config in configs:
            bar.set_postfix_str(config.model_id.rsplit("/", 1)[-1])
            try:
                result = train_one(config)
            except Exception as exc:
                on_done(config, exc)
            else:
                on_done(config, result)
            bar.update(1)
    return "local"


def train_zoo(configs: Iterable[TrainConfig], zoo_path: str, *, name: str = "filterlens-demo",
              backend: str = "ray", ray_address: str | None = "local", force: bool = False,
              keep_other_entries: bool = True, progress: bool = True,
              checkpoint_dir: str = "checkpoints") -> ZooSummary:
    """Train (or reuse) every configured model and write the zoo YAML at ``zoo_path``.

    Checkpoints go to ``<zoo dir>/<checkpoint_dir>/`` (atomic writes). The zoo
    file is rewritten after every finished model, so an interrupted run keeps
    what it finished. Entries of other models already in the file are kept when
    ``keep_other_entries``. Raises TrainingError after writing the zoo when a
    model failed.
    """
    started = time.perf_counter()
    configs = list(configs)
    ids = [c.model_id for c in configs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"the zoo plan has duplicate model ids: {', '.join(duplicates)}")
    if backend not in ("ray", "local"):
        raise ConfigError(f"backend must be ray or local, not {backend!r}")
    zoo_path = os.path.abspath(zoo_path)
    zoo_dir = os.path.dirname(zoo_path)
    existing = read_zoo(zoo_path)
    by_id = {e.get("id"): e for e in existing["models"] if isinstance(e, dict)}
    summary = ZooSummary(zoo_path)
    entries: dict[str, dict] = {}
    to_train = []
    for config in configs:
        entry = by_id.get(config.model_id)
        if not force and reusable(entry, config, zoo_dir):
            entries[config.model_id] = entry
            summary.reused.append(config.model_id)
        else:
            to_train.append(config)
    others = [e for e in existing["models"] if isinstance(e, dict) and e.get("id") not in set(ids)]
    if not keep_other_entries:
        others = []

    def flush() -> None:
        planned = [entries[i] for i in ids if i in entries]
        write_zoo(zoo_path, name, planned + others)

    def on_done(config: TrainConfig, outcome: TrainResult | BaseException) -> None:
        if isinstance(outcome, BaseException):
            summary.failed[config.model_id] = f"{type(outcome).__name__}: {str(outcome).splitlines()[0] if str(outcome) else ''}"
            log.error("%s: training failed: %s", config.model_id, summary.failed[config.model_id])
            return
        relative = os.path.join(checkpoint_dir, config.checkpoint_name)
        write_bytes_atomic(os.path.join(zoo_dir, relative), outcome.state_dict_bytes)
        digest = hashlib.sha256(outcome.state_dict_bytes).hexdigest()
        entries[config.model_id] = zoo_entry(config, outcome, relative, digest)
        summary.trained.append(config.model_id)
        flush()

    if summary.reused:
        log.info("reusing %d trained models from %s", len(summary.reused), zoo_path)
    to_train.sort(key=_estimated_cost, reverse=True)
    if to_train:
        if backend == "ray":
            from pipeline.train.ray_runner import train_on_ray  # Ray only where it runs

            summary.backend = train_on_ray(to_train, ray_address, progress, on_done, train_one)
        else:
            summary.backend = _run_local(to_train, progress, on_done)
    flush()
    summary.entries = [entries[i] for i in ids if i in entries]
    summary.seconds = time.perf_counter() - started
    if summary.failed:
        first = next(iter(summary.failed.items()))
        raise TrainingError(f"{len(summary.failed)} of {len(configs)} models failed to train "
                            f"(first: {first[0]}: {first[1]}); the others are in {zoo_path}")
    return summary


def zoo_plan(archs: Sequence[str], seeds: Sequence[int], base: TrainConfig,
             adversarial: Sequence[bool] = (False, True)) -> list[TrainConfig]:
    """Every (arch, adversarial, seed) combination of ``base``: normal and robust counterparts share all else."""
    return [dataclasses.replace(base, arch=arch, seed=seed, adversarial=adv)
            for arch in archs for adv in adversarial for seed in seeds]
