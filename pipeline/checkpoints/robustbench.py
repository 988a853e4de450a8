"""RobustBench 1.1.1 as a library: importing it despite its packaging snags, and reading its zoo entries.

Used by ``architectures.py`` (to build an entry's model) and by the zoo catalog
(``pipeline/zoo/robustbench.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings

from pipeline.checkpoints.arch_spec import ArchSpec
from pipeline.errors import UnknownArchitectureError


def import_robustbench():  # noqa: ANN201 - returns the robustbench model_zoo module
    """Import robustbench 1.1.1, working around its packaging snags.

    It imports ``autoattack`` while its dependency installs ``pyautoattack``, and
    imports ``pkg_resources`` (deprecated; needs setuptools < 81).
    """
    if "autoattack" not in sys.modules:
        with contextlib.suppress(ImportError):
            sys.modules["autoattack"] = importlib.import_module("pyautoattack")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from robustbench.model_zoo import models as zoo
        except ImportError as exc:
            raise UnknownArchitectureError(f"robustbench is not importable here ({exc}); pip install robustbench==1.1.1") from None
    return zoo


def robustbench_timm_name(spec: ArchSpec) -> str | None:
    """The timm model name robustbench.load_model uses for a zoo entry, when timm has it."""
    import timm

    name = f"{spec.name.lower().replace('-', '_')}_{spec.dataset.lower()}_{spec.threat_model.lower()}"
    return name if timm.is_model(name) else None


def robustbench_entry(dataset: str, threat_model: str, name: str) -> dict:
    """The zoo dict of one RobustBench entry (``model`` factory, ``gdrive_id``, ...)."""
    zoo = import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        models = zoo.model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    except (ValueError, KeyError):
        raise UnknownArchitectureError(
            f"robustbench has no leaderboard {dataset}/{threat_model}; datasets: "
            f"{[d.value for d in BenchmarkDataset]}, threat models: {[t.value for t in ThreatModel]}") from None
    if name not in models:
        close = [n for n in models if n.lower().startswith(name.lower()[:6])][:5]
        raise UnknownArchitectureError(
            f"robustbench {dataset}/{threat_model} has no model {name!r}"
            f"{'; did you mean ' + ', '.join(close) if close else ''}")
    return models[name]
