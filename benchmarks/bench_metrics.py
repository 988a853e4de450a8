"""Benchmark: the per-layer metrics of a WRN-28-10-size checkpoint, the current formulation vs the previous one.

Both run in this one process, interleaved (machine load hits both alike), on every 3x3 layer of the
checkpoint; the report gives each repeat's ratio, the median, and the largest difference of every value.
The previous formulation (float64 (n, 9) filters, ``x.T @ x``, sparse filters gathered out) is kept
here as the reference.

    python benchmarks/bench_metrics.py [--checkpoint PATH] [--repeat 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.extract import metrics as m

ARCH = "robustbench:cifar10:Linf:Carmon2019Unlabeled"


def previous_orthogonality(weight: torch.Tensor) -> tuple[float, bool]:
    """orthogonality as it was before issue 15."""
    c_out = weight.shape[0]
    rows = weight.reshape(c_out, -1)
    gram = (rows @ rows.T).to(torch.float64)
    norms = gram.diagonal().clamp_min(0).sqrt()
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    gram = gram / torch.outer(norms, norms)
    gram.diagonal().sub_(1)
    deviation = gram.abs().sum()
    if c_out < 2:
        return float(1 - deviation.item()), True
    return float(1 - deviation.item() / (c_out * (c_out - 1))), False


def previous_layer_metrics(weight: torch.Tensor) -> dict:
    """layer_metrics as it was before issue 15 (the values only)."""
    filters = m.flatten_filters(weight)
    n = filters.shape[0]
    maxima = m.filter_abs_max(filters)
    assert bool(torch.isfinite(maxima).all())
    mask = m.sparse_mask_from_maxima(maxima)
    n_sparse = int(mask.sum().item())
    raw = filters.to(torch.float64)
    maxima64 = maxima.to(torch.float64).unsqueeze(1)
    scaled = raw / maxima64 if n_sparse == 0 else raw[~mask] / maxima64[~mask]
    n_nonsparse, pca_sum, pca_scatter = m.pca_statistics(scaled)
    entropy, degenerate = m.variance_entropy_from_statistics(n_nonsparse, pca_sum, pca_scatter)
    n_raw, raw_sum, raw_scatter = m.pca_statistics(raw)
    entropy_raw, _ = m.variance_entropy_from_statistics(n_raw, raw_sum, raw_scatter)
    ortho, ortho_degenerate = previous_orthogonality(weight)
    n_weights = n * filters.shape[1]
    mean = raw_sum.sum() / n_weights
    variance = (raw_scatter.diagonal().sum() / n_weights - mean * mean).clamp_min(0)
    return {"n_sparse": n_sparse, "n_nonsparse": n_nonsparse, "variance_entropy": entropy,
            "variance_entropy_raw": entropy_raw, "entropy_degenerate": degenerate, "orthogonality": ortho,
            "orthogonality_degenerate": ortho_degenerate, "pca_sum": pca_sum.cpu().tolist(),
            "pca_scatter": pca_scatter.reshape(-1).cpu().tolist(), "weight_abs_max": float(maxima.max().item()),
            "weight_mean": float(mean.item()), "weight_std": float(variance.sqrt().item())}


def _difference(a: object, b: object) -> float:
    if isinstance(a, list):
        return max((abs(x - y) / max(1.0, abs(y)) for x, y in zip(a, b, strict=True)), default=0.0)
    return abs(float(a) - float(b)) / max(1.0, abs(float(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a WRN-28-10 checkpoint (default: make one in a temp dir)")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default=ARCH, help="architecture of the checkpoint made when none is given")
    args = parser.parse_args()
    path = Path(args.checkpoint) if args.checkpoint else Path(tempfile.mkdtemp()) / "checkpoint.pt"
    if not path.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from make_checkpoint import make_checkpoint

        make_checkpoint(args.arch, str(path), wrap="state_dict", prefix="module.")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state)
    device = torch.device(args.device)
    weights = [w.to(device) for w in state.values() if w.ndim == 4 and tuple(w.shape[2:]) == (3, 3)]
    print(f"{len(weights)} 3x3 layers, {sum(w.shape[0] * w.shape[1] for w in weights) / 1e6:.2f}M filters, "
          f"device {device}, {torch.get_num_threads()} threads")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    worst: dict[str, float] = {}
    for w in weights:  # values first (and a warm-up of both)
        now, before = asdict(m.layer_metrics(w)[0]), previous_layer_metrics(w)
        for key, value in before.items():
            worst[key] = max(worst.get(key, 0.0), _difference(now[key], value))
    # Per layer, both versions alternately, ``repeat`` times each: the sum over layers of each one's fastest run
    # (what the machine's other load did not inflate) and of its median run.
    runs: dict[str, list[list[float]]] = {"previous": [], "current": []}
    for j, w in enumerate(weights):
        times = {"previous": [], "current": []}
        for i in range(args.repeat):
            order = (("previous", previous_layer_metrics), ("current", m.layer_metrics))
            for name, fn in order if (i + j) % 2 == 0 else order[::-1]:
                sync()
                t = time.perf_counter()
                fn(w)
                sync()
                times[name].append(time.perf_counter() - t)
        for name, values in times.items():
            runs[name].append(values)
    fastest = {name: sum(min(v) for v in layers) for name, layers in runs.items()}
    typical = {name: sum(statistics.median(v) for v in layers) for name, layers in runs.items()}
    print(f"fastest runs: previous {fastest['previous']:.3f} s, current {fastest['current']:.3f} s, "
          f"{fastest['previous'] / fastest['current']:.2f}x; median runs: previous {typical['previous']:.3f} s, "
          f"current {typical['current']:.3f} s, {typical['previous'] / typical['current']:.2f}x")
    print("largest difference, relative to max(1, |previous|): "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
