"""Write a filter dataset in the authors' onnxzoo2filterdb layout (dataset.h5 + the three CSVs).

The inverse of ``importer.py``, for sharing a filterlens dataset with code written for the
published releases and for the import's round-trip test: ``filters`` is written with h5py
(float32, (N, 3, 3), model after model, layer after layer, each layer in (out_channel,
in_channel) order), ``meta`` with pandas ``to_hdf`` exactly as ``generate_filter_db.ipynb``
builds it (pandas' default ``fixed`` format, as the notebook calls it; ``table`` on request).
What the layout cannot hold is documented in docs/design.md: the 1x1 and other layers
appear only in the per-model counts, and ensemble members are flattened into one model.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import __version__
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ConfigError, StoreError
from pipeline.filterdb.layout import (
    FILTERINFO_COLUMNS,
    FILTERINFO_CSV,
    FILTERS_KEY,
    H5_FILE,
    META_KEY,
    SPREADSHEET_CSV,
    STORAGE_META_CSV,
    filter_count_column,
)

log = logging.getLogger(__name__)

SPREADSHEET_COLUMNS = ["Name", "Paper", "Tracer Warning", "Selection", "Hide", "Robust", "Clean Accuracy",
                       "Robust Accuracy", "Network", "Backbone", "Framework", "Pretraining-Dataset",
                       "Training-Dataset", "Visual Category", "Visual Category_micro", "Precision",
                       "Conv Weight Initializer", "Optimizer", "Task", "Input Shape", "Accessible",
                       "Threat Model", "Eps", "Venue"]
"""The paper's meta.csv columns, then the three the import maps that the authors' sheet lacks."""

WEIGHT_COLUMNS = [f"w{k}" for k in range(9)]
META_FORMATS = ("fixed", "table")


@dataclass
class ExportSummary:
    """What an export wrote."""

    out_dir: str
    models: list[str] = field(default_factory=list)
    n_layers: int = 0
    n_filters: int = 0
    flattened: list[str] = field(default_factory=list)
    """Ensembles whose members were written as one model (the layout has no members)."""


def export_onnxzoo2filterdb(dataset_root: str, out_dir: str, models: Sequence[str] | None = None,
                            meta_format: str = "fixed") -> ExportSummary:
    """Write the committed models of ``dataset_root`` (all, or those in ``models``) to ``out_dir`` in the
    onnxzoo2filterdb layout; returns what was written. One model's filters are in memory at a time."""
    import h5py

    if meta_format not in META_FORMATS:
        raise ConfigError(f"meta_format must be one of {', '.join(META_FORMATS)}, not {meta_format!r}")
    store = DatasetStore(dataset_root)
    store.require()
    stored = store.stored_models()
    rows = store.models().to_pandas().set_index("model_id")
    ids = sorted(stored) if models is None else list(models)
    missing = [m for m in ids if m not in stored]
    if missing:
        raise ConfigError(f"{dataset_root}: no committed model {', '.join(map(repr, missing[:5]))}")
    layers_of = {m: _layers_3x3(store, stored[m]) for m in ids}
    all_layers = {m: store.read_parquet(store.layer_file(stored[m])).to_pandas() for m in ids}
    total = int(sum(frame.n_filters.sum() for frame in layers_of.values()))
    os.makedirs(out_dir, exist_ok=True)
    h5_path = os.path.join(out_dir, H5_FILE)
    summary = ExportSummary(out_dir)
    info_rows, storage_rows, sheet_rows = [], [], []
    with h5py.File(h5_path, "w") as handle:
        filters = handle.create_dataset(FILTERS_KEY, shape=(total, 3, 3), dtype=np.float32)
        position = 0
        for release_id, model_id in enumerate(ids):
            layers = layers_of[model_id]
            if layers.member.nunique() > 1:
                summary.flattened.append(model_id)
                log.warning("%s: an ensemble of %d members; the onnxzoo2filterdb layout has no members, so they "
                            "are written as one model's layers", model_id, layers.member.nunique())
            weights = _model_filters(store, stored[model_id])
            for layer_id, layer in enumerate(layers.itertuples(index=False)):
                block = _layer_block(weights, layer, model_id)
                n = block.shape[0]
                filters[position:position + n] = block.reshape(n, 3, 3)
                c_out = int(layer.out_channels)
                info_rows.append([position, position + n, release_id, layer_id, int(layer.conv_index),
                                  int(layer.conv_index), float(layer.conv_depth_norm), n // c_out, c_out])
                position += n
            summary.models.append(model_id)
            summary.n_layers += len(layers)
            storage_rows.append(_storage_row(release_id, model_id, rows.loc[model_id], all_layers[model_id]))
            sheet_rows.append(_sheet_row(model_id, rows.loc[model_id]))
        summary.n_filters = position
    info = pd.DataFrame(info_rows, columns=FILTERINFO_COLUMNS)
    storage = pd.DataFrame(storage_rows).set_index("model_id").rename_axis(None)
    sheet = pd.DataFrame(sheet_rows, columns=SPREADSHEET_COLUMNS)
    info.to_csv(os.path.join(out_dir, FILTERINFO_CSV), index=False)
    storage.to_csv(os.path.join(out_dir, STORAGE_META_CSV))
    sheet.to_csv(os.path.join(out_dir, SPREADSHEET_CSV), index=False)
    _write_meta(h5_path, info, storage, sheet, meta_format)
    return summary


def _layers_3x3(store: DatasetStore, model: object) -> pd.DataFrame:
    """The model's 3x3 layers rows in filter order: member, then conv_index."""
    frame = store.read_parquet(store.layer_file(model)).to_pandas()
    frame = frame[(frame.kernel_h == 3) & (frame.kernel_w == 3)]
    if "member" not in frame or frame.member.isna().all():
        frame = frame.assign(member=0)
    return frame.sort_values(["member", "conv_index"], kind="stable").reset_index(drop=True)


def _model_filters(store: DatasetStore, model: object) -> pa.Table:
    """All filters rows of one model, sorted by (member, conv_index, out_channel, in_channel)."""
    columns = ["member", "conv_index", "out_channel", "in_channel", *WEIGHT_COLUMNS]
    parts = []
    for path in store.filter_files(model):
        part = store.read_parquet(path)
        if "member" not in part.column_names or part.column("member").null_count == part.num_rows:
            part = part.drop_columns([c for c in ["member"] if c in part.column_names]).append_column(
                "member", pa.array(np.zeros(part.num_rows, dtype=np.int32)))
        parts.append(part.select(columns))
    if not parts:
        return pa.table({c: pa.array([], pa.int32() if c in columns[:4] else pa.float32()) for c in columns})
    table = pa.concat_tables(parts)
    return table.sort_by([(c, "ascending") for c in columns[:4]])


def _layer_block(weights: pa.Table, layer: object, model_id: str) -> np.ndarray:
    """The (n, 9) float32 filters of one layer, checked against its row's count and shape."""
    member = 0 if pd.isna(layer.member) else int(layer.member)
    mask = pc.and_(pc.equal(weights.column("member"), member), pc.equal(weights.column("conv_index"),
                                                                        int(layer.conv_index)))
    rows = weights.filter(mask)
    if rows.num_rows != int(layer.n_filters):
        raise StoreError(f"{model_id}: layer {layer.conv_index} (member {member}) has {rows.num_rows} filters rows, "
                         f"its layers row says {layer.n_filters}")
    return np.column_stack([rows.column(c).to_numpy() for c in WEIGHT_COLUMNS]).astype(np.float32, copy=False)


def _storage_row(release_id: int, model_id: str, row: pd.Series, layers: pd.DataFrame) -> dict:
    """datastorage.meta.csv's row: name, source, producer, counts of conv layers and of filters per kernel shape."""
    counts = layers.groupby(["kernel_h", "kernel_w"]).n_filters.sum()
    shapes = {filter_count_column(int(kh), int(kw)): int(n) for (kh, kw), n in counts.items()}
    return {"model_id": release_id, "model": model_id, "path": row.get("source_uri"),
            "producer": f"filterlens {__version__}", "op_set": None, "Conv": len(layers), **shapes,
            "depth": int(row.get("n_conv_layers"))}


def _sheet_row(model_id: str, row: pd.Series) -> dict:
    """meta.csv's row: the models columns under the release's column names (import.COLUMN_MAP's inverse)."""
    def value(name: str) -> object:
        v = row.get(name)
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else v

    return {"Name": model_id, "Paper": value("paper"), "Robust": bool(row.get("robust")),
            "Clean Accuracy": value("clean_acc"), "Robust Accuracy": value("robust_acc"),
            "Network": value("arch_spec"), "Backbone": value("architecture"), "Pretraining-Dataset": value("extra_data"),
            "Training-Dataset": row.get("dataset"), "Task": "Classification", "Threat Model": row.get("threat_model"),
            "Eps": value("eps"), "Venue": value("venue")}


def _write_meta(h5_path: str, info: pd.DataFrame, storage: pd.DataFrame, sheet: pd.DataFrame,
                meta_format: str) -> None:
    """The notebook's ``meta`` frame: layers indexed (model_id, conv_depth, conv_depth_norm, layer_id),
    filter_ids "start:end" (inclusive), the fused model metadata joined in; ``to_hdf`` into dataset.h5."""
    frame = info.rename(columns={"model": "model_id"}).set_index("model_id")
    frame = frame.set_index([frame.index, "conv_depth", "conv_depth_norm", "layer_id"]).rename(
        columns={"depth": "layer_depth"})
    frame["filter_ids"] = frame["filter_id_start"].apply(str) + ":" + (frame["filter_id_end"] - 1).apply(str)
    del frame["filter_id_start"]
    del frame["filter_id_end"]
    fused = storage.rename_axis("model_id").reset_index()
    fused = fused.merge(sheet, how="left", left_on="model", right_on="Name").set_index("model_id")
    filter_cols = [c for c in fused.columns if ") filters" in c and "(1, 1)" not in c]
    fused["total_filters"] = fused[filter_cols].sum(axis=1)
    fused["3x3_filter_share"] = fused[filter_count_column(3, 3)] / fused["total_filters"]
    frame = frame.join(fused, on=["model_id"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PerformanceWarning: object columns are pickled (as the notebook's are)
        if meta_format == "table":
            for column in frame.select_dtypes(include="object").columns:
                frame[column] = frame[column].map(lambda v: "" if v is None or v != v else str(v))
            frame.to_hdf(h5_path, key=META_KEY, mode="a", format="table")
        else:
            frame.to_hdf(h5_path, key=META_KEY, mode="a")
