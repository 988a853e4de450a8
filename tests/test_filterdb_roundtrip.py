"""Round trip: extract checkpoints with filterlens, export them in the authors' layout, import them again.

The imported layers metrics and filters rows are identical to the extracted ones; ``stats``
runs on the imported dataset unchanged, and the paper's pairings resolve against the release's
model names.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from filterdb_release import two_model_release
from stats_fixtures import planted_zoo
from zoo_fixtures import tiny_bytes

from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore
from pipeline.extract.extractor import extract_model
from pipeline.filterdb.export import export_onnxzoo2filterdb
from pipeline.filterdb.importer import import_release
from pipeline.stats.pairing import make_pairs
from pipeline.zoo.spec import ModelRequest

METRICS = ["model_id", "dataset", "model", "member", "member_robust", "conv_index", "conv_depth_norm",
           "out_channels", "kernel_h", "kernel_w", "n_filters", "n_sparse", "sparsity", "variance_entropy",
           "variance_entropy_raw", "orthogonality", "n_nonsparse", "pca_sum", "pca_scatter", "entropy_degenerate",
           "orthogonality_degenerate", "n_nonfinite", "weight_abs_max", "weight_mean", "weight_std", "weight_dtype"]
"""Layers columns an import reproduces exactly (layer_name, groups, stride, ... the layout does not hold)."""
MODEL_FIELDS = ["model_id", "dataset", "model", "threat_model", "robust", "architecture", "clean_acc", "robust_acc",
                "eps", "extra_data", "paper", "venue", "n_filters", "n_conv3x3_layers", "n_members"]

ZOO = [  # model_id, threat model, robust, architecture, clean, robust acc, eps, paper
    ("lab/cifar10/Linf/tiny-0", "Linf", True, "TinyNet", 81.5, 44.25, 8 / 255, "https://example.org/a"),
    ("lab/cifar10/L2/tiny-1", "L2", True, "TinyNet", 84.0, 61.0, 0.5, None),
    ("lab/cifar10/none/tiny-2", "none", False, "TinyNet", 93.75, None, None, "https://example.org/b"),
]


def table(store: DatasetStore, name: str) -> pd.DataFrame:
    frames = []
    for model in store.stored_models().values():
        files = [store.layer_file(model)] if name == "layers" else store.filter_files(model)
        frames += [store.read_parquet(f).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True)


def extracted(root: Path, arch: str | None = "zoo_fixtures:tiny_net") -> DatasetStore:
    store = DatasetStore(str(root / "extracted"))
    for seed, (model_id, threat, robust, architecture, clean, robust_acc, eps, paper) in enumerate(ZOO):
        path = root / f"tiny-{seed}.pt"
        path.write_bytes(tiny_bytes(seed))
        extract_model(ModelRequest(model_id=model_id, checkpoints=[str(path)], arch=arch, dataset="cifar10",
                                   threat_model=threat, robust=robust, architecture=architecture, clean_acc=clean,
                                   robust_acc=robust_acc, eps=eps, paper=paper), store, device="cpu", progress=False)
    return store


def sorted_rows(frame: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys).reset_index(drop=True)[columns]


@pytest.mark.parametrize("metadata", ["h5", "csv"])
def test_extract_export_import_gives_identical_rows(tmp_path: Path, metadata: str) -> None:
    source = extracted(tmp_path)
    summary = export_onnxzoo2filterdb(source.uri, str(tmp_path / "release"))
    assert summary.models == [z[0] for z in sorted(ZOO)] and summary.n_layers == 9 and summary.n_filters == 3 * 160
    with h5py.File(tmp_path / "release" / "dataset.h5", "r") as f:
        assert f["filters"].shape == (480, 3, 3) and f["filters"].dtype == np.float32 and "meta" in f
    imported = DatasetStore(str(tmp_path / "imported"))
    result = import_release(str(tmp_path / "release"), imported, device="cpu", progress=False, metadata=metadata)
    assert sorted(result.imported) == sorted(z[0] for z in ZOO) and not result.failed

    before, after = table(source, "layers"), table(imported, "layers")
    before = before[(before.kernel_h == 3) & (before.kernel_w == 3)]  # the layout holds the 3x3 layers only
    keys = ["model_id", "conv_index"]
    pd.testing.assert_frame_equal(sorted_rows(before, keys, METRICS), sorted_rows(after, keys, METRICS),
                                  check_exact=True, check_dtype=False)  # int counts read as float beside nulls
    assert (after.in_channels == after.n_filters // after.out_channels).all()  # weight dim 1, as the authors count
    filter_cols = table(source, "filters").columns.tolist()
    fkeys = ["model_id", "conv_index", "out_channel", "in_channel"]
    pd.testing.assert_frame_equal(sorted_rows(table(source, "filters"), fkeys, filter_cols),
                                  sorted_rows(table(imported, "filters"), fkeys, filter_cols), check_exact=True)
    models_before = source.models().to_pandas().sort_values("model_id").reset_index(drop=True)[MODEL_FIELDS]
    models_after = imported.models().to_pandas().sort_values("model_id").reset_index(drop=True)[MODEL_FIELDS]
    pd.testing.assert_frame_equal(models_before, models_after, check_exact=True)
    assert set(imported.models().column("depth_source").to_pylist()) == {"onnxzoo2filterdb"}


def test_state_dict_order_is_renumbered_over_the_3x3_layers(tmp_path: Path) -> None:
    """Without --arch TinyNet's 1x1 skip comes third: the release numbers only the 3x3 layers, so conv_index
    0, 1, 3, 4 comes back as 0, 1, 2, 3 (in the same order, same depth_norm, same metrics)."""
    source = extracted(tmp_path, arch=None)
    export_onnxzoo2filterdb(source.uri, str(tmp_path / "release"))
    imported = DatasetStore(str(tmp_path / "imported"))
    import_release(str(tmp_path / "release"), imported, device="cpu", progress=False)
    before, after = table(source, "layers"), table(imported, "layers")
    before = before[before.kernel_h == 3].sort_values(["model_id", "conv_index"]).reset_index(drop=True)
    after = after.sort_values(["model_id", "conv_index"]).reset_index(drop=True)
    assert before[before.model_id == ZOO[0][0]].conv_index.tolist() == [0, 1, 3, 4]
    assert after[after.model_id == ZOO[0][0]].conv_index.tolist() == [0, 1, 2, 3]
    columns = [c for c in METRICS if c != "conv_index"]
    pd.testing.assert_frame_equal(before[columns], after[columns], check_exact=True, check_dtype=False)


def test_reimport_of_an_export_is_skipped_and_export_is_stable(tmp_path: Path) -> None:
    source = extracted(tmp_path)
    export_onnxzoo2filterdb(source.uri, str(tmp_path / "r1"))
    imported = DatasetStore(str(tmp_path / "imported"))
    import_release(str(tmp_path / "r1"), imported, device="cpu", progress=False)
    export_onnxzoo2filterdb(imported.uri, str(tmp_path / "r2"))
    with h5py.File(tmp_path / "r1" / "dataset.h5") as a, h5py.File(tmp_path / "r2" / "dataset.h5") as b:
        np.testing.assert_array_equal(a["filters"][...], b["filters"][...])
    assert (pd.read_csv(tmp_path / "r1" / "filterinfo.csv").equals(pd.read_csv(tmp_path / "r2" / "filterinfo.csv")))
    again = import_release(str(tmp_path / "r1"), imported, device="cpu", progress=False)
    assert again.imported == [] and len(again.skipped) == 3  # same names, metadata and filter bytes
    other = DatasetStore(str(tmp_path / "other"))
    import_release(str(tmp_path / "r2"), other, device="cpu", progress=False)
    keys = ["model_id", "conv_index"]
    pd.testing.assert_frame_equal(sorted_rows(table(imported, "layers"), keys, METRICS),
                                  sorted_rows(table(other, "layers"), keys, METRICS), check_exact=True)


def test_stats_runs_unchanged_on_an_imported_release(tmp_path: Path, cli: object) -> None:
    source = planted_zoo(tmp_path / "planted", n_per_side=4)
    export_onnxzoo2filterdb(source.uri, str(tmp_path / "release"))
    res = cli("import", "onnxzoo2filterdb", tmp_path / "release", "--out", tmp_path / "imported", "--device", "cpu")
    assert res.code == 0, res.err
    outputs = {}
    for name in ("planted", "imported"):
        res = cli("stats", tmp_path / name, "--out", tmp_path / f"report-{name}", "--permutations", "0",
                  "--no-figures")
        assert res.code == 0, res.err
        outputs[name] = res.out.replace(str(tmp_path / f"report-{name}"), "REPORT")
    assert outputs["planted"].startswith("8 models (robust: Linf 4; normal: none 4)")
    assert outputs["imported"] == outputs["planted"]  # the same findings, word for word
    compared = ["depth_profile", "model_profile", "robust_vs_normal", "pairs", "pair_differences", "pca_components",
                "pca_explained_variance", "coefficient_histograms", "distribution_shift", "correlations"]
    tables = [t for t in compared if (tmp_path / "report-planted" / "tables" / f"{t}.csv").is_file()]
    assert len(tables) >= 6  # layer_coverage and models differ: the release has no 1x1 layers
    for name in tables:
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "report-planted" / "tables" / f"{name}.csv"),
                                      pd.read_csv(tmp_path / "report-imported" / "tables" / f"{name}.csv"),
                                      check_exact=True, obj=name)


def test_paper_pairings_resolve_against_the_release_names(tmp_path: Path) -> None:
    folder, _ = two_model_release(tmp_path / "release")
    import_release(str(folder), str(tmp_path / "ds"), device="cpu", progress=False)
    models = open_dataset(str(tmp_path / "ds")).sql("SELECT * FROM models").df()
    pairs, unpaired = make_pairs(models, "paper")
    assert pairs[["robust_model_id", "normal_model_id", "architecture", "dataset", "source"]].values.tolist() == [[
        "robustbench_Andriushchenko2020Understanding_cifar10_linf_13",
        "hso_normal_training_robustbench_Andriushchenko2020Understanding_cifar10_13",
        "PreActResNet-18", "cifar10", "table"]]
    assert len(unpaired) == 70 and set(unpaired.reason) == {"pairs table names a model that is not in the selection"}
    auto, _ = make_pairs(models)
    assert auto[["robust_model_id", "normal_model_id"]].values.tolist() == [pairs.iloc[0, :2].tolist()]
