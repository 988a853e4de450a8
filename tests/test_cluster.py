"""A real local Ray head (ray start) running a build submitted with `ray job submit`; cluster.yaml validity."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from zoo_fixtures import tiny_net

from pipeline.dataset.query import open_dataset

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_job_agent(address: str, deadline: float) -> None:
    """The dashboard answers before its job agent is up; submit a no-op job until one is accepted."""
    from ray.job_submission import JobSubmissionClient

    while True:
        try:
            JobSubmissionClient(address).submit_job(entrypoint="true")
            return
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def ray_env() -> dict[str, str]:
    """Auth mode set explicitly (the first ray.init on a machine writes a token a head would then demand)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """`ray start --head --block` on 127.0.0.1 with its own temp dir and ports; stopped by its PID."""
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    dashboard = free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--temp-dir={temp_dir}", "--num-cpus=2",
           "--node-ip-address=127.0.0.1", f"--port={free_port()}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
           "--include-dashboard=true"]
    log = open(Path(temp_dir) / "head.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(cmd, env=ray_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
        assert head.poll() is None, (Path(temp_dir) / "head.log").read_text()[-3000:]
    else:
        head.terminate()
        pytest.fail("the Ray head did not come up in 120 s")
    wait_for_job_agent(address, deadline)
    yield address
    head.send_signal(signal.SIGTERM)  # only this head: never `ray stop`, which kills every Ray on the machine
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    log.close()
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submitted_to_a_real_head_builds_the_dataset(ray_head: str, tmp_path: Path) -> None:
    checkpoints = []
    for seed in range(2):
        torch.manual_seed(seed)
        path = tmp_path / f"m{seed}.pt"
        torch.save({"net": tiny_net().state_dict()}, path)
        checkpoints.append(path)
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": [
        {"id": f"job/m{i}", "source": str(p), "dataset": "cifar10", "threat_model": "Linf"}
        for i, p in enumerate(checkpoints)]}))
    out = tmp_path / "ds"
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", str(REPO), "--",
         "python", "jobs/build_dataset.py", str(zoo), "--out", str(out), "--no-progress",
         "--cache-dir", str(tmp_path / "cache")],
        env=ray_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 models extracted, 0 skipped (already complete), 0 failed" in result.stdout
    assert "succeeded" in result.stdout + result.stderr
    with open_dataset(str(out)) as ds:
        assert ds.con.execute("SELECT model_id, robust, n_conv_layers FROM models ORDER BY 1").fetchall() == [
            ("job/m0", True, 5), ("job/m1", True, 5)]
        # state-dict order without an architecture: every 4D weight, the never-run conv included
        assert ds.con.execute("SELECT count(*) FROM filters").fetchone() == (2 * (24 + 8 + 128 + 256),)
    status = subprocess.run([str(BIN / "ray"), "job", "list", "--address", ray_head], env=ray_env(),
                            capture_output=True, text=True, timeout=60)
    assert "SUCCEEDED" in status.stdout


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_own_validation() -> None:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    _validate(config)
    types = config["available_node_types"]
    assert types["gpu_worker"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert any("pip install" in c and "/home/ubuntu/filterlens" in c for c in config["setup_commands"])
    assert config["file_mounts"] == {"/home/ubuntu/filterlens": "."}


@pytest.mark.parametrize("break_it", [
    lambda c: c["available_node_types"]["gpu_worker"].__setitem__("min_workers", "zero"),
    lambda c: c.__setitem__("head_node_type", "no_such_type"),
    lambda c: c.__setitem__("max_workers", -1),
    lambda c: c.__setitem__("unknown_top_level_key", 1),
], ids=["wrong-type", "bad-head-type", "negative-workers", "unknown-key"])
def test_broken_cluster_yaml_is_rejected(break_it) -> None:  # noqa: ANN001
    import jsonschema

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    break_it(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _validate(config)


def test_build_with_an_http_address_submits_a_job(ray_head: str, tmp_path: Path, cli) -> None:  # noqa: ANN001
    torch.manual_seed(7)
    path = tmp_path / "m.pt"
    torch.save(tiny_net().state_dict(), path)
    zoo = tmp_path / "my-zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": [{"id": "remote/m", "source": str(path), "dataset": "cifar10"}]}))
    out = tmp_path / "ds"
    result = cli("build", zoo, "--out", out, "--address", ray_head, "--no-progress", "--cache-dir", tmp_path / "c")
    assert result.code == 0, result.out + result.err
    assert "submitted Ray job" in result.out and ": succeeded" in result.out
    assert "1 models extracted" in result.out  # the job's own summary, streamed back
    with open_dataset(str(out)) as ds:
        assert ds.con.execute("SELECT model_id FROM models").fetchall() == [("remote/m",)]
