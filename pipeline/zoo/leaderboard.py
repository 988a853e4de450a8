"""RobustBench leaderboard metadata and the paper's pairings, shipped as package data (``pipeline/zoo/data``).

Where a leaderboard entry's metadata comes from, first match wins: ``--model-info PATH``
(that file or ``model_info/`` tree alone); else the user cache that ``filterlens zoo
refresh`` writes (``$FILTERLENS_CACHE`` or ``~/.cache/filterlens``,
``robustbench/model_info.jsonl``), entry by entry over the shipped snapshot. Light: no
robustbench, no network.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.zoo.spec import ADVERSARIAL_THREAT_MODELS
from pipeline.zoo.zoo_file import parse_number

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

log = logging.getLogger(__name__)

SNAPSHOT = "robustbench_model_info.jsonl"
"""The shipped leaderboard snapshot (RobustBench ``model_info/`` of 2025-03-31)."""
SNAPSHOT_DATE = "2025-03-31"
PAPER_PAIRS = "paper_robust_vs_normal_pairings.csv"
"""The paper's 71 robust/normal pairings (Gavrikov & Keuper 2022, CC BY-SA 4.0)."""

Key = tuple[str, str, str]
"""(dataset, threat_model, name) of a leaderboard entry."""


def data_file(name: str) -> Traversable:
    """A file of the package data folder ``pipeline/zoo/data``."""
    return resources.files("pipeline.zoo").joinpath("data", name)


def default_cache_dir() -> Path:
    return Path(os.environ.get("FILTERLENS_CACHE", Path.home() / ".cache" / "filterlens"))


def cached_model_info_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``filterlens zoo refresh`` keeps the leaderboard it fetched."""
    return Path(cache_dir or default_cache_dir()) / "robustbench" / "model_info.jsonl"


def parse_model_info(text: str, where: str) -> dict[Key, dict]:
    """Leaderboard entries of a JSON-lines text, keyed by (dataset, threat_model, model)."""
    info: dict[Key, dict] = {}
    twice = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (row["dataset"], row["threat_model"], row["model"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{where}:{number}: not a model_info JSON line ({exc})") from None
        if key in info:
            twice.append(f"{'/'.join(key)} (line {number})")
        info[key] = row
    if twice:
        log.warning("%s: %d entries appear twice, the later line wins: %s", where, len(twice), ", ".join(twice[:5]))
    return info


def with_key(row: dict, key: Key) -> dict:
    """A model_info row led by its key (from where it was found: its folder or URL, not the JSON's own fields)."""
    own = dict(zip(("dataset", "threat_model", "model"), key, strict=True))
    return {**own, **{k: v for k, v in row.items() if k not in own}}


def load_model_info(path: str | os.PathLike) -> dict[Key, dict]:
    """Leaderboard entries keyed by (dataset, threat_model, name) from a JSONL file or a model_info/ tree."""
    path = Path(path)
    if path.is_file():
        return parse_model_info(path.read_text(), str(path))
    if not path.is_dir():
        raise ConfigError(f"--model-info {path}: no such file or directory")
    info: dict[Key, dict] = {}
    for file in sorted(path.glob("*/*/*.json")):
        dataset, threat_model = file.parent.parent.name, file.parent.name
        try:
            row = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file}: not a model_info JSON file ({exc})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{file}: not a model_info JSON object")
        info[(dataset, threat_model, file.stem)] = with_key(row, (dataset, threat_model, file.stem))
    return info


def shipped_model_info() -> dict[Key, dict]:
    """The snapshot shipped with the package."""
    return parse_model_info(data_file(SNAPSHOT).read_text(), f"pipeline/zoo/data/{SNAPSHOT}")


def leaderboard_info(model_info: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None) -> dict[Key, dict]:
    """The metadata to use: ``model_info`` alone when given, else the refreshed cache over the shipped snapshot."""
    if model_info is not None:
        return load_model_info(model_info)
    info = shipped_model_info()
    cached = cached_model_info_path(cache_dir)
    if cached.is_file():
        info.update(parse_model_info(cached.read_text(), str(cached)))
    return info


def _number(meta: dict, key: str, name: str) -> float | None:
    value = meta.get(key)
    return None if value in (None, "") else parse_number(value, key, name)


def entry_spec(dataset: str, threat_model: str, name: str, meta: dict) -> dict:
    """The ModelSpec fields of one leaderboard entry (``meta`` may be empty).

    ``Standard`` entries are normally trained (threat_model none); ``robust`` is true for
    the adversarial leaderboards (Linf, L2) only; corruptions entries keep their threat model.
    """
    threat = "none" if name.startswith("Standard") else threat_model
    accuracy = "corruptions_acc" if threat_model == "corruptions" else "autoattack_acc"
    return {"dataset": dataset, "threat_model": threat, "robust": threat in ADVERSARIAL_THREAT_MODELS,
            "architecture": meta.get("architecture") or None, "clean_acc": _number(meta, "clean_acc", name),
            "robust_acc": _number(meta, accuracy, name), "eps": _number(meta, "eps", name),
            "extra_data": meta.get("additional_data"), "paper": meta.get("title") or meta.get("link"),
            "venue": meta.get("venue")}


def robustbench_key(arch: str | None) -> Key | None:
    """(dataset, threat_model, name) of a ``robustbench:<dataset>:<threat_model>:<name>`` spec, else None."""
    parts = (arch or "").split(":")
    if len(parts) == 4 and parts[0] == "robustbench" and all(parts[1:]):
        return parts[1], parts[2], parts[3]
    return None
