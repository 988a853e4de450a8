"""Benchmark `filterlens demo`: cold (train + build + stats) and cached wall times, and the zoo's accuracies.

    python benchmarks/bench_demo.py [--out DIR] [--seeds N] [--backend ray|local]

Runs the demo twice in a fresh folder (a temporary one unless --out) as the
command line does, in a subprocess each time (so imports and Ray start-up
count), and prints one JSON object: wall seconds cold and cached, the phase
split, the training core-seconds (sum of every task's train + eval time), the
machine's CPU count and load average, and each model's clean / PGD accuracy.
The goal: under 5 minutes cold on a 2-core laptop, seconds when cached.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import yaml


def run_demo(out: str, extra: list[str]) -> tuple[float, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
           "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--out", out, "--no-progress", *extra],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"filterlens demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def phases(stdout: str) -> dict[str, float]:
    match = re.search(r"done in ([\d.]+)s \(training ([\d.]+)s, build ([\d.]+)s, stats ([\d.]+)s\)", stdout)
    return dict(zip(("total", "train", "build", "stats"), map(float, match.groups()), strict=True)) if match else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="demo folder (default: a fresh temporary folder, removed afterwards)")
    parser.add_argument("--seeds", type=int, help="seeds per architecture and kind (default: the demo's)")
    parser.add_argument("--backend", choices=("ray", "local"), default="ray")
    args = parser.parse_args()
    extra = ["--backend", args.backend] + (["--seeds", str(args.seeds)] if args.seeds else [])
    with tempfile.TemporaryDirectory(prefix="filterlens-bench-demo-") as tmp:
        out = args.out or os.path.join(tmp, "demo")
        load_before = os.getloadavg()
        cold, cold_out = run_demo(out, extra)
        cached, cached_out = run_demo(out, extra)
        with open(os.path.join(out, "zoo", "zoo.yaml")) as fh:
            models = yaml.safe_load(fh)["models"]
    result = {
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "backend": args.backend,
        "models": len(models),
        "cold_wall_s": round(cold, 1),
        "cold_phases_s": phases(cold_out),
        "cached_wall_s": round(cached, 1),
        "cached_phases_s": phases(cached_out),
        "training_core_s": round(sum(m["metadata"]["train_seconds"] + m["metadata"]["eval_seconds"]
                                     for m in models), 1),
        "accuracy": {m["id"]: {"clean": m["clean_acc"], "pgd": m["robust_acc"]} for m in models},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
