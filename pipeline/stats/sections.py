"""The report's sections, in order: a list of builders, each ``(ReportContext) -> Section | None``.

A new analysis adds its builder to ``SECTIONS`` (None: nothing to show this run), e.g. a
probes section after ``shift_section``::

    SECTIONS.insert(SECTIONS.index(shift_section) + 1, probes_section)
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.stats.document import ReportContext, Section
from pipeline.stats.sections_analyses import (
    correlation_section,
    depth_section,
    gallery_section,
    pca_section,
    shift_section,
)
from pipeline.stats.sections_probe import probes_section
from pipeline.stats.sections_summary import (
    directions_section,
    findings_section,
    headline_section,
    pairing_section,
    run_section,
    selection_section,
)

SectionBuilder = Callable[[ReportContext], "Section | None"]

SECTIONS: list[SectionBuilder] = [
    headline_section, directions_section, findings_section, selection_section, depth_section, pairing_section,
    pca_section, shift_section, probes_section, correlation_section, gallery_section, run_section,
]


def build_sections(ctx: ReportContext, builders: list[SectionBuilder] | None = None) -> list[Section]:
    """The report's sections in order; figures are drawn into ``ctx.out_dir`` unless ``--no-figures``."""
    return [section for builder in (SECTIONS if builders is None else builders)
            if (section := builder(ctx)) is not None]
