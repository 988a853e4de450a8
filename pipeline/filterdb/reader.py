"""Open a release in the onnxzoo2filterdb layout: filters out of core (h5py), metadata from ``meta`` or the CSVs.

``open_release`` reads only metadata (a few rows per layer); filters are read later, one
range at a time, with ``Release.read`` (an h5py slice: nothing but that range is in memory).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, FilterDBFormatError
from pipeline.filterdb.layout import (
    FILTERINFO_COLUMNS,
    FILTERINFO_CSV,
    FILTERS_3X3_COLUMN,
    FILTERS_KEY_ALIASES,
    H5_FILE,
    META_INDEX,
    META_KEY,
    META_LAYER_COLUMNS,
    MODEL_NAME_COLUMN,
    SPREADSHEET_CSV,
    SPREADSHEET_NAME_COLUMN,
    STORAGE_META_CSV,
    ReleaseLayer,
    ReleaseModel,
    parse_filter_ids,
)
from pipeline.filterdb.safe_pickle import restricted_unpickling

METADATA_SOURCES = ("auto", "h5", "csv")
"""``auto``: the ``meta`` key when dataset.h5 has one, else the CSVs beside it."""

READ_CHUNK_FILTERS = 1 << 20
"""Filters per h5py read when a range is hashed without being imported (36 MiB of float32)."""


@dataclass
class Release:
    """An open release: its models (metadata only) and the HDF5 ``filters`` dataset, read on demand."""

    h5_path: str
    models: list[ReleaseModel]
    n_rows: int
    """Rows of ``filters``."""
    dtype: np.dtype
    metadata_source: str
    """``meta key`` or ``csv``."""
    _file: Any = field(repr=False, default=None)
    _filters: Any = field(repr=False, default=None)

    def read(self, start: int, end: int) -> np.ndarray:
        """Filters ``start`` .. ``end - 1`` as an (n, 9) array in the file's dtype (one h5py slice)."""
        return np.ascontiguousarray(self._filters[start:end]).reshape(end - start, 9)

    def model_digest(self, model: ReleaseModel) -> str:
        """sha256 of the model's metadata and layer table (``model_header``) and its filters' bytes, in layer
        order: the source digest that makes a rerun skip the model (read in bounded chunks)."""
        digest = hashlib.sha256(model_header(model))
        for layer in model.layers:
            for start in range(layer.start, layer.end, READ_CHUNK_FILTERS):
                digest.update(self.read(start, min(layer.end, start + READ_CHUNK_FILTERS)))
        return digest.hexdigest()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Release:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def model_header(model: ReleaseModel) -> bytes:
    """Canonical JSON of a model's name, metadata and layers: the first part of its source digest."""
    layers = [[la.layer_id, la.start, la.end, la.in_channels, la.out_channels, la.conv_depth,
               la.conv_depth_norm, la.layer_depth] for la in model.layers]
    return json.dumps({"name": model.name, "metadata": model.metadata, "layers": layers}, sort_keys=True,
                      default=str).encode()


def locate(path: str) -> tuple[str, str]:
    """(folder, dataset.h5 path) of PATH: a release folder, or its dataset.h5 (any name)."""
    if os.path.isdir(path):
        h5 = os.path.join(path, H5_FILE)
        if not os.path.isfile(h5):
            raise FilterDBFormatError(f"{path}: no {H5_FILE} in this folder; an onnxzoo2filterdb release has "
                                      f"{H5_FILE} beside {FILTERINFO_CSV}, {STORAGE_META_CSV} and {SPREADSHEET_CSV}")
        return path, h5
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file or folder (give a release folder or its {H5_FILE})")
    return os.path.dirname(os.path.abspath(path)), path


