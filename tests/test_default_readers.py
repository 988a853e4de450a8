"""Every table reads with each library's default call: pandas, pyarrow, Polars, DuckDB and ``datasets``.

On a local root and on a staged Hub tree (what ``filterlens publish`` uploads). The folders
are not Hive-style, so no reader adds a folder-typed column over the files' string columns,
and every reader sees the exact ``dataset`` values (``ImageNet 1k``, not its folder's slug).
Models written in the old ``dataset=<d>/model=<slug>`` folders keep reading through
filterlens' own readers.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import save, zoo_model
from torch import nn

from pipeline.dataset import writer as writer_module
from pipeline.dataset.layout import hive_layout, new_write_id, slugify
from pipeline.dataset.manifest import CARD, local_card
from pipeline.dataset.query import open_dataset
from pipeline.dataset.schema import arrow_schema
from pipeline.dataset.store import DatasetStore
from pipeline.extract.extractor import extract_model, run_one
from pipeline.publish.stage import stage
from pipeline.zoo.spec import ModelRequest

ARCH = "zoo_fixtures:tiny_net"
MODELS = [  # model_id, training dataset, robust, arch
    ("lab/cifar10/robust-a", "cifar10", True, ARCH),
    ("lab/cifar10/normal-a", "cifar10", False, None),
    ("lab/imagenet/normal-b", "ImageNet 1k", False, None),  # its folder is a slug with a hash
]
TABLES = ("models", "layers", "filters", "failures")
KEYS = {  # the columns compared row by row with filterlens' own reader (a multiset of tuples)
    "models": ["model_id", "dataset", "model", "n_filters", "robust"],
    "layers": ["model_id", "dataset", "model", "conv_index", "n_filters", "out_channels"],
    "filters": ["model_id", "dataset", "model", "conv_index", "out_channel", "in_channel", "w0", "w4", "w8"],
    "failures": ["model_id", "dataset", "model", "error_class", "attempts"],
}


def _build(root: Path, work: Path) -> None:
    for seed, (model_id, dataset, robust, arch) in enumerate(MODELS):
        torch.manual_seed(seed)
        checkpoint = save(zoo_model(ARCH, seed).state_dict(), work / f"{slugify(model_id)}.pt")
        request = ModelRequest(model_id=model_id, checkpoints=[str(checkpoint)], dataset=dataset, arch=arch,
                               threat_model="Linf" if robust else "none", robust=robust)
        extract_model(request, DatasetStore(str(root)), device="cpu", progress=False)
    broken = work / "broken.pt"
    broken.write_bytes(b"not a checkpoint" * 4)
    with pytest.raises(Exception, match="broken"):
        run_one(ModelRequest(model_id="lab/broken", checkpoints=[str(broken)], dataset="cifar10"),
                DatasetStore(str(root)), device="cpu", progress=False)
    DatasetStore(str(root)).update_manifest({"command": "test"})


@pytest.fixture(scope="module")
def local_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readers") / "dataset"
    _build(root, tmp_path_factory.mktemp("checkpoints"))
    return root


@pytest.fixture(scope="module")
def staged_root(local_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("staged") / "repo"
    stage(str(local_root), out, "lab/robust-filters")
    return out


@pytest.fixture(scope="module")
def expected(local_root: Path) -> dict[str, Counter]:
    """Each table's key columns as filterlens' own reader (``open_dataset``, committed models) gives them."""
    with open_dataset(str(local_root)) as ds:
        return {t: Counter(map(tuple, ds.sql(f"SELECT {', '.join(KEYS[t])} FROM {t}").fetchall())) for t in TABLES}


def _arrow(result: object) -> pa.Table:
    if isinstance(result, pa.Table):
        return result
    if isinstance(result, pd.DataFrame):
        return pa.Table.from_pandas(result, preserve_index=False)
    if isinstance(result, pl.DataFrame):
        return result.to_arrow()
    return result.data.table  # a datasets.Dataset


def _datasets(root: Path, table: str, cache: Path) -> object:
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(str(root), table, split="train", cache_dir=str(cache))


READERS: dict[str, Callable[[Path, str, Path], object]] = {
    "pandas.read_parquet": lambda root, table, _: pd.read_parquet(root / table),
    "pyarrow.parquet.read_table": lambda root, table, _: pq.read_table(root / table),
    "pyarrow.parquet.ParquetDataset": lambda root, table, _: pq.ParquetDataset(root / table).read(),
    "pyarrow.dataset.dataset": lambda root, table, _: pads.dataset(root / table).to_table(),
    "pyarrow.dataset.dataset(hive)": lambda root, table, _: pads.dataset(root / table,
                                                                         partitioning="hive").to_table(),
    "polars.read_parquet": lambda root, table, _: pl.read_parquet(root / table),
    "polars.scan_parquet(**/*.parquet)": lambda root, table, _: pl.scan_parquet(
        f"{root / table}/**/*.parquet").collect(),
    "polars.scan_parquet(**/*)": lambda root, table, _: pl.scan_parquet(f"{root / table}/**/*").collect(),
    "duckdb.read_parquet": lambda root, table, _: duckdb.sql(
        f"SELECT * FROM read_parquet('{root / table}/**/*.parquet')").to_arrow_table(),
    "datasets.load_dataset": _datasets,
}


def _check(result: pa.Table, table: str, want: Counter) -> None:
    schema = arrow_schema(table)
    assert result.column_names == schema.names  # nothing added from folder names, nothing missing
    for name in ("dataset", "model", "model_id"):
        assert pa.types.is_string(result.schema.field(name).type) or pa.types.is_large_string(
            result.schema.field(name).type), (name, result.schema.field(name).type)
    got = Counter(map(tuple, zip(*(result.column(c).to_pylist() for c in KEYS[table]), strict=True)))
    assert result.num_rows == sum(want.values())
    assert got == want


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("table", TABLES)
def test_local_root_reads_with_each_default_call(local_root: Path, expected: dict[str, Counter], reader: str,
                                                 table: str, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        result = _arrow(READERS[reader](local_root, table, tmp_path / "hf-cache"))
    _check(result, table, expected[table])


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("table", ("models", "layers", "filters"))
def test_staged_hub_tree_reads_with_each_default_call(staged_root: Path, expected: dict[str, Counter],
                                                      reader: str, table: str, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        result = _arrow(READERS[reader](staged_root, table, tmp_path / "hf-cache"))
    _check(result, table, expected[table])


def test_expected_rows_cover_odd_dataset_names_and_a_failure(expected: dict[str, Counter]) -> None:
    assert {k[1] for k in expected["filters"]} == {"cifar10", "ImageNet 1k"}
    assert sum(expected["models"].values()) == 3 and sum(expected["failures"].values()) == 1
    assert sum(expected["layers"].values()) == 4 + 5 + 5  # forward: 4 convs ran; state dict: all 5


def test_datasets_default_config_is_models(local_root: Path, tmp_path: Path) -> None:
    import datasets

    loaded = datasets.load_dataset(str(local_root), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert loaded.column_names == arrow_schema("models").names and loaded.num_rows == 3


def test_local_card_has_the_published_configs_and_is_rewritten_only_when_generated(local_root: Path,
                                                                                      staged_root: Path) -> None:
    local = yaml.safe_load((local_root / CARD).read_text().split("---\n")[1])
    published = yaml.safe_load((staged_root / CARD).read_text().split("---\n")[1])
    assert local["configs"][:3] == published["configs"]  # models (default), layers, filters
    assert [c["config_name"] for c in local["configs"]] == ["models", "layers", "filters", "failures"]
    manifest = DatasetStore(str(local_root)).read_manifest()
    assert (local_root / CARD).read_text() == local_card(manifest)


def test_a_readme_the_user_wrote_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root).mkdir()
    (root / CARD).write_text("# my notes\n")
    DatasetStore(str(root)).update_manifest({"command": "test"})
    assert (root / CARD).read_text() == "# my notes\n"
    (root / CARD).write_text(local_card({}))  # a generated card is refreshed
    DatasetStore(str(root)).update_manifest({"command": "test"})
    assert "Dataset version 2 " in (root / CARD).read_text()


def test_new_writes_use_flat_folders_and_old_hive_folders_keep_reading(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ds"
    assert not hive_layout(new_write_id()) and hive_layout("20250101T000000-0123abcd")
    torch.manual_seed(0)
    checkpoint = save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3)).state_dict(), tmp_path / "m.pt")

    def extract(model_id: str, dataset: str) -> None:
        request = ModelRequest(model_id=model_id, checkpoints=[str(checkpoint)], dataset=dataset)
        extract_model(request, DatasetStore(str(root)), device="cpu", progress=False)

    monkeypatch.setattr(writer_module, "new_write_id", lambda: "20250101T000000-0123abcd")  # an old write
    extract("lab/old", "ImageNet 1k")
    monkeypatch.undo()
    extract("lab/new", "ImageNet 1k")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet") if p.parts[-3] != "models")
    assert [f.rsplit("/", 1)[0] for f in files if f.startswith("filters/")] == [
        "filters/ImageNet_1k-b51fc1d2/lab--new", "filters/dataset=ImageNet_1k-b51fc1d2/model=lab--old"]
    with open_dataset(str(root)) as ds:
        assert ds.sql("SELECT model_id, dataset, count(*) FROM filters GROUP BY ALL ORDER BY 1").fetchall() == [
            ("lab/new", "ImageNet 1k", 4 * 3 + 2 * 4), ("lab/old", "ImageNet 1k", 4 * 3 + 2 * 4)]
        assert ds.layers.collect().schema["dataset"] == pl.String
    store = DatasetStore(str(root))
    assert store.vacuum(older_than_s=0) == []  # the old model's files are committed, not orphans
    assert store.delete_model("lab/old")
    assert not (root / "filters" / "dataset=ImageNet_1k-b51fc1d2" / "model=lab--old").exists()
    assert list(store.stored_models()) == ["lab/new"]


def test_migrate_layout_moves_old_models_and_then_default_readers_work(tmp_path: Path, cli,  # noqa: ANN001
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ds"
    torch.manual_seed(1)
    checkpoint = save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3)).state_dict(), tmp_path / "m.pt")
    monkeypatch.setattr(writer_module, "new_write_id", lambda: "20250101T000000-0123abcd")  # an old write
    extract_model(ModelRequest(model_id="lab/old", checkpoints=[str(checkpoint)], dataset="cifar10"),
                  DatasetStore(str(root)), device="cpu", progress=False)
    monkeypatch.undo()
    with open_dataset(str(root)) as ds:
        before = ds.sql("SELECT * FROM filters ORDER BY conv_index, out_channel, in_channel").fetchall()
    with pytest.raises(pa.ArrowTypeError):
        pq.read_table(root / "filters")  # the old Hive folders: pyarrow's default read fails
    result = cli("vacuum", root, "--migrate-layout", "--older-than", "0s")
    assert result.code == 0 and "moved 1 of 1 old-layout models" in result.out
    assert not (root / "filters" / "dataset=cifar10").exists()  # the old files were vacuumed
    assert pq.read_table(root / "filters").num_rows == len(before)
    with open_dataset(str(root)) as ds:
        assert ds.sql("SELECT * FROM filters ORDER BY conv_index, out_channel, in_channel").fetchall() == before
    assert not hive_layout(DatasetStore(str(root)).stored_model("lab/old").write_id)
