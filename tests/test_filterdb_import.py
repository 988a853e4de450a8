"""Importing releases in the onnxzoo2filterdb layout: reading, the metadata mapping, validation, selection, safety."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from filterdb_release import fake_model, paper_row, two_model_release, write_release

from pipeline.dataset.store import DatasetStore
from pipeline.errors import ConfigError, FilterDBFormatError
from pipeline.extract.metrics import layer_metrics
from pipeline.filterdb.importer import import_release
from pipeline.filterdb.layout import parse_filter_ids
from pipeline.filterdb.metadata import model_spec, name_threat_model, parse_bool
from pipeline.filterdb.reader import open_release

ROBUST = "robustbench_Andriushchenko2020Understanding_cifar10_linf_13"
NORMAL = "hso_normal_training_robustbench_Andriushchenko2020Understanding_cifar10_13"


def rows(store: DatasetStore, table: str, model_id: str) -> pd.DataFrame:
    model = store.stored_model(model_id)
    files = [store.layer_file(model)] if table == "layers" else store.filter_files(model)
    return pd.concat([store.read_parquet(f).to_pandas() for f in files], ignore_index=True)


def models_row(store: DatasetStore, model_id: str) -> dict:
    return next(r for r in store.models().to_pylist() if r["model_id"] == model_id)


def test_filter_ids_are_inclusive_ranges() -> None:
    assert parse_filter_ids("0:26") == (0, 27)
    assert parse_filter_ids("27:27") == (27, 28)
    with pytest.raises(ValueError):
        parse_filter_ids("3-4")


@pytest.mark.parametrize("meta", ["fixed", "table", None])
def test_release_is_read_from_the_meta_key_or_the_csvs(tmp_path: Path, meta: str | None) -> None:
    folder, models = two_model_release(tmp_path / "rel", meta=meta)
    with open_release(str(folder)) as release:
        assert release.metadata_source == ("csv" if meta is None else "meta key")
        assert release.n_rows == 2 * 216
        assert [m.name for m in release.models] == [ROBUST, NORMAL]
        layers = release.models[1].layers
        assert [(la.layer_id, la.start, la.end, la.in_channels, la.out_channels) for la in layers] == [
            (0, 216, 240, 3, 8), (1, 240, 304, 8, 8), (2, 304, 432, 8, 16)]
        assert [la.conv_depth_norm for la in layers] == [0.0, 1 / 3, 2 / 3]
        np.testing.assert_array_equal(release.read(240, 304), models[1].weights[1].reshape(64, 9))


def test_models_row_maps_the_release_columns(tmp_path: Path) -> None:
    folder, _ = two_model_release(tmp_path / "rel")
    store = DatasetStore(str(tmp_path / "ds"))
    summary = import_release(str(folder), store, device="cpu", progress=False)
    assert summary.imported == [ROBUST, NORMAL] and summary.n_filters == 432 and not summary.failed
    row = models_row(store, ROBUST)
    assert {k: row[k] for k in ("dataset", "threat_model", "robust", "architecture", "clean_acc", "robust_acc",
                                "extra_data", "paper", "eps", "venue", "depth_source", "checkpoint_format",
                                "n_conv_layers", "n_conv3x3_layers", "n_filters", "n_params", "n_members",
                                "n_ensemble_members", "n_nonfinite_layers", "checkpoint_bytes")} == {
        "dataset": "cifar10", "threat_model": "Linf", "robust": True, "architecture": "PreActResNet-18",
        "clean_acc": 79.84, "robust_acc": 43.93, "extra_data": False, "paper": "https://arxiv.org/abs/2007.02617",
        "eps": None, "venue": None, "depth_source": "onnxzoo2filterdb", "checkpoint_format": "onnxzoo2filterdb",
        "n_conv_layers": 3, "n_conv3x3_layers": 3, "n_filters": 216, "n_params": 216 * 9 + 128,
        "n_members": 1, "n_ensemble_members": 1, "n_nonfinite_layers": 0, "checkpoint_bytes": 216 * 36}
    assert row["source_uri"] == f"{folder}/dataset.h5#{ROBUST}"
    metadata = json.loads(row["metadata_json"])
    assert metadata["Network"] == "Andriushchenko2020Understanding" and metadata["release_model_id"] == 0
    assert metadata["Framework"] == "pytorch" and metadata["(1, 1) filters"] == 128 and metadata["op_set"] == 13
    assert not {"Robust", "Backbone", "Paper", "Training-Dataset", "Name", "model"} & set(metadata)
    normal = models_row(store, NORMAL)
    assert (normal["threat_model"], normal["robust"], normal["robust_acc"]) == ("none", False, 0.0)


def test_layers_rows_hold_our_metrics_of_the_rebuilt_weight(tmp_path: Path) -> None:
    folder, models = two_model_release(tmp_path / "rel")
    store = DatasetStore(str(tmp_path / "ds"))
    import_release(str(folder), store, device="cpu", progress=False)
    layers = rows(store, "layers", NORMAL).sort_values("conv_index")
    assert list(layers.conv_index) == [0, 1, 2]
    assert list(layers.layer_name) == ["layer0", "layer1", "layer2"]
    assert list(layers.conv_depth_norm) == [0.0, 1 / 3, 2 / 3]  # the release's own
    assert list(layers.in_channels) == [3, 8, 8] and list(layers.out_channels) == [8, 8, 16]
    assert layers.groups.isna().all() and list(layers.weight_dtype) == ["float32"] * 3
    assert layers.member.tolist() == [0, 0, 0] and layers.member_robust.tolist() == [False] * 3
    for row, weight in zip(layers.itertuples(), models[1].weights, strict=True):
        expected, sparse = layer_metrics(torch.from_numpy(weight))
        assert row.orthogonality == expected.orthogonality and row.variance_entropy == expected.variance_entropy
        assert row.sparsity == expected.sparsity and list(row.pca_scatter) == expected.pca_scatter
    filters = rows(store, "filters", NORMAL)
    layer2 = filters[filters.conv_index == 2].sort_values(["out_channel", "in_channel"])
    np.testing.assert_array_equal(layer2[[f"w{k}" for k in range(9)]].to_numpy(),
                                  models[1].weights[2].reshape(128, 9))
    assert layer2.out_channel.tolist() == list(np.repeat(np.arange(16), 8))


def test_flat_float64_filters_and_the_h5_alone(tmp_path: Path) -> None:
    folder, models = two_model_release(tmp_path / "rel", dtype=np.float64, flat=True, csvs=False)
    store = DatasetStore(str(tmp_path / "ds"))
    summary = import_release(str(folder / "dataset.h5"), store, device="cpu", progress=False)
    assert summary.imported == [ROBUST, NORMAL]
    layers = rows(store, "layers", ROBUST)
    assert set(layers.weight_dtype) == {"float32"}  # float64 values that are exactly float32
    assert models_row(store, ROBUST)["checkpoint_bytes"] == 216 * 72


def test_rerun_skips_the_same_source_and_redoes_a_changed_one(tmp_path: Path) -> None:
    folder, models = two_model_release(tmp_path / "rel")
    store = DatasetStore(str(tmp_path / "ds"))
    first = import_release(str(folder), store, device="cpu", progress=False)
    write_ids = {m: store.stored_model(m).write_id for m in first.imported}
    digest = store.stored_model(ROBUST).checkpoint_sha256
    again = import_release(str(folder), store, device="cpu", progress=False, metadata="csv")
    assert again.skipped == [ROBUST, NORMAL] and again.imported == [] and again.n_filters == 0
    assert {m: store.stored_model(m).write_id for m in write_ids} == write_ids
    with h5py.File(folder / "dataset.h5", "a") as f:  # one filter of the normal model changes
        f["filters"][300] = np.full((3, 3), 0.5, dtype=np.float32)
    changed = import_release(str(folder), store, device="cpu", progress=False)
    assert changed.skipped == [ROBUST] and changed.imported == [NORMAL]
    forced = import_release(str(folder), store, device="cpu", progress=False, force=True, models=[ROBUST])
    assert forced.imported == [ROBUST] and store.stored_model(ROBUST).write_id != write_ids[ROBUST]
    assert store.stored_model(ROBUST).checkpoint_sha256 == digest  # same source, same digest
    assert store.stored_model(NORMAL).checkpoint_sha256 != digest


def test_selection_by_name_pattern_and_predicate(tmp_path: Path, cli: object) -> None:
    folder, _ = two_model_release(tmp_path / "rel")
    store = DatasetStore(str(tmp_path / "ds"))
    assert import_release(str(folder), store, models=["hso_*"], device="cpu", progress=False).imported == [NORMAL]
    picked = import_release(str(folder), DatasetStore(str(tmp_path / "ds2")), where="robust AND clean_acc < 80",
                            device="cpu", progress=False)
    assert picked.imported == [ROBUST]
    with pytest.raises(ConfigError, match="no model of the release is named 'nope'"):
        import_release(str(folder), store, models=["nope"], device="cpu", progress=False)
    with pytest.raises(ConfigError, match="not a valid predicate"):
        import_release(str(folder), store, where="no_such_column > 1", device="cpu", progress=False)
    res = cli("import", "onnxzoo2filterdb", folder, "--out", tmp_path / "ds3",
              "--where", "model_id IN (SELECT * FROM read_csv('/etc/passwd'))")
    assert res.code == 2 and "is not a valid predicate" in res.err  # the locked sandbox reads no file
    assert not (tmp_path / "ds3" / "models").exists()


def test_cli_imports_and_reports(tmp_path: Path, cli: object) -> None:
    folder, _ = two_model_release(tmp_path / "rel")
    res = cli("import", "onnxzoo2filterdb", folder, "--out", tmp_path / "ds", "--device", "cpu", "--json")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["imported"] == [ROBUST, NORMAL] and out["n_filters"] == 432 and out["failed"] == []
    res = cli("import", "onnxzoo2filterdb", folder, "--out", tmp_path / "ds", "--device", "cpu")
    assert res.code == 0 and "0 models imported" in res.out and "2 already there" in res.out


# --- validation ----------------------------------------------------------------------------------------------
def test_missing_filters_key_and_missing_tables(tmp_path: Path, cli: object) -> None:
    folder, _ = two_model_release(tmp_path / "rel", meta=None)
    with h5py.File(folder / "dataset.h5", "a") as f:
        f["weights"] = f["filters"][...]
        del f["filters"]
    res = cli("import", "onnxzoo2filterdb", folder, "--out", tmp_path / "ds")
    assert res.code == 3 and res.err.count("\n") == 1
    assert "no 'filters' dataset (keys: weights)" in res.err
    folder2, _ = two_model_release(tmp_path / "rel2", meta=None, csvs=False)
    with pytest.raises(FilterDBFormatError, match="no 'meta' key and no filterinfo.csv or datastorage.meta.csv"):
        open_release(str(folder2))
    folder3, _ = two_model_release(tmp_path / "rel3", meta=None)
    pd.read_csv(folder3 / "filterinfo.csv").drop(columns=["out_channels"]).to_csv(folder3 / "filterinfo.csv",
                                                                                  index=False)
    with pytest.raises(FilterDBFormatError, match="missing column.s. out_channels"):
        open_release(str(folder3))
    with pytest.raises(FilterDBFormatError, match="no 'meta' key"):
        open_release(str(folder3), metadata="h5")


def _edit_filterinfo(folder: Path, row: int, **values: int) -> None:
    info = pd.read_csv(folder / "filterinfo.csv")
    for k, v in values.items():
        info.loc[row, k] = v
    info.to_csv(folder / "filterinfo.csv", index=False)


@pytest.mark.parametrize(("row", "values", "message"), [
    (1, {"filter_id_start": 20}, r"filter ranges overlap: model '.*' layer_id 0 \(filters 0..23\) and model "
                                 r"'.*' layer_id 1 \(filters 20..87\) both claim filters 20..23"),
    (1, {"filter_id_start": 28}, r"filters 24..27 belong to no layer"),
    (5, {"filter_id_end": 430}, r"filters 430..431 belong to no layer \(the ranges do not cover /filters\)"),
    (5, {"filter_id_end": 440}, r"ends past the last of the 432 filters"),
])
def test_ranges_must_tile_the_filters(tmp_path: Path, row: int, values: dict, message: str) -> None:
    folder, _ = two_model_release(tmp_path / "rel", meta=None)
    _edit_filterinfo(folder, row, **values)
    store = DatasetStore(str(tmp_path / "ds"))
    with pytest.raises(FilterDBFormatError, match=message):
        import_release(str(folder), store, device="cpu", progress=False)
    assert not store.exists() or store.models().num_rows == 0


def test_a_model_with_wrong_counts_fails_alone(tmp_path: Path) -> None:
    folder, _ = two_model_release(tmp_path / "rel", meta=None)
    _edit_filterinfo(folder, 4, in_channels=4)  # the normal model's layer 1: 64 filters, 4 x 8 claimed
    store = DatasetStore(str(tmp_path / "ds"))
    summary = import_release(str(folder), store, device="cpu", progress=False)
    assert summary.imported == [ROBUST]
    assert [(f["model_id"], f["error_class"], f["stage"]) for f in summary.failed] == [
        (NORMAL, "FilterDBFormatError", "load")]
    assert "layer_id 1 (filters 240..303): holds 64 filters, but in_channels x out_channels = 4 x 8 = 32" in \
        summary.failed[0]["message"]
    failures = store.failures().to_pandas()
    assert failures.model_id.tolist() == [NORMAL] and failures.dataset.tolist() == ["cifar10"]


def test_declared_3x3_count_must_match(tmp_path: Path) -> None:
    folder, _ = two_model_release(tmp_path / "rel", meta=None)
    storage = pd.read_csv(folder / "datastorage.meta.csv", index_col=0)
    storage.loc[0, "(3, 3) filters"] = 215
    storage.to_csv(folder / "datastorage.meta.csv")
    summary = import_release(str(folder), str(tmp_path / "ds"), device="cpu", progress=False)
    assert summary.imported == [NORMAL]
    assert summary.failed[0]["message"] == (f"model '{ROBUST}': '(3, 3) filters' says 215, but its layers hold "
                                            f"216 filters")


def test_nan_filters_fail_their_model(tmp_path: Path, cli: object) -> None:
    folder, _ = two_model_release(tmp_path / "rel")
    with h5py.File(folder / "dataset.h5", "a") as f:
        block = f["filters"][30]
        block[1, 1] = np.nan
        f["filters"][30] = block
    res = cli("import", "onnxzoo2filterdb", folder, "--out", tmp_path / "ds", "--device", "cpu")
    assert res.code == 3
    assert f"failed {ROBUST}: FilterDBFormatError: model '{ROBUST}' layer_id 1 (filters 24..87): 1 NaN/Inf " \
           f"values (first in filter 30)" in res.out
    store = DatasetStore(str(tmp_path / "ds"))
    assert list(store.stored_models()) == [NORMAL] and store.failures().column("model_id").to_pylist() == [ROBUST]


class _Hostile:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.marker),))  # type: ignore[attr-defined]


def test_meta_key_that_unpickles_code_is_refused(tmp_path: Path) -> None:
    folder, _ = two_model_release(tmp_path / "rel", meta=None)
    marker = tmp_path / "pwned"
    hostile = _Hostile()
    hostile.marker = str(marker)  # type: ignore[attr-defined]
    frame = pd.DataFrame({"model_id": [0], "conv_depth": [0], "conv_depth_norm": [0.0], "layer_id": [0],
                          "filter_ids": ["0:23"], "in_channels": [3], "out_channels": [8], "model": [hostile]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame.set_index(["model_id", "conv_depth", "conv_depth_norm", "layer_id"]).to_hdf(folder / "dataset.h5",
                                                                                           key="meta")
    assert b"touch" in pickle.dumps(hostile)
    with pytest.raises(FilterDBFormatError, match="pickled metadata asks to load pathlib"):
        open_release(str(folder))
    assert not marker.exists()
    with open_release(str(folder), metadata="csv") as release:  # the CSVs are still there
        assert len(release.models) == 2


def test_metadata_parsing_rules() -> None:
    assert [parse_bool(v) for v in (True, "False", "yes", 1, 0.0, "imagenet", None, float("nan"))] == [
        True, False, True, True, False, None, None, None]
    assert [name_threat_model(n) for n in (ROBUST, NORMAL, "x_l2_13", "robust-corruptions-1")] == [
        "Linf", None, "L2", "corruptions"]
    model = fake_model("lab_robust_net", {"Name": "lab_robust_net", "Robust": "True",
                                          "Pretraining-Dataset": "imagenet21k", "Training-Dataset": "cifar100"},
                       [(2, 3)], seed=0)
    from pipeline.filterdb.layout import ReleaseModel

    spec = model_spec(ReleaseModel(3, model.name, model.sheet), robust_threat_model="L2")
    assert (spec.threat_model, spec.robust, spec.extra_data, spec.dataset) == ("L2", True, None, "cifar100")
    assert spec.metadata == {"Pretraining-Dataset": "imagenet21k", "release_model_id": 3}
    bad = ReleaseModel(4, "m", {"Name": "m", "Robust": True, "Threat Model": "corruptions"})
    with pytest.raises(FilterDBFormatError, match="Robust is true but its threat model is corruptions"):
        model_spec(bad)


def test_large_release_is_imported_in_layer_slices(tmp_path: Path) -> None:
    """1.1M filters over four models; every filter arrives and each layer's rows are exact."""
    shapes = [(64, 3), (256, 256), (512, 256), (512, 512)]
    models = [fake_model(f"big_{i}_cifar10_13", paper_row(f"big_{i}_cifar10_13", False, 90.0, 0.0, "Big", "BigNet",
                                                            "cifar10"), shapes, seed=10 + i) for i in range(2)]
    folder = write_release(tmp_path / "rel", models, meta=None)
    store = DatasetStore(str(tmp_path / "ds"))
    summary = import_release(str(folder), store, device="cpu", progress=False)
    per_model = 64 * 3 + 256 * 256 + 512 * 256 + 512 * 512
    assert summary.imported == [m.name for m in models] and summary.n_filters == 2 * per_model
    layers = rows(store, "layers", models[1].name).sort_values("conv_index")
    assert layers.n_filters.tolist() == [o * i for o, i in shapes]
    filters = rows(store, "filters", models[1].name)
    last = filters[filters.conv_index == 3].sort_values(["out_channel", "in_channel"])
    np.testing.assert_array_equal(last[[f"w{k}" for k in range(9)]].to_numpy(), models[1].weights[3].reshape(-1, 9))
