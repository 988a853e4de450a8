"""Output to a local S3-compatible server (moto on 127.0.0.1), read back with DuckDB through pyarrow."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from conftest import s3_bucket_root
from zoo_fixtures import tiny_net

from pipeline.build.zoo_build import build_zoo
from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore

N_FILTERS = 3 * 8 + 8 + 8 * 16


@pytest.fixture(scope="module")
def s3_root(moto_s3: str) -> str:
    return s3_bucket_root(moto_s3, "lab", "filters")


def make_zoo(tmp_path: Path) -> Path:
    models = []
    for i in range(3):
        torch.manual_seed(i)
        path = tmp_path / f"m{i}.pt"
        torch.save(tiny_net().state_dict(), path)
        models.append({"id": f"s3/m{i}", "source": str(path), "arch": "zoo_fixtures:tiny_net", "dataset": "cifar10",
                       "threat_model": "Linf" if i else "none"})
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": models}))
    return zoo


def test_build_to_s3_and_query_back(s3_root: str, tmp_path: Path, ray_cluster: None, cli) -> None:  # noqa: ANN001
    zoo = make_zoo(tmp_path)
    summary = build_zoo(str(zoo), s3_root, cache_dir=str(tmp_path / "cache"), progress=False)
    assert (summary.done, summary.failed) == (3, 0)
    store = DatasetStore(s3_root)
    assert not store.local and store.read_manifest()["dataset_version"] == 1
    with open_dataset(s3_root) as ds:
        assert ds.con.execute("SELECT model_id, robust FROM models ORDER BY 1").fetchall() == [
            ("s3/m0", False), ("s3/m1", True), ("s3/m2", True)]
        assert ds.con.execute("SELECT count(*), count(DISTINCT model_id) FROM filters").fetchone() == (3 * N_FILTERS, 3)
        torch.manual_seed(1)
        weight = tiny_net().conv3.weight.detach()
        row = ds.con.execute("SELECT w0, w8 FROM filters WHERE model_id = 's3/m1' AND conv_index = 2 "
                             "AND out_channel = 5 AND in_channel = 7").fetchone()
        assert row == (pytest.approx(float(weight[5, 7, 0, 0]), abs=0), pytest.approx(float(weight[5, 7, 2, 2]), abs=0))
        by_model = ds.filters.group_by("model_id").agg(pl.len()).sort("model_id").collect()  # Polars, same files
        assert by_model.rows() == [(f"s3/m{i}", N_FILTERS) for i in range(3)]
    # the CLI reads the same URI; a rerun skips everything without re-extracting
    info = json.loads(cli("info", s3_root, "--json").out)
    assert (info["models"], info["filters"], info["orphan_files"]) == (3, 3 * N_FILTERS, 0)
    result = cli("sql", s3_root, "SELECT count(*) AS n FROM layers WHERE kernel_h = 3", "--format", "csv")
    assert result.out.splitlines() == ['"n"', "9"]
    again = build_zoo(str(zoo), s3_root, cache_dir=str(tmp_path / "cache"), progress=False, backend="local")
    assert (again.done, again.skipped) == (0, 3)


def test_checkpoint_source_on_s3_is_fetched_through_fsspec(s3_root: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    from pipeline.fetch.download import fetch_entry
    from pipeline.zoo.zoo_file import ZooEntry

    endpoint = "http://" + s3_root.split("endpoint_override=")[1].split("&")[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    torch.manual_seed(3)
    local = tmp_path / "m.pt"
    torch.save(tiny_net().state_dict(), local)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").upload_file(str(local), "lab", "ckpts/m.pt")
    import hashlib

    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    fetched = fetch_entry(ZooEntry(model_id="s3/src", sources=["s3://lab/ckpts/m.pt"], sha256=digest), tmp_path / "cache")
    assert fetched.sha256 == digest and fetched.owned == [True]
    assert Path(fetched.paths[0]).read_bytes() == local.read_bytes()
    from pipeline.errors import SourceNotFoundError

    with pytest.raises(SourceNotFoundError):
        fetch_entry(ZooEntry(model_id="s3/missing", sources=["s3://lab/ckpts/nope.pt"]), tmp_path / "cache")
