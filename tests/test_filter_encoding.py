"""The filters table's codec (layout.COMPRESSION): files written under the previous default (zstd) stay readable
next to new ones, with the same values (benchmarks/bench_encodings.py measured the choice)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from zoo_fixtures import tiny_bytes

from pipeline.dataset import layout
from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore
from pipeline.extract.extractor import extract_model
from pipeline.zoo.spec import ModelRequest


def _codecs(root: Path, slug_part: str) -> set[str]:
    files = [f for f in (root / "filters").rglob("*.parquet") if slug_part in str(f)]
    meta = [pq.ParquetFile(f).metadata for f in files]
    return {m.row_group(g).column(c).compression for m in meta for g in range(m.num_row_groups)
            for c in range(m.num_columns)}


def test_zstd_files_of_the_previous_default_read_like_new_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = tmp_path / "tiny.pt"
    checkpoint.write_bytes(tiny_bytes(3))
    store = DatasetStore(str(tmp_path / "ds"))
    default = layout.COMPRESSION
    monkeypatch.setattr(layout, "COMPRESSION", "zstd")  # what layout.filters_parquet_options() hands the writer
    extract_model(ModelRequest("t/old", checkpoints=[str(checkpoint)], dataset="cifar10"), store, device="cpu",
                  progress=False)
    monkeypatch.setattr(layout, "COMPRESSION", default)
    extract_model(ModelRequest("t/new", checkpoints=[str(checkpoint)], dataset="cifar10"), store, device="cpu",
                  progress=False)
    assert _codecs(tmp_path / "ds", "old") == {"ZSTD"}
    assert _codecs(tmp_path / "ds", "new") == {layout.COMPRESSION.upper()}
    weights = ", ".join(layout.WEIGHT_COLUMNS)
    with open_dataset(str(tmp_path / "ds")) as ds:
        rows = {model: ds.con.sql(f"SELECT conv_index, out_channel, in_channel, sparse, {weights} FROM filters "
                                  f"WHERE model_id = '{model}' ORDER BY conv_index, out_channel, in_channel").fetchall()
                for model in ("t/old", "t/new")}
    assert rows["t/old"] and rows["t/old"] == rows["t/new"]


def test_row_group_statistics_on_the_identity_columns_only(tmp_path: Path) -> None:
    """min/max per row group where readers can skip by them (model, layer, channel); none on the weights."""
    checkpoint = tmp_path / "tiny.pt"
    checkpoint.write_bytes(tiny_bytes(3))
    store = DatasetStore(str(tmp_path / "ds"))
    extract_model(ModelRequest("t/m", checkpoints=[str(checkpoint)], dataset="cifar10"), store, device="cpu",
                  progress=False)
    (path,) = (tmp_path / "ds" / "filters").rglob("*.parquet")
    meta = pq.ParquetFile(path).metadata
    with_stats = {meta.schema.column(c).name for g in range(meta.num_row_groups) for c in range(meta.num_columns)
                  if meta.row_group(g).column(c).is_stats_set}
    assert with_stats == set(layout.FILTER_STATISTICS_COLUMNS)
    conv = meta.row_group(0).column(meta.schema.names.index("conv_index")).statistics
    assert (conv.min, conv.max) == (0, max(pq.read_table(path, columns=["conv_index"]).column(0).to_pylist()))
    with open_dataset(str(tmp_path / "ds")) as ds:  # weights are read all the same
        assert ds.con.sql("SELECT count(*) FROM filters WHERE w4 > 0").fetchall()[0][0] > 0
