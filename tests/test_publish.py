"""Publishing to a (fake) Hugging Face Hub and reading back: staging, sync, resume, auth, readers, hf:// roots.

The fake Hub (tests/fakehub.py) runs on 127.0.0.1 and speaks the HTTP API that
huggingface_hub 2.4 uses, so the real client code runs end to end (LFS path;
Xet is disabled). Fixture datasets are extracted from small generated checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from fakehub import FakeHub
from torch import nn

from pipeline.dataset.hub import hub_endpoint
from pipeline.dataset.layout import slugify
from pipeline.dataset.query import open_dataset
from pipeline.dataset.schema import arrow_schema
from pipeline.dataset.store import DatasetStore
from pipeline.digest import sha256_file
from pipeline.errors import (
    CorruptCheckpointError,
    DatasetNotFoundError,
    HubAuthError,
    HubConflictError,
    HubLimitError,
    PublishError,
)
from pipeline.extract.extractor import extract_model
from pipeline.publish import limits
from pipeline.publish import sync as publishing
from pipeline.publish.stage import StagedFile, stage
from pipeline.zoo.spec import ModelRequest

# huggingface_hub 2.4 itself passes a file object as ``data=`` to httpx2 for LFS uploads
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "lab/robust-filters"
TOKEN = "hf_writer"
MODELS = [("zoo/cifar10/normal-a", "cifar10", False, 0), ("zoo/cifar10/robust-a", "cifar10", True, 1),
          ("zoo/imagenet/robust-b", "ImageNet 1k", True, 2)]
LAYERS_PER_MODEL = 3
FILTERS_PER_MODEL = 4 * 3 + 6 * 4  # two 3x3 convs (3->4, 4->6); the 1x1 conv has a layers row only


def add_model(root: Path, model_id: str, dataset: str, robust: bool, seed: int, work: Path) -> None:
    """Extract a small generated checkpoint (two 3x3 convs and a 1x1 conv) into the dataset at ``root``."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.Conv2d(6, 2, 1))
    checkpoint = work / f"{slugify(model_id)}-{seed}.pt"
    torch.save(net.state_dict(), checkpoint)
    request = ModelRequest(model_id=model_id, checkpoints=[str(checkpoint)], dataset=dataset,
                           threat_model="Linf" if robust else "none", robust=robust,
                           source_uri=f"https://models.example.org/{model_id}.pt")
    extract_model(request, DatasetStore(str(root)), device="cpu", force=True, progress=False)
    DatasetStore(str(root)).update_manifest({"command": "test", "host": "secret-host", "model_id": model_id})


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("checkpoints")
    root = tmp_path_factory.mktemp("base") / "dataset"
    for model_id, dataset, robust, seed in MODELS:
        add_model(root, model_id, dataset, robust, seed, work)
    return root


