"""Query a filter dataset: DuckDB views and Polars lazy frames over the committed files.

``open_dataset(root)`` works for a local path or any URI the store understands.
Views list exactly the files of committed model versions, so a reader never sees
half-written models or orphans of crashed builds. Local files are read with
DuckDB's own Parquet reader; remote ones through pyarrow datasets (no DuckDB
extension downloads).
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from pipeline.dataset.schema import TABLES, arrow_schema
from pipeline.dataset.store import DatasetStore
from pipeline.errors import QueryError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow.dataset as pads

log = logging.getLogger(__name__)

_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.list_(pa.float64()): "DOUBLE[]",
}

READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def duckdb_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    return _DUCKDB_TYPES[arrow_type]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def empty_select(table: str) -> str:
    """A SELECT with ``table``'s columns and types and no rows (for views over empty tables)."""
    columns = ", ".join(f"NULL::{duckdb_type(f.type)} AS \"{f.name}\"" for f in arrow_schema(table))
    return f"SELECT {columns} WHERE false"


class FilterDataset:
    """A filter dataset opened for reading: DuckDB views ``models``, ``layers``, ``filters``, ``failures``."""

    def __init__(self, root: str, store: DatasetStore | None = None, threads: int | None = None) -> None:
        self.store = store or DatasetStore(root)
        self.store.require()
        self.root = root
        self.con = duckdb.connect(":memory:")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self._datasets: dict[str, pads.Dataset] = {}
        for table in TABLES:
            self._create_view(table)

    @cached_property
    def _stored(self) -> dict:
        return self.store.stored_models()

    def files(self, table: str) -> list[str]:
        """The files a view reads: committed versions only."""
        if table in ("layers", "filters"):
            return self.store.committed_files(table, self._stored.values())
        return self.store.part_files(table)

    def arrow_dataset(self, table: str) -> pads.Dataset:
        """A pyarrow dataset over the view's files, with the schema from schemas/."""
        import pyarrow.dataset as pads  # imports pandas (~0.3 s): only for remote roots and callers that ask

        if table not in self._datasets:
            self._datasets[table] = pads.dataset(self.files(table), schema=arrow_schema(table),
                                                 filesystem=self.store.fs, format="parquet")
        return self._datasets[table]

    def _create_view(self, table: str) -> None:
        files = self.files(table)
        if not files:
            self.con.execute(f"CREATE OR REPLACE VIEW {table} AS {empty_select(table)}")
        elif self.store.local:
            listing = ", ".join(_quote(f) for f in files)
            self.con.execute(
                f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet([{listing}], hive_partitioning = false)")
        else:
            self.con.register(f"_arrow_{table}", self.arrow_dataset(table))
            self.con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _arrow_{table}")

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Run a read-only query (SELECT/EXPLAIN, incl. WITH, DESCRIBE, SUMMARIZE) against the views."""
        try:
            statements = self.con.extract_statements(query)
        except duckdb.Error as exc:
            raise QueryError(f"SQL does not parse: {exc}") from None
        if len(statements) != 1:
            raise QueryError(f"give exactly one SQL statement ({len(statements)} found)")
        if statements[0].type not in READ_ONLY_STATEMENTS:
            raise QueryError(f"only read-only queries (SELECT, WITH, DESCRIBE, EXPLAIN) are allowed, "
                             f"not {statements[0].type.name}")
        try:
            return self.con.sql(query)
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from None

    def lazy(self, table: str) -> pl.LazyFrame:
        """A Polars LazyFrame over a table (committed files only)."""
        import polars as pl  # imported when used: `filterlens sql` starts without it

        files = self.files(table)
        if not files:
            return pl.LazyFrame(schema=pl.from_arrow(arrow_schema(table).empty_table()).schema)
        if self.store.local:
            return pl.scan_parquet(files, hive_partitioning=False)
        return pl.scan_pyarrow_dataset(self.arrow_dataset(table))

    @property
    def models(self) -> pl.LazyFrame:
        return self.lazy("models")

    @property
    def layers(self) -> pl.LazyFrame:
        return self.lazy("layers")

    @property
    def filters(self) -> pl.LazyFrame:
        return self.lazy("filters")

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> FilterDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dataset(root: str, threads: int | None = None) -> FilterDataset:
    """Open a filter dataset (local path or URI) for SQL (``.sql``/``.con``) and Polars (``.lazy``)."""
    return FilterDataset(root, threads=threads)
