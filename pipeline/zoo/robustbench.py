"""The built-in RobustBench catalog: every entry of the installed model zoo, with leaderboard metadata.

Entries come from ``robustbench.model_zoo`` (all datasets x threat models,
ensembles included); sources are RobustBench's Google Drive ids, the release
URLs of entries served through timm, or torchvision's URL for ``Standard_R50``.
Leaderboard metadata (architecture, clean and AutoAttack accuracy, eps, extra
data, venue, link) comes from RobustBench's published ``model_info`` JSON: from
``--model-info PATH`` (a JSON-lines file or a ``model_info/`` directory tree), or
fetched once from GitHub and cached.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pipeline.checkpoints.arch_spec import ArchSpec
from pipeline.checkpoints.robustbench import import_robustbench, robustbench_timm_name
from pipeline.errors import ConfigError
from pipeline.zoo.zoo_file import ZooEntry, parse_number

log = logging.getLogger(__name__)

MODEL_INFO_URL = "https://raw.githubusercontent.com/RobustBench/robustbench/master/model_info/{dataset}/{threat_model}/{name}.json"
STANDARD_R50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


def default_cache_dir() -> Path:
    return Path(os.environ.get("FILTERLENS_CACHE", Path.home() / ".cache" / "filterlens"))


def load_model_info(path: str | os.PathLike) -> dict[tuple[str, str, str], dict]:
    """Leaderboard entries keyed by (dataset, threat_model, name) from a JSONL file or a model_info/ tree."""
    path = Path(path)
    info: dict[tuple[str, str, str], dict] = {}
    if path.is_file():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                info[(row["dataset"], row["threat_model"], row["model"])] = row
            except (json.JSONDecodeError, KeyError) as exc:
                raise ConfigError(f"{path}:{number}: not a model_info JSON line ({exc})") from None
    elif path.is_dir():
        for file in sorted(path.glob("*/*/*.json")):
            dataset, threat_model = file.parent.parent.name, file.parent.name
            row = json.loads(file.read_text())
            info[(dataset, threat_model, file.stem)] = {"dataset": dataset, "threat_model": threat_model,
                                                        "model": file.stem, **row}
    else:
        raise ConfigError(f"--model-info {path}: no such file or directory")
    return info


def fetch_model_info(keys: list[tuple[str, str, str]], cache_dir: Path | None = None) -> dict[tuple[str, str, str], dict]:
    """Fetch model_info JSON from RobustBench's GitHub for the given entries, caching each file.

    Failures (offline, say) are logged once and leave those entries without metadata.
    """
    import requests

    cache = (cache_dir or default_cache_dir()) / "model_info"
    info: dict[tuple[str, str, str], dict] = {}
    offline = False
    for dataset, threat_model, name in keys:
        file = cache / dataset / threat_model / f"{name}.json"
        if not file.is_file() and not offline:
            try:
                response = requests.get(MODEL_INFO_URL.format(dataset=dataset, threat_model=threat_model, name=name),
                                        timeout=10)
                if response.status_code == 200:
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.write_text(response.text)
                else:
                    log.debug("no model_info for %s/%s/%s (HTTP %d)", dataset, threat_model, name,
                              response.status_code)
            except requests.RequestException as exc:
                offline = True
                log.warning("RobustBench leaderboard metadata could not be fetched (%s); accuracies will be "
                            "missing - pass --model-info PATH for offline use", type(exc).__name__)
        if file.is_file():
            info[(dataset, threat_model, name)] = {"dataset": dataset, "threat_model": threat_model, "model": name,
                                                   **json.loads(file.read_text())}
    return info


def _timm_release_url(timm_name: str) -> str | None:
    """URL of the weights robustbench registers for a timm-served zoo entry."""
    from robustbench.model_zoo.architectures import deit, xcit

    for module in (xcit, deit):
        cfg = getattr(module, "default_cfgs", {}).get(timm_name)
        if cfg and cfg.get("url"):
            return cfg["url"]
    return None


def entry_sources(dataset: str, threat_model: str, name: str, zoo_entry: dict) -> list[str]:
    """Source URIs of one zoo entry (several for multi-file ensembles); empty when none is known."""
    gdrive = zoo_entry.get("gdrive_id")
    if isinstance(gdrive, list):
        return [f"gdrive:{g}" for g in gdrive]
    if gdrive:
        return [f"gdrive:{gdrive}"]
    timm_name = robustbench_timm_name(ArchSpec("robustbench", name, dataset, threat_model))
    if timm_name and (url := _timm_release_url(timm_name)):
        return [url]
    if name == "Standard_R50":
        return [STANDARD_R50_URL]
    return []


def robustbench_catalog(model_info: str | os.PathLike | None = None, fetch: bool = True) -> list[ZooEntry]:
    """Every entry of the installed RobustBench zoo as zoo entries (no checkpoint is downloaded).

    RobustBench's ``Standard`` entries are normally trained models (robust = False,
    threat_model = none). Entries that several leaderboards share (same checkpoint
    sources) appear once; ``metadata.leaderboards`` lists where they are ranked.
    """
    zoo = import_robustbench()
    raw: list[tuple[str, str, str, dict]] = [
        (dataset.value, threat_model.value, name, entry)
        for dataset, by_threat in zoo.model_dicts.items()
        for threat_model, models in by_threat.items()
        for name, entry in models.items()
    ]
    keys = [(d, t, n) for d, t, n, _ in raw]
    if model_info is not None:
        info = load_model_info(model_info)
    elif fetch:
        info = fetch_model_info(keys)
    else:
        info = {}
    entries: list[ZooEntry] = []
    by_sources: dict[tuple[str, tuple[str, ...]], ZooEntry] = {}
    for dataset, threat_model, name, zoo_entry in raw:
        sources = entry_sources(dataset, threat_model, name, zoo_entry)
        board = {"dataset": dataset, "threat_model": threat_model, "name": name}
        key = (dataset, tuple(sources))
        if sources and key in by_sources:
            by_sources[key].metadata["leaderboards"].append(board)
            continue
        meta = info.get((dataset, threat_model, name), {})
        standard = name.startswith("Standard")
        robust_acc = meta.get("autoattack_acc") if threat_model != "corruptions" else meta.get("corruptions_acc")
        entry = ZooEntry(
            model_id=f"robustbench/{dataset}/{threat_model}/{name}",
            sources=sources,
            arch=f"robustbench:{dataset}:{threat_model}:{name}",
            dataset=dataset,
            threat_model="none" if standard else threat_model,
            robust=not standard,
            architecture=meta.get("architecture"),
            clean_acc=parse_number(meta.get("clean_acc"), "clean_acc", name),
            robust_acc=parse_number(robust_acc, "robust_acc", name) if robust_acc not in (None, "") else None,
            eps=parse_number(meta.get("eps"), "eps", name) if meta.get("eps") not in (None, "") else None,
            extra_data=meta.get("additional_data"),
            paper=meta.get("title") or meta.get("link"),
            venue=meta.get("venue"),
            metadata={
                "source": "robustbench",
                "leaderboard_threat_model": threat_model,
                "leaderboards": [board],
                **{k: meta[k] for k in ("link", "authors", "footnote", "unreliable", "number_forward_passes",
                                        "reported", "external") if meta.get(k) not in (None, "")},
                **({"preprocessing": zoo_entry["preprocessing"]} if "preprocessing" in zoo_entry else {}),
            },
        )
        entries.append(entry)
        if sources:
            by_sources[key] = entry
    return entries
