"""Query a filter dataset: DuckDB views and Polars lazy frames over the committed files.

``open_dataset(root)`` works for a local path or any URI the store understands.
It takes one snapshot when it opens (``DatasetStore.snapshot``): the committed rows,
read once into memory, and exactly their layers/filters files. A reader never sees
half-written models or orphans of crashed builds, and finishes on its snapshot
whatever commits meanwhile (writers never delete; ``vacuum`` does, after a retention). Local files are read with
DuckDB's own Parquet reader; remote ones through pyarrow datasets (no DuckDB
extension downloads).

``FilterDataset.sql`` runs user SQL in the read-only sandbox (``dataset/sandbox.py``):
a locked connection of its own that can read the committed files and nothing else.
``FilterDataset.con`` is a full DuckDB connection with the same views, for trusted
code (the stats engine, ``info``); never pass user text to it.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from pipeline.dataset.layout import DATA_TABLES, StoredModel
from pipeline.dataset.sandbox import LockedConnection, check_expression, check_read_only
from pipeline.dataset.schema import TABLES, arrow_schema, schema_version
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
    """A filter dataset opened for reading: DuckDB views ``models``, ``layers``, ``filters``, ``probes``, ``failures``."""

    def __init__(self, root: str, store: DatasetStore | None = None, threads: int | None = None) -> None:
        self.store = store or DatasetStore(root)
        self.store.require()
        self.root = root
        self.threads = threads
        self._datasets: dict[str, pads.Dataset] = {}
        self._sandbox: LockedConnection | None = None
        self.snapshot = self.store.snapshot()

    @cached_property
    def older_models(self) -> bool:
        """Whether some committed model was written under an older schema version (its files lack newer columns)."""
        return any(m.schema_version != schema_version() for m in self.snapshot.stored.values())

    def stored_models(self) -> dict[str, StoredModel]:
        """The snapshot's committed models by model_id (where their files are)."""
        return self.snapshot.stored

    @cached_property
    def con(self) -> duckdb.DuckDBPyConnection:
        """A full DuckDB connection with the views (trusted code only; user SQL goes through ``sql``)."""
        con = duckdb.connect(":memory:")
        if self.threads:
            con.execute(f"SET threads = {int(self.threads)}")
        self._create_views(con)
        return con

    def files(self, table: str) -> list[str]:
        """The files behind a table: for layers/filters/probes exactly the snapshot's versions; the row files otherwise."""
        if table in DATA_TABLES:
            return self.store.committed_files(table, self.snapshot.stored.values())
        return self.snapshot.row_files[table]

    def rows(self, table: str) -> pa.Table:
        """The snapshot's models or failures rows (read once, when the dataset was opened)."""
        return self.snapshot.models if table == "models" else self.snapshot.failures

    def arrow_dataset(self, table: str) -> pads.Dataset:
        """A pyarrow dataset over the view's files, with the schema from schemas/."""
        import pyarrow.dataset as pads  # imports pandas (~0.3 s): only for remote roots and callers that ask

        if table not in self._datasets:
            self._datasets[table] = pads.dataset(self.files(table), schema=arrow_schema(table),
                                                 filesystem=self.store.fs, format="parquet")
        return self._datasets[table]

    def _create_views(self, con: duckdb.DuckDBPyConnection) -> None:
        for table in TABLES:
            if table in ("models", "failures"):  # in memory: the rows the snapshot read, whatever commits since
                con.register(f"_snapshot_{table}", self.rows(table))
                con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _snapshot_{table}")
                continue
            files = self.files(table)
            if not files:
                con.execute(f"CREATE OR REPLACE VIEW {table} AS {empty_select(table)}")
            elif self.store.local and self.older_models:  # files without the columns added since: nulls
                listing = ", ".join(_quote(f) for f in files)
                con.execute(f"CREATE OR REPLACE VIEW {table} AS {empty_select(table)} UNION ALL BY NAME "
                            f"SELECT * FROM read_parquet([{listing}], hive_partitioning = false, union_by_name = true)")
            elif self.store.local:
                listing = ", ".join(_quote(f) for f in files)
                con.execute(f"CREATE OR REPLACE VIEW {table} AS "
                            f"SELECT * FROM read_parquet([{listing}], hive_partitioning = false)")
            else:
                con.register(f"_arrow_{table}", self.arrow_dataset(table))
                con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _arrow_{table}")

    def sandbox(self) -> duckdb.DuckDBPyConnection:
        """The locked, read-only connection user SQL runs in (created on first use)."""
        if self._sandbox is None:
            locked = LockedConnection(self.threads)
            self._create_views(locked.con)
            readable = [f for t in DATA_TABLES for f in self.files(t)] if self.store.local else []
            locked.lock(readable)
            self._sandbox = locked
        return self._sandbox.con

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Run user SQL in the read-only sandbox: one SELECT/WITH/DESCRIBE/SUMMARIZE/EXPLAIN statement."""
        check_read_only(query)
        try:
            return self.sandbox().sql(query)
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from None

    def check_predicate(self, predicate: str, table: str = "models") -> None:
        """Raise QueryError unless ``predicate`` is a read-only condition on ``table`` that the sandbox can run.

        For user text that trusted code puts into its own SQL (``stats --where``).
        """
        check_expression(predicate, "the predicate")
        self.fetch_arrow(f"SELECT count(*) FROM {table} WHERE ({predicate})")

    def fetch_arrow(self, query: str) -> pa.Table:
        """``sql(query)`` run to completion as an Arrow table; errors while it runs are QueryErrors too."""
        relation = self.sql(query)
        try:
            return relation.to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from None

    def lazy(self, table: str) -> pl.LazyFrame:
        """A Polars LazyFrame over a table (committed files only)."""
        import polars as pl  # imported when used: `filterlens sql` starts without it

        if table in ("models", "failures"):
            return pl.from_arrow(self.rows(table)).lazy()
        files = self.files(table)
        if not files:
            return pl.LazyFrame(schema=pl.from_arrow(arrow_schema(table).empty_table()).schema)
        if self.store.local and self.older_models:
            schema = pl.from_arrow(arrow_schema(table).empty_table()).schema
            return pl.scan_parquet(files, hive_partitioning=False, schema=schema, missing_columns="insert")
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

    @property
    def probes(self) -> pl.LazyFrame:
        return self.lazy("probes")

    def close(self) -> None:
        if "con" in self.__dict__:
            self.con.close()
        if self._sandbox is not None:
            self._sandbox.close()

    def __enter__(self) -> FilterDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dataset(root: str, threads: int | None = None) -> FilterDataset:
    """Open a filter dataset (local path or URI) for SQL (``.sql``/``.con``) and Polars (``.lazy``)."""
    return FilterDataset(root, threads=threads)
