"""`filterlens sql` and `open_dataset(...).sql()` are read-only: every escape attempt exits 5 and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stats_fixtures import write_model

from pipeline.dataset.query import open_dataset
from pipeline.dataset.sandbox import check_read_only, keywords
from pipeline.dataset.store import DatasetStore
from pipeline.errors import QueryError

SECRET = "s3cr3t-canary-7f1c"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sandbox") / "ds"
    store = DatasetStore(str(root))
    write_model(store, "lab/a", "cifar10", [np.ones((4, 3, 3, 3)), np.ones((2, 4, 3, 3))], robust=True)
    store.update_manifest()
    (root.parent / "secret.csv").write_text(f"token\n{SECRET}\n")
    (root / "layers" / "stray.csv").write_text(f"token\n{SECRET}\n")  # inside the root, but not a committed file
    return root


def tree(root: Path) -> dict[str, int]:
    """Every file under the sandbox folder with its size and mtime (to see any write)."""
    return {str(p): p.stat().st_mtime_ns for p in root.parent.rglob("*") if p.is_file()}


def escapes(root: Path) -> list[str]:
    committed = sorted(str(p) for p in (root / "models").glob("*.parquet"))[0]
    secret = root.parent / "secret.csv"
    return [
        f"WITH x AS (COPY (SELECT 'oops' AS model_id) TO '{root}/models/part-injected.parquet' (FORMAT parquet)) "
        "SELECT 1",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{root}/x.parquet' (FORMAT parquet)",
        f"COPY (SELECT 1 AS model_id) TO '{committed}' (FORMAT parquet, USE_TMP_FILE false)",
        f"COPY models FROM '{secret}'",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_csv_auto('{root}/layers/stray.csv')",
        f"SELECT content FROM read_text('{secret}')",
        f"SELECT * FROM read_blob('{secret}')",
        "SELECT * FROM glob('/root/*')",
        f"SELECT * FROM read_parquet('{root.parent}/**/*.parquet')",
        "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
        f"ATTACH '{root}/evil.duckdb'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "EXPLAIN ANALYZE INSTALL httpfs",
        "SET enable_external_access = true",
        "SELECT 1; SELECT 2",
        "SELECT 1 /* ; */; COPY (SELECT 1) TO 'x.parquet'",
        "SELECT 1 -- harmless\n; DROP VIEW models",
        "CREATE TABLE t AS SELECT * FROM models",
        "PRAGMA enable_profiling",
        "CALL pragma_version()",
        "SELECT getenv('HOME')",
        "RESET lock_configuration",
        "SELECT * FROM duckdb_extensions()",
    ]


def run_sql(root: Path, query: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "sql", str(root), query], capture_output=True,
                          text=True, cwd=root.parent, timeout=60,
                          env={**os.environ, "HOME": str(root.parent)})


def test_every_escape_attempt_exits_5_in_one_line_and_changes_nothing(dataset: Path) -> None:
    before = tree(dataset)
    for query in escapes(dataset):
        proc = run_sql(dataset, query)
        assert proc.returncode == 5, (query, proc.returncode, proc.stderr)
        assert SECRET not in proc.stdout + proc.stderr, query
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("filterlens: error:"), (query, proc.stderr)
    assert tree(dataset) == before
    assert run_sql(dataset, "SELECT count(*) AS n FROM models").stdout.split()[-3] == "1"  # still readable


def test_read_only_queries_still_work_through_the_api(dataset: Path) -> None:
    with open_dataset(str(dataset)) as ds:
        assert ds.fetch_arrow("WITH m AS (SELECT * FROM models) SELECT model_id FROM m").to_pylist() == [
            {"model_id": "lab/a"}]
        assert ds.fetch_arrow("SELECT count(*) AS n FROM filters").to_pylist() == [{"n": 4 * 3 + 2 * 4}]
        assert {r["column_name"] for r in ds.fetch_arrow("DESCRIBE layers").to_pylist()} >= {"sparsity"}
        assert ds.fetch_arrow("SELECT 'COPY' AS \"copy\" -- set load").to_pylist() == [{"copy": "COPY"}]
        assert ds.sql("SUMMARIZE models").fetchall()
        assert ds.fetch_arrow("EXPLAIN SELECT * FROM models").num_rows >= 1
        with pytest.raises(QueryError, match="Permission Error"):
            ds.fetch_arrow(f"SELECT * FROM read_csv('{dataset.parent / 'secret.csv'}')")
        # trusted code keeps a full connection
        assert ds.con.execute("SELECT current_setting('enable_external_access')").fetchone() == (True,)


def test_execution_errors_are_query_errors_with_exit_5(dataset: Path) -> None:
    for query in ("SELECT error('boom')", "SELECT 'x'::INTEGER", "SELECT * FROM no_such_table"):
        proc = run_sql(dataset, query)
        assert proc.returncode == 5, (query, proc.stderr)
        assert proc.stderr.startswith("filterlens: error: query failed:"), proc.stderr


def test_checks_see_through_comments_strings_and_ctes() -> None:
    assert keywords("SELECT 1 AS x -- COPY\n/* ATTACH */ FROM t WHERE y = 'SET'") == ["SELECT", "AS", "FROM",
                                                                                          "WHERE"]
    with pytest.raises(QueryError, match="COPY"):
        check_read_only("WITH x AS (COPY (SELECT 1) TO 'f') SELECT 1")
    with pytest.raises(QueryError, match="exactly one"):
        check_read_only("SELECT 1; SELECT 2")
    check_read_only("SELECT \"copy\" FROM t")  # a quoted name is an identifier, not a keyword


def test_stats_where_must_be_a_sandboxed_predicate(dataset: Path, tmp_path: Path) -> None:
    from pipeline.errors import ConfigError
    from pipeline.stats.options import StatsOptions
    from pipeline.stats.selection import select_models

    with open_dataset(str(dataset)) as ds:
        for where in (f"(SELECT count(*) FROM read_csv('{dataset.parent / 'secret.csv'}')) > 0",
                      "true) UNION ALL (SELECT * FROM models", "robust; DROP VIEW models"):
            with pytest.raises(ConfigError, match="--where"):
                select_models(ds, StatsOptions(where=where))
        assert select_models(ds, StatsOptions(where="robust")).model_id.tolist() == ["lab/a"]


def test_the_locked_connection_alone_stops_writes_and_reads(dataset: Path) -> None:
    """The first line of defence holds even if the text check were bypassed."""
    import duckdb

    target = dataset / "models" / "part-injected.parquet"
    with open_dataset(str(dataset)) as ds:
        con = ds.sandbox()
        for query in (f"WITH x AS (COPY (SELECT 'oops' AS model_id) TO '{target}' (FORMAT parquet)) SELECT 1",
                      f"COPY (SELECT 1) TO '{target}' (FORMAT parquet, USE_TMP_FILE false)",
                      f"SELECT * FROM read_csv('{dataset.parent / 'secret.csv'}')",
                      "SET enable_external_access = true", "SET lock_configuration = false"):
            with pytest.raises((duckdb.PermissionException, duckdb.InvalidInputException)):
                con.execute(query).fetchall()
        assert con.execute("SELECT count(*) FROM models").fetchone() == (1,)
    assert not target.exists()
