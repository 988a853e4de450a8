"""Change detection without a digest (validators recorded, rebuilt when they change), zoo sha256 checks,
and what a build records for downloads that are too big, endless or stalled."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from checkpoint_server import CheckpointServer
from zoo_fixtures import tiny_bytes

from pipeline.build.plan import plan
from pipeline.build.zoo_build import build_zoo
from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ConfigError
from pipeline.fetch.download import fetch_entry, probe_recorded
from pipeline.fetch.validators import changed, dataset_records, location_id
from pipeline.zoo.zoo_file import ZooEntry, load_zoo_file


@pytest.fixture
def server() -> Iterator[CheckpointServer]:
    s = CheckpointServer()
    yield s
    s.close()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# --- zoo sha256 values ----------------------------------------------------------------------------
@pytest.mark.parametrize(("written", "got"), [
    ("0" * 64, "a YAML int (quote it)"),                # YAML reads unquoted zeros as the integer 0
    ("12345", "a YAML int (quote it)"),
    ("'abc123'", "6 characters"),
    ("'" + "g" * 64 + "'", "characters that are not hexadecimal"),
])
def test_a_zoo_sha256_must_be_64_hex_characters(tmp_path: Path, written: str, got: str) -> None:
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(f"models:\n  - id: lab/m\n    source: m.pt\n    sha256: {written}\n")
    with pytest.raises(ConfigError) as caught:
        load_zoo_file(zoo)
    assert str(caught.value) == (f"{zoo}: models[0] (lab/m): sha256 must be 64 hexadecimal characters in quotes, "
                                 f"got {got}")


def test_a_quoted_sha256_is_kept_lowercase(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("models:\n  - id: lab/m\n    source: m.pt\n    sha256: '" + "AB" * 32 + "'\n")
    assert load_zoo_file(zoo)[0].sha256 == "ab" * 32


# --- validators recorded, compared, and acted on by a build --------------------------------------
def models_row(out: Path) -> tuple[str, list[dict]]:
    with open_dataset(str(out)) as ds:
        sha, metadata = ds.con.execute("SELECT checkpoint_sha256, metadata_json FROM models").fetchone()
    return sha, json.loads(metadata)["source_validators"]


def test_a_build_records_validators_and_refetches_only_when_they_change(server: CheckpointServer,
                                                                        tmp_path: Path) -> None:
    url = server.url + "/m.pt"
    server.add("/m.pt", tiny_bytes(1), validator="last-modified")
    entries = [ZooEntry(model_id="lab/m", sources=[url], dataset="cifar10")]
    out, options = tmp_path / "ds", {"backend": "local", "cache_dir": str(tmp_path / "cache"), "progress": False,
                                     "retries": 1}

    def build() -> tuple[int, int, int]:
        before = len(server.requests)
        summary = build_zoo(entries, str(out), **options)
        return summary.done, summary.skipped, len(server.requests) - before

    assert build() == (1, 0, 1)
    sha, recorded = models_row(out)
    lm = server.files["/m.pt"].validators(tiny_bytes(1))["Last-Modified"]
    assert sha == hashlib.sha256(tiny_bytes(1)).hexdigest()
    assert recorded == [{"uri": url, "via": location_id(url), "size": len(tiny_bytes(1)), "last_modified": lm}]
    assert files_under(tmp_path / "cache") == []  # the checkpoint, its record and its folder are gone
    heads = len(server.heads)
    assert build() == (0, 1, 0) and len(server.heads) == heads + 1  # asked with HEAD, nothing downloaded
    server.add("/m.pt", tiny_bytes(2), validator="last-modified")  # a new checkpoint at the same URL
    assert build() == (1, 0, 1) and models_row(out)[0] == hashlib.sha256(tiny_bytes(2)).hexdigest()
    server.add("/m.pt", tiny_bytes(2), validator="last-modified")  # touched: same bytes, new Last-Modified
    assert build() == (1, 0, 1)  # fetched once more and the row rewritten with what the server says now
    assert models_row(out)[1][0]["last_modified"] == server.files["/m.pt"].validators(tiny_bytes(2))["Last-Modified"]
    assert build() == (0, 1, 0)
    server.close()  # an unreachable source is not a change
    assert build_zoo(entries, str(out), **options).skipped == 1


def test_the_plan_asks_only_where_the_build_would_fetch(server: CheckpointServer, tmp_path: Path) -> None:
    origin = "https://models.example.org/m.pt"
    record = {"uri": origin, "url": server.url + "/http/models.example.org/m.pt", "etag": '"a"', "size": 3}
    server.add("/http/models.example.org/m.pt", b"abc")
    stored = dataset_records([record])
    assert probe_recorded(stored, server.url + "/") == [{"etag": server.files[
        "/http/models.example.org/m.pt"].validators(b"abc")["ETag"], "size": 3}]
    assert probe_recorded(stored, "http://127.0.0.1:9/other-mirror/") == [None]  # elsewhere: not compared
    assert len(server.heads) == 1
    assert changed(stored, probe_recorded(stored, server.url + "/"))  # another ETag than recorded
    assert not changed(stored, [None]) and not changed(None, [{"etag": "x"}])
    assert not changed([{"uri": origin, "etag": "a"}], [{"last_modified": "today"}])  # nothing in common


def test_a_changed_cached_file_without_digest_is_fetched_again(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", b"one")
    entry = ZooEntry(model_id="lab/m", sources=[server.url + "/m.pt"])
    first = fetch_entry(entry, tmp_path)
    assert first.downloaded_bytes == 3
    again = fetch_entry(entry, tmp_path)  # kept in the cache and unchanged: reused
    assert again.downloaded_bytes == 0 and len(server.requests) == 1
    server.add("/m.pt", b"two!")
    third = fetch_entry(entry, tmp_path)
    assert third.downloaded_bytes == 4 and Path(third.paths[0]).read_bytes() == b"two!"


def test_plan_with_force_or_without_records_does_not_probe(server: CheckpointServer, tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path / "ds"))
    entries = [ZooEntry(model_id="lab/m", sources=[server.url + "/m.pt"])]
    assert plan(entries, store, force=True) == (entries, [])
    assert plan(entries, store, force=False) == (entries, []) and server.heads == []


# --- Hub and S3 validators --------------------------------------------------------------------------
def test_hub_sources_record_the_blob_id_and_notice_a_new_upload(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from fakehub import FakeHub
    from huggingface_hub import HfApi, constants

    with FakeHub(users={"hf_writer": "alice"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_writer")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        api = HfApi(endpoint=hub.url, token="hf_writer")
        api.create_repo("alice/ckpts", repo_type="model")
        api.upload_file(path_or_fileobj=b"v1 weights", path_in_repo="m.pt", repo_id="alice/ckpts")
        uri = "hf://alice/ckpts/m.pt"
        fetched = fetch_entry(ZooEntry(model_id="hub/m", sources=[uri]), tmp_path / "cache")
        record = fetched.validators[0]
        commit = api.model_info("alice/ckpts").sha
        assert record == {"uri": uri, "url": uri, "size": 10, "revision": commit,
                          "etag": hashlib.sha256(b"v1 weights").hexdigest()}  # an LFS file: its oid
        stored = dataset_records(fetched.validators)
        assert probe_recorded(stored, None) == [{k: record[k] for k in ("etag", "size", "revision")}]
        assert not changed(stored, probe_recorded(stored, None))
        api.upload_file(path_or_fileobj=b"v2 weights", path_in_repo="m.pt", repo_id="alice/ckpts")
        assert changed(stored, probe_recorded(stored, None))


def test_s3_sources_record_the_etag_and_notice_a_new_object(monkeypatch: pytest.MonkeyPatch, moto_s3: str,
                                                            tmp_path: Path) -> None:
    import boto3

    endpoint = f"http://{moto_s3}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="changes")
    s3.put_object(Bucket="changes", Key="m.pt", Body=b"v1 weights")
    fetched = fetch_entry(ZooEntry(model_id="s3/m", sources=["s3://changes/m.pt"]), tmp_path / "cache")
    record = fetched.validators[0]
    assert record["etag"] == '"' + hashlib.md5(b"v1 weights").hexdigest() + '"' and record["size"] == 10
    stored = dataset_records(fetched.validators)
    assert not changed(stored, probe_recorded(stored, None))
    s3.put_object(Bucket="changes", Key="m.pt", Body=b"v2 weights")
    assert changed(stored, probe_recorded(stored, None))


# --- a build's failures rows for hostile servers ---------------------------------------------------
def test_a_build_records_each_hostile_download_and_leaves_no_partial_files(server: CheckpointServer,
                                                                           tmp_path: Path) -> None:
    server.add("/endless.pt", b"\0" * 65536, "endless")
    server.add("/huge.pt", b"\0" * 1024, "huge", announce=10**12)
    server.add("/trickle.pt", tiny_bytes(3), "trickle", chunk=256, delay_s=0.05, validator="none")
    server.add("/swap.pt", tiny_bytes(4), "swap", then=tiny_bytes(5))
    models = [{"id": f"lab/{name}", "source": f"{server.url}/{name}.pt", "dataset": "cifar10"}
              for name in ("endless", "huge", "trickle", "swap")]
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": models}))
    cache = tmp_path / "cache"
    summary = build_zoo(str(zoo), str(tmp_path / "ds"), backend="local", cache_dir=str(cache), progress=False,
                        retries=2, timeout_s=2.0, max_checkpoint_gb=0.001, min_download_rate_kbs=50,
                        rate_window_s=0.4, download_deadline_s=20)
    assert (summary.done, summary.failed) == (1, 3)
    with open_dataset(str(tmp_path / "ds")) as ds:
        failures = ds.con.execute("SELECT model_id, stage, error_class, transient, attempts, message "
                                  "FROM failures ORDER BY 1").fetchall()
        sha = ds.con.execute("SELECT checkpoint_sha256 FROM models WHERE model_id = 'lab/swap'").fetchone()[0]
    assert [f[:5] for f in failures] == [
        ("lab/endless", "download", "CheckpointTooLargeError", False, 1),
        ("lab/huge", "download", "CheckpointTooLargeError", False, 1),
        ("lab/trickle", "download", "StalledDownloadError", True, 2)]
    assert failures[1][5] == (f"{server.url}/huge.pt: the server announces 1000.0 GB, more than the 1.0 MB cap "
                              "(--max-checkpoint-gb)")
    assert sha == hashlib.sha256(tiny_bytes(5)).hexdigest()  # the swapped file whole, never a splice
    assert files_under(cache) == []  # no .part, no record, no empty model folder
