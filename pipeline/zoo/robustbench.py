"""The built-in RobustBench catalog: every entry of the installed model zoo, with leaderboard metadata.

Entries come from ``robustbench.model_zoo`` (all datasets x threat models,
ensembles included); sources are RobustBench's Google Drive ids, the release
URLs of entries served through timm, or torchvision's URL for ``Standard_R50``.
Leaderboard metadata (architecture, clean and AutoAttack accuracy, eps, extra
data, venue, link) comes from ``--model-info PATH`` when given, else from the
snapshot shipped with the package, overridden entry by entry by what
``filterlens zoo refresh`` fetched (``pipeline.zoo.leaderboard``). Nothing here
goes to the network unless ``fetch=True``.
"""

from __future__ import annotations

import logging
import os

from pipeline.checkpoints.arch_spec import ArchSpec
from pipeline.checkpoints.robustbench import import_robustbench, robustbench_timm_name
from pipeline.errors import DownloadError
from pipeline.zoo.leaderboard import Key, entry_spec, leaderboard_info, load_model_info
from pipeline.zoo.zoo_file import ZooEntry

log = logging.getLogger(__name__)

STANDARD_R50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


def installed_entries() -> list[tuple[str, str, str, dict]]:
    """(dataset, threat_model, name, zoo entry) of every entry of the installed RobustBench zoo."""
    zoo = import_robustbench()
    return [(dataset.value, threat_model.value, name, entry)
            for dataset, by_threat in zoo.model_dicts.items()
            for threat_model, models in by_threat.items()
            for name, entry in models.items()]


def installed_keys() -> list[Key]:
    """(dataset, threat_model, name) of every installed zoo entry: what ``zoo refresh`` fetches."""
    return [(d, t, n) for d, t, n, _ in installed_entries()]


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


def _metadata(model_info: str | os.PathLike | None, fetch: bool) -> dict[Key, dict]:
    """``model_info`` alone when given; else the refreshed cache over the snapshot (refreshed first when
    ``fetch``; a failed refresh only warns)."""
    if model_info is not None:
        return load_model_info(model_info)
    if fetch:
        from pipeline.zoo.refresh import refresh_model_info

        try:
            refresh_model_info(installed_keys())
        except DownloadError as exc:
            log.warning("%s", exc)
    return leaderboard_info()


def robustbench_catalog(model_info: str | os.PathLike | None = None, fetch: bool = False) -> list[ZooEntry]:
    """Every entry of the installed RobustBench zoo as zoo entries (no checkpoint is downloaded).

    RobustBench's ``Standard`` entries are normally trained models (robust = False,
    threat_model = none); corruptions entries keep threat_model corruptions with
    robust = False (robust means adversarially trained). Entries that several
    leaderboards share (same checkpoint sources) appear once; ``metadata.leaderboards``
    lists where they are ranked.
    """
    raw = installed_entries()
    info = _metadata(model_info, fetch)
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
        entry = ZooEntry(
            model_id=f"robustbench/{dataset}/{threat_model}/{name}",
            sources=sources,
            arch=f"robustbench:{dataset}:{threat_model}:{name}",
            **entry_spec(dataset, threat_model, name, meta),
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
