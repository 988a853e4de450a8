"""The probe stage end to end: build --probe and filterlens probe, reruns, bad data, SIGKILL, Ray, S3."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from zoo_fixtures import tiny_bytes

from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore

TESTS_DIR = Path(__file__).parent
PROBE_ROWS = 6  # 3 perturbations x 2 stages


def make_zoo(root: Path, n: int = 3, extra: dict | None = None) -> Path:
    """``n`` TinyNet models (different seeds) and one entry without an architecture."""
    models = []
    for i in range(n):
        path = root / f"m{i}.pt"
        path.write_bytes(tiny_bytes(100 + i))
        models.append({"id": f"t/m{i}", "source": str(path), "arch": "zoo_fixtures:tiny_net", "dataset": "cifar10",
                       "threat_model": "Linf" if i % 2 else "none", **(extra or {}).get(f"t/m{i}", {})})
    models.append({"id": "t/noarch", "source": str(root / "m0.pt"), "dataset": "cifar10"})
    zoo = root / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": models}))
    return zoo


def probe_rows(root: Path) -> list[dict]:
    with open_dataset(str(root)) as ds:
        return ds.con.sql("SELECT * FROM probes ORDER BY model_id, perturbation, stage").to_arrow_table().to_pylist()


def test_build_probe_commits_rows_with_each_model(tmp_path: Path, cli) -> None:  # noqa: ANN001
    zoo, out = make_zoo(tmp_path), tmp_path / "ds"
    result = cli("build", zoo, "--out", out, "--backend", "local", "--probe", "--probe-images", "24", "--no-progress")
    assert result.code == 3  # the model without an architecture cannot be probed: a failure, not silence
    assert "probed 3 models, 1 probes failed" in result.out
    rows = probe_rows(out)
    assert len(rows) == 3 * PROBE_ROWS
    assert {(r["perturbation"], r["stage"]) for r in rows} == {
        (k, s) for k in ("pgd", "random", "transfer") for s in ("conv", "conv_relu")}
    assert {r["reference_model"] for r in rows if r["perturbation"] == "transfer"} == {"t/m0"}
    assert {r["n_images"] for r in rows} == {24} and {r["layer_name"] for r in rows} == {"conv1"}
    transfer = {r["model_id"]: r["delta_rel_mean"] for r in rows if r["perturbation"] == "transfer"}
    own_pgd = {r["model_id"]: r["delta_rel_mean"] for r in rows if r["perturbation"] == "pgd"}
    assert len(set(transfer.values())) == 1  # every model saw the same perturbed inputs
    assert len(set(own_pgd.values())) == 3  # PGD against each model is its own
    with open_dataset(str(out)) as ds:
        failures = ds.con.execute("SELECT model_id, stage, error_class FROM failures").fetchall()
        committed = ds.con.execute("SELECT count(*) FROM models WHERE probe_write_id IS NOT NULL").fetchone()[0]
    assert failures == [("t/noarch", "probe", "ProbeUnavailableError")] and committed == 3
    assert len(list((out / "_probes").glob("transfer-*.npz"))) == 1
    # a rerun with the same settings does nothing at all
    files = sorted(p.name for p in out.rglob("*.parquet"))
    again = cli("build", zoo, "--out", out, "--backend", "local", "--probe", "--probe-images", "24", "--no-progress")
    assert "0 models extracted, 4 skipped" in again.out and sorted(p.name for p in out.rglob("*.parquet")) == files


def test_probe_command_replaces_one_models_rows_only(tmp_path: Path, cli) -> None:  # noqa: ANN001
    zoo, out = make_zoo(tmp_path), tmp_path / "ds"
    assert cli("build", zoo, "--out", out, "--backend", "local", "--no-progress").code == 0
    assert probe_rows(out) == []
    first = cli("probe", zoo, "--out", out, "--probe", "random", "--probe-images", "16", "--no-progress")
    assert first.code == 3 and "FAILED t/noarch" in first.out  # no architecture
    before = {r["model_id"]: r for r in probe_rows(out)}
    assert sorted(before) == ["t/m0", "t/m1", "t/m2"]
    second = cli("probe", zoo, "--out", out, "--probe", "random", "--probe-images", "8", "--models", "t/m1",
                 "--no-progress")
    assert second.code == 0
    after = probe_rows(out)
    assert len(after) == 3 * 2
    by_model = {r["model_id"]: r for r in after}
    assert by_model["t/m1"]["n_images"] == 8 and by_model["t/m0"]["n_images"] == 16
    assert by_model["t/m0"]["probed_at"] == before["t/m0"]["probed_at"]  # untouched
    with open_dataset(str(out)) as ds:  # the layers and filters of the model are unchanged by a probe
        assert ds.con.execute("SELECT count(*) FROM filters WHERE model_id = 't/m1'").fetchone()[0] == 160


def test_missing_probe_data_is_a_usage_error_before_anything_runs(tmp_path: Path, cli) -> None:  # noqa: ANN001
    zoo, out = make_zoo(tmp_path), tmp_path / "ds"
    result = cli("build", zoo, "--out", out, "--backend", "local", "--probe", "--probe-data",
                 f"cifar10:{tmp_path / 'nowhere'}", "--no-progress")
    assert result.code == 2 and "no folder" in result.err and str(tmp_path / "nowhere") in result.err
    assert not out.exists()


def write_cifar(root: Path, n: int = 20) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [i % 10 for i in range(n)]}))


def test_wrong_image_size_fails_that_model_only_and_keeps_its_extraction(tmp_path: Path, cli) -> None:  # noqa: ANN001
    write_cifar(tmp_path / "cifar")
    zoo = make_zoo(tmp_path, extra={"t/m2": {"input_shape": "3x64x64"}})
    out = tmp_path / "ds"
    result = cli("build", zoo, "--out", out, "--backend", "local", "--probe", "random,pgd", "--probe-data",
                 f"cifar10:{tmp_path / 'cifar'}", "--probe-images", "10", "--no-progress")
    assert result.code == 3
    rows = probe_rows(out)
    assert sorted({r["model_id"] for r in rows}) == ["t/m0", "t/m1"] and {r["probe_data"] for r in rows} == {"cifar10"}
    with open_dataset(str(out)) as ds:
        failures = dict(ds.con.execute("SELECT model_id, message FROM failures").fetchall())
        models = ds.con.execute("SELECT model_id, probe_write_id IS NULL FROM models ORDER BY 1").fetchall()
    assert "32x32 but the model takes 3x64x64" in failures["t/m2"]
    assert models == [("t/m0", False), ("t/m1", False), ("t/m2", True), ("t/noarch", True)]
    assert not (out / "probes" / "cifar10" / "t--m2").exists() or not any((out / "probes").rglob("*m2*/*.parquet"))


def test_probe_rows_survive_sigkill_and_a_rerun(tmp_path: Path) -> None:
    zoo, out = make_zoo(tmp_path, n=4), tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "pipeline", "-q"]
    subprocess.run([*base, "build", str(zoo), "--out", str(out), "--backend", "local", "--no-progress"], env=env,
                   check=True)
    command = [*base, "probe", str(zoo), "--out", str(out), "--probe-images", "1024", "--probe-batch", "64",
               "--no-progress"]
    rng = random.Random(7)
    for _ in range(3):
        process = subprocess.Popen(command, env=env)
        time.sleep(rng.uniform(2.0, 5.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        with open_dataset(str(out)) as ds:  # a reader always sees whole probes: 0 or 6 rows per model
            counts = ds.con.execute("SELECT model_id, count(*) FROM probes GROUP BY 1").fetchall()
        assert all(n == PROBE_ROWS for _, n in counts)
    finished = subprocess.run(command, env=env)
    assert finished.returncode == 3  # t/noarch
    rows = probe_rows(out)
    assert len(rows) == 4 * PROBE_ROWS and len({r["probe_config"] for r in rows}) == 1
    store = DatasetStore(str(out))
    assert all(len(store.probe_files(m)) == 1 for m in store.complete_models().values() if m.model_id != "t/noarch")


def test_build_probe_on_ray_actors(tmp_path: Path, ray_cluster: None) -> None:
    from pipeline.build.zoo_build import build_zoo
    from pipeline.probe.config import ProbeConfig

    zoo, out = make_zoo(tmp_path, n=2), tmp_path / "ds"
    summary = build_zoo(str(zoo), str(out), cache_dir=str(tmp_path / "cache"), progress=False,
                        probe=ProbeConfig(n_images=16))
    assert (summary.done, summary.probed, summary.probe_failed) == (3, 2, 1)
    rows = probe_rows(out)
    assert len(rows) == 2 * PROBE_ROWS and {r["reference_model"] for r in rows} == {None, "t/m0"}


def test_probe_into_s3(tmp_path: Path, moto_s3: str) -> None:
    from conftest import s3_bucket_root

    from pipeline.build.zoo_build import build_zoo
    from pipeline.probe.config import ProbeConfig

    root = s3_bucket_root(moto_s3, "probes", "ds")
    zoo = make_zoo(tmp_path, n=2)
    summary = build_zoo(str(zoo), root, backend="local", cache_dir=str(tmp_path / "cache"), progress=False,
                        probe=ProbeConfig(n_images=8, kinds=("random", "transfer")))
    assert summary.probed == 2
    with open_dataset(root) as ds:
        assert ds.con.execute("SELECT count(*), count(DISTINCT model_id) FROM probes").fetchone() == (8, 2)


def test_vacuum_keeps_the_committed_probe_and_removes_replaced_ones(tmp_path: Path, cli) -> None:  # noqa: ANN001
    zoo, out = make_zoo(tmp_path, n=1), tmp_path / "ds"
    cli("build", zoo, "--out", out, "--backend", "local", "--probe", "random", "--probe-images", "8", "--no-progress")
    cli("probe", zoo, "--out", out, "--probe", "random", "--probe-images", "4", "--no-progress")  # replaces it
    assert len(list((out / "probes").rglob("*.parquet"))) == 2
    assert len(list((out / "_probes" / "examples").rglob("*.npz"))) == 2
    removed = DatasetStore(str(out)).vacuum(older_than_s=0)
    assert sum("/probes/" in p for p in removed) == 1 and sum("/_probes/examples/" in p for p in removed) == 1
    stored = DatasetStore(str(out)).stored_model("t/m0")
    assert [p.name for p in (out / "probes").rglob("*.parquet")] == [f"part-{stored.probe_write_id}.parquet"]
    assert [p.name for p in (out / "_probes" / "examples").rglob("*.npz")] == [f"{stored.probe_write_id}.npz"]
    assert {r["n_images"] for r in probe_rows(out)} == {4}


def test_probes_are_published_and_readable_with_datasets(tmp_path: Path, cli) -> None:  # noqa: ANN001
    import datasets as hf_datasets

    from pipeline.publish.stage import stage

    zoo, out = make_zoo(tmp_path, n=2), tmp_path / "ds"
    cli("build", zoo, "--out", out, "--backend", "local", "--probe", "random", "--probe-images", "8", "--no-progress")
    tree = stage(str(out), tmp_path / "staged", "org/filters")
    assert sum(p.startswith("probes/") for p in tree.files) == 2 and tree.rows["probes"] == 4
    card = (tmp_path / "staged" / "README.md").read_text()
    assert "config_name: probes" in card and "| `probes` | 4 |" in card
    for root in (tmp_path / "staged", out):  # a published copy and the local root
        table = hf_datasets.load_dataset(str(root), "probes", split="train")
        assert table.num_rows == 4 and set(table["perturbation"]) == {"random"}
    plain = tmp_path / "plain"
    cli("build", zoo, "--out", plain, "--backend", "local", "--no-progress")
    assert "config_name: probes" not in (plain / "README.md").read_text()
    stage(str(plain), tmp_path / "staged2", "org/plain")
    assert "config_name: probes" not in (tmp_path / "staged2" / "README.md").read_text()
