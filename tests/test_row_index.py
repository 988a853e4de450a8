"""The compacted row index: a read takes unchanged rows from it and every changed, new or deleted file as it is."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from stats_fixtures import write_model

from pipeline.dataset import row_index
from pipeline.dataset.store import DatasetStore


def model_rows(store: DatasetStore) -> dict[str, str]:
    return {r["model_id"]: r["architecture"] for r in store.models().select(["model_id", "architecture"]).to_pylist()}


def test_unchanged_rows_come_from_the_index_changed_ones_from_their_files(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = DatasetStore(str(tmp_path / "ds"))
    for i in range(4):
        write_model(store, f"m{i}", "cifar10", [np.ones((2, 3, 3, 3))], robust=bool(i % 2), architecture="A")
    store.write_index()
    assert (tmp_path / "ds" / "_index" / "models.parquet").is_file()
    read = []
    original = DatasetStore._read_files
    monkeypatch.setattr(DatasetStore, "_read_files",
                        lambda self, files, schema: read.append(sorted(Path(f).name for f in files)) or
                        original(self, files, schema))
    assert model_rows(store) == dict.fromkeys(["m0", "m1", "m2", "m3"], "A")
    assert read == []  # all four from the index
    time.sleep(0.01)
    write_model(store, "m1", "cifar10", [np.ones((2, 3, 3, 3))], robust=True, architecture="B")  # replaced
    write_model(store, "m4", "cifar10", [np.ones((2, 3, 3, 3))], robust=True, architecture="C")  # new
    os.remove(store.model_row_path("m2"))  # deleted
    assert model_rows(store) == {"m0": "A", "m1": "B", "m3": "A", "m4": "C"}
    assert read == [["part-m1.parquet", "part-m4.parquet"]]


def test_on_object_stores_only_settled_rows_come_from_the_index(tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path / "ds"))
    write_model(store, "m0", "cifar10", [np.ones((2, 3, 3, 3))], robust=True)
    store.write_index()
    infos = store._row_infos("models")
    index, index_mtime = store._load_index("models")
    cached, todo = row_index.split_by_index(infos, index, index_mtime, local=False)
    assert cached is None and [i.base_name for i in todo] == ["part-m0.parquet"]  # written < 60 s before the index
    cached, todo = row_index.split_by_index(infos, index, index_mtime + int(61e9), local=False)
    assert cached.num_rows == 1 and todo == []
    cached, todo = row_index.split_by_index(infos, index, index_mtime, local=True)
    assert cached.num_rows == 1 and todo == []