def open_release(path: str, metadata: str = "auto") -> Release:
    """Open PATH (folder or dataset.h5): validate the ``filters`` dataset's shape and read every layer's range.

    Metadata come from the ``meta`` key (read with restricted unpickling) or, with
    ``metadata="csv"`` or when there is no ``meta`` key, from the three CSVs.
    """
    import h5py

    if metadata not in METADATA_SOURCES:
        raise ConfigError(f"--metadata must be one of {', '.join(METADATA_SOURCES)}, not {metadata!r}")
    folder, h5_path = locate(path)
    try:
        handle = h5py.File(h5_path, "r")
    except OSError as exc:
        raise FilterDBFormatError(f"{h5_path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    try:
        filters = _filters_dataset(handle, h5_path)
        has_meta = META_KEY in handle
        if metadata == "h5" and not has_meta:
            raise FilterDBFormatError(f"{h5_path}: no '{META_KEY}' key (keys: {', '.join(sorted(handle))}); "
                                      f"use --metadata csv to read {FILTERINFO_CSV} and {STORAGE_META_CSV}")
        if has_meta and metadata != "csv":
            layers, model_meta = _from_meta_key(h5_path)
            source = "meta key"
        else:
            layers, model_meta = _from_csvs(folder, h5_path)
            source = "csv"
        models = _models(layers, model_meta, h5_path)
    except BaseException:
        handle.close()
        raise
    return Release(h5_path, models, int(filters.shape[0]), filters.dtype, source, handle, filters)


def _filters_dataset(handle: Any, h5_path: str) -> Any:
    import h5py

    key = next((k for k in FILTERS_KEY_ALIASES if k in handle), None)
    if key is None or not isinstance(handle[key], h5py.Dataset):
        raise FilterDBFormatError(f"{h5_path}: no '{FILTERS_KEY_ALIASES[0]}' dataset (keys: "
                                  f"{', '.join(sorted(handle)) or 'none'}); the release's filters are an (N, 3, 3) "
                                  f"array under /filters")
    filters = handle[key]
    if tuple(filters.shape[1:]) not in ((3, 3), (9,)):
        raise FilterDBFormatError(f"{h5_path}: /{key} has shape {tuple(filters.shape)}, not (N, 3, 3) or (N, 9)")
    if filters.dtype.kind != "f":
        raise FilterDBFormatError(f"{h5_path}: /{key} holds {filters.dtype}, not floating-point filters")
    return filters


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FilterDBFormatError(f"{what}: missing column(s) {', '.join(missing)} (has "
                                  f"{', '.join(map(str, frame.columns[:12]))}{', ...' if len(frame.columns) > 12 else ''})")


def _from_meta_key(h5_path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Layers (canonical columns) and per-model metadata from the notebook's ``meta`` frame."""
    what = f"{h5_path}:/{META_KEY}"
    with restricted_unpickling(what):
        try:
            frame = pd.read_hdf(h5_path, META_KEY)
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise FilterDBFormatError(f"{what}: not a pandas frame ({str(exc).splitlines()[0]})") from None
    if not isinstance(frame, pd.DataFrame):
        raise FilterDBFormatError(f"{what}: holds a {type(frame).__name__}, not a pandas DataFrame")
    frame = frame.reset_index()
    _require(frame, [*META_INDEX, "filter_ids", "in_channels", "out_channels", MODEL_NAME_COLUMN], what)
    try:
        bounds = [parse_filter_ids(v) for v in frame["filter_ids"]]
    except ValueError as exc:
        raise FilterDBFormatError(f"{what}: {exc}") from None
    layers = pd.DataFrame({
        "release_id": frame["model_id"], "layer_id": frame["layer_id"],
        "start": [b[0] for b in bounds], "end": [b[1] for b in bounds],
        "in_channels": frame["in_channels"], "out_channels": frame["out_channels"],
        "conv_depth": frame["conv_depth"], "conv_depth_norm": frame["conv_depth_norm"],
        "layer_depth": frame["layer_depth"] if "layer_depth" in frame else None,
    })
    meta_columns = [c for c in frame.columns if c not in {*META_INDEX, *META_LAYER_COLUMNS}]
    model_meta = frame[["model_id", *[c for c in meta_columns if c != "model_id"]]].drop_duplicates("model_id")
    return layers, model_meta.rename(columns={"model_id": "release_id"}).set_index("release_id")


def _from_csvs(folder: str, h5_path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Layers and per-model metadata from filterinfo.csv, datastorage.meta.csv and (optional) meta.csv."""
    paths = {name: os.path.join(folder, name) for name in (FILTERINFO_CSV, STORAGE_META_CSV, SPREADSHEET_CSV)}
    missing = [n for n in (FILTERINFO_CSV, STORAGE_META_CSV) if not os.path.isfile(paths[n])]
    if missing:
        raise FilterDBFormatError(f"{h5_path}: no '{META_KEY}' key and no {' or '.join(missing)} in {folder}: the "
                                  f"release's layer table is missing")
    info = _read_csv(paths[FILTERINFO_CSV])
    _require(info, [c for c in FILTERINFO_COLUMNS if c not in ("depth", "conv_depth_norm")], paths[FILTERINFO_CSV])
    storage = _read_csv(paths[STORAGE_META_CSV])
    _require(storage, [MODEL_NAME_COLUMN], paths[STORAGE_META_CSV])
    storage = storage.rename(columns={storage.columns[0]: "release_id"}) if str(storage.columns[0]).startswith(
        "Unnamed") else storage.rename_axis("release_id").reset_index()
    if os.path.isfile(paths[SPREADSHEET_CSV]):
        sheet = _read_csv(paths[SPREADSHEET_CSV])
        _require(sheet, [SPREADSHEET_NAME_COLUMN], paths[SPREADSHEET_CSV])
        sheet[SPREADSHEET_NAME_COLUMN] = sheet[SPREADSHEET_NAME_COLUMN].astype(str)
        storage = storage.merge(sheet, how="left", left_on=MODEL_NAME_COLUMN, right_on=SPREADSHEET_NAME_COLUMN)
    shapes = [c for c in storage.columns if str(c).endswith(") filters") and "(1, 1)" not in str(c)]
    if FILTERS_3X3_COLUMN in storage:  # as FilterDataset fuses them (the notebook's meta key has both)
        storage["total_filters"] = storage[shapes].sum(axis=1)
        storage["3x3_filter_share"] = storage[FILTERS_3X3_COLUMN] / storage["total_filters"]
    layers = pd.DataFrame({
        "release_id": info["model"], "layer_id": info["layer_id"],
        "start": info["filter_id_start"], "end": info["filter_id_end"],
        "in_channels": info["in_channels"], "out_channels": info["out_channels"],
        "conv_depth": info["conv_depth"],
        "conv_depth_norm": info["conv_depth_norm"] if "conv_depth_norm" in info else None,
        "layer_depth": info["depth"] if "depth" in info else None,
    })
    unknown = sorted(set(layers.release_id) - set(storage.release_id))
    if unknown:
        raise FilterDBFormatError(f"{paths[FILTERINFO_CSV]}: model ids {', '.join(map(str, unknown[:5]))} are not in "
                                  f"{STORAGE_META_CSV}")
    return layers, storage.drop_duplicates("release_id").set_index("release_id")


def _read_csv(path: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise FilterDBFormatError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None


def plain(value: object) -> object:
    """A metadata value as plain JSON-able Python (NumPy scalars unwrapped; NaN is None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NaT or value is pd.NA:
        return None
    return value


def _int(value: object, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FilterDBFormatError(f"{what} is {value!r}, not an integer") from None
    if not math.isfinite(number) or number != int(number):
        raise FilterDBFormatError(f"{what} is {value!r}, not an integer")
    return int(number)


def _models(layers: pd.DataFrame, model_meta: pd.DataFrame, h5_path: str) -> list[ReleaseModel]:
    """One ReleaseModel per model id that has layers, in model-id order; layers in filter order."""
    models: dict[int, ReleaseModel] = {}
    names: dict[str, int] = {}
    for row in layers.itertuples(index=False):
        release_id = _int(row.release_id, f"{h5_path}: a layer's model id")
        model = models.get(release_id)
        if model is None:
            meta = {str(k): plain(v) for k, v in model_meta.loc[row.release_id].items()}
            name = meta.get(MODEL_NAME_COLUMN) or meta.get(SPREADSHEET_NAME_COLUMN)
            if not name:
                raise FilterDBFormatError(f"{h5_path}: model id {release_id} has no '{MODEL_NAME_COLUMN}' name")
            name = str(name)
            if name in names:
                raise FilterDBFormatError(f"{h5_path}: model name {name!r} is used by model ids {names[name]} and "
                                          f"{release_id}; names must be unique (they become model_id)")
            names[name] = release_id
            model = models[release_id] = ReleaseModel(release_id, name, meta)
        where = f"{h5_path}: model {model.name!r}"
        depth_norm = plain(row.conv_depth_norm)
        layer_depth = plain(row.layer_depth)
        model.layers.append(ReleaseLayer(
            layer_id=_int(row.layer_id, f"{where}: layer_id"), start=_int(row.start, f"{where}: a filter range"),
            end=_int(row.end, f"{where}: a filter range"),
            in_channels=_int(row.in_channels, f"{where}: in_channels"),
            out_channels=_int(row.out_channels, f"{where}: out_channels"),
            conv_depth=_int(row.conv_depth, f"{where}: conv_depth"),
            conv_depth_norm=float(depth_norm) if depth_norm is not None else math.nan,
            layer_depth=_int(layer_depth, f"{where}: layer_depth") if layer_depth is not None else None))
    for model in models.values():
        model.layers.sort(key=lambda la: (la.start, la.layer_id))
    return [models[k] for k in sorted(models)]
