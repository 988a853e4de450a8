"""Benchmark: `filterlens import onnxzoo2filterdb` on a generated release; rate, peak RSS, ratio to reading alone.

For each size (filters) a release is generated in the authors' layout (dataset.h5 /filters
(N, 3, 3) float32, filterinfo.csv, datastorage.meta.csv, meta.csv; models of 25 3x3 layers,
WideResNet-28-10 shapes, 4.0M filters each), then, each in a fresh process:

* read: every layer's range read with h5py, as the import reads it;
* floor: the same reads, written as filters rows with the store's Parquet settings (no metrics, no commits);
* import: the full import into a new dataset (metrics, filters rows, commits).

Prints filters/s of each, the import/read and import/floor time ratios and each process's peak RSS, so
memory can be compared across file sizes.

    python benchmarks/bench_import.py [--filters 5000000 20000000] [--work DIR] [--device cpu] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_rss import peak_rss_mb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL_SHAPES = [(16, 3)] + [(160, 16), (160, 160)] + [(160, 160)] * 6 + [(320, 160)] + [(320, 320)] * 7 + \
    [(640, 320)] + [(640, 640)] * 7
"""(out, in) of one generated model's 3x3 layers: a WideResNet-28-10 (about 4.2M filters)."""


def generate(folder: Path, n_filters: int, seed: int = 0) -> int:
    """Write a release of whole models with about ``n_filters`` filters (at least one model); returns N."""
    import h5py
    import pandas as pd

    per_model = sum(o * i for o, i in MODEL_SHAPES)
    n_models = max(1, round(n_filters / per_model))
    total = n_models * per_model
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    infos, storage, sheet = [], [], []
    with h5py.File(folder / "dataset.h5", "w") as f:
        filters = f.create_dataset("filters", shape=(total, 3, 3), dtype=np.float32)
        position = 0
        for model_id in range(n_models):
            name = f"bench_wrn_28_10_{model_id}_cifar10_{'linf_' if model_id % 2 == 0 else ''}13"
            for layer_id, (o, i) in enumerate(MODEL_SHAPES):
                n = o * i
                filters[position:position + n] = (0.05 * rng.standard_normal((n, 3, 3))).astype(np.float32)
                infos.append([position, position + n, model_id, layer_id, 3 * layer_id, layer_id,
                              layer_id / (len(MODEL_SHAPES) - 1), i, o])
                position += n
            storage.append({"model": name, "path": f"/zoo/{name}.onnx", "producer": "pytorch 1.10", "op_set": 13,
                            "Conv": len(MODEL_SHAPES), "(3, 3) filters": per_model, "depth": 90})
            sheet.append({"Name": name, "Robust": model_id % 2 == 0, "Clean Accuracy": 90.0,
                          "Robust Accuracy": 50.0 if model_id % 2 == 0 else 0.0, "Backbone": "WideResNet-28-10",
                          "Training-Dataset": "cifar10"})
    pd.DataFrame(infos, columns=["filter_id_start", "filter_id_end", "model", "layer_id", "depth", "conv_depth",
                                 "conv_depth_norm", "in_channels", "out_channels"]).to_csv(
        folder / "filterinfo.csv", index=False)
    pd.DataFrame(storage).to_csv(folder / "datastorage.meta.csv")
    pd.DataFrame(sheet).to_csv(folder / "meta.csv", index=False)
    return total


def child_read(release: str) -> dict:
    """Read every layer's range (the import's access pattern) and nothing else."""
    from pipeline.filterdb.reader import open_release

    started = time.perf_counter()
    n = 0
    with open_release(release) as r:
        for model in r.models:
            for layer in model.layers:
                n += r.read(layer.start, layer.end).shape[0]
    return {"filters": n, "seconds": time.perf_counter() - started}


def child_floor(release: str, out: str) -> dict:
    """Read every layer's range and write it as filters rows with the store's Parquet settings: no metrics, no
    commit. The least an import that writes filters rows can cost; import / floor is what the metrics and the
    per-model commits add."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from pipeline.dataset.layout import (
        FILTER_ROWS_PER_GROUP,
        filters_parquet_options,
        filters_write_schema,
    )
    from pipeline.extract.filter_rows import filter_batch
    from pipeline.filterdb.reader import open_release

    started = time.perf_counter()
    n = 0
    Path(out).mkdir(parents=True, exist_ok=True)
    with open_release(release) as r:
        for model in r.models:
            path = f"{out}/{model.name}.parquet"
            with pq.ParquetWriter(path, filters_write_schema(), **filters_parquet_options()) as writer:
                for index, layer in enumerate(model.layers):
                    weight = torch.from_numpy(r.read(layer.start, layer.end).reshape(
                        layer.out_channels, layer.in_channels, 3, 3))
                    sparse = torch.zeros(weight.shape[0] * weight.shape[1], dtype=torch.bool)
                    batch = filter_batch(model.name, "cifar10", model.name, index, weight, sparse)
                    writer.write_table(pa.Table.from_batches([batch]), row_group_size=FILTER_ROWS_PER_GROUP)
                    n += batch.num_rows
    return {"filters": n, "seconds": time.perf_counter() - started}


def child_import(release: str, out: str, device: str) -> dict:
    from pipeline.filterdb.importer import import_release

    summary = import_release(release, out, device=device, progress=False)
    if summary.failed:
        raise SystemExit(f"import failed: {summary.failed[0]['message']}")
    return {"filters": summary.n_filters, "seconds": summary.seconds}


def drop_page_cache() -> None:
    """Empty the kernel's page cache (root on Linux), so a child reads dataset.h5 from the disk, as a first import
    of a downloaded release does."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_child(*args: str, cold: bool = False) -> dict:
    if cold:
        drop_page_cache()
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", type=int, nargs="+", default=[5_000_000, 20_000_000],
                        help="sizes of the generated releases, in filters (the issue's goal: 50000000)")
    parser.add_argument("--work", help="folder for the releases and datasets (default: a temp folder, removed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cold", action="store_true",
                        help="drop the page cache before each child (root on Linux): reads come from the disk")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        children = {"read": child_read, "floor": child_floor, "import": child_import}
        result = children[kind](*rest)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-import-"))
    rows = []
    try:
        for size in args.filters:
            release = work / f"release-{size}"
            started = time.perf_counter()
            total = generate(release, size)
            generated = time.perf_counter() - started
            read = run_child("read", str(release), cold=args.cold)
            floor = run_child("floor", str(release), str(work / f"floor-{size}"), cold=args.cold)
            imported = run_child("import", str(release), str(work / f"dataset-{size}"), args.device, cold=args.cold)
            rows.append({"filters": total, "h5_gb": round(os.path.getsize(release / "dataset.h5") / 1e9, 2),
                         "generate_s": round(generated, 1),
                         "read_filters_per_s": round(read["filters"] / read["seconds"]),
                         "read_peak_rss_mb": round(read["peak_rss_mb"]),
                         "import_filters_per_s": round(imported["filters"] / imported["seconds"]),
                         "import_s": round(imported["seconds"], 1),
                         "import_peak_rss_mb": round(imported["peak_rss_mb"]),
                         "floor_filters_per_s": round(floor["filters"] / floor["seconds"]),
                         "import_over_read": round(imported["seconds"] / read["seconds"], 1),
                         "import_over_floor": round(imported["seconds"] / floor["seconds"], 2)})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(work / f"dataset-{size}", ignore_errors=True)
            shutil.rmtree(work / f"floor-{size}", ignore_errors=True)
            shutil.rmtree(release, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
