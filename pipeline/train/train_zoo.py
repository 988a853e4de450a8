"""``train_zoo``: train (or reuse) a list of models, one task each, and keep the zoo file up to date.

Each checkpoint is written atomically and the zoo YAML rewritten after every
finished model, so an interrupted run keeps what it finished. A model whose zoo
entry, configuration hash and checkpoint digest are unchanged is reused, not
retrained. Runs on Ray (``train/ray_runner.py``, handed ``train_one``) or in-process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pipeline.atomic_write import write_bytes_atomic
from pipeline.errors import ConfigError, TrainingError
from pipeline.progress import progress_bar
from pipeline.train.config import TrainConfig
from pipeline.train.run_one import TrainResult, train_one
from pipeline.train.zoo_writer import read_zoo, reusable, write_zoo, zoo_entry

log = logging.getLogger(__name__)


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
    with progress_bar(len(configs), "training", "models", progress) as bar:
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


class _ZooFile:
    """The zoo YAML being written: planned entries in plan order, then the other models kept from the file."""

    def __init__(self, path: str, name: str, ids: list[str], checkpoint_dir: str, summary: ZooSummary) -> None:
        self.path, self.name, self.ids, self.checkpoint_dir, self.summary = path, name, ids, checkpoint_dir, summary
        self.dir = os.path.dirname(path)
        self.entries: dict[str, dict] = {}
        self.others: list[dict] = []

    def plan(self, configs: list[TrainConfig], force: bool, keep_other_entries: bool) -> list[TrainConfig]:
        """Reuse what the file already holds for the same recipe; return the configs still to train."""
        existing = read_zoo(self.path)["models"]
        by_id = {e.get("id"): e for e in existing if isinstance(e, dict)}
        to_train = []
        for config in configs:
            entry = by_id.get(config.model_id)
            if not force and reusable(entry, config, self.dir):
                self.entries[config.model_id] = entry
                self.summary.reused.append(config.model_id)
            else:
                to_train.append(config)
        if keep_other_entries:
            self.others = [e for e in existing if isinstance(e, dict) and e.get("id") not in set(self.ids)]
        return to_train

    def planned(self) -> list[dict]:
        return [self.entries[i] for i in self.ids if i in self.entries]

    def flush(self) -> None:
        write_zoo(self.path, self.name, self.planned() + self.others)

    def on_done(self, config: TrainConfig, outcome: TrainResult | BaseException) -> None:
        """Record one finished model: its checkpoint and entry (then rewrite the file), or its failure."""
        if isinstance(outcome, BaseException):
            message = str(outcome).splitlines()[0] if str(outcome) else ""
            self.summary.failed[config.model_id] = f"{type(outcome).__name__}: {message}"
            log.error("%s: training failed: %s", config.model_id, self.summary.failed[config.model_id])
            return
        relative = os.path.join(self.checkpoint_dir, config.checkpoint_name)
        write_bytes_atomic(os.path.join(self.dir, relative), outcome.state_dict_bytes)
        digest = hashlib.sha256(outcome.state_dict_bytes).hexdigest()
        self.entries[config.model_id] = zoo_entry(config, outcome, relative, digest)
        self.summary.trained.append(config.model_id)
        self.flush()


def _check_plan(configs: list[TrainConfig], backend: str) -> None:
    ids = [c.model_id for c in configs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"the zoo plan has duplicate model ids: {', '.join(duplicates)}")
    if backend not in ("ray", "local"):
        raise ConfigError(f"backend must be ray or local, not {backend!r}")


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
    _check_plan(configs, backend)
    zoo_path = os.path.abspath(zoo_path)
    summary = ZooSummary(zoo_path)
    zoo = _ZooFile(zoo_path, name, [c.model_id for c in configs], checkpoint_dir, summary)
    to_train = zoo.plan(configs, force, keep_other_entries)
    if summary.reused:
        log.info("reusing %d trained models from %s", len(summary.reused), zoo_path)
    to_train.sort(key=_estimated_cost, reverse=True)
    if to_train:
        if backend == "ray":
            from pipeline.train.ray_runner import train_on_ray  # Ray only where it runs

            summary.backend = train_on_ray(to_train, ray_address, progress, zoo.on_done, train_one)
        else:
            summary.backend = _run_local(to_train, progress, zoo.on_done)
    zoo.flush()
    summary.entries = zoo.planned()
    summary.seconds = time.perf_counter() - started
    if summary.failed:
        first = next(iter(summary.failed.items()))
        raise TrainingError(f"{len(summary.failed)} of {len(configs)} models failed to train "
                            f"(first: {first[0]}: {first[1]}); the others are in {zoo_path}")
    return summary
