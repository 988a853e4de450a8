"""The read-only SQL sandbox: what user SQL may do (read the dataset's views) and everything it may not.

Two independent lines of defence (docs/threat_model.md):

1. **The connection is locked down.** External access is off, except read access to
   exactly the dataset's committed files (``allowed_paths``) and a private spill
   folder; extensions are never installed or auto-loaded; then the configuration is
   locked, so no statement can turn any of this back on. ``read_csv('/etc/passwd')``,
   ``glob``, ``read_text``, ``ATTACH``, ``COPY ... TO`` and URLs fail with a
   permission error inside DuckDB itself.
2. **The text is checked before it runs**, on DuckDB's own tokenizer and parser:
   exactly one statement, of a read-only type (SELECT, including WITH, DESCRIBE,
   SUMMARIZE; EXPLAIN), and no keyword anywhere (in CTEs, subqueries or after
   EXPLAIN ANALYZE) that writes, attaches, loads or reconfigures. Comments and string
   literals are tokens of their own, so they cannot hide or fake a keyword.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable

import duckdb

from pipeline.errors import QueryError

READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}

FORBIDDEN_KEYWORDS = frozenset({
    "ALTER", "ATTACH", "CALL", "CHECKPOINT", "COPY", "CREATE", "DELETE", "DETACH", "DROP", "EXPORT", "IMPORT",
    "INSERT", "INSTALL", "LOAD", "MERGE", "PRAGMA", "RESET", "SET", "TRUNCATE", "UPDATE", "USE", "VACUUM",
})
"""Keywords that never belong in a read-only query, wherever they appear (quote a column named like one)."""


def keywords(query: str) -> list[str]:
    """The keyword tokens of ``query``, upper-cased (comments, strings and quoted names excluded)."""
    tokens = duckdb.tokenize(query)
    found = []
    for k, (start, kind) in enumerate(tokens):
        if kind == duckdb.token_type.keyword:
            end = tokens[k + 1][0] if k + 1 < len(tokens) else len(query)
            found.append(query[start:end].strip().upper())
    return found


def check_read_only(query: str, what: str = "query") -> None:
    """Raise QueryError unless ``query`` is one read-only statement with no writing keyword anywhere."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(f"{what} does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SQL statement ({len(statements)} found)")
    if statements[0].type not in READ_ONLY_STATEMENTS:
        raise QueryError(f"only read-only queries (SELECT, WITH, DESCRIBE, SUMMARIZE, EXPLAIN) are allowed, "
                         f"not {statements[0].type.name}")
    check_expression(query, what)


def check_expression(text: str, what: str = "query") -> None:
    """Raise QueryError when ``text`` (a query or a predicate) contains a forbidden keyword."""
    try:
        bad = sorted({k for k in keywords(text) if k in FORBIDDEN_KEYWORDS})
    except duckdb.Error as exc:
        raise QueryError(f"{what} does not parse: {str(exc).splitlines()[0]}") from None
    if bad:
        raise QueryError(f"{what} contains {', '.join(bad)}, which a read-only query cannot use "
                         f"(a column with that name must be quoted, e.g. \"{bad[0].lower()}\")")


class LockedConnection:
    """An in-memory DuckDB connection that can read the given files and nothing else, once ``lock()`` ran."""

    def __init__(self, threads: int | None = None) -> None:
        self.con = duckdb.connect(":memory:")
        self.spill_dir = tempfile.mkdtemp(prefix="filterlens-sql-")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")

    def lock(self, readable_files: Iterable[str]) -> None:
        """Allow reading exactly ``readable_files``; disable everything else; lock the configuration."""
        files = list(readable_files)
        self.con.execute("SET autoinstall_known_extensions = false")
        self.con.execute("SET autoload_known_extensions = false")
        self.con.execute("SET allow_community_extensions = false")
        self.con.execute("SET temp_directory = $dir", {"dir": self.spill_dir})
        self.con.execute("SET allowed_directories = $dirs", {"dirs": [self.spill_dir]})
        self.con.execute("SET allowed_paths = $paths", {"paths": files})
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.spill_dir, ignore_errors=True)
