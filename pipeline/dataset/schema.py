"""Load the table schemas from ``schemas/*.yaml`` and turn them into Arrow schemas.

The YAML files are the single source of truth; the writer, the validator, the SQL
views and the dataset card all go through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pyarrow as pa
import yaml

from pipeline.dataset.arrow_columns import column_array
from pipeline.errors import SchemaMismatchError

TABLES = ("models", "layers", "filters", "failures", "probes")

_PRIMITIVES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "bool": pa.bool_(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
}


def arrow_type(spec: str) -> pa.DataType:
    """Parse a type string of the schema files (``int32``, ``list<float64>``, ``timestamp[us, tz=UTC]``)."""
    spec = spec.strip()
    if spec in _PRIMITIVES:
        return _PRIMITIVES[spec]
    match = re.fullmatch(r"list<(.+)>", spec)
    if match:
        return pa.list_(arrow_type(match.group(1)))
    match = re.fullmatch(r"timestamp\[(s|ms|us|ns)(?:,\s*tz=([^\]]+))?\]", spec)
    if match:
        return pa.timestamp(match.group(1), tz=match.group(2))
    raise ValueError(f"unknown column type {spec!r} in schemas/")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    description: str

    @property
    def arrow_type(self) -> pa.DataType:
        return arrow_type(self.type)


@dataclass(frozen=True)
class TableSchema:
    table: str
    schema_version: int
    description: str
    layout: str
    partitioning: tuple[str, ...]
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def arrow(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns],
            metadata={b"filterlens.table": self.table.encode(),
                      b"filterlens.schema_version": str(self.schema_version).encode()},
        )


@cache
def table_schema(table: str) -> TableSchema:
    """The schema of one table, read from ``schemas/<table>.yaml``."""
    if table not in TABLES:
        raise KeyError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
    text = resources.files("schemas").joinpath(f"{table}.yaml").read_text()
    raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: ~10x faster start-up
    columns = tuple(
        Column(c["name"], str(c["type"]), bool(c["nullable"]), c["description"]) for c in raw["columns"]
    )
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise ValueError(f"schemas/{table}.yaml lists a column twice")
    return TableSchema(
        table=raw["table"],
        schema_version=int(raw["schema_version"]),
        description=raw["description"],
        layout=raw.get("layout", ""),
        partitioning=tuple(raw.get("partitioning", ())),
        columns=columns,
    )


@cache
def schema_version() -> int:
    """The dataset schema version; every table file must agree on it."""
    versions = {table_schema(t).schema_version for t in TABLES}
    if len(versions) != 1:
        raise ValueError(f"schemas/ disagree on schema_version: {sorted(versions)}")
    return versions.pop()


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema the writer uses for ``table``."""
    return table_schema(table).arrow


def to_table(table: str, columns: dict[str, object]) -> pa.Table:
    """Build an Arrow table of ``table``'s schema from column arrays or lists.

    Missing nullable columns are filled with nulls; missing non-nullable columns,
    unknown columns and nulls in non-nullable columns are errors.
    """
    schema = arrow_schema(table)
    unknown = set(columns) - set(schema.names)
    if unknown:
        raise SchemaMismatchError(f"{table}: unknown columns {sorted(unknown)} (see schemas/{table}.yaml)")
    n_rows = None
    for value in columns.values():
        n_rows = len(value)
        break
    arrays = []
    for field in schema:
        if field.name in columns:
            array = column_array(columns[field.name], field.type) if not isinstance(
                columns[field.name], (pa.Array, pa.ChunkedArray)) else columns[field.name]
            if array.type != field.type:
                array = array.cast(field.type)
        elif field.nullable:
            array = pa.nulls(n_rows or 0, type=field.type)
        else:
            raise SchemaMismatchError(f"{table}: required column {field.name!r} is missing")
        if not field.nullable and array.null_count:
            raise SchemaMismatchError(f"{table}: column {field.name!r} must not contain nulls")
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


def check_schema(table: str, actual: pa.Schema, where: str) -> None:
    """Raise SchemaMismatchError unless ``actual`` has ``table``'s columns and types (in any order).

    A file of an older schema version may lack nullable columns added since: readers fill
    them with nulls. A missing required column, an unknown column or a wrong type is an error.
    """
    expected = arrow_schema(table)
    got = {f.name: f.type for f in actual}
    want = {f.name: f.type for f in expected}
    missing = [f.name for f in expected if f.name not in got and not f.nullable]
    extra = [n for n in got if n not in want]
    typed = [f"{n}: {t} != {want[n]}" for n, t in got.items() if n in want and want[n] != t]
    if missing or extra or typed:
        raise SchemaMismatchError(
            f"{where} does not match schemas/{table}.yaml"
            f" (missing {missing}, unexpected {extra}, wrong types {typed}); rebuild it with this version"
        )
