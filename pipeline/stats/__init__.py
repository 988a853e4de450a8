"""The paper's analyses over a dataset: selection, depth profiles, pairing, PCA, shift, report.

``from pipeline.stats import compute`` (every analysis in memory, a ``StatsResult`` of DataFrames) and
``run_stats`` (the same, then the report files) are imported on first use, so that importing a light
module of this package (``pipeline.stats.options``, for the CLI) pulls in neither scipy nor DuckDB.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StatsResult", "compute", "run_stats"]


def __getattr__(name: str) -> Any:
    if name == "compute":
        from pipeline.stats.computation import compute

        return compute
    if name == "run_stats":
        from pipeline.stats.run import run_stats

        return run_stats
    if name == "StatsResult":
        from pipeline.stats.result import StatsResult

        return StatsResult
    raise AttributeError(f"module 'pipeline.stats' has no attribute {name!r}")
