"""Benchmark: extract a WRN-28-10-size checkpoint (~4M 3x3 filters, ~150 MB) on CPU (or --arch, --device cuda).

Prints, each measured in its own subprocess (so peak RSS is per phase):
* floor      - torch.load + writing the same filter arrays to Parquet, no metrics;
* extract    - filterlens end to end with --arch (forward pass, metrics, atomic write), after the
               one-off import of robustbench (paid once per process, not per model; with the trace
               cache, pipeline/checkpoints/trace_cache.py, the repeats build nothing);
* extract-sd - end to end without --arch (state-dict order);
and PLAIN vs BYTE_STREAM_SPLIT under layout.COMPRESSION (codecs: benchmarks/bench_encodings.py).

    python benchmarks/bench_extract.py [--work DIR] [--device cpu] [--repeat 3] [--arch SPEC]
    make bench-gpu   # on CUDA: --device cuda --arch robustbench:cifar10:Linf:Gowal2020Uncovering_70_16 (29M filters)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ARCH = "robustbench:cifar10:Linf:Carmon2019Unlabeled"

PHASES = {
    "floor": """
import time, torch, pyarrow as pa, pyarrow.parquet as pq
from pipeline.extract.filter_rows import filter_batch
from pipeline.dataset.layout import FILTER_ROWS_PER_GROUP, filters_parquet_options, filters_write_schema
t = time.perf_counter()
sd = torch.load(CKPT, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
writer = pq.ParquetWriter(OUT + "/floor.parquet", filters_write_schema(), **filters_parquet_options())
n = 0
for i, (k, w) in enumerate(sd.items()):
    if w.ndim == 4 and tuple(w.shape[2:]) == (3, 3):
        batch = filter_batch("m", "cifar10", "m", i, w, torch.zeros(w.shape[0] * w.shape[1], dtype=torch.bool))
        writer.write_table(pa.Table.from_batches([batch]), row_group_size=FILTER_ROWS_PER_GROUP)
        n += batch.num_rows
writer.close()
RESULT = {"seconds": time.perf_counter() - t, "filters": n}
""",
    "extract": """
import time
from pipeline.checkpoints.robustbench import import_robustbench
from pipeline.extract.extractor import extract_model
from pipeline.zoo.spec import ModelRequest
from pipeline.dataset.store import DatasetStore
import_robustbench()  # a one-off import (~2 s) that an extractor actor pays once, not per model
t = time.perf_counter()
r = extract_model(ModelRequest("bench/wrn-28-10", checkpoints=[CKPT], arch=ARCH, dataset="cifar10", threat_model="Linf",
                               robust=True), DatasetStore(OUT + "/ds-arch"), device=DEVICE, force=True, progress=False)
RESULT = {"seconds": time.perf_counter() - t, "filters": r.n_filters}
""",
    "extract-sd": """
import time
from pipeline.extract.extractor import extract_model
from pipeline.zoo.spec import ModelRequest
from pipeline.dataset.store import DatasetStore
t = time.perf_counter()
r = extract_model(ModelRequest("bench/wrn-28-10-sd", checkpoints=[CKPT], dataset="cifar10"), DatasetStore(OUT + "/ds-sd"),
                  device=DEVICE, force=True, progress=False)
RESULT = {"seconds": time.perf_counter() - t, "filters": r.n_filters}
""",
    "encodings": """
import time, torch, pyarrow as pa, pyarrow.parquet as pq, os
from pipeline.extract.filter_rows import filter_batch
from pipeline.dataset.layout import COMPRESSION, WEIGHT_COLUMNS
sd = torch.load(CKPT, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
batches = [filter_batch("m", "cifar10", "m", i, w, torch.zeros(w.shape[0] * w.shape[1], dtype=torch.bool))
           for i, (k, w) in enumerate(sd.items()) if w.ndim == 4 and tuple(w.shape[2:]) == (3, 3)]
table = pa.Table.from_batches(batches)
RESULT = {}
for name, enc in (("PLAIN", "PLAIN"), ("BYTE_STREAM_SPLIT", "BYTE_STREAM_SPLIT")):
    path = OUT + f"/enc-{name}.parquet"
    t = time.perf_counter()
    pq.write_table(table, path, compression=COMPRESSION, use_dictionary=["model_id", "dataset", "model", "conv_index"],
                   column_encoding={c: enc for c in WEIGHT_COLUMNS})
    w = time.perf_counter() - t
    t = time.perf_counter()
    pq.read_table(path)
    RESULT[name] = {"bytes": os.path.getsize(path), "write_s": w, "read_s": time.perf_counter() - t}
""",
}


def run_phase(name: str, checkpoint: Path, out: Path, device: str, arch: str = ARCH) -> dict:
    """Run one phase in a fresh interpreter; returns its result plus peak RSS."""
    code = (f"CKPT, OUT, ARCH, DEVICE = {str(checkpoint)!r}, {str(out)!r}, {arch!r}, {device!r}\n"
            + PHASES[name] + "\nimport json, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom peak_rss import peak_rss_mb\n"
            "RESULT['peak_rss_mb'] = peak_rss_mb()\n"
            "sys.stdout.write('RESULT ' + json.dumps(RESULT) + '\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="directory for the checkpoint and outputs (default: a temp dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase; the best is reported")
    parser.add_argument("--arch", default=ARCH, help=f"architecture of the random checkpoint (default {ARCH})")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="filterlens-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / ("wrn-28-10.pt" if args.arch == ARCH else f"{args.arch.rsplit(':', 1)[-1]}.pt")
    if not checkpoint.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from make_checkpoint import make_checkpoint

        make_checkpoint(args.arch, str(checkpoint), wrap="state_dict", prefix="module.")
    print(f"checkpoint {checkpoint} ({checkpoint.stat().st_size / 1e6:.0f} MB), device {args.device}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    results = {}
    for phase in ("floor", "extract", "extract-sd"):
        runs = [run_phase(phase, checkpoint, work, args.device, args.arch) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["seconds"])
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        results[phase] = best
        times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(f"{phase:<11} {best['seconds']:7.2f} s  {best['filters'] / best['seconds'] / 1e6:6.2f} M filters/s  "
              f"peak RSS {best['peak_rss_mb']:7.0f} MB  (runs: {times})",
              flush=True)
    for phase in ("extract", "extract-sd"):
        print(f"{phase} / floor = {results[phase]['seconds'] / results['floor']['seconds']:.2f}x (goal <= 1.5x)")
    enc = run_phase("encodings", checkpoint, work, args.device)
    for name in ("PLAIN", "BYTE_STREAM_SPLIT"):
        print(f"encoding {name:<18} {enc[name]['bytes'] / 1e6:7.1f} MB  write {enc[name]['write_s']:.2f} s  "
              f"read {enc[name]['read_s']:.2f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
