"""Benchmark a shared dataset root: concurrent writers and readers with SIGKILLs, and the cost of snapshot reads.

Part 1 runs the stress test's worker processes (tests/stress_worker.py) at a larger
scale: ``--writers`` processes re-extract ``--models`` overlapping models for
``--seconds`` while ``--readers`` processes open and check snapshots, and writers
are SIGKILLed at random moments. It prints the models committed, how many commits
replaced another's (last writer wins), reader snapshots served, reader failures,
lost and duplicated models (both must be 0), and what vacuum removed.

Part 2 times opening a ``--root-models``-model root (default 1,000 small models) and
counting its filters two ways in one run, median of ``--repeats``: through
``open_dataset`` (one snapshot: the rows read into memory, the files listed once and
checked) and through a bare DuckDB view over the row files' globs (what a reader
without snapshots does), with their ratio.

    python benchmarks/bench_concurrency.py
    python benchmarks/bench_concurrency.py --seconds 120 --writers 6 --models 24 --root-models 2000
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import duckdb  # noqa: E402
import torch  # noqa: E402

from pipeline.dataset.query import open_dataset  # noqa: E402
from pipeline.dataset.store import DatasetStore  # noqa: E402

WORKER = str(HERE.parent / "tests" / "stress_worker.py")


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "tests"), str(HERE.parent)])}
    return subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stress(tmp: Path, writers: int, readers: int, n_models: int, seconds: float) -> None:
    from zoo_fixtures import tiny_net

    root = str(tmp / "stress")
    checkpoint = tmp / "tiny.pt"
    torch.save({"state_dict": tiny_net().state_dict()}, checkpoint)
    models = [f"bench/m{i:03d}" for i in range(n_models)]
    rng = random.Random(0)
    wlogs = [tmp / f"w{i}.log" for i in range(writers)]
    rlogs = [tmp / f"r{i}.log" for i in range(readers)]
    procs = [spawn(["write", root, str(log), str(checkpoint), str(i), *models]) for i, log in enumerate(wlogs)]
    reads = [spawn(["read", root, str(log), str(100 + i)]) for i, log in enumerate(rlogs)]
    kills, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(rng.uniform(0.5, 3.0))
        i = rng.randrange(writers)
        procs[i].send_signal(signal.SIGKILL)
        procs[i].wait()
        kills += 1
        procs[i] = spawn(["write", root, str(wlogs[i]), str(checkpoint), str(1000 + kills), *models])
    for p in procs + reads:
        p.kill()
        p.wait()
    lines = [ln for log in wlogs if log.exists() for ln in log.read_text().splitlines()]
    rlines = [ln for log in rlogs if log.exists() for ln in log.read_text().splitlines()]
    committed = Counter(ln.split()[1] for ln in lines if ln.startswith("model"))
    store = DatasetStore(root)
    stored = store.stored_models()
    with open_dataset(root) as ds:
        per_model = {r["model_id"]: r["n"] for r in ds.fetch_arrow(
            "SELECT model_id, count(*) AS n FROM models GROUP BY 1").to_pylist()}
    lost = sorted(m for m in committed if m not in stored or store.incomplete_models([stored[m]]))
    duplicated = sorted(m for m, n in per_model.items() if n > 1)
    removed = store.vacuum(older_than_s=0)
    print(f"stress: {writers} writers, {readers} readers, {n_models} models, {seconds:.0f} s, {kills} SIGKILLs")
    print(f"  commits {sum(committed.values())} ({sum(committed.values()) - len(committed)} replaced an earlier "
          f"commit of the same model), models committed {len(committed)}/{n_models}")
    print(f"  reader snapshots served {sum(ln.startswith('ok') for ln in rlines)}, "
          f"reader failures {sum(ln.startswith('FAIL') for ln in rlines)}")
    for line in [ln for ln in rlines if ln.startswith("FAIL")][:3]:
        print(f"  reader {line}")
    print(f"  lost models {len(lost)}, duplicated models {len(duplicated)}, vacuum removed {len(removed)} files, "
          f"build records {len(store.build_records())}")


def snapshot_cost(tmp: Path, n_models: int, repeats: int) -> None:
    from synthetic_dataset import filters_per_model, generate

    root = str(tmp / "many")
    made = generate(root, n_filters=n_models * filters_per_model(4, 1), width=4, depth=1, workers=2)
    glob = f"{root}/models/*.parquet"

    def with_snapshot() -> int:
        with open_dataset(root) as ds:
            return ds.fetch_arrow("SELECT count(*) AS n FROM filters").column(0)[0].as_py()

    def bare_views() -> int:
        con = duckdb.connect()
        con.execute(f"CREATE VIEW filters AS SELECT * FROM read_parquet('{root}/filters/**/*.parquet', "
                    "hive_partitioning = false)")
        con.execute(f"CREATE VIEW models AS SELECT * FROM read_parquet('{glob}')")
        return con.execute("SELECT count(*) FROM filters").fetchone()[0]

    times: dict[str, list[float]] = {"snapshot (open_dataset)": [], "bare DuckDB globs": []}
    for _ in range(repeats):
        for name, fn in (("snapshot (open_dataset)", with_snapshot), ("bare DuckDB globs", bare_views)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["bare DuckDB globs"])
    print(f"snapshot reads: {made['models']} models, {made['filters']} filters, median of {repeats}")
    for name, values in times.items():
        print(f"  {name:<26} {statistics.median(values):7.3f} s  x{statistics.median(values) / base:5.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--root-models", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stress(Path(tmp), args.writers, args.readers, args.models, args.seconds)
        snapshot_cost(Path(tmp), args.root_models, args.repeats)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
