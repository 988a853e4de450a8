"""Zoo specs: the list of models a build processes, from a YAML file or a built-in catalog.

A zoo file::

    name: my-zoo
    defaults: {dataset: cifar10}            # optional, merged into every entry
    models:
      - id: lab/cifar10/Linf/run-17          # stable model_id
        source: checkpoints/run17.pt         # path relative to this file, or a URI; a list for ensembles
        sha256: 3b1f...                      # optional; verified after download
        arch: robustbench:cifar10:Linf:Carmon2019Unlabeled   # optional architecture spec
        dataset: cifar10
        threat_model: Linf                   # Linf, L2, corruptions or none
        robust: true                         # adversarially trained; default: threat_model is Linf or L2
        input_shape: 3x32x32                 # optional
        architecture: WideResNet-28-10       # free text, recorded
        clean_acc: 89.7                      # percent, recorded
        robust_acc: 59.5
        eps: 0.0313725
        extra_data: true
        paper: https://arxiv.org/abs/1905.13736
        venue: NeurIPS 2019
        metadata: {any: thing}               # recorded as JSON

Source URIs: local paths, file://, http(s)://, hf://<org>/<repo>[@revision]/<path>,
gdrive:<file id> (as RobustBench uses), s3://, gs:// (via fsspec).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.errors import ConfigError, UnknownArchitectureError
from pipeline.zoo.spec import (
    ADVERSARIAL_THREAT_MODELS,
    SPEC_FIELDS,
    THREAT_MODELS,
    ModelRequest,
    ModelSpec,
    parse_input_shape,
)

ENTRY_KEYS = ("id", "source", "sha256", *[k for k in SPEC_FIELDS if k != "model_id"])
"""The keys of one zoo-file entry, in the order they are written: ``id`` is the ModelSpec's model_id."""


@dataclass
class ZooEntry(ModelSpec):
    """One model of a zoo: its ModelSpec, where its checkpoint is, and its expected digest."""

    sources: list[str] = field(default_factory=list)
    sha256: str | None = None

    def request(self, paths: Sequence[str]) -> ModelRequest:
        """The extraction request for this entry once its checkpoint files are local."""
        return ModelRequest(**asdict(self.spec()), checkpoints=list(paths), source_uri=" ".join(self.sources))

    def to_yaml_dict(self) -> dict:
        """The entry in zoo-file form (``source`` singular when there is one; keys in ENTRY_KEYS order)."""
        values = {**asdict(self), "id": self.model_id,
                  "source": self.sources[0] if len(self.sources) == 1 else list(self.sources),
                  "input_shape": "x".join(map(str, self.input_shape)) if self.input_shape else None}
        return {k: values[k] for k in ENTRY_KEYS if values[k] not in (None, {}, [])}


def parse_number(value: object, key: str, where: str) -> float | None:
    """A zoo number: a float, an int, or a fraction such as ``8/255``; None stays None."""
    if value is None:
        return None
    if isinstance(value, str) and "/" in value:  # "8/255"
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            pass
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r:.40}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value!r:.40}")
    return number


TEXT_KEYS = ("arch", "dataset", "threat_model", "architecture", "paper", "venue")
"""Entry keys whose value must be text (a YAML string)."""


