"""Many writers and readers on one dataset root, with SIGKILLs at random moments, on local disk and on S3 (moto).

Real processes (tests/stress_worker.py): three writers — one rebuilding a zoo with
`build --force`, two re-extracting (`extract --force`) — on overlapping models, adding
build records; two readers open snapshots, hold them while the
writers commit, and check that each is consistent. The parent kills and restarts
writers at random. Afterwards: no reader ever failed, every model is there exactly
once with all its files, no build record is lost, and vacuum leaves exactly the
committed files.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import s3_bucket_root, save
from zoo_fixtures import tiny_net

from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore
from pipeline.extract.extractor import extract_model
from pipeline.zoo.spec import ModelRequest

TESTS_DIR = Path(__file__).resolve().parent
MODELS = [f"stress/m{i}" for i in range(4)]
N_FILTERS = 3 * 8 + 8 + 8 * 16  # tiny_net's 3x3 filters
WORKER = str(TESTS_DIR / "stress_worker.py")


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(f"{log}.err", "a"))  # noqa: SIM115 - the child owns it


def extract_all(root: str, checkpoint: Path, force: bool) -> None:
    store = DatasetStore(root)
    for model_id in MODELS:
        extract_model(ModelRequest(model_id, checkpoints=[str(checkpoint)], arch="zoo_fixtures:tiny_net",
                                   dataset="cifar10"), store, device="cpu", force=force, progress=False)


def commits(logs: list[Path]) -> int:
    return sum(line.startswith("model") for log in logs if log.exists() for line in log.read_text().splitlines())


def run_stress(root: str, tmp_path: Path, seconds: float, seed: int, min_kills: int = 3, min_commits: int = 8,
               max_seconds: float = 150) -> dict:
    """Writers and readers for at least ``seconds`` (longer on a loaded machine, until ``min_kills`` SIGKILLs
    and ``min_commits`` commits, at most ``max_seconds``) with random SIGKILLs of writers; returns the logs."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    checkpoint = save({"state_dict": tiny_net().state_dict()}, tmp_path / "tiny.pt")
    extract_all(root, checkpoint, force=False)  # readers start on a complete dataset
    writer_logs = [tmp_path / f"writer{i}.log" for i in range(3)]
    reader_logs = [tmp_path / f"reader{i}.log" for i in range(2)]
    kinds = ["build", "write", "write"]  # one `filterlens build --force` loop, two `extract --force` loops
    writers = [start([kinds[i], root, str(log), str(checkpoint), str(100 + i), *MODELS], log)
               for i, log in enumerate(writer_logs)]
    readers = [start(["read", root, str(log), str(200 + i)], log) for i, log in enumerate(reader_logs)]
    kills = 0
    seen = [0] * len(writers)  # log lines of each writer when it was last (re)started
    started = time.monotonic()

    def more() -> bool:
        elapsed = time.monotonic() - started
        return elapsed < seconds or (elapsed < max_seconds and (kills < min_kills or
                                                                commits(writer_logs) < min_commits))

    try:
        while more():
            time.sleep(rng.uniform(0.3, 1.5))
            i = rng.randrange(len(writers))
            lines = len(writer_logs[i].read_text().splitlines()) if writer_logs[i].exists() else 0
            if lines == seen[i]:
                continue  # kill only a writer that committed since it started, so that the run makes progress
            writers[i].send_signal(signal.SIGKILL)  # at a random moment of its next write
            writers[i].wait()
            kills += 1
            seen[i] = lines
            writers[i] = start([kinds[i], root, str(writer_logs[i]), str(checkpoint), str(300 + kills), *MODELS],
                               writer_logs[i])
        readers_alive = [r.poll() is None for r in readers]
    finally:
        for process in writers + readers:
            process.kill()
            process.wait()
    read = [line for log in reader_logs if log.exists() for line in log.read_text().splitlines()]
    written = [line for log in writer_logs if log.exists() for line in log.read_text().splitlines()]
    return {"kills": kills, "readers_alive": readers_alive, "reads": read, "written": written,
            "checkpoint": checkpoint}


def check_outcome(root: str, outcome: dict) -> None:
    failures = [line for line in outcome["reads"] if line.startswith("FAIL")]
    assert failures == [] and all(outcome["readers_alive"]), failures[:3]
    assert sum(line.startswith("ok") for line in outcome["reads"]) >= 4  # the readers did read
    commits = [line for line in outcome["written"] if line.startswith("model")]
    assert len(commits) >= 6 and outcome["kills"] >= 3  # writers committed, and were killed, repeatedly
    extract_all(root, outcome["checkpoint"], force=False)  # a rerun after the crashes completes what is missing
    store = DatasetStore(root)
    stored = store.stored_models()
    assert sorted(stored) == MODELS and store.incomplete_models(stored.values()) == []
    with open_dataset(root) as ds:
        rows = ds.fetch_arrow("SELECT model_id, count(*) AS n FROM filters GROUP BY 1 ORDER BY 1").to_pylist()
        assert rows == [{"model_id": m, "n": N_FILTERS} for m in MODELS]
        assert ds.fetch_arrow("SELECT count(*) AS n FROM models").to_pylist() == [{"n": len(MODELS)}]
    recorded = {f"{r['writer']}-{r['step']}" for r in store.build_records() if r.get("command") == "stress"}
    logged = {line.split()[1] for line in outcome["written"] if line.startswith("record")}
    assert logged <= recorded  # no build record lost
    assert store.read_manifest()["dataset_version"] == len(store.build_records())
    store.vacuum(older_than_s=0)
    committed = {p for t in ("layers", "filters") for p in store.committed_files(t)}
    assert store.data_files("layers") | store.data_files("filters") == committed
    with open_dataset(root) as ds:
        assert ds.fetch_arrow("SELECT count(*) AS n FROM filters").to_pylist() == [{"n": N_FILTERS * len(MODELS)}]


@pytest.mark.slow
def test_concurrent_writers_and_readers_on_local_disk(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    check_outcome(root, run_stress(root, tmp_path, seconds=18, seed=1))


@pytest.mark.slow
def test_concurrent_writers_and_readers_on_s3(tmp_path: Path, moto_s3: str) -> None:
    root = s3_bucket_root(moto_s3, "stress", "filters")
    check_outcome(root, run_stress(root, tmp_path, seconds=24, seed=2))
