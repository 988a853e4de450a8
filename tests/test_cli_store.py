"""The CLI and the store: bad inputs, reruns, replacement, crash atomicity, info and sql."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import save
from zoo_fixtures import tiny_net

from pipeline.dataset.layout import slugify
from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore
from pipeline.dataset.writer import ModelWriter

ARCH = "zoo_fixtures:tiny_net"
TESTS_DIR = Path(__file__).parent
N_FILTERS = 3 * 8 + 8 + 8 * 16  # conv1 + depthwise + conv3 (the 3x3 layers that run)


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save({"state_dict": tiny_net().state_dict()}, path)


def counts(root: Path, model_id: str) -> tuple[int, int, int]:
    with open_dataset(str(root)) as ds:
        q = ds.con.execute
        return (q("SELECT count(*) FROM models WHERE model_id = ?", [model_id]).fetchone()[0],
                q("SELECT count(*) FROM layers WHERE model_id = ?", [model_id]).fetchone()[0],
                q("SELECT count(*) FROM filters WHERE model_id = ?", [model_id]).fetchone()[0])


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def dataset_with_good_model(tmp_path: Path, cli) -> Path:  # noqa: ANN001
    root = tmp_path / "ds"
    good = tiny_checkpoint(tmp_path / "good.pt")
    result = cli("extract", good, "--out", root, "--arch", ARCH, "--model-id", "good", "--dataset", "cifar10")
    assert result.code == 0, result.err
    assert "good: 4 conv layers, 160 3x3 filters" in result.out
    return root


def test_extract_then_rerun_skips_and_force_redoes(dataset_with_good_model: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    root = dataset_with_good_model
    before = all_files(root)
    again = cli("extract", tmp_path / "good.pt", "--out", root, "--arch", ARCH, "--model-id", "good",
                "--dataset", "cifar10")
    assert again.code == 0 and "already in" in again.out
    assert all_files(root) == before
    forced = cli("extract", tmp_path / "good.pt", "--out", root, "--arch", ARCH, "--model-id", "good",
                 "--dataset", "cifar10", "--force")
    assert forced.code == 0
    assert counts(root, "good") == (1, 4, N_FILTERS)
    # the old version's files stay (a reader may still use them) until a vacuum past the retention
    old_and_new = sorted(str(p) for p in root.joinpath("filters").rglob("*.parquet"))
    assert len(old_and_new) == 2
    assert cli("vacuum", root).out.endswith("removed 0 unreferenced files older than 24h\n")
    dry = cli("vacuum", root, "--older-than", "0s", "--dry-run")
    assert dry.code == 0 and len(dry.out.splitlines()) == 3  # the old layers file, filters file, summary line
    assert len(list(root.joinpath("filters").rglob("*.parquet"))) == 2
    assert cli("vacuum", root, "--older-than", "0s").code == 0
    assert [str(p) for p in root.joinpath("filters").rglob("*.parquet")] == DatasetStore(str(root)).committed_files(
        "filters")
    assert counts(root, "good") == (1, 4, N_FILTERS)


def test_changed_checkpoint_replaces_the_model(dataset_with_good_model: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    root = dataset_with_good_model
    changed = tiny_checkpoint(tmp_path / "good.pt", seed=5)
    result = cli("extract", changed, "--out", root, "--arch", ARCH, "--model-id", "good", "--dataset", "cifar10")
    assert result.code == 0 and "already" not in result.out
    assert counts(root, "good") == (1, 4, N_FILTERS)
    weight = torch.load(changed)["state_dict"]["conv1.weight"]
    with open_dataset(str(root)) as ds:
        w4 = ds.con.execute("SELECT w4 FROM filters WHERE conv_index = 0 AND out_channel = 1 AND in_channel = 2").fetchall()
    assert w4 == [(pytest.approx(float(weight[1, 2, 1, 1]), abs=0),)]


@pytest.mark.parametrize(("make_bad", "args", "message"), [
    (lambda p: p, [], "no such checkpoint file"),
    (lambda p: p.write_bytes(b"<html>quota exceeded</html>") and p, [], "not a checkpoint"),
    (lambda p: (tiny_checkpoint(p), p.write_bytes(p.read_bytes()[:700]))[0], [], "truncated or damaged"),
    (lambda p: save({"fc.weight": torch.randn(3, 3)}, p), [], "no 4D convolution weights"),
    (lambda p: save({"x": torch.nn.Conv2d(1, 1, 3)}, p), [], "refusing to unpickle"),
    (lambda p: tiny_checkpoint(p), ["--arch", "robustbench:cifar10:Linf:Andriushchenko2020Understanding"],
     r"missing \d+ parameters: layer1\.0\.bn1\.bias.*shape mismatches: conv1\.weight \(8, 3, 3, 3\) vs \(64, 3, 3, 3\)"),
    (lambda p: save({**tiny_net().state_dict(), "extra.weight": torch.zeros(1)}, p), ["--arch", ARCH],
     r"unexpected 1 keys: extra\.weight\)"),
    (lambda p: tiny_checkpoint(p), ["--arch", "robustbench:cifar10:Linf:NoSuchModel"], "has no model 'NoSuchModel'"),
    (lambda p: tiny_checkpoint(p), ["--arch", "zoo_fixtures:not_a_module"], "not a torch.nn.Module"),
], ids=["missing", "html", "truncated", "no-convs", "unsafe", "arch-missing-keys", "arch-unexpected-key",
        "unknown-zoo-model", "factory-not-a-module"])
def test_bad_input_fails_cleanly_and_loses_nothing(dataset_with_good_model: Path, tmp_path: Path, cli,  # noqa: ANN001
                                                   make_bad, args: list[str], message: str) -> None:  # noqa: ANN001
    root = dataset_with_good_model
    bad = tmp_path / "bad.pt"
    if make_bad(bad) is None and not bad.exists():
        pass  # the "missing" case: no file at all
    before = {p for p in all_files(root) if not p.startswith("failures/")}
    result = cli("extract", bad, "--out", root, "--model-id", "bad", "--dataset", "cifar10", *args)
    assert result.code == 3
    lines = [line for line in result.err.splitlines() if line.startswith("filterlens: error:")]
    assert len(lines) == 1 and re.search(message, lines[0]), result.err
    after = all_files(root)
    assert {p for p in after if not p.startswith("failures/")} == before  # nothing partial, nothing lost
    assert counts(root, "good") == (1, 4, N_FILTERS)
    assert counts(root, "bad") == (0, 0, 0)
    failures = DatasetStore(str(root)).failures().to_pylist()
    assert [f["model_id"] for f in failures] == ["bad"]
    assert re.search(message, failures[0]["message"])


def test_failure_row_is_cleared_by_a_later_success(tmp_path: Path, cli) -> None:  # noqa: ANN001
    root = tmp_path / "ds"
    bad = tmp_path / "m.pt"
    bad.write_bytes(b"garbage!" * 10)
    assert cli("extract", bad, "--out", root, "--model-id", "m").code == 3
    assert DatasetStore(str(root)).failures().num_rows == 1
    tiny_checkpoint(bad)
    assert cli("extract", bad, "--out", root, "--model-id", "m").code == 0
    assert DatasetStore(str(root)).failures().num_rows == 0


# --- crash atomicity: a real SIGKILL at chosen points ----------------------------------------------
CRASH_POINTS = {
    # kill after all filters are written, before the layers file and the commit
    "before-commit": """
        from pipeline.dataset import writer
        def crash(self, layers, row, **kw):
            self.finish_filters()
            os.kill(os.getpid(), signal.SIGKILL)
        writer.ModelWriter.commit = crash
    """,
    # kill while the model's row (the commit) is being written
    "during-commit": """
        from pipeline.dataset import store
        from pipeline.atomic_write import temp_sibling
        original = store.DatasetStore.write_table
        def crash(self, table, path, **kw):
            if "/models/" in path:
                target = temp_sibling(path)
                import pyarrow.parquet as pq
                pq.write_table(table.slice(0, 0), target, filesystem=self.fs)
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, table, path, **kw)
        store.DatasetStore.write_table = crash
    """,
}


def run_crashing_extract(point: str, checkpoint: Path, root: Path) -> int:
    script = "import os, signal, sys\n" + textwrap.dedent(CRASH_POINTS[point]) + textwrap.dedent(f"""
        from pipeline.cli.main import main
        sys.exit(main(["extract", {str(checkpoint)!r}, "--out", {str(root)!r}, "--arch", {ARCH!r},
                       "--model-id", "victim", "--dataset", "cifar10", "--force"]))
    """)
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True).returncode


@pytest.mark.parametrize("point", list(CRASH_POINTS))
@pytest.mark.parametrize("previous_version", [False, True], ids=["new-model", "re-extraction"])
def test_sigkill_mid_write_leaves_dataset_readable_and_rerun_completes_once(
        dataset_with_good_model: Path, tmp_path: Path, cli, point: str, previous_version: bool) -> None:  # noqa: ANN001
    root = dataset_with_good_model
    checkpoint = tiny_checkpoint(tmp_path / "victim.pt", seed=3)
    if previous_version:
        assert cli("extract", checkpoint, "--out", root, "--arch", ARCH, "--model-id", "victim",
                   "--dataset", "cifar10").code == 0
    assert run_crashing_extract(point, checkpoint, root) == -signal.SIGKILL
    # readable; the victim is absent (or still at its previous, complete version); nothing else changed
    assert counts(root, "victim") == ((1, 4, N_FILTERS) if previous_version else (0, 0, 0))
    assert counts(root, "good") == (1, 4, N_FILTERS)
    info = cli("info", root, "--json")
    assert info.code == 0
    assert json.loads(info.out)["orphan_files"] >= 1  # the killed write's files exist but are not visible
    # rerun completes the model exactly once; a vacuum then removes the leftovers
    rerun = cli("extract", checkpoint, "--out", root, "--arch", ARCH, "--model-id", "victim", "--dataset", "cifar10",
                "--force")
    assert rerun.code == 0, rerun.err
    assert counts(root, "victim") == (1, 4, N_FILTERS)
    assert cli("vacuum", root, "--older-than", "0s").code == 0
    assert json.loads(cli("info", root, "--json").out)["orphan_files"] == 0
    assert not [p for p in all_files(root) if p.endswith(".tmp") and "victim" in p]
    assert counts(root, "victim") == (1, 4, N_FILTERS) and counts(root, "good") == (1, 4, N_FILTERS)


def test_vacuum_removes_only_unreferenced_files_past_the_retention(dataset_with_good_model: Path) -> None:
    root = dataset_with_good_model
    store = DatasetStore(str(root))
    writer = ModelWriter(store, "ghost", "cifar10")
    from pipeline.extract.filter_rows import filter_batch

    writer.add_filters(filter_batch("ghost", "cifar10", slugify("ghost"), 0, torch.randn(2, 2, 3, 3),
                                    torch.zeros(4, dtype=torch.bool)))
    writer.finish_filters()  # written but never committed: a writer still running, or one that crashed
    committed = set(store.committed_files("filters"))
    assert store.vacuum() == []  # younger than the retention: a running writer's files are safe
    ghost = root / "filters" / "cifar10" / "ghost"
    old = time.time() - 2 * 24 * 3600
    for path in ghost.iterdir():
        os.utime(path, (old, old))
    removed = store.vacuum()
    assert removed and all("/cifar10/ghost/" in p for p in removed)
    assert set(store.committed_files("filters")) == committed
    assert not ghost.exists()


def test_a_commit_whose_files_were_vacuumed_is_refused(dataset_with_good_model: Path) -> None:
    from pipeline.errors import StoreError
    from pipeline.extract.filter_rows import filter_batch

    store = DatasetStore(str(dataset_with_good_model))
    writer = ModelWriter(store, "late", "cifar10")
    writer.add_filters(filter_batch("late", "cifar10", slugify("late"), 0, torch.randn(2, 2, 3, 3),
                                    torch.zeros(4, dtype=torch.bool)))
    writer.finish_filters()
    store.vacuum(older_than_s=0)  # an operator's vacuum with no retention, while the writer runs
    layers = store.models().slice(0, 0)  # any table: the commit fails before it matters
    with pytest.raises(StoreError, match="disappeared before its commit"):
        writer.commit(layers, {"checkpoint_sha256": "0" * 64})
    assert store.stored_model("late") is None


def test_a_row_with_missing_files_leaves_out_only_that_model(dataset_with_good_model: Path, tmp_path: Path,
                                                              cli) -> None:  # noqa: ANN001
    root = dataset_with_good_model
    checkpoint = tiny_checkpoint(tmp_path / "other.pt", seed=4)
    assert cli("extract", checkpoint, "--out", root, "--arch", ARCH, "--model-id", "other",
               "--dataset", "cifar10").code == 0
    for path in (root / "filters" / "cifar10" / "other").iterdir():
        path.unlink()  # a broken copy: the row stays, its filters are gone
    query = cli("sql", root, "SELECT model_id, (SELECT count(*) FROM filters) AS n FROM models", "--format", "csv")
    assert query.code == 0, query.err
    assert query.out.splitlines()[1:] == [f'"good",{N_FILTERS}']
    assert "other" in query.err and "missing files" in query.err


def test_slugs_are_safe_and_injective() -> None:
    keys = ["robustbench/cifar10/Linf/Carmon2019Unlabeled", "robustbench--cifar10--Linf--Carmon2019Unlabeled",
            "a b/c?d", "a_b/c_d", "../escape", ".hidden", "x" * 300]
    slugs = [slugify(k) for k in keys]
    assert slugs[0] == "robustbench--cifar10--Linf--Carmon2019Unlabeled"
    assert len(set(slugs)) == len(slugs)
    for slug in slugs:
        assert "/" not in slug and not slug.startswith((".", "_", "-")) and len(slug) <= 160


# --- info and sql ---------------------------------------------------------------------------------
def test_info_reports_counts_bytes_and_failures(dataset_with_good_model: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    root = dataset_with_good_model
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 64)
    cli("extract", bad, "--out", root, "--model-id", "bad")
    result = cli("info", root, "--json")
    summary = json.loads(result.out)
    assert (summary["models"], summary["layers"], summary["filters"]) == (1, 4, N_FILTERS)
    assert summary["bytes"]["filters"] == sum(p.stat().st_size for p in root.joinpath("filters").rglob("*.parquet"))
    assert [f["model_id"] for f in summary["failures"]] == ["bad"]
    assert summary["failures"][0]["error_class"] == "NotACheckpointError"
    text = cli("info", root)
    assert "models    1 (0 robust)" in text.out and "bad: [load] NotACheckpointError" in text.out


def test_info_on_a_missing_dataset_is_a_clear_error(tmp_path: Path, cli) -> None:  # noqa: ANN001
    result = cli("info", tmp_path / "nothing")
    assert result.code == 4 and "no filter dataset here" in result.err


def test_sql_formats(dataset_with_good_model: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    root = dataset_with_good_model
    query = "SELECT conv_index, layer_name, n_filters FROM layers ORDER BY conv_index"
    table = cli("sql", root, query)
    assert table.code == 0
    assert table.out.splitlines()[2].split() == ["0", "conv1", "24"] and "(4 rows)" in table.out
    csv = cli("sql", root, query, "--format", "csv")
    assert csv.out.splitlines()[:2] == ['"conv_index","layer_name","n_filters"', '0,"conv1",24']
    lines = cli("sql", root, query, "--format", "json").out.splitlines()
    assert json.loads(lines[1]) == {"conv_index": 1, "layer_name": "depthwise", "n_filters": 8}
    out = tmp_path / "r.parquet"
    assert cli("sql", root, query, "--format", "parquet", "--output", out).code == 0
    assert pq.read_table(out).column("n_filters").to_pylist() == [24, 8, 128, 128]
    assert cli("sql", root, query, "--format", "parquet").code == 2


@pytest.mark.parametrize("statement", ["DELETE FROM models", "CREATE TABLE t AS SELECT 1",
                                       "COPY models TO '/tmp/x.csv'", "SELECT 1; SELECT 2"])
def test_sql_is_read_only(dataset_with_good_model: Path, cli, statement: str) -> None:  # noqa: ANN001
    result = cli("sql", dataset_with_good_model, statement)
    assert result.code == 5 and "filterlens: error:" in result.err


def test_sql_error_is_one_line(dataset_with_good_model: Path, cli) -> None:  # noqa: ANN001
    result = cli("sql", dataset_with_good_model, "SELECT nope FROM layers")
    assert result.code == 5 and result.err.count("\n") == 1 and "query failed" in result.err


def test_views_and_polars_agree_on_an_empty_and_a_full_dataset(dataset_with_good_model: Path, tmp_path: Path) -> None:
    DatasetStore(str(tmp_path / "empty")).update_manifest()
    with open_dataset(str(tmp_path / "empty")) as ds:
        assert ds.con.execute("SELECT count(*) FROM filters").fetchone() == (0,)
        assert ds.filters.collect().height == 0
        assert ds.filters.collect_schema().names() == ds.sql("SELECT * FROM filters").columns
    with open_dataset(str(dataset_with_good_model)) as ds:
        assert ds.filters.collect().height == N_FILTERS
        assert ds.layers.collect()["layer_name"].to_list() == ["conv1", "depthwise", "conv3", "skip"]


def test_help_teaches(cli) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_info:
        cli("extract", "--help")
    assert exit_info.value.code == 0


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("filterlens ")


def test_a_root_with_only_a_failure_is_queryable(tmp_path: Path, cli) -> None:  # noqa: ANN001
    bad = tmp_path / "secret.pt"
    bad.write_bytes(b"api-key-0123456789")
    root = tmp_path / "new"
    assert cli("extract", bad, "--out", root, "--model-id", "m").code == 3
    result = cli("sql", root, "SELECT model_id, error_class FROM failures", "--format", "csv")
    assert result.code == 0, result.err
    assert result.out.splitlines() == ['"model_id","error_class"', '"m","NotACheckpointError"']
    message = cli("sql", root, "SELECT message FROM failures", "--format", "json").out
    assert "api-key" not in message and "not a checkpoint" in message


def test_new_metadata_for_the_same_bytes_updates_the_row_without_re_extracting(
        dataset_with_good_model: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    root = dataset_with_good_model
    store = DatasetStore(str(root))
    before = store.stored_model("good")
    data_files = sorted(p for p in all_files(root) if "/layers/" in p or "/filters/" in p)
    result = cli("extract", tmp_path / "good.pt", "--out", root, "--arch", ARCH, "--model-id", "good",
                 "--dataset", "cifar10", "--clean-acc", "91.5", "--architecture", "TinyNet-v2")
    assert result.code == 0, result.err
    assert result.out.strip().endswith("updated architecture, clean_acc")
    row = store.models().to_pylist()[[r["model_id"] for r in store.models().to_pylist()].index("good")]
    assert (row["clean_acc"], row["architecture"], row["write_id"]) == (91.5, "TinyNet-v2", before.write_id)
    assert sorted(p for p in all_files(root) if "/layers/" in p or "/filters/" in p) == data_files
    assert store.build_records()[-1]["updated"] == ["architecture", "clean_acc"]
    same = cli("extract", tmp_path / "good.pt", "--out", root, "--arch", ARCH, "--model-id", "good",
               "--dataset", "cifar10", "--clean-acc", "91.5")
    assert "use --force to redo" in same.out  # nothing new: a plain skip
    moved = cli("extract", tmp_path / "good.pt", "--out", root, "--arch", ARCH, "--model-id", "good",
                "--dataset", "cifar100")
    assert moved.code == 0 and "3x3 filters" in moved.out  # another training dataset: extracted again
    assert store.stored_model("good").dataset == "cifar100" and store.stored_model("good").write_id != before.write_id
