"""Benchmark: build a local zoo of generated checkpoints (mixed sizes) through an HTTP mirror with Ray.

Runs the same zoo with 1 and with 2 extractor actors and prints models/min,
filters/s, peak RSS of the driver and of the Ray workers, and per actor: models,
filters/s while busy, the time inside its extractions, and its idle time before its
first model (the first download), between models (waiting on a download or the
driver: the avoidable kind) and after its last (no work left).

    python benchmarks/bench_build.py [--work DIR] [--actors 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

ZOO = [  # (name, arch spec, wrapper) - 8 checkpoints, 45 MB to 185 MB
    ("preact18-a", "robustbench:cifar10:Linf:Andriushchenko2020Understanding", "last"),
    ("preact18-b", "robustbench:cifar10:Linf:Andriushchenko2020Understanding", "last"),
    ("wrn28-10-a", "robustbench:cifar10:Linf:Carmon2019Unlabeled", "state_dict"),
    ("wrn28-10-b", "robustbench:cifar10:Linf:Carmon2019Unlabeled", "state_dict"),
    ("wrn34-10", "robustbench:cifar10:Linf:Zhang2019Theoretically", "state_dict"),
    ("resnet50-cifar", "robustbench:cifar10:Linf:Engstrom2019Robustness", "model"),
    ("resnet18-imagenet-a", "robustbench:imagenet:Linf:Salman2020Do_R18", "state_dict"),
    ("resnet18-imagenet-b", "robustbench:imagenet:Linf:Salman2020Do_R18", "state_dict"),
]


def make_zoo(work: Path) -> Path:
    from make_checkpoint import make_checkpoint

    mirror = work / "mirror" / "http" / "zoo.example.org"
    models = []
    for seed, (name, arch, wrap) in enumerate(ZOO):
        path = mirror / f"{name}.pt"
        if not path.exists():
            make_checkpoint(arch, str(path), wrap=wrap, seed=seed)
        dataset = arch.split(":")[1]
        models.append({"id": f"bench/{name}", "source": f"https://zoo.example.org/{name}.pt", "arch": arch,
                       "dataset": dataset, "threat_model": "Linf"})
    zoo = work / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"name": "bench", "models": models}))
    return zoo


class WorkerRss(threading.Thread):
    """Samples the peak resident memory (VmHWM from /proc, Linux) of the Ray processes started by this process."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()
        self.root = os.getpid()

    def descendants(self) -> list[Path]:
        children: dict[int, list[int]] = {}
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
        found, stack = [], [self.root]
        while stack:
            for child in children.get(stack.pop(), []):
                found.append(Path("/proc") / str(child))
                stack.append(child)
        return found

    def run(self) -> None:
        while not self.stop.is_set():
            for proc in self.descendants():
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    rss_kb = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines()
                                  if line.startswith("VmHWM:"))
                except (OSError, StopIteration, ValueError):
                    continue
                kind = cmd.split("ray::", 1)[1].split()[0].split(".")[0] if "ray::" in cmd else "ray-system"
                self.peak[kind] = max(self.peak.get(kind, 0), rss_kb * 1024)
            time.sleep(0.2)


def run_once(zoo: Path, work: Path, mirror_url: str, actors: int) -> dict:
    code = f"""
import json, threading, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_build import WorkerRss
from peak_rss import peak_rss_mb
import ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
rss = WorkerRss(); rss.start()
from pipeline.build.zoo_build import build_zoo
s = build_zoo({str(zoo)!r}, {str(work / f"ds-{actors}")!r}, force=True, progress=False, extractors={actors},
              mirror={mirror_url!r}, cache_dir={str(work / f"cache-{actors}")!r}, max_downloads=4)
rss.stop.set(); rss.join()
print("RESULT " + json.dumps({{"done": s.done, "failed": s.failed, "filters": s.filters, "wall": s.wall_seconds,
    "actors": [dict(vars(a)) for a in s.actors],
    "downloaded_mb": s.downloaded_bytes / 1e6, "driver_rss_mb": peak_rss_mb(),
    "worker_rss_mb": {{k: v / 2**20 for k, v in rss.peak.items()}}}}))
"""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TQDM_DISABLE": "1",
           "FILTERLENS_CACHE": str(work / "filterlens-cache")}  # the trace cache: warmed by the first build
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise SystemExit(proc.stderr[-4000:])
    return json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="working directory (default: a temp dir, removed after)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="filterlens-bench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    zoo = make_zoo(work)
    size = sum(p.stat().st_size for p in (work / "mirror").rglob("*.pt"))
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "checkpoint_server.py"), str(work / "mirror")],
                              stdout=subprocess.PIPE, text=True)
    mirror_url = server.stdout.readline().strip() + "/"
    print(f"{len(ZOO)} checkpoints, {size / 1e6:.0f} MB, served from {mirror_url}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    try:
        warm = run_once(zoo, work, mirror_url, 1)
        print(f"first build (1 actor, fills the forward-order trace cache, not counted): {warm['wall']:.1f}s",
              flush=True)
        for actors in args.actors:
            r = run_once(zoo, work, mirror_url, actors)
            print(f"{actors} actor(s): {r['done']} models ({r['failed']} failed) in {r['wall']:.1f}s = "
                  f"{60 * r['done'] / r['wall']:.1f} models/min, {r['filters'] / r['wall'] / 1e6:.2f} M filters/s, "
                  f"{r['downloaded_mb'] / r['wall']:.0f} MB/s downloaded; peak RSS driver {r['driver_rss_mb']:.0f} MB, "
                  "workers " + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(r["worker_rss_mb"].items())), flush=True)
            for a in r["actors"]:
                per_s = a["filters"] / a["busy_s"] / 1e6 if a["busy_s"] else 0.0
                print(f"  actor {a['actor']}: {a['models']} models, {per_s:.2f} M filters/s busy; busy {a['busy_s']:.1f}s "
                      f"(inside extract {a['extract_s']:.1f}s); idle {a['idle_first_s']:.1f}s before the first model, "
                      f"{a['idle_between_s']:.1f}s between models, {a['idle_last_s']:.1f}s after the last", flush=True)
    finally:
        server.terminate()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
