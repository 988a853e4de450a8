"""The report's building blocks: a ``Section`` (title, paragraphs, bullets, tables, figures) and the
``ReportContext`` every section builder receives (pipeline.stats.sections lists the builders)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from pipeline.stats.options import StatsOptions
from pipeline.stats.result import StatsResult


@dataclass
class Section:
    """One section of report.md / report.html; figures are (caption, PNG path)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    table_class: str = ""

    @property
    def anchor(self) -> str:
        """The HTML id of the section (its title in lower case, dashes for the rest)."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass
class ReportContext:
    """What a section builder may use: the computed result, where figures go, the dataset root, the options."""

    result: StatsResult
    out_dir: str
    root: str
    options: StatsOptions

    @property
    def figures(self) -> bool:
        """Whether to draw figures (``--no-figures`` turns them off)."""
        return self.options.figures
