"""First-layer galleries: which models to show (pairs or --gallery) and their first 3x3 conv layer as
weight arrays, for the report's filter mosaics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from pipeline.dataset.query import FilterDataset
from pipeline.dataset.schema import arrow_schema
from pipeline.errors import ConfigError
from pipeline.stats.options import StatsOptions
from pipeline.stats.queries import run_sql


@dataclass
class Gallery:
    """The first 3x3 conv layer of one model, as weights, with what the report's caption names."""

    model_id: str
    robust: bool
    dataset: str
    layer_name: str
    conv_index: int
    in_channels: int
    weights: np.ndarray  # (c_out, c_in, 3, 3)
    member: int = 0


def gallery_models(models: pd.DataFrame, pairs: pd.DataFrame, options: StatsOptions) -> list[list[str]]:
    """Rows of the gallery: up to ``gallery_pairs`` pairs (robust, normal) per dataset, no model shown twice,
    one pair per architecture before a second of the same; or the --gallery models, one per row."""
    if options.gallery:
        unknown = sorted(set(options.gallery) - set(models.model_id))
        if unknown:
            raise ConfigError(f"--gallery: {', '.join(unknown)} not in the selection")
        return [[m] for m in options.gallery]
    rows: list[list[str]] = []
    for dataset in sorted(models.dataset.unique()):
        candidates = list(pairs[pairs.dataset == dataset].itertuples())
        chosen: list[list[str]] = []
        shown: set[str] = set()
        for new_architecture_only in (True, False):
            archs = {str(p.architecture).lower() for p in candidates
                     if [p.robust_model_id, p.normal_model_id] in chosen}
            for pair in candidates:
                if len(chosen) >= options.gallery_pairs:
                    break
                if pair.robust_model_id in shown or pair.normal_model_id in shown:
                    continue
                if new_architecture_only and str(pair.architecture).lower() in archs:
                    continue
                chosen.append([pair.robust_model_id, pair.normal_model_id])
                shown.update(chosen[-1])
                archs.add(str(pair.architecture).lower())
        rows += chosen
    return rows


def _layer_weights(ds: FilterDataset, files: list[str], member: int, conv_index: int) -> np.ndarray:
    """The (c_out, c_in, 3, 3) weights of one conv layer, read from the model's filters files (files of
    schema version 1 have no member column: read as null, member 0)."""
    in_member = pads.field("member") == member
    if member == 0:
        in_member = in_member | pads.field("member").is_null()
    table = pads.dataset(files, schema=arrow_schema("filters"), filesystem=ds.store.fs, format="parquet").to_table(
        columns=["out_channel", "in_channel", *[f"w{i}" for i in range(9)]],
        filter=(pads.field("conv_index") == conv_index) & in_member)
    frame = table.to_pandas().sort_values(["out_channel", "in_channel"])
    c_out, c_in = int(frame.out_channel.max()) + 1, int(frame.in_channel.max()) + 1
    return frame[[f"w{i}" for i in range(9)]].to_numpy(np.float32).reshape(c_out, c_in, 3, 3)


def galleries(ds: FilterDataset, models: pd.DataFrame, rows: list[list[str]]) -> list[list[Gallery]]:
    """The first 3x3 conv layer (with metrics) of each model of each row, as weight arrays."""
    wanted = list(dict.fromkeys(m for row in rows for m in row))
    if not wanted:
        return []
    first = run_sql(ds, "first_layer", {"model_ids": wanted}).set_index("model_id")
    info = models.set_index("model_id")
    stored = ds.stored_models()
    loaded: dict[str, Gallery] = {}
    for model_id in wanted:
        if model_id not in first.index:
            continue
        layer = first.loc[model_id]
        weights = _layer_weights(ds, ds.store.filter_files(stored[model_id]), int(layer.member),
                                 int(layer.conv_index))
        loaded[model_id] = Gallery(model_id, bool(info.loc[model_id, "robust"]), str(info.loc[model_id, "dataset"]),
                                   str(layer.layer_name), int(layer.conv_index), weights.shape[1], weights,
                                   int(layer.member))
    return [[loaded[m] for m in row if m in loaded] for row in rows if any(m in loaded for m in row)]
