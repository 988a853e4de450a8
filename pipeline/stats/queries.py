"""The SQL files of ``pipeline/stats/sql/`` and running them in DuckDB over a dataset's views."""

from __future__ import annotations

from functools import cache
from importlib import resources

import duckdb
import pandas as pd

from pipeline.dataset.query import FilterDataset
from pipeline.errors import StatsError


@cache
def load_sql(name: str) -> str:
    """The text of ``pipeline/stats/sql/<name>.sql``."""
    return resources.files("pipeline.stats").joinpath("sql", f"{name}.sql").read_text()


def run_sql(ds: FilterDataset, name: str, params: dict | None = None) -> pd.DataFrame | None:
    """Run one SQL file; a DataFrame for queries, None for statements."""
    try:
        relation = ds.con.execute(load_sql(name), params or {})
        return relation.df() if relation.description else None
    except duckdb.Error as exc:
        raise StatsError(f"query {name}.sql failed: {str(exc).splitlines()[0]}") from None
