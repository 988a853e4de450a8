"""Benchmark: the paper's route vs ``filterlens extract --arch``, each as a whole process.

The paper's route (one process): build the RobustBench model and bind the checkpoint
(``load_state_dict``), ``torch.onnx.export``, parse the ONNX graph's Conv weights with
``onnx``, write the 3x3 filters (9 float32 columns + conv/out/in indices) to Parquet.
The filterlens side: ``filterlens extract CKPT --arch ARCH --out DIR --force`` (forward-order
binding, every per-layer metric, the atomic dataset write). Runs are paired (route, then
extract, alternating which goes first) so both see the same machine load; the report gives
each pair's ratio and the medians.

    python benchmarks/bench_onnx_route.py [--work DIR] [--pairs 3] [--exporter legacy|dynamo]

With ``--trace-cache`` (default) filterlens' forward-order trace cache is warmed once
before the pairs (the second and later extractions of an architecture skip robustbench);
``--no-trace-cache`` points FILTERLENS_CACHE at an empty folder for every run (cold).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCH = "robustbench:cifar10:Linf:Carmon2019Unlabeled"

ROUTE = r"""
import sys, time
t0 = time.perf_counter()
import contextlib, importlib, io, warnings
import numpy as np, torch, onnx
from onnx import numpy_helper
import pyarrow as pa, pyarrow.parquet as pq
CKPT, OUT, DATASET, THREAT, NAME, EXPORTER = sys.argv[1:7]
# load + bind with robustbench (its packaging snag: it imports autoattack, installed as pyautoattack)
with contextlib.suppress(ImportError):
    sys.modules.setdefault("autoattack", importlib.import_module("pyautoattack"))
with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter("ignore")
    from robustbench.model_zoo import models as zoo
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    model = zoo.model_dicts[BenchmarkDataset(DATASET)][ThreatModel(THREAT)][NAME]["model"]()
state = torch.load(CKPT, map_location="cpu", weights_only=True)
state = state.get("state_dict", state)
state = {k.removeprefix("module."): v for k, v in state.items()}
model.load_state_dict(state, strict=True)
model.eval()
# export
onnx_path = OUT + "/model.onnx"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), onnx_path, dynamo=EXPORTER == "dynamo",
                      external_data=False)
# parse Conv weights from the graph, in graph order
graph = onnx.load(onnx_path).graph
inits = {t.name: t for t in graph.initializer}
cols = {f"w{k}": [] for k in range(9)}
conv_index, out_ch, in_ch = [], [], []
index = 0
for node in graph.node:
    if node.op_type != "Conv" or node.input[1] not in inits:
        continue
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32, copy=False)
    if w.ndim == 4 and w.shape[2:] == (3, 3):
        c_out, c_in = w.shape[:2]
        flat = w.reshape(-1, 9)
        for k in range(9):
            cols[f"w{k}"].append(flat[:, k])
        conv_index.append(np.full(c_out * c_in, index, dtype=np.int32))
        out_ch.append(np.repeat(np.arange(c_out, dtype=np.int32), c_in))
        in_ch.append(np.tile(np.arange(c_in, dtype=np.int32), c_out))
    index += 1
table = pa.table({"conv_index": np.concatenate(conv_index), "out_channel": np.concatenate(out_ch),
                  "in_channel": np.concatenate(in_ch), **{k: np.concatenate(v) for k, v in cols.items()}})
pq.write_table(table, OUT + "/filters.parquet")
print(f"ROUTE filters={table.num_rows} inner_s={time.perf_counter() - t0:.3f}")
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="directory for the checkpoint and outputs (default: a temp dir)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy",
                        help="torch.onnx.export's TorchScript exporter (the paper's era) or dynamo (needs onnxscript)")
    parser.add_argument("--trace-cache", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="filterlens-onnx-route-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "wrn-28-10.pt"
    if not checkpoint.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from make_checkpoint import make_checkpoint

        make_checkpoint(ARCH, str(checkpoint), wrap="state_dict", prefix="module.")
    _, dataset, threat, name = ARCH.split(":")
    filterlens = str(Path(sys.executable).with_name("filterlens"))
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env["FILTERLENS_CACHE"] = str(cache)
    route_out = work / "route"
    route_out.mkdir(exist_ok=True)
    route = [sys.executable, "-c", ROUTE, str(checkpoint), str(route_out), dataset, threat, name, args.exporter]
    extract = [filterlens, "extract", str(checkpoint), "--arch", ARCH, "--out", str(work / "ds"), "--force",
               "--device", args.device, "--model-id", "bench/wrn-28-10"]
    print(f"checkpoint {checkpoint} ({checkpoint.stat().st_size / 1e6:.0f} MB), exporter {args.exporter}, "
          f"trace cache {'warm' if args.trace_cache else 'cold'}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.trace_cache:
        warm, _ = timed(extract, env)  # fills the trace cache: what the first extraction of an architecture pays
        print(f"first extraction (fills the trace cache) {warm:.2f} s", flush=True)
    routes, extracts = [], []
    for i in range(args.pairs):
        if not args.trace_cache:
            shutil.rmtree(cache, ignore_errors=True)
        order = ("route", "extract") if i % 2 == 0 else ("extract", "route")
        got = {}
        for which in order:
            got[which], out = timed(route if which == "route" else extract, env)
            if which == "route":
                inner = next(line for line in out.splitlines() if line.startswith("ROUTE "))
        routes.append(got["route"])
        extracts.append(got["extract"])
        print(f"pair {i + 1}: route {got['route']:.2f} s ({inner.split(' ', 1)[1]}), "
              f"filterlens extract {got['extract']:.2f} s, route/extract {got['route'] / got['extract']:.2f}x",
              flush=True)
    ratios = [r / e for r, e in zip(routes, extracts, strict=True)]
    print(f"median: route {statistics.median(routes):.2f} s, filterlens extract {statistics.median(extracts):.2f} s, "
          f"route/extract per pair median {statistics.median(ratios):.2f}x (goal >= 3x)")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
