"""Benchmark: codecs and float encodings of the filters table (behind layout.COMPRESSION / FLOAT_ENCODING).

For each variant (codec for every column + encoding of w0..w8) it writes the filters table with the writer's
settings otherwise (dictionary columns, 1M-row groups, statistics) and measures

* size, and decoding the 9 weight columns (fastest of ``--repeat`` reads, memory-mapped; filters per
  CPU-second, which the machine's other load disturbs less than wall time), on
  - random weights: every 3x3 layer of a random-init WRN-28-10 (benchmarks/make_checkpoint.py);
  - trained weights: the w0..w8 of a dataset's filters files (``--trained ROOT``, e.g. the dataset of
    ``filterlens demo``; nothing is shipped), resampled with replacement to ``--rows`` rows (a fixed
    seed; scattered repeats, which no codec can exploit);
* with ``--stats N``: a synthetic dataset of N filters written by ModelWriter under each variant
  (benchmarks/synthetic_dataset.py: structured, trained-like weights), then bench_stats.py's read floor
  and ``filterlens stats``'s histogram and range passes, per CPU-second.

    python benchmarks/bench_encodings.py [--trained /tmp/demo/dataset] [--stats 10000000] [--work DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))

ARCH = "robustbench:cifar10:Linf:Carmon2019Unlabeled"
VARIANTS = {  # name: (codec of every column, encoding of w0..w8)
    "zstd+BSS": ("zstd", "BYTE_STREAM_SPLIT"),
    "zstd+PLAIN": ("zstd", "PLAIN"),
    "lz4+BSS": ("lz4", "BYTE_STREAM_SPLIT"),
    "lz4+PLAIN": ("lz4", "PLAIN"),
    "none+BSS": ("none", "BYTE_STREAM_SPLIT"),
    "none+PLAIN": ("none", "PLAIN"),
}


def random_table(checkpoint: Path) -> pa.Table:
    import torch

    from pipeline.extract.filter_rows import filter_batch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state)
    return pa.Table.from_batches([
        filter_batch("m", "cifar10", "m", i, w, torch.zeros(w.shape[0] * w.shape[1], dtype=torch.bool))
        for i, w in enumerate(v for v in state.values() if v.ndim == 4 and tuple(v.shape[2:]) == (3, 3))])


def trained_table(root: str, rows: int) -> tuple[pa.Table, int, int] | None:
    from pipeline.dataset.layout import WEIGHT_COLUMNS, filters_write_schema

    files = sorted(glob.glob(os.path.join(root, "filters", "**", "*.parquet"), recursive=True))
    if not files:
        return None
    weights = pa.concat_tables([pq.read_table(f, columns=WEIGHT_COLUMNS) for f in files])
    take = np.random.default_rng(0).integers(0, weights.num_rows, rows)
    picked = weights.take(pa.array(take))
    schema = filters_write_schema()
    zeros = pa.array(np.zeros(rows, dtype=np.int32))
    columns = {
        "model_id": pa.DictionaryArray.from_arrays(zeros, pa.array(["m"])),
        "dataset": pa.DictionaryArray.from_arrays(zeros, pa.array(["d"])),
        "model": pa.DictionaryArray.from_arrays(zeros, pa.array(["m"])),
        "member": pa.array(np.zeros(rows, dtype=np.int32)),
        "conv_index": pa.array((np.arange(rows) // 65536).astype(np.int32)),
        "out_channel": pa.array((np.arange(rows) // 256 % 256).astype(np.int32)),
        "in_channel": pa.array((np.arange(rows) % 256).astype(np.int32)),
        "sparse": pa.array(np.zeros(rows, dtype=bool)),
        **{c: picked.column(c).combine_chunks() for c in WEIGHT_COLUMNS},
    }
    return pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema), len(files), weights.num_rows


def write(table: pa.Table, path: str, codec: str, encoding: str) -> float:
    from pipeline.dataset.layout import CONSTANT_COLUMNS, FILTER_ROWS_PER_GROUP, WEIGHT_COLUMNS

    started = time.process_time()
    with pq.ParquetWriter(path, table.schema, compression=codec, use_dictionary=[*CONSTANT_COLUMNS, "conv_index",
                          "sparse"], column_encoding={c: encoding for c in WEIGHT_COLUMNS}, write_statistics=True,
                          store_schema=False) as writer:
        writer.write_table(table, row_group_size=FILTER_ROWS_PER_GROUP)
    return time.process_time() - started


def read_cpu(path: str, repeat: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the fastest read of the weight columns."""
    from pipeline.dataset.layout import WEIGHT_COLUMNS

    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        pq.read_table(pa.memory_map(path), columns=WEIGHT_COLUMNS, use_threads=True)
        best = min(best, (time.process_time() - cpu, time.perf_counter() - wall))
    return best