@pytest.fixture
def dataset(base_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the fixture dataset (tests may add and remove models)."""
    return Path(shutil.copytree(base_dataset, tmp_path / "dataset"))


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A fake Hub as HF_ENDPOINT; huggingface_hub online for it, Xet off, no saved login or HF_TOKEN."""
    from huggingface_hub import constants

    with FakeHub(users={TOKEN: "alice", "hf_outsider": "bob"}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
        yield fake


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def repo_files(hub: FakeHub, revision: str = "main") -> dict[str, bytes]:
    files = hub.files(REPO, revision)
    files.pop(".gitattributes")
    return files


# --- staging ------------------------------------------------------------------------------------
def test_stage_holds_only_committed_models_and_is_a_deterministic_valid_dataset(dataset: Path, tmp_path: Path) -> None:
    store = DatasetStore(str(dataset))
    orphan = dataset / "filters" / "cifar10" / "zoo--cifar10--normal-a" / "part-crashed-0.parquet"
    shutil.copyfile(store.filter_files(store.stored_models()["zoo/cifar10/normal-a"])[0], orphan)
    store.record_failure("zoo/broken", "cifar10", "https://models.example.org/broken.pt",
                         CorruptCheckpointError("zoo/broken: truncated"))
    first = stage(str(dataset), tmp_path / "a", REPO)
    stage(str(dataset), tmp_path / "b", REPO)

    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")  # same dataset -> byte-identical tree
    paths = set(first.files)
    assert {p.split("/")[0] for p in paths} == {"README.md", "_manifest.json", "models", "layers", "filters"}
    assert not any("crashed" in p for p in paths)
    assert sorted(tree_bytes(tmp_path / "a")) == sorted(paths)
    assert first.rows == {"models": 3, "layers": 3 * LAYERS_PER_MODEL, "filters": 3 * FILTERS_PER_MODEL}
    for item in first.files.values():
        assert item.size == Path(item.local).stat().st_size
        assert item.sha256 == sha256_file(item.local)
    # the staged tree is itself a filter dataset with the same contents as the source
    with open_dataset(str(tmp_path / "a")) as staged, open_dataset(str(dataset)) as source:
        for query in ("SELECT * FROM models ORDER BY model_id",
                      "SELECT * FROM layers ORDER BY model_id, conv_index",
                      "SELECT * FROM filters ORDER BY model_id, conv_index, out_channel, in_channel"):
            assert staged.sql(query).to_arrow_table().equals(source.sql(query).to_arrow_table())
        assert staged.sql("SELECT count(*) FROM failures").fetchall() == [(0,)]
    manifest = json.loads((tmp_path / "a" / "_manifest.json").read_text())
    assert manifest["published"]["snapshot"] == first.snapshot
    assert manifest["published"]["rows"] == first.rows
    assert manifest["dataset_version"] == DatasetStore(str(dataset)).read_manifest()["dataset_version"]
    assert all("host" not in build for build in manifest["builds"])  # host names stay private
    assert [b["model_id"] for b in manifest["builds"]] == [m[0] for m in MODELS]


def test_models_of_an_older_schema_version_are_refused_before_staging(dataset: Path, tmp_path: Path) -> None:
    import pyarrow as pa

    from pipeline.errors import StoreError

    store = DatasetStore(str(dataset))
    row = store.model_row_path(slugify("zoo/cifar10/normal-a"))
    table = pq.read_table(row)
    index = table.schema.get_field_index("schema_version")
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array([1], pa.int32())), row)
    with pytest.raises(StoreError, match="1 committed models were written under another schema version"):
        stage(str(dataset), tmp_path / "out", REPO)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_oversized_files_are_rechunked_exactly(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_ROW_GROUP_BYTES", 1500)  # ~10 filters rows per group
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 3500)  # the filters files are ~4 KB
    tree = stage(str(dataset), tmp_path / "staged", REPO)
    assert sorted(tree.rechunked) == sorted(m[0] for m in MODELS)
    filters = [f for p, f in tree.files.items() if p.startswith("filters/")]
    assert len(filters) > 3
    for item in filters:
        meta = pq.read_metadata(item.local)
        assert item.size <= 3500
        assert all(meta.row_group(i).total_byte_size <= 1500 for i in range(meta.num_row_groups))
    for item in (f for p, f in tree.files.items() if p.startswith("layers/")):  # ~1.2 KB per row: a row per group
        meta = pq.read_metadata(item.local)
        assert meta.num_row_groups == meta.num_rows == LAYERS_PER_MODEL
    staged = DatasetStore(str(tmp_path / "staged"))
    per_model = Counter(p.split("/")[2] for p in tree.files if p.startswith("filters/"))
    assert {m.slug: m.n_filter_files for m in staged.stored_models().values()} == dict(per_model)
    with open_dataset(str(tmp_path / "staged")) as out, open_dataset(str(dataset)) as source:
        for query in ("SELECT * FROM filters ORDER BY model_id, conv_index, out_channel, in_channel",
                      "SELECT * FROM layers ORDER BY model_id, conv_index"):
            assert out.sql(query).to_arrow_table().equals(source.sql(query).to_arrow_table())  # exact, every row
        assert out.sql("SELECT count(*) FROM filters").fetchall() == [(3 * FILTERS_PER_MODEL,)]
    stage(str(dataset), tmp_path / "again", REPO)
    assert tree_bytes(tmp_path / "staged") == tree_bytes(tmp_path / "again")
    assert pq.read_schema(filters[0].local).names == arrow_schema("filters").names


