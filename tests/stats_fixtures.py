"""Small filter datasets for the stats tests, written through the real store (ModelWriter).

``write_model`` turns a list of conv weight arrays (in execution order) into one
committed model exactly as ``filterlens extract`` would (same metric functions,
same filter rows). ``planted_zoo`` builds robust models whose filters are more
diverse, more orthogonal and less sparse than the normal ones; ``null_zoo`` draws
both from one distribution.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.dataset.layout import slugify
from pipeline.dataset.schema import to_table
from pipeline.dataset.store import DatasetStore
from pipeline.dataset.writer import ModelWriter
from pipeline.extract.filter_rows import filter_batch
from pipeline.extract.metrics import layer_metrics, weight_statistics


def write_model(store: DatasetStore, model_id: str, dataset: str, weights: list[np.ndarray], robust: bool,
                architecture: str | None = "TinyNet", clean_acc: float | None = None,
                robust_acc: float | None = None, threat_model: str | None = None,
                members: list[int] | None = None, non_robust_members: tuple[int, ...] = ()) -> None:
    """Commit one model whose conv layers (in execution order) have the given weights.

    An ensemble gives each layer's member (``members``, in member order); depth is counted per member, and
    ``non_robust_members`` get member_robust false (as extract marks MixedNUTS's accurate base model).
    """
    slug = slugify(model_id)
    writer = ModelWriter(store, model_id, dataset)
    rows = []
    members = members or [0] * len(weights)
    sizes = {m: members.count(m) for m in members}
    for position, (w, member) in enumerate(zip(weights, members, strict=True)):
        weight = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        c_out, c_in, kh, kw = weight.shape
        index, n = members[:position].count(member), sizes[member]
        name = f"models.{member}.conv{index}" if len(sizes) > 1 else f"conv{index}"
        row = {"model_id": model_id, "dataset": dataset, "model": slug, "member": member,
               "member_robust": robust and member not in non_robust_members, "layer_name": name,
               "conv_index": index, "conv_depth_norm": index / (n - 1) if n > 1 else 0.0,
               "in_channels": c_in, "out_channels": c_out, "groups": 1, "kernel_h": kh, "kernel_w": kw,
               "n_filters": c_out * c_in, "weight_dtype": "float32"}
        if (kh, kw) == (3, 3):
            metrics, sparse = layer_metrics(weight)
            row.update(asdict(metrics))
            writer.add_filters(filter_batch(model_id, dataset, slug, index, weight, sparse, member))
        else:
            row["n_nonfinite"] = int((~torch.isfinite(weight)).sum())
            if not row["n_nonfinite"]:
                row["weight_abs_max"], row["weight_mean"], row["weight_std"] = weight_statistics(weight)
        rows.append(row)
    layers = to_table("layers", {k: [r.get(k) for r in rows] for k in rows[0]})
    n3 = sum(1 for w in weights if w.shape[2:] == (3, 3))
    writer.commit(layers, {
        "checkpoint_sha256": f"{abs(hash(model_id)):064x}"[:64], "checkpoint_bytes": 1, "checkpoint_format": "torch-zip",
        "threat_model": threat_model or ("Linf" if robust else "none"), "robust": robust,
        "architecture": architecture, "clean_acc": clean_acc, "robust_acc": robust_acc,
        "n_conv_layers": len(weights), "n_conv3x3_layers": n3, "n_params": int(sum(w.size for w in weights)),
        "n_ensemble_members": len(sizes), "n_members": len(sizes), "depth_source": "state_dict", "n_nonfinite_layers": 0, "device": "cpu",
        "extract_seconds": 0.0})


TINY_SHAPES = [(8, 3), (8, 8), (16, 8), (16, 16)]
"""(c_out, c_in) of the 3x3 layers of the tiny test architecture (a 1x1 conv runs after the second)."""


def tiny_weights(rng: np.random.Generator, diverse: bool) -> list[np.ndarray]:
    """Four 3x3 layers and one 1x1 layer. ``diverse``: i.i.d. Gaussian filters (high entropy, orthogonal,
    not sparse); otherwise filters built from two prototypes (low entropy, correlated kernels, some sparse)."""
    out = []
    prototypes = rng.standard_normal((2, 9))
    for i, (c_out, c_in) in enumerate(TINY_SHAPES):
        if diverse:
            w = rng.standard_normal((c_out, c_in, 9))
        else:
            coef = rng.standard_normal((c_out, c_in, 2)) + np.array([2.0, 0.0])
            w = coef @ prototypes + 0.05 * rng.standard_normal((c_out, c_in, 9))
            w[rng.random((c_out, c_in)) < 0.3] *= 1e-4  # sparse filters
        out.append((0.1 * w).reshape(c_out, c_in, 3, 3).astype(np.float32))
        if i == 1:
            out.append((0.1 * rng.standard_normal((16, 8, 1, 1))).astype(np.float32))
    return out


def planted_zoo(root: Path, n_per_side: int = 6, seed: int = 0, datasets: tuple[str, ...] = ("cifar10",),
                planted: bool = True) -> DatasetStore:
    """Robust (diverse) and normal (structured) models of one architecture; with ``planted=False`` both sides
    are drawn from the same distribution, so there is nothing to find."""
    rng = np.random.default_rng(seed)
    store = DatasetStore(str(root))
    for dataset in datasets:
        for side in ("robust", "normal"):
            for i in range(n_per_side):
                robust = side == "robust"
                diverse = robust if planted else True
                write_model(store, f"zoo/{dataset}/{side}{i}", dataset, tiny_weights(rng, diverse), robust,
                            clean_acc=float(80 + rng.random() * 10), robust_acc=float(40 + rng.random() * 10))
    return store
