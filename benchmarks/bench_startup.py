"""Benchmark how fast the CLI starts: whole-process wall time of the light commands (not a test).

Each command runs ``--runs`` times as a fresh process, interleaved round-robin so
that load on a shared machine hits all of them alike; the medians are printed with
their ratio to a baseline of bare DuckDB (``python -c "import duckdb; duckdb.sql('SELECT 1')"``),
which is what a SQL user compares against. Goal (README, "Benchmarks"): ``--help``
and ``sql`` under 0.5 s on the 2-core development machine.

    python benchmarks/bench_startup.py            # 15 runs each
    python benchmarks/bench_startup.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from pipeline.dataset.store import DatasetStore  # noqa: E402


def small_dataset(root: str) -> None:
    """Two committed models (written through the real writer, as the tests do)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from stats_fixtures import write_model

    store = DatasetStore(root)
    rng = np.random.default_rng(0)
    for i, robust in enumerate((True, False)):
        write_model(store, f"bench/m{i}", "cifar10", [rng.normal(size=(16, 3, 3, 3)), rng.normal(size=(32, 16, 3, 3))],
                    robust=robust)
    store.update_manifest()


def commands(root: str, zoo: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "pipeline"]
    return {
        "duckdb (baseline)": [sys.executable, "-c", "import duckdb; duckdb.sql('SELECT 1').fetchall()"],
        "filterlens --help": [*cli, "--help"],
        "filterlens sql": [*cli, "sql", root, "SELECT count(*) FROM filters"],
        "filterlens info": [*cli, "info", root],
        "filterlens zoo list": [*cli, "zoo", "list", zoo],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "ds")
        small_dataset(root)
        zoo = os.path.join(tmp, "zoo.yaml")
        with open(zoo, "w") as fh:
            fh.write("name: z\nmodels:\n  - {id: a/b, source: a.pt}\n")
        runs = commands(root, zoo)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for argv in runs.values():  # one warm-up each: page cache, .pyc files
            subprocess.run(argv, capture_output=True, check=True)
        for _ in range(args.runs):
            for name, argv in runs.items():
                started = time.perf_counter()
                subprocess.run(argv, capture_output=True, check=True)
                times[name].append(time.perf_counter() - started)
    baseline = statistics.median(times["duckdb (baseline)"])
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each, medians")
    print(f"{'command':<22} {'median s':>9} {'min s':>7} {'x duckdb':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<22} {median:>9.3f} {min(values):>7.3f} {median / baseline:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
