"""``StatsResult``: everything one ``run_stats`` computed, handed from computing to rendering (report.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from pipeline.stats.findings import Finding
from pipeline.stats.galleries import Gallery
from pipeline.stats.shift import PCABasis


@dataclass
class StatsResult:
    """The tables (by name), findings, PCA bases, galleries, notes, timings and selection of one run."""

    tables: dict[str, pd.DataFrame]
    findings: list[Finding]
    bases: dict[str, PCABasis | None]
    galleries: list[list[Gallery]]  # rows: (robust, normal) pairs or single models
    notes: list[str]
    timings: dict[str, float | int | str]
    coefficient_range: tuple[float, float] | None
    selection: str
    probe_examples: list = field(default_factory=list)
    """(robust id, normal id, robust example, normal example) for the notebook's figure (stats/probes.py)."""