def table_phase(name: str, label: str, table: pa.Table, work: Path, repeat: int) -> None:
    print(f"\n{label}: {table.num_rows / 1e6:.2f}M filters", flush=True)
    base = None
    for variant, (codec, encoding) in VARIANTS.items():
        path = str(work / f"{name}-{variant}.parquet")
        write_cpu = write(table, path, codec, encoding)
        cpu, wall = read_cpu(path, repeat)
        size = os.path.getsize(path)
        base = base or (size, cpu)
        print(f"  {variant:<11} {size / 1e6:7.1f} MB ({size / base[0]:.2f}x)  read {cpu:.3f} CPU-s "
              f"({table.num_rows / cpu / 1e6:6.1f}M filters/CPU-s, {base[1] / cpu:.2f}x zstd+BSS), "
              f"wall {wall:.3f} s  write {write_cpu:.2f} CPU-s", flush=True)
        os.unlink(path)


def stats_phase(n_filters: int, work: Path) -> None:
    import multiprocessing

    from bench_stats import read_floor, run_stats_cli

    from pipeline.dataset import writer

    print(f"\nfilterlens stats on {n_filters / 1e6:.0f}M synthetic filters per variant", flush=True)
    for variant, (codec, encoding) in VARIANTS.items():
        root = str(work / f"stats-{variant}")
        shutil.rmtree(root, ignore_errors=True)
        writer.COMPRESSION, writer.FLOAT_ENCODING = codec, encoding  # forked generator workers inherit these
        ctx = multiprocessing.get_context("fork")
        process = ctx.Process(target=_generate, args=(root, n_filters))
        process.start()
        process.join()
        size = sum(os.path.getsize(f) for f in glob.glob(f"{root}/filters/**/*.parquet", recursive=True))
        floor = read_floor(root, os.cpu_count() or 1)
        run = run_stats_cli(root, str(work / f"report-{variant}"), os.cpu_count() or 1, "numba")
        print(f"  {variant:<11} {size / 1e6:7.0f} MB  read floor {floor['filters_per_cpu_s'] / 1e6:5.1f}M/CPU-s  "
              f"histogram pass {run['histogram_pass_filters_per_cpu_s'] / 1e6:5.1f}M/CPU-s "
              f"({run['histogram_pass_filters_per_s'] / 1e6:.1f}M/s)  range pass "
              f"{run['range_pass_filters_per_cpu_s'] / 1e6:5.1f}M/CPU-s  stats wall {run['wall_s']:.1f} s  "
              f"peak RSS {run['peak_rss_mib']:.0f} MiB", flush=True)
        shutil.rmtree(root, ignore_errors=True)


def _generate(root: str, n_filters: int) -> None:
    from synthetic_dataset import generate

    generate(root, n_filters, workers=os.cpu_count() or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="folder for the files (default: a temp dir)")
    parser.add_argument("--checkpoint", help="random-init WRN-28-10 checkpoint (default: make one in --work)")
    parser.add_argument("--trained", help="a dataset root whose filters are trained weights (e.g. filterlens demo's)")
    parser.add_argument("--rows", type=int, default=4_000_000, help="rows of the trained-weights table")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stats", type=int, default=0, help="also run filterlens stats on this many synthetic filters")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--no-tables", action="store_true", help="only the --stats phase")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="filterlens-bench-enc-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "wrn-28-10.pt"
    if not checkpoint.exists():
        from make_checkpoint import make_checkpoint

        make_checkpoint(ARCH, str(checkpoint), wrap="state_dict", prefix="module.")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, pyarrow {pa.__version__}")
    for name in set(VARIANTS) - set(args.variants):
        del VARIANTS[name]
    if not args.no_tables:
        table_phase("random", "random (WRN-28-10 init)", random_table(checkpoint), work, args.repeat)
    if args.trained and not args.no_tables:
        found = trained_table(args.trained, args.rows)
        if found is None:
            print(f"\nno filters files under {args.trained}: trained weights skipped")
        else:
            table, n_files, n_rows = found
            table_phase("trained", f"trained ({n_rows:,} filters of {n_files} files in {args.trained}, resampled)",
                        table, work, args.repeat)
    elif not args.trained:
        print("\nno --trained dataset given (e.g. the output of filterlens demo): trained weights skipped")
    if args.stats:
        stats_phase(args.stats, work)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
