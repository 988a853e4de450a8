"""``run_stats``: ``compute`` (every analysis, in memory), then the tables, figures and report.

Computing (``pipeline.stats.computation.compute`` and the modules it calls) and rendering
(``pipeline.stats.report``) stay apart; this module is the one place that calls both, in order.
"""

from __future__ import annotations

import os

import pandas as pd

from pipeline.stats.computation import compute
from pipeline.stats.options import StatsOptions
from pipeline.stats.report import write_report, write_tables
from pipeline.stats.result import StatsResult
from pipeline.stats.selection import describe_pools, pooled_threat_models


def run_stats(root: str, out_dir: str, options: StatsOptions | None = None,
              extra_tables: dict[str, pd.DataFrame] | None = None) -> StatsResult:
    """Compute everything for the selection and write tables, figures and the report into ``out_dir``.

    ``extra_tables`` join the result's tables (written and, where a report section knows them, shown:
    ``demo_directions`` is the demo's paired comparison).
    """
    options = options or StatsOptions()
    result = compute(root, options)
    result.tables.update(extra_tables or {})
    os.makedirs(out_dir, exist_ok=True)
    write_tables(result, out_dir)
    write_report(result, out_dir, root, options)
    return result


def summary_text(result: StatsResult, out_dir: str) -> str:
    """What ``filterlens stats`` prints: the selection's size, where the report is, one line per finding."""
    models = result.tables["models"]
    lines = [f"{len(models)} models ({describe_pools(pooled_threat_models(models))}); report: {out_dir}/report.md, "
             f"{out_dir}/report.html"]
    lines += [f"- {finding.text}" for finding in result.findings]
    return "\n".join(lines) + "\n"
