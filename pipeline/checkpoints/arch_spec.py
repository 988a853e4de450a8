"""``--arch`` values: robustbench:<dataset>:<threat_model>:<name>, timm:<name>, torchvision:<name>, module:factory.

Parsing needs no torch, so zoo files, training configs and the CLI validate specs without importing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import UnknownArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """A parsed ``--arch`` value."""

    kind: str
    name: str
    dataset: str | None = None
    threat_model: str | None = None

    def __str__(self) -> str:
        if self.kind == "robustbench":
            return f"robustbench:{self.dataset}:{self.threat_model}:{self.name}"
        if self.kind == "module":
            return self.name
        return f"{self.kind}:{self.name}"


MOVED_MODULES = {"pipeline.demo_models": "pipeline.train.demo_models"}
"""Architecture modules of filterlens that moved: zoo files written before the move still bind."""


def parse_arch_spec(spec: str) -> ArchSpec:
    """Parse an architecture spec string; raise UnknownArchitectureError with the accepted forms."""
    parts = spec.split(":")
    if parts[0] == "robustbench":
        if len(parts) != 4 or not all(parts[1:]):
            raise UnknownArchitectureError(
                f"bad spec {spec!r}: expected robustbench:<dataset>:<threat_model>:<name>, "
                "e.g. robustbench:cifar10:Linf:Carmon2019Unlabeled")
        return ArchSpec("robustbench", parts[3], parts[1], parts[2])
    if parts[0] in ("timm", "torchvision") and len(parts) == 2 and parts[1]:
        return ArchSpec(parts[0], parts[1])
    if len(parts) == 2 and all(parts) and re.fullmatch(r"[\w.]+", parts[0]) and parts[1].isidentifier():
        module = MOVED_MODULES.get(parts[0], parts[0])
        return ArchSpec("module", f"{module}:{parts[1]}")
    raise UnknownArchitectureError(
        f"bad architecture spec {spec!r}: use robustbench:<dataset>:<threat_model>:<name>, "
        "timm:<name>, torchvision:<name> or <python.module>:<factory>")


BUILT_IN_MODULES = ("pipeline.train.demo_models",)
"""Architecture modules that ship with filterlens: naming them runs no one else's code."""


def runs_user_code(spec: ArchSpec) -> bool:
    """True when building ``spec`` imports and calls code that is not part of filterlens, timm,
    torchvision or RobustBench (a ``<python.module>:<factory>`` spec outside ``BUILT_IN_MODULES``)."""
    return spec.kind == "module" and spec.name.split(":")[0] not in BUILT_IN_MODULES