def test_layouts_beyond_the_hub_limits_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    limits.check_layout(["README.md", *(f"models/part-{k}.parquet" for k in range(3))])
    monkeypatch.setattr(limits, "MAX_ENTRIES_PER_FOLDER", 3)
    with pytest.raises(HubLimitError, match="'layers/dataset=cifar10' would hold 4 entries"):
        limits.check_layout([f"layers/dataset=cifar10/model=m{k}/part-0.parquet" for k in range(4)])
    monkeypatch.setattr(limits, "MAX_FILES_PER_REPO", 5)
    with pytest.raises(HubLimitError, match="6 files"):
        limits.check_layout([f"a{k}/x" for k in range(6)])


def test_commit_batches_respect_file_and_byte_budgets() -> None:
    files = [StagedFile(f"f{k}", "", size, "0") for k, size in enumerate([5, 5, 5, 20, 1, 1])]
    batches = publishing.commit_batches(files, max_files=2, max_bytes=12)
    assert [[f.path for f in b] for b in batches] == [["f0", "f1"], ["f2"], ["f3"], ["f4", "f5"]]


# --- publishing -------------------------------------------------------------------------------------
def test_publish_stores_the_staged_tree_byte_for_byte_with_the_card_last(dataset: Path, tmp_path: Path,
                                                                          hub: FakeHub, cli) -> None:  # noqa: ANN001
    staged = cli("publish", dataset, "--repo", REPO, "--stage-only", tmp_path / "staged", "--json")
    assert staged.code == 0, staged.err
    assert json.loads(staged.out)["models"] == 3
    result = cli("publish", dataset, "--repo", REPO, "--token", TOKEN, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert repo_files(hub) == tree_bytes(tmp_path / "staged")
    assert summary["uploaded"] == len(tree_bytes(tmp_path / "staged")) and summary["unchanged"] == 0
    # data files first, then the models' rows (each after the files it names), the card and manifest last
    records = [c for c in hub.commits if c.repo_id == REPO]
    assert [c.oid for c in records] == summary["commits"]
    kinds = [{p.split("/")[0] for p in c.added} for c in records]
    assert kinds[-1] == {"README.md", "_manifest.json"}
    first_row_commit = next(i for i, k in enumerate(kinds) if "models" in k)
    assert all(k <= {"layers", "filters"} for k in kinds[:first_row_commit])
    assert all(k == {"models"} for k in kinds[first_row_commit:-1])
    assert sorted(p for c in records for p in c.added) == sorted(tree_bytes(tmp_path / "staged"))
    assert not hub.repo(REPO).private
    assert sorted(hub.lfs_uploads) == sorted(set(hub.lfs_uploads))  # every object sent once


def test_publish_splits_commits_and_a_rerun_after_an_interruption_resumes(dataset: Path, hub: FakeHub,
                                                                          tmp_path: Path) -> None:
    hub.fail("commit", after=1)  # the second data commit is lost
    with pytest.raises(PublishError, match="rerun the same command to resume"):
        publishing.publish(str(dataset), REPO, token=TOKEN, max_files=2, progress=False)
    assert len(hub.commits) == 1 and "README.md" not in hub.files(REPO)  # half-finished: no card
    first_files = set(hub.commits[0].added)
    uploads_before = list(hub.lfs_uploads)

    hub.fail("lfs-upload", after=1)  # interrupted again, this time in the middle of the uploads
    with pytest.raises(PublishError):
        publishing.publish(str(dataset), REPO, token=TOKEN, max_files=2, progress=False)
    assert "README.md" not in hub.files(REPO)

    committed_before = {p for c in hub.commits for p in c.added}
    assert first_files < committed_before  # the second run committed one more batch before it failed
    n_commits = len(hub.commits)
    result = publishing.publish(str(dataset), REPO, token=TOKEN, max_files=2, progress=False)
    later = hub.commits[n_commits:]
    assert not committed_before & {p for c in later for p in c.added}  # committed files are not sent again
    assert result.unchanged == len(committed_before)
    assert all(len(c.added) <= 2 for c in hub.commits[:-1])
    assert len(hub.lfs_uploads) == len(set(hub.lfs_uploads))  # no object uploaded twice, across all three runs
    assert set(uploads_before) <= set(hub.lfs_uploads)
    staged = stage(str(dataset), tmp_path / "check", REPO)
    assert repo_files(hub) == {p: Path(f.local).read_bytes() for p, f in staged.files.items()}
    assert hub.commits[-1].added[-1] == "README.md"


def test_republish_sends_only_changes_removes_models_and_marks_the_card_while_updating(
        dataset: Path, tmp_path: Path, hub: FakeHub) -> None:
    publishing.publish(str(dataset), REPO, token=TOKEN, progress=False)
    before = repo_files(hub)
    n_uploads, n_commits = len(hub.lfs_uploads), len(hub.commits)

    add_model(dataset, "zoo/cifar10/robust-c", "cifar10", True, 7, tmp_path)
    DatasetStore(str(dataset)).delete_model("zoo/imagenet/robust-b")
    result = publishing.publish(str(dataset), REPO, token=TOKEN, progress=False)

    after = repo_files(hub)
    new_model = [p for p in after if "robust-c" in p]
    assert sorted(p.split("/")[0] for p in new_model) == ["filters", "layers", "models"]
    assert not any("robust-b" in p for p in after)
    assert sorted(result.deleted) == sorted(p for p in before if "robust-b" in p) and len(result.deleted) == 3
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed == {*new_model, "_manifest.json", "README.md"}
    assert len(hub.lfs_uploads) - n_uploads == 3  # the new model's layers, filters and row files
    records = hub.commits[n_commits:]
    assert records[0].added == ["README.md"] and "Update in progress" in hub.files(REPO, records[0].oid)["README.md"].decode()
    assert "Update in progress" not in after["README.md"].decode()
    assert set(records[-1].deleted) == set(result.deleted) and "README.md" in records[-1].added
    with open_dataset(str(hub.export(REPO, tmp_path / "export"))) as ds:
        assert ds.sql("SELECT model_id FROM models ORDER BY 1").fetchall() == [
            ("zoo/cifar10/normal-a",), ("zoo/cifar10/robust-a",), ("zoo/cifar10/robust-c",)]

    again = publishing.publish(str(dataset), REPO, token=TOKEN, progress=False)
    assert again.up_to_date and again.unchanged == len(after) and len(hub.commits) == len(records) + n_commits


def test_a_downloaded_repo_is_a_dataset_that_can_be_extended_and_republished(dataset: Path, tmp_path: Path,
                                                                            hub: FakeHub) -> None:
    publishing.publish(str(dataset), REPO, token=TOKEN, progress=False)
    copy = hub.export(REPO, tmp_path / "download")
    store = DatasetStore(str(copy))
    assert store.is_complete("zoo/cifar10/robust-a")  # rows in their own files, as extract/build expect
    add_model(copy, "zoo/cifar10/robust-c", "cifar10", True, 7, tmp_path)
    n_uploads = len(hub.lfs_uploads)
    result = publishing.publish(str(copy), REPO, token=TOKEN, progress=False)
    assert sorted(p.split("/")[0] for p in result.uploaded) == [
        "README.md", "_manifest.json", "filters", "layers", "models"]
    assert len(hub.lfs_uploads) - n_uploads == 3 and result.deleted == []
    with open_dataset(f"hf://datasets/{REPO}") as ds:
        assert ds.sql("SELECT count(*) FROM models").fetchall() == [(4,)]


def test_publish_to_a_private_branch_and_a_concurrent_writer_is_detected(dataset: Path, hub: FakeHub,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = publishing.publish(str(dataset), REPO, revision="v2", private=True, progress=False)
    assert hub.repo(REPO).private and result.url.endswith("/tree/v2")
    assert "README.md" in hub.files(REPO, "v2") and "README.md" not in hub.files(REPO, "main")
    card = hub.files(REPO, "v2")["README.md"].decode()
    assert 'revision="v2"' in card and f"hf://datasets/{REPO}@v2/layers" in card

    # another writer commits between our plan and our first commit: detected through parent_commit
    real_sync = publishing.sync

    def sync_with_a_race(api, tree, repo_id, revision, message, **kwargs):  # noqa: ANN001, ANN202
        from huggingface_hub import CommitOperationAdd

        create_commit = api.create_commit

        def racing(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            api.create_commit = create_commit
            create_commit(repo_id, [CommitOperationAdd("notes.txt", b"someone else")], commit_message="other",
                          repo_type="dataset", revision=revision)
            return create_commit(*args, **kw)

        api.create_commit = racing
        return real_sync(api, tree, repo_id, revision, message, **kwargs)

    add_model(dataset, "zoo/cifar10/robust-c", "cifar10", True, 7, dataset.parent)
    monkeypatch.setattr(publishing, "sync", sync_with_a_race)
    with pytest.raises(HubConflictError, match="changed on .* while publishing"):
        publishing.publish(str(dataset), REPO, revision="v2", progress=False)
    assert "notes.txt" in hub.files(REPO, "v2")  # theirs kept, nothing of ours committed over it
    assert not any("robust-c" in p for p in hub.files(REPO, "v2"))


def test_missing_invalid_and_unauthorised_tokens_fail_clearly_and_write_nothing(dataset: Path, hub: FakeHub,
                                                                                cli) -> None:  # noqa: ANN001
    missing = cli("publish", dataset, "--repo", REPO)
    assert missing.code == HubAuthError.exit_code == 2
    assert "no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`" in missing.err
    invalid = cli("publish", dataset, "--repo", REPO, "--token", "hf_wrong")
    assert invalid.code == 2
    assert f"{hub.url} rejected the token from --token (401 Unauthorized)" in invalid.err
    assert len(invalid.err.strip().splitlines()) == 1
    outsider = cli("publish", dataset, "--repo", REPO, "--token", "hf_outsider")
    assert outsider.code == 2 and "may not write to lab/robust-filters" in outsider.err
    assert hub.repos == {} and hub.commits == [] and hub.lfs_uploads == []
    # a token that dies mid-way (revoked): fails with the same message, and no card is written
    hub.fail("commit", after=1, status=401, message="Invalid credentials in Authorization header")
    revoked = cli("publish", dataset, "--repo", REPO, "--token", TOKEN)
    assert revoked.code == 2 and "rejected the token" in revoked.err
    assert "README.md" not in hub.files(REPO)


def test_offline_mode_and_bad_repo_ids_are_refused(dataset: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch,
                                                   cli) -> None:  # noqa: ANN001
    bad = cli("publish", dataset, "--repo", "no-namespace", "--token", TOKEN)
    assert bad.code == 2 and "must be ORG/NAME" in bad.err
    from huggingface_hub import constants

    not_empty = cli("publish", dataset, "--repo", REPO, "--stage-only", dataset)
    assert not_empty.code == 2 and "must be new or empty" in not_empty.err
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    unreachable = cli("publish", dataset, "--repo", REPO, "--token", TOKEN)
    assert unreachable.code == 4 and "cannot reach http://127.0.0.1:9" in unreachable.err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = cli("publish", dataset, "--repo", REPO, "--token", TOKEN)
    assert offline.code == 4 and "HF_HUB_OFFLINE is set" in offline.err


# --- reading what was published ----------------------------------------------------------------
SCHEMA_NAMES = {t: arrow_schema(t).names for t in ("models", "layers", "filters")}
ROWS = {"models": 3, "layers": 3 * LAYERS_PER_MODEL, "filters": 3 * FILTERS_PER_MODEL}


@pytest.fixture
def published(dataset: Path, tmp_path: Path, hub: FakeHub) -> Path:
    """The repo's tree after a publish, exported from the fake Hub to a local folder."""
    publishing.publish(str(dataset), REPO, token=TOKEN, progress=False)
    return hub.export(REPO, tmp_path / "repo")


def test_published_tree_loads_with_datasets_configs(published: Path, tmp_path: Path) -> None:
    import datasets

    card = (published / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert [c["config_name"] for c in meta["configs"]] == ["models", "layers", "filters"]
    for table, rows in ROWS.items():
        loaded = datasets.load_dataset(str(published), table, split="train", cache_dir=str(tmp_path / "cache"))
        assert loaded.num_rows == rows
        assert loaded.column_names == SCHEMA_NAMES[table]  # partition keys included, nothing duplicated
        assert Counter(loaded["dataset"]) == ({"cifar10": 2, "ImageNet 1k": 1} if table == "models" else
                                              {"cifar10": 2 * rows // 3, "ImageNet 1k": rows // 3})
    default = datasets.load_dataset(str(published), split="train", cache_dir=str(tmp_path / "cache"))
    assert default.num_rows == 3 and default.column_names == SCHEMA_NAMES["models"]


def test_published_tree_reads_with_duckdb_polars_and_pyarrow_without_duplicate_columns(published: Path) -> None:
    for table in ("layers", "filters"):
        glob = str(published / table / "**" / "*.parquet")
        for hive in ("", ", hive_partitioning = false"):
            relation = duckdb.sql(f"SELECT * FROM read_parquet('{glob}'{hive})")
            assert relation.columns == SCHEMA_NAMES[table]
            assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}'{hive})").fetchall() == [(ROWS[table],)]
        exact = duckdb.sql(f"SELECT dataset, count(*) FROM read_parquet('{glob}', hive_partitioning = false) "
                           "GROUP BY 1 ORDER BY 1").fetchall()
        assert exact == [("ImageNet 1k", ROWS[table] // 3), ("cifar10", 2 * ROWS[table] // 3)]
        for kwargs in ({}, {"hive_partitioning": False}):
            frame = pl.scan_parquet(glob, **kwargs).collect()
            assert frame.columns == SCHEMA_NAMES[table] and frame.height == ROWS[table]
        frame = pl.scan_parquet(glob, hive_partitioning=False).collect()
        assert sorted(frame["dataset"].unique().to_list()) == ["ImageNet 1k", "cifar10"]
        arrow = pads.dataset(str(published / table), format="parquet").to_table()
        assert arrow.column_names == SCHEMA_NAMES[table] and arrow.num_rows == ROWS[table]
    models = pl.read_parquet(published / "models" / "*.parquet")
    assert models.columns == SCHEMA_NAMES["models"] and models["model_id"].to_list() == sorted(m[0] for m in MODELS)


def test_hf_uri_roots_read_through_hffilesystem(dataset: Path, published: Path, hub: FakeHub, cli,  # noqa: ANN001
                                                tmp_path: Path) -> None:
    uri = f"hf://datasets/{REPO}"
    query = "SELECT model_id, count(*) AS n, sum(w4) AS s FROM filters GROUP BY 1 ORDER BY 1"
    with open_dataset(uri) as remote, open_dataset(str(dataset)) as local:
        assert not remote.store.local
        assert remote.sql(query).fetchall() == local.sql(query).fetchall()
        assert remote.layers.collect().shape == (ROWS["layers"], len(SCHEMA_NAMES["layers"]))
        pinned_head = hub.repo(REPO).branches["main"]
        assert pinned_head in remote.store.root  # one commit for every read

        # a republish removing a model does not disturb a reader that opened the previous snapshot
        DatasetStore(str(dataset)).delete_model("zoo/imagenet/robust-b")
        publishing.publish(str(dataset), REPO, token=TOKEN, progress=False)
        assert remote.sql("SELECT count(*) FROM filters").fetchall() == [(ROWS["filters"],)]

    # a published repo is itself a dataset root: staging from it gives the same tree, byte for byte
    from_hub = stage(uri, tmp_path / "from-hub", REPO)
    assert {p: Path(f.local).read_bytes() for p, f in from_hub.files.items()} == repo_files(hub)

    sql = cli("sql", uri, "SELECT count(*) AS n FROM models", "--format", "csv")
    assert sql.code == 0, sql.err
    assert sql.out.splitlines() == ['"n"', "2"]
    info = json.loads(cli("info", uri, "--json").out)
    assert (info["models"], info["filters"], info["orphan_files"]) == (2, 2 * FILTERS_PER_MODEL, 0)
    assert info["manifest"]["published"]["models"] == 2

    first_publish = [c for c in hub.commits if c.added and c.added[-1] == "README.md"][0].oid
    with open_dataset(f"hf://datasets/{REPO}@{first_publish}") as ds:  # a revision given by commit id
        assert ds.sql("SELECT count(*) FROM models").fetchall() == [(3,)]

    checkpoint = tmp_path / "net.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 2, 3)).state_dict(), checkpoint)
    write = cli("extract", checkpoint, "--out", uri, "--model-id", "x/y")
    assert write.code == 4 and "hf:// dataset roots are read-only" in write.err
    assert not any("x--y" in p for p in hub.files(REPO))

    missing = cli("sql", "hf://datasets/lab/nothing-here", "SELECT 1")
    assert missing.code == DatasetNotFoundError.exit_code
    assert "no dataset repo lab/nothing-here" in missing.err
    no_branch = cli("info", f"hf://datasets/{REPO}@no-such-branch")
    assert no_branch.code == 4 and "has no revision 'no-such-branch'" in no_branch.err


def test_stats_over_an_hf_root_match_the_local_dataset(dataset: Path, published: Path, tmp_path: Path,
                                                       cli) -> None:  # noqa: ANN001
    remote = cli("stats", f"hf://datasets/{REPO}", "--out", tmp_path / "remote")
    assert remote.code == 0, remote.err
    assert cli("stats", dataset, "--out", tmp_path / "local").code == 0
    tables = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / "tables").rglob("*.csv"))
    assert len(tables) > 5
    for table in tables:
        assert (tmp_path / "remote" / table).read_bytes() == (tmp_path / "local" / table).read_bytes(), table


def test_private_repos_read_with_the_token_from_the_environment(dataset: Path, hub: FakeHub,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    publishing.publish(str(dataset), REPO, token=TOKEN, private=True, revision="dev", progress=False)
    with pytest.raises(DatasetNotFoundError, match="if it is private, set HF_TOKEN"):
        open_dataset(f"hf://datasets/{REPO}@dev")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with open_dataset(f"hf://datasets/{REPO}@dev") as ds:
        assert ds.sql("SELECT count(*) FROM layers").fetchall() == [(ROWS["layers"],)]


# --- the real Hub (opt-in) ------------------------------------------------------------------------
@pytest.mark.slow
def test_real_hub_smoke(base_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Publish to a real Hub repo and read it back; needs FILTERLENS_HUB_TEST_REPO=ORG/NAME, HF_TOKEN, network."""
    import os

    repo = os.environ.get("FILTERLENS_HUB_TEST_REPO")
    if not repo or not os.environ.get("HF_TOKEN"):
        pytest.skip("set FILTERLENS_HUB_TEST_REPO=ORG/NAME and HF_TOKEN to publish to the real Hub")
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    api = HfApi(endpoint=hub_endpoint())
    try:
        api.whoami()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the Hub means: no network here
        pytest.skip(f"the Hub is not reachable: {exc}")
    branch = f"filterlens-smoke-{os.getpid()}"
    try:
        result = publishing.publish(str(base_dataset), repo, revision=branch, private=True, progress=False)
        assert not result.up_to_date
        with open_dataset(f"hf://datasets/{repo}@{branch}") as ds:
            assert ds.sql("SELECT count(*) FROM filters").fetchall() == [(ROWS["filters"],)]
        assert publishing.publish(str(base_dataset), repo, revision=branch, progress=False).up_to_date
    finally:
        with contextlib.suppress(Exception):
            api.delete_branch(repo, branch=branch, repo_type="dataset")
