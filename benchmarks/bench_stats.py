"""Benchmark ``filterlens stats`` on a synthetic dataset of >= 100M filters (not a test).

Generates the dataset once (benchmarks/synthetic_dataset.py, directly as Parquet in
the dataset layout), then measures

* the read floor: every row group of the filters read (decoded) by the same thread
  pool, with no computation;
* ``filterlens stats DATASET --out REPORT`` as a subprocess: wall time, peak RSS,
  and from its run.json the filters/s of the range pass and of the histogram pass.

The machine is shared: the load average before and after is printed with the figures,
and the rates are given per wall second (all threads) and per CPU-second (the sum of
the threads' CPU time), which other sessions' load disturbs much less.

    python benchmarks/bench_stats.py                       # 100M filters in /tmp/filterlens-bench-stats
    python benchmarks/bench_stats.py --filters 10000000 --root /tmp/bench10m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from synthetic_dataset import generate  # noqa: E402

from pipeline.dataset.query import open_dataset  # noqa: E402
from pipeline.stats.options import StatsOptions  # noqa: E402
from pipeline.stats.scan import file_opener, scan_targets  # noqa: E402
from pipeline.stats.selection import select_models  # noqa: E402
from pipeline.stats.shift import scan  # noqa: E402


def read_floor(root: str, threads: int) -> dict:
    """Filters/s of decoding the scan's columns alone, with the scans' thread pool and file opening."""
    with open_dataset(root) as ds:
        targets = scan_targets(ds, select_models(ds, StatsOptions()))
        _, stats = scan(targets, file_opener(ds), lambda state, t, cols: None, lambda: None, threads)
    return {"filters": stats.rows, "seconds": stats.seconds, "cpu_seconds": stats.cpu_seconds,
            "filters_per_s": stats.rows / stats.seconds, "filters_per_cpu_s": stats.rows / stats.cpu_seconds}


def run_stats_cli(root: str, out: str, threads: int, engine: str) -> dict:
    """``filterlens stats`` in a subprocess: wall time, the child's own peak RSS, the passes' rates."""
    started = time.perf_counter()
    # The child reports its own peak RSS as it exits (a wait4 ru_maxrss would start from this process's size).
    code = (f"import atexit, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
            "from peak_rss import peak_rss_mb\n"
            "atexit.register(lambda: sys.stderr.write(f'PEAK_RSS_MB {peak_rss_mb()}\\n'))\n"
            "from pipeline.cli.main import main\nsys.exit(main())\n")
    proc = subprocess.run([sys.executable, "-c", code, "-q", "stats", root, "--out", out, "--threads", str(threads),
                           "--engine", engine], cwd=os.path.join(os.path.dirname(__file__), ".."),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"filterlens stats failed: {proc.stderr.strip()}")
    peak = next(float(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_MB "))
    with open(os.path.join(out, "run.json")) as f:
        timings = json.load(f)["timings"]
    return {"engine": engine, "wall_s": wall, "peak_rss_mib": peak, "timings": timings,
            "range_pass_filters_per_s": timings["range_pass_filters"] / timings["range_pass"],
            "range_pass_filters_per_cpu_s": timings["range_pass_filters"] / timings["range_pass_cpu"],
            "histogram_pass_filters_per_s": timings["histogram_pass_filters"] / timings["histogram_pass"],
            "histogram_pass_filters_per_cpu_s": timings["histogram_pass_filters"] / timings["histogram_pass_cpu"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/filterlens-bench-stats")
    parser.add_argument("--out", default="/tmp/filterlens-bench-stats-report")
    parser.add_argument("--filters", type=int, default=100_000_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engines", nargs="+", default=["numba"], choices=("numba", "duckdb"),
                        help="scan engines to measure (default numba; duckdb is several times slower)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    if not os.path.exists(os.path.join(args.root, "_manifest.json")):
        print(f"generating {args.filters:,} filters into {args.root} ...", flush=True)
        print(json.dumps(generate(args.root, args.filters, workers=args.threads)), flush=True)
    load_before = os.getloadavg()
    floor = read_floor(args.root, args.threads)
    runs = [run_stats_cli(args.root, f"{args.out}-{engine}", args.threads, engine) for engine in args.engines]
    load_after = os.getloadavg()
    cores = args.threads
    results = {"dataset": args.root, "filters": floor["filters"], "threads": cores,
               "load_average_before": load_before, "load_average_after": load_after,
               "read_floor": floor, "stats": runs}
    print(f"filters                     {floor['filters']:,} ({cores} threads, "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f})")
    print(f"read floor (decode only)    {floor['filters_per_s'] / 1e6:6.1f} M filters/s "
          f"({floor['filters_per_cpu_s'] / 1e6:.1f} per CPU-second)")
    for run in runs:
        print(f"[{run['engine']}] range pass          {run['range_pass_filters_per_s'] / 1e6:6.1f} M filters/s "
              f"({run['range_pass_filters_per_cpu_s'] / 1e6:.1f} per CPU-second)")
        print(f"[{run['engine']}] histogram pass      {run['histogram_pass_filters_per_s'] / 1e6:6.1f} M filters/s "
              f"({run['histogram_pass_filters_per_cpu_s'] / 1e6:.1f} per CPU-second)")
        print(f"[{run['engine']}] wall time           {run['wall_s']:6.1f} s "
              f"(in-process before the report {run['timings']['total']:.1f} s)")
        print(f"[{run['engine']}] peak RSS            {run['peak_rss_mib']:6.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
