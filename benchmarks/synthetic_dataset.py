"""Generate a large synthetic filter dataset directly in the dataset layout (a benchmark helper).

Models are written through the real store (``ModelWriter``)
with the real metric functions, so the files are exactly what ``filterlens extract``
writes; only the weights are synthetic: a wide-ResNet-like stack of 3x3 layers
(plus 1x1 shortcuts) per model, robust models with i.i.d. Gaussian filters, normal
models with filters built from a few prototypes (less diverse, some sparse).

    python benchmarks/synthetic_dataset.py /tmp/bench-ds --filters 100000000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pipeline.dataset.layout import slugify  # noqa: E402
from pipeline.dataset.schema import to_table  # noqa: E402
from pipeline.dataset.store import DatasetStore  # noqa: E402
from pipeline.dataset.writer import ModelWriter  # noqa: E402
from pipeline.extract.filter_rows import filter_batch  # noqa: E402
from pipeline.extract.metrics import layer_metrics, weight_statistics  # noqa: E402

DATASETS = ("cifar10", "cifar100", "imagenet")


def architecture(width: int, depth: int) -> list[tuple[int, int, int]]:
    """(c_out, c_in, kernel) of each conv in execution order: stem, 3 stages of ``depth`` 3x3 convs."""
    layers = [(width, 3, 3)]
    c_in = width
    for stage in range(3):
        c = width * 2**stage
        if c != c_in:
            layers.append((c, c_in, 1))
        for _ in range(depth):
            layers.append((c, c_in, 3))
            c_in = c
    return layers


def filters_per_model(width: int, depth: int) -> int:
    return sum(o * i for o, i, k in architecture(width, depth) if k == 3)


def make_weight(rng: np.random.Generator, c_out: int, c_in: int, k: int, diverse: bool) -> np.ndarray:
    if k != 3 or diverse:
        w = rng.standard_normal((c_out, c_in, k * k), dtype=np.float32)
    else:
        prototypes = rng.standard_normal((3, 9), dtype=np.float32)
        coef = rng.standard_normal((c_out, c_in, 3), dtype=np.float32) + np.float32(1.5)
        w = coef @ prototypes + np.float32(0.2) * rng.standard_normal((c_out, c_in, 9), dtype=np.float32)
        w[rng.random((c_out, c_in)) < 0.1] *= np.float32(1e-4)
    return (w * np.float32(math.sqrt(2 / (c_in * k * k)))).reshape(c_out, c_in, k, k)


def write_model(root: str, index: int, width: int, depth: int, seed: int) -> int:
    """Write model number ``index``; returns its number of 3x3 filters."""
    torch.set_num_threads(1)
    rng = np.random.default_rng([seed, index])
    store = DatasetStore(root)
    dataset = DATASETS[index % len(DATASETS)]
    robust = (index // len(DATASETS)) % 2 == 0
    model_id = f"synthetic/{dataset}/{'robust' if robust else 'normal'}{index:04d}"
    slug = slugify(model_id)
    writer = ModelWriter(store, model_id, dataset)
    layers = architecture(width, depth)
    rows = []
    for conv_index, (c_out, c_in, k) in enumerate(layers):
        weight = torch.from_numpy(make_weight(rng, c_out, c_in, k, diverse=robust))
        row = {"model_id": model_id, "dataset": dataset, "model": slug, "layer_name": f"conv{conv_index}",
               "conv_index": conv_index, "conv_depth_norm": conv_index / (len(layers) - 1), "in_channels": c_in,
               "out_channels": c_out, "groups": 1, "kernel_h": k, "kernel_w": k, "n_filters": c_out * c_in,
               "weight_dtype": "float32"}
        if k == 3:
            metrics, sparse = layer_metrics(weight)
            row.update(asdict(metrics))
            writer.add_filters(filter_batch(model_id, dataset, slug, conv_index, weight, sparse))
        else:
            row["n_nonfinite"] = 0
            row["weight_abs_max"], row["weight_mean"], row["weight_std"] = weight_statistics(weight)
        rows.append(row)
    table = to_table("layers", {key: [r.get(key) for r in rows] for key in rows[0]})
    accuracy = float(rng.uniform(80, 95)) if robust else float(rng.uniform(93, 97))
    writer.commit(table, {
        "checkpoint_sha256": f"{index:064x}", "checkpoint_bytes": 0, "checkpoint_format": "torch-zip",
        "threat_model": "Linf" if robust else "none", "robust": robust, "architecture": f"SynthResNet-{width}",
        "clean_acc": accuracy, "robust_acc": float(rng.uniform(40, 65)) if robust else 0.0,
        "n_conv_layers": len(layers), "n_conv3x3_layers": sum(1 for *_, k in layers if k == 3),
        "n_params": sum(o * i * k * k for o, i, k in layers), "n_ensemble_members": 1, "depth_source": "forward",
        "n_nonfinite_layers": 0, "device": "cpu", "extract_seconds": 0.0,
        "metadata_json": json.dumps({"synthetic": True, "seed": seed})})
    return writer.n_filters


def generate(root: str, n_filters: int, width: int = 128, depth: int = 3, workers: int = 2, seed: int = 0) -> dict:
    """Write enough models for at least ``n_filters`` 3x3 filters; returns a summary."""
    per_model = filters_per_model(width, depth)
    n_models = max(2, math.ceil(n_filters / per_model))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        total = sum(pool.map(write_model, [root] * n_models, range(n_models), [width] * n_models,
                             [depth] * n_models, [seed] * n_models))
    DatasetStore(root).update_manifest({"synthetic": True, "filters": total, "models": n_models})
    return {"models": n_models, "filters": total, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--filters", type=int, default=100_000_000)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(generate(args.root, args.filters, args.width, args.depth, args.workers, args.seed)))


if __name__ == "__main__":
    main()
