"""Generate releases in the onnxzoo2filterdb layout, written the way the authors' code writes them.

``extract_filters.py``: every 3x3 layer's ``w.reshape(-1, 3, 3)`` appended to one array,
``h5py`` ``f["filters"] = array``, and ``filterinfo.csv`` (exclusive ends);
``create_filter_storage.py``: ``datastorage.meta.csv`` (pandas index = model id);
``generate_filter_db.ipynb``: the ``meta`` frame (FilterDataset's tables, indexed
(model_id, conv_depth, conv_depth_norm, layer_id), ``filter_ids`` "start:end" inclusive,
fused metadata joined) written with ``to_hdf(path, "meta")``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

SHEET_COLUMNS = ["Name", "Paper", "Tracer Warning", "Selection", "Hide", "Robust", "Clean Accuracy",
                 "Robust Accuracy", "Network", "Backbone", "Framework", "Pretraining-Dataset", "Training-Dataset",
                 "Visual Category", "Visual Category_micro", "Precision", "Conv Weight Initializer", "Optimizer",
                 "Task", "Input Shape", "Accessible"]


@dataclass
class FakeModel:
    name: str
    sheet: dict
    shapes: list[tuple[int, int]]
    """(out_channels, in_channels) of its 3x3 layers, in order."""
    n_1x1_filters: int = 0
    weights: list[np.ndarray] = field(default_factory=list)


def paper_row(name: str, robust: bool, clean: float, robust_acc: float, network: str, backbone: str,
              dataset: str, extra: bool = False, paper: str = "https://arxiv.org/abs/0000.00000") -> dict:
    """A meta.csv row as the paper's release has them."""
    return {"Name": name, "Paper": paper, "Robust": robust, "Clean Accuracy": clean, "Robust Accuracy": robust_acc,
            "Network": network, "Backbone": backbone, "Framework": "pytorch", "Pretraining-Dataset": extra,
            "Training-Dataset": dataset, "Visual Category": "natural", "Precision": "fp32",
            "Task": "Classification"}


def fake_model(name: str, sheet: dict, shapes: list[tuple[int, int]], seed: int, n_1x1: int = 0) -> FakeModel:
    rng = np.random.default_rng(seed)
    weights = [(0.1 * rng.standard_normal((o, i, 3, 3))).astype(np.float32) for o, i in shapes]
    return FakeModel(name, sheet, shapes, n_1x1, weights)


def write_release(folder: Path, models: list[FakeModel], meta: str | None = "fixed", csvs: bool = True,
                  dtype: type = np.float32, flat: bool = False) -> Path:
    """Write ``folder``/dataset.h5 (filters, and the ``meta`` key unless ``meta`` is None) and the CSVs."""
    folder.mkdir(parents=True, exist_ok=True)
    storage_rows, infos, blocks = [], [], []
    idx = 0
    for model_id, m in enumerate(models):
        storage_rows.append({"model": m.name, "path": f"/zoo/{m.name}.onnx", "producer": "pytorch 1.10",
                             "op_set": 13, "Conv": len(m.shapes) + (1 if m.n_1x1_filters else 0),
                             "(3, 3) filters": sum(o * i for o, i in m.shapes),
                             "(1, 1) filters": m.n_1x1_filters or np.nan, "depth": 3 * len(m.shapes) + 2})
        depth_len = len(m.shapes) + (1 if m.n_1x1_filters else 0)
        for layer_id, w in enumerate(m.weights):
            n = w.shape[0] * w.shape[1]
            blocks.append(w.reshape(-1, 3, 3))
            conv_depth = layer_id
            infos.append([idx, idx + n, model_id, layer_id, 3 * layer_id + 1, conv_depth,
                          conv_depth / (depth_len - 1), w.shape[1], w.shape[0]])
            idx += n
    filters = np.concatenate(blocks).astype(dtype)
    with h5py.File(folder / "dataset.h5", "a") as f:
        if "filters" in f:
            del f["filters"]
        f["filters"] = filters.reshape(-1, 9) if flat else filters
    info = pd.DataFrame(infos, columns=["filter_id_start", "filter_id_end", "model", "layer_id", "depth",
                                        "conv_depth", "conv_depth_norm", "in_channels", "out_channels"])
    storage = pd.DataFrame(storage_rows)
    sheet = pd.DataFrame([m.sheet for m in models]).reindex(columns=SHEET_COLUMNS)
    if csvs:
        info.to_csv(folder / "filterinfo.csv", index=False)
        storage.to_csv(folder / "datastorage.meta.csv")
        sheet.to_csv(folder / "meta.csv", index=False)
    if meta is not None:
        notebook_meta(info, storage, sheet).pipe(_to_hdf, folder / "dataset.h5", meta)
    return folder


def notebook_meta(info: pd.DataFrame, storage: pd.DataFrame, sheet: pd.DataFrame) -> pd.DataFrame:
    """generate_filter_db.ipynb's frame, from FilterDataset's tables."""
    fi = info.rename(columns={"model": "model_id"}).set_index("model_id")
    df_meta = storage.rename_axis("model_id").reset_index()
    df_meta = df_meta[df_meta["(3, 3) filters"] > 0]
    sheet = sheet.assign(Name=sheet["Name"].astype(str))
    fused = df_meta.merge(sheet, how="left", left_on="model", right_on="Name").set_index("model_id")
    cols = [c for c in fused.columns if ") filters" in c and "(1, 1)" not in c]
    fused["total_filters"] = fused[cols].sum(axis=1)
    fused["3x3_filter_share"] = fused["(3, 3) filters"] / fused["total_filters"]
    out = fi.set_index([fi.index, "conv_depth", "conv_depth_norm", "layer_id"]).rename(columns={"depth": "layer_depth"})
    out["filter_ids"] = out["filter_id_start"].apply(str) + ":" + (out["filter_id_end"] - 1).apply(str)
    del out["filter_id_start"]
    del out["filter_id_end"]
    return out.join(fused, on=["model_id"])


def _to_hdf(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "table":
            for c in frame.select_dtypes(include="object").columns:
                frame[c] = frame[c].map(lambda v: "" if v is None or v != v else str(v))
            frame.to_hdf(path, key="meta", format="table")
        else:
            frame.to_hdf(path, key="meta")


def two_model_release(folder: Path, **kwargs: object) -> tuple[Path, list[FakeModel]]:
    """A robust and a normal model of the paper's release (their real names and meta.csv values)."""
    models = [
        fake_model("robustbench_Andriushchenko2020Understanding_cifar10_linf_13",
                   paper_row("robustbench_Andriushchenko2020Understanding_cifar10_linf_13", True, 79.84, 43.93,
                             "Andriushchenko2020Understanding", "PreActResNet-18", "cifar10",
                             paper="https://arxiv.org/abs/2007.02617"),
                   [(8, 3), (8, 8), (16, 8)], seed=1, n_1x1=128),
        fake_model("hso_normal_training_robustbench_Andriushchenko2020Understanding_cifar10_13",
                   paper_row("hso_normal_training_robustbench_Andriushchenko2020Understanding_cifar10_13", False,
                             94.51, 0.0, "Andriushchenko2020Understanding", "PreActResNet-18", "cifar10",
                             paper="https://arxiv.org/abs/2007.02617"),
                   [(8, 3), (8, 8), (16, 8)], seed=2, n_1x1=128),
    ]
    return write_release(folder, models, **kwargs), models


def file_size(path: Path) -> int:
    return os.path.getsize(path)
