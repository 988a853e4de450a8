"""Whole-zoo builds through a local HTTP mirror: good models land, each bad one gets its failures row."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from checkpoint_server import CheckpointServer
from zoo_fixtures import tiny_ensemble, tiny_net

from pipeline.build.zoo_build import build_zoo
from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore
from pipeline.fetch.download import mirror_path

TESTS_DIR = Path(__file__).parent
ORIGIN = "https://models.example.org/zoo"
N_FILTERS = 3 * 8 + 8 + 8 * 16  # tiny_net's 3x3 filters that run


def checkpoint_bytes(model: torch.nn.Module, wrap: str | None = "state_dict") -> bytes:
    buffer = io.BytesIO()
    state = model.state_dict()
    torch.save({wrap: state} if wrap else state, buffer)
    return buffer.getvalue()


def tiny_bytes(seed: int) -> bytes:
    torch.manual_seed(seed)
    return checkpoint_bytes(tiny_net())


def padded_bytes(seed: int) -> bytes:
    """A tiny_net checkpoint padded to ~2 MB (optimizer state), so a cut transfer has delivered data."""
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save({"state_dict": tiny_net().state_dict(), "optimizer": {"buf": torch.zeros(500_000)}}, buffer)
    return buffer.getvalue()


GOOD = ["good-0", "good-1", "good-2", "good-gdrive", "flaky", "ensemble", "local"]
BAD = {  # model -> (stage, error class)
    "bad-404": ("download", "SourceNotFoundError"),
    "bad-truncated": ("download", "DownloadError"),
    "bad-slow": ("download", "DownloadError"),
    "bad-sha": ("download", "ChecksumMismatchError"),
    "bad-corrupt": ("load", "NotACheckpointError"),
    "bad-html": ("download", "RefusedDownloadError"),
}


def make_zoo(root: Path, server: CheckpointServer) -> Path:
    """A zoo file whose remote sources are served by ``server`` under mirror paths."""
    models = []

    def serve(name: str, data: bytes, behaviour: str = "ok", uri: str | None = None, **kw: object) -> str:
        uri = uri or f"{ORIGIN}/{name}.pt"
        server.add("/" + mirror_path(uri), data, behaviour, **kw)
        return uri

    def entry(model: str, source: object, **extra: object) -> None:
        models.append({"id": f"test/{model}", "source": source, "arch": "zoo_fixtures:tiny_net",
                       "dataset": "cifar10", "threat_model": "Linf" if len(models) % 2 else "none", **extra})

    for i in range(3):
        entry(f"good-{i}", serve(f"good-{i}", tiny_bytes(i)), clean_acc=80 + i)
    entry("good-gdrive", serve("gd", tiny_bytes(10), uri="gdrive:1AbCdEfGh"))
    entry("flaky", serve("flaky", padded_bytes(11), "flaky"), sha256=hashlib.sha256(padded_bytes(11)).hexdigest())
    torch.manual_seed(12)
    members = tiny_ensemble().models
    entry("ensemble", [serve(f"ens-{i}", checkpoint_bytes(m, None)) for i, m in enumerate(members)],
          arch="zoo_fixtures:tiny_ensemble")
    (root / "local").mkdir(parents=True, exist_ok=True)
    (root / "local" / "mine.pt").write_bytes(tiny_bytes(13))
    entry("local", "local/mine.pt")
    entry("bad-404", f"{ORIGIN}/missing.pt")
    entry("bad-truncated", serve("trunc", tiny_bytes(14), "truncated"))
    entry("bad-slow", serve("slow", tiny_bytes(15), "slow", delay_s=3.0))
    entry("bad-sha", serve("sha", tiny_bytes(16)), sha256="0" * 64)
    entry("bad-corrupt", serve("corrupt", b"\x00\x01garbage" * 100))
    entry("bad-html", serve("html", b"", "html"))
    path = root / "zoo.yaml"
    path.write_text(yaml.safe_dump({"name": "test-zoo", "models": models}))
    return path


@pytest.fixture
def server() -> Iterator[CheckpointServer]:
    s = CheckpointServer()
    yield s
    s.close()


def build_options(tmp_path: Path, server: CheckpointServer) -> dict:
    return {"mirror": server.url + "/", "cache_dir": str(tmp_path / "cache"), "retries": 2, "timeout_s": 1.0,
            "progress": False}


def assert_build_outcome(out: Path, summary, server: CheckpointServer) -> None:  # noqa: ANN001
    assert summary.done == len(GOOD) and summary.failed == len(BAD) and summary.exit_code() == 3
    with open_dataset(str(out)) as ds:
        rows = ds.con.execute("SELECT model_id, n_filters FROM models ORDER BY 1").fetchall()
        per_model = dict(ds.con.execute("SELECT model_id, count(*) FROM filters GROUP BY 1").fetchall())
        failures = {r[0]: r[1:] for r in ds.con.execute(
            "SELECT model_id, stage, error_class, transient, attempts FROM failures").fetchall()}
    assert [r[0] for r in rows] == sorted(f"test/{m}" for m in GOOD)
    for model_id, n_filters in rows:
        expected = 2 * N_FILTERS if model_id == "test/ensemble" else N_FILTERS
        assert n_filters == expected and per_model[model_id] == expected
    assert {m.removeprefix("test/"): f[:2] for m, f in failures.items()} == BAD
    assert failures["test/bad-truncated"][2:] == (True, 2)   # transient, retried
    assert failures["test/bad-404"][2:] == (False, 1)        # deterministic, not retried
    # the flaky download was resumed with a Range request rather than restarted
    flaky = "/" + mirror_path(f"{ORIGIN}/flaky.pt")
    ranges = [r for p, r in server.requests if p == flaky]
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(padded_bytes(11)) // 2


def test_local_backend_builds_good_models_and_records_each_failure(tmp_path: Path, server: CheckpointServer) -> None:
    zoo = make_zoo(tmp_path, server)
    out = tmp_path / "ds"
    summary = build_zoo(str(zoo), str(out), backend="local", **build_options(tmp_path, server))
    assert_build_outcome(out, summary, server)
    # checkpoints are deleted after extraction; the user's local file is never touched
    assert not [p for p in (tmp_path / "cache").rglob("*.pt")]
    assert (tmp_path / "local" / "mine.pt").exists()
    # rerun: complete models are skipped without downloading anything again
    before = len(server.requests)
    again = build_zoo(str(zoo), str(out), backend="local", **build_options(tmp_path, server))
    assert again.done == 0 and again.skipped == len(GOOD) and again.failed == len(BAD)
    good_paths = {"/" + mirror_path(f"{ORIGIN}/good-{i}.pt") for i in range(3)}
    assert not [p for p, _ in server.requests[before:] if p in good_paths]


def test_ray_backend_same_outcome_and_cli_exit_codes(tmp_path: Path, server: CheckpointServer, ray_cluster: None,
                                                     cli) -> None:  # noqa: ANN001
    zoo = make_zoo(tmp_path, server)
    out = tmp_path / "ds"
    args = ["build", zoo, "--out", out, "--mirror", server.url + "/", "--cache-dir", tmp_path / "cache",
            "--retries", "2", "--timeout", "1", "--no-progress"]
    result = cli(*args)
    assert result.code == 3, result.err
    assert f"{len(GOOD)} models extracted, 0 skipped (already complete), {len(BAD)} failed" in result.out
    assert "FAILED test/bad-sha: [download] ChecksumMismatchError" in result.out
    actor_lines = re.findall(r"^  actor (\d+): (\d+) models, .* idle (\d+\.\d)s before its first model", result.out,
                             re.MULTILINE)
    assert actor_lines and sum(int(models) for _, models, _ in actor_lines) == len(GOOD), result.out
    summary = type("S", (), {"done": len(GOOD), "failed": len(BAD), "exit_code": lambda self: 3})()
    assert_build_outcome(out, summary, server)
    rerun = cli(*args, "--allow-failures")
    assert rerun.code == 0 and f"0 models extracted, {len(GOOD)} skipped" in rerun.out


def test_dry_run_lists_work_without_doing_it(tmp_path: Path, server: CheckpointServer, cli) -> None:  # noqa: ANN001
    zoo = make_zoo(tmp_path, server)
    result = cli("build", zoo, "--out", tmp_path / "ds", "--dry-run")
    assert result.code == 0 and f"{len(GOOD) + len(BAD)} to extract, 0 complete" in result.out
    assert not server.requests and not (tmp_path / "ds").exists()


def test_killed_actor_is_restarted_and_the_model_lands_once(tmp_path: Path, ray_cluster: None) -> None:
    marker = Path(os.environ["FILTERLENS_TEST_DIE_ONCE"])
    path = tmp_path / "victim.pt"
    path.write_bytes(tiny_bytes(20))
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": [
        {"id": "victim", "source": str(path), "arch": "zoo_fixtures:suicidal_net", "dataset": "cifar10"},
        {"id": "bystander", "source": str(path), "arch": "zoo_fixtures:tiny_net", "dataset": "cifar10"}]}))
    assert not marker.exists()
    summary = build_zoo(str(zoo), str(tmp_path / "ds"), cache_dir=str(tmp_path / "cache"), progress=False)
    assert marker.exists()  # the actor really was SIGKILLed once
    assert (summary.done, summary.failed) == (2, 0)
    with open_dataset(str(tmp_path / "ds")) as ds:
        assert ds.con.execute("SELECT model_id, count(*) FROM filters GROUP BY 1 ORDER BY 1").fetchall() == [
            ("bystander", N_FILTERS), ("victim", N_FILTERS)]


# --- resume after SIGKILL of the whole build --------------------------------------------------------
def _run_build_until(zoo: Path, out: Path, cache: Path, condition, timeout_s: float = 120,  # noqa: ANN001
                     backend: str = "ray") -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0", "FILTERLENS_TEST_MARKERS": str(zoo.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "build", str(zoo), "--out", str(out), "--cache-dir",
                             str(cache), "--no-progress", "--backend", backend] + (["--extractors", "1"] if backend == "ray" else []), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if condition():
                os.killpg(proc.pid, signal.SIGKILL)  # the driver, the Ray processes, the actor: everything
                proc.wait()
                return -9
            time.sleep(0.05)
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _committed(out: Path) -> int:
    return len(list((out / "models").glob("part-*.parquet")))


def _forward_passes(markers: Path) -> int:
    log = markers / "forward.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize(("kill_when", "rerun_backend"),
                         [("mid-extraction", "ray"), ("after-1", "local"), ("after-3", "local")])
def test_sigkill_mid_build_then_rerun_gives_every_model_exactly_once(tmp_path: Path, kill_when: str,
                                                                      rerun_backend: str) -> None:
    models = []
    for i in range(5):
        path = tmp_path / f"m{i}.pt"
        path.write_bytes(tiny_bytes(30 + i))
        models.append({"id": f"m{i}", "source": str(path), "arch": "zoo_fixtures:slow_tiny_net", "dataset": "cifar10"})
    models.append({"id": "broken", "source": str(tmp_path / "nope.pt"), "dataset": "cifar10"})
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": models}))
    out, cache = tmp_path / "ds", tmp_path / "cache"
    condition = {"mid-extraction": lambda: _committed(out) == 1 and _forward_passes(tmp_path) >= 2,
                 "after-1": lambda: _committed(out) >= 1,
                 "after-3": lambda: _committed(out) >= 3}[kill_when]
    assert _run_build_until(zoo, out, cache, condition) == -9
    killed_at = _committed(out)
    assert killed_at < 5
    # the interrupted dataset is readable and holds only whole models
    with open_dataset(str(out)) as ds:
        per_model = ds.con.execute("SELECT model_id, count(*) FROM filters GROUP BY 1").fetchall()
    assert all(n == N_FILTERS for _, n in per_model) and len(per_model) == killed_at
    assert _run_build_until(zoo, out, cache, lambda: False, backend=rerun_backend) == 3  # "broken" fails
    with open_dataset(str(out)) as ds:
        assert ds.con.execute("SELECT model_id, count(*) FROM models GROUP BY 1 ORDER BY 1").fetchall() == [
            (f"m{i}", 1) for i in range(5)]
        assert ds.con.execute("SELECT model_id, count(*) FROM filters GROUP BY 1 ORDER BY 1").fetchall() == [
            (f"m{i}", N_FILTERS) for i in range(5)]
        assert ds.con.execute("SELECT model_id, count(*) FROM layers GROUP BY 1 ORDER BY 1").fetchall() == [
            (f"m{i}", 4) for i in range(5)]
        assert ds.con.execute("SELECT model_id, stage FROM failures").fetchall() == [("broken", "download")]
    # and nothing is left over on disk: every file belongs to a committed model
    store = DatasetStore(str(out))
    committed = set(store.committed_files("layers")) | set(store.committed_files("filters"))
    on_disk = {str(p) for t in ("layers", "filters") for p in (out / t).rglob("*") if p.is_file()}
    assert on_disk == committed


def test_kept_checkpoints_stay_within_the_cache_budget(tmp_path: Path, server: CheckpointServer) -> None:
    models = []
    for i in range(3):
        uri = f"{ORIGIN}/keep-{i}.pt"
        server.add("/" + mirror_path(uri), padded_bytes(40 + i))
        models.append({"id": f"keep/m{i}", "source": uri, "dataset": "cifar10"})
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": models}))
    size = len(padded_bytes(40))
    budget_gb = 2.5 * size / 1e9  # room for two checkpoints
    summary = build_zoo(str(zoo), str(tmp_path / "ds"), backend="local", keep_checkpoints=True,
                        cache_max_gb=budget_gb, **build_options(tmp_path, server))
    assert summary.done == 3
    kept = sorted(p.parent.name for p in (tmp_path / "cache").rglob("*.pt"))
    assert kept == ["keep--m1", "keep--m2"]  # the oldest was evicted, the newest two kept
