"""``filterlens sql``: a read-only DuckDB query over the dataset's views."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

HELP = """\
Run one read-only SQL query (DuckDB dialect) against the views models, layers,
filters and failures of a dataset (local path or URI). Only committed models
are visible. Examples:

  filterlens sql ds/ "SELECT robust, avg(sparsity) FROM layers JOIN models USING (model_id) GROUP BY 1"
  filterlens sql ds/ "SELECT * FROM filters WHERE conv_index = 0" --format parquet --output first.parquet
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sql", help="run a read-only SQL query over the dataset", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset root (directory or URI)")
    p.add_argument("query", help="one SELECT / WITH / DESCRIBE / SUMMARIZE / EXPLAIN statement")
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table",
                   help="output format (default table; parquet needs --output)")
    p.add_argument("--output", "-o", help="write the result to this file instead of stdout")
    p.add_argument("--max-rows", type=int, default=100, help="rows shown by --format table (default 100)")
    p.set_defaults(func=run)


def format_table(table: pa.Table, max_rows: int) -> str:
    """Plain aligned text, numbers right-aligned, with a row count footer."""
    import pyarrow as pa

    shown = table.slice(0, max_rows).to_pylist()
    names = table.column_names

    def cell(value: object) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)

    rows = [[cell(r[n]) for n in names] for r in shown]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]
    lines = ["  ".join(n.rjust(w) if num else n.ljust(w) for n, w, num in zip(names, widths, numeric, strict=True)),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)))
    more = f" (showing {len(rows)})" if table.num_rows > len(rows) else ""
    lines.append(f"({table.num_rows} rows{more})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from pipeline.dataset.query import open_dataset

    if args.format == "parquet" and not args.output:
        raise ConfigError("--format parquet needs --output FILE")
    with open_dataset(args.dataset) as ds:
        result = ds.fetch_arrow(args.query)
    if args.format == "parquet":
        pq.write_table(result, args.output, compression="zstd")
    elif args.format == "csv":
        if args.output:
            pacsv.write_csv(result, args.output)
        else:
            pacsv.write_csv(result, sys.stdout.buffer)
    elif args.format == "json":
        text = "\n".join(json.dumps(row, default=str) for row in result.to_pylist())
        _emit(text + ("\n" if text else ""), args.output)
    else:
        _emit(format_table(result, args.max_rows) + "\n", args.output)
    return 0


def _emit(text: str, output: str | None) -> None:
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