def _check_types(raw: dict, where: str) -> None:
    """Refuse values of the wrong YAML type with one line (``architecture: [1, 2]``, ``extra_data: "yes"``)."""
    if not isinstance(raw["id"], str | int) or isinstance(raw["id"], bool):
        raise ConfigError(f"{where}: id must be text, got a YAML {type(raw['id']).__name__}")
    source = raw.get("source")
    if source is not None and not (isinstance(source, str) or (
            isinstance(source, list) and source and all(isinstance(x, str) for x in source))):
        raise ConfigError(f"{where}: source must be a path/URI or a list of them, got {type(source).__name__}")
    for key in TEXT_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(f"{where}: {key} must be text, got a YAML {type(raw[key]).__name__}")
    if raw.get("extra_data") is not None and not isinstance(raw["extra_data"], bool):
        raise ConfigError(f"{where}: extra_data must be true or false, got {raw['extra_data']!r:.40}")
    if raw.get("arch"):
        try:
            parse_arch_spec(raw["arch"])
        except UnknownArchitectureError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def parse_entry(raw: dict, base_dir: Path | None, where: str) -> ZooEntry:
    """Validate one zoo-file entry; relative local sources are resolved against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each model must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - set(ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
    if not raw.get("id"):
        raise ConfigError(f"{where}: missing 'id'")
    named = f"{where} ({raw['id']})"
    _check_types(raw, named)
    source = raw.get("source")
    if not source:
        raise ConfigError(f"{where} ({raw['id']}): missing 'source'")
    sources = [str(s) for s in (source if isinstance(source, list) else [source])]
    if base_dir is not None:
        sources = [s if "://" in s or s.startswith("gdrive:") or os.path.isabs(s) else str((base_dir / s).resolve())
                   for s in sources]
    threat_model = str(raw.get("threat_model", "none"))
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"{where} ({raw['id']}): threat_model {threat_model!r} is not one of {THREAT_MODELS}")
    robust = raw.get("robust", threat_model in ADVERSARIAL_THREAT_MODELS)
    if not isinstance(robust, bool):
        raise ConfigError(f"{where} ({raw['id']}): robust must be true or false")
    if robust and threat_model == "corruptions":
        raise ConfigError(f"{where} ({raw['id']}): robust: true means adversarially trained (Linf, L2); a "
                          "corruption-robust model keeps threat_model: corruptions with robust: false")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ConfigError(f"{where} ({raw['id']}): metadata must be a mapping")
    input_shape = raw.get("input_shape")
    if input_shape is not None and not re.fullmatch(r"\d+x\d+x\d+", str(input_shape)):
        raise ConfigError(f"{where} ({raw['id']}): input_shape must be CxHxW, e.g. 3x32x32")
    sha256 = raw.get("sha256")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        got = (f"a YAML {type(sha256).__name__} (quote it)" if not isinstance(sha256, str)
               else f"{len(sha256)} characters" if len(sha256) != 64 else "characters that are not hexadecimal")
        raise ConfigError(f"{where} ({raw['id']}): sha256 must be 64 hexadecimal characters in quotes, got {got}")
    return ZooEntry(
        model_id=str(raw["id"]), sources=sources, sha256=sha256.lower() if sha256 else None, arch=raw.get("arch"),
        dataset=str(raw.get("dataset", "unknown")), threat_model=threat_model, robust=robust,
        input_shape=parse_input_shape(str(input_shape)) if input_shape else None, architecture=raw.get("architecture"),
        clean_acc=parse_number(raw.get("clean_acc"), "clean_acc", named),
        robust_acc=parse_number(raw.get("robust_acc"), "robust_acc", named),
        eps=parse_number(raw.get("eps"), "eps", named), extra_data=raw.get("extra_data"),
        paper=raw.get("paper"), venue=raw.get("venue"), metadata=metadata,
    )


def load_zoo_file(path: str | os.PathLike) -> list[ZooEntry]:
    """Read and validate a zoo YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such zoo file")
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML text ({first[:160]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'models' list")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: defaults must be a mapping of entry keys, got a YAML {type(defaults).__name__}")
    entries = [parse_entry({**defaults, **raw} if isinstance(raw, dict) else raw, path.parent.resolve(),
                           f"{path}: models[{i}]") for i, raw in enumerate(doc["models"])]
    seen: set[str] = set()
    for entry in entries:
        if entry.model_id in seen:
            raise ConfigError(f"{path}: model id {entry.model_id!r} appears twice")
        seen.add(entry.model_id)
    return entries


def write_zoo_file(entries: Iterable[ZooEntry], path: str | os.PathLike, name: str = "zoo") -> None:
    """Write entries as a zoo YAML file."""
    doc = {"name": name, "models": [e.to_yaml_dict() for e in entries]}
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def select(entries: Sequence[ZooEntry], datasets: Sequence[str] | None = None,
           threat_models: Sequence[str] | None = None, models: Sequence[str] | None = None,
           limit: int | None = None) -> list[ZooEntry]:
    """Filter a zoo: by training dataset, threat model, model names/ids (exact id or last path part), count."""
    chosen = list(entries)
    if datasets:
        chosen = [e for e in chosen if e.dataset in datasets]
    if threat_models:
        chosen = [e for e in chosen if e.threat_model in threat_models
                  or any(b.get("threat_model") in threat_models for b in e.metadata.get("leaderboards", []))]
    if models:
        wanted = set(models)
        chosen = [e for e in chosen if e.model_id in wanted or e.model_id.rsplit("/", 1)[-1] in wanted]
        found = {e.model_id for e in chosen} | {e.model_id.rsplit("/", 1)[-1] for e in chosen}
        missing = sorted(wanted - found)
        if missing:
            raise ConfigError(f"no model named {', '.join(missing)} in the zoo (see filterlens zoo list)")
    if limit is not None:
        chosen = chosen[:limit]
    return chosen
