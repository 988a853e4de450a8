"""Shared fixtures: small generated checkpoints, an in-process CLI runner, offline settings."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("FILTERLENS_TRUSTED_MODULES", "zoo_fixtures")  # the test zoos' own architectures
if "FILTERLENS_CACHE" not in os.environ:  # trace-cache entries and downloads of a run stay out of ~/.cache
    import tempfile as _tempfile

    os.environ["FILTERLENS_CACHE"] = _tempfile.mkdtemp(prefix="filterlens-test-cache-")

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch

from pipeline.checkpoints.arch_spec import parse_arch_spec
from pipeline.checkpoints.architectures import instantiate
from pipeline.cli.main import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., CliResult]:
    """Run ``filterlens ARGS`` in-process and capture exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


TESTS_DIR = Path(__file__).parent


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A private local Ray instance (never someone else's cluster); workers can import the test fixtures."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # for the local S3 server's tests
        os.environ.setdefault(key, value)
    os.environ["FILTERLENS_TEST_DIE_ONCE"] = os.path.join(temp_dir, "died-once")  # read by zoo_fixtures.SuicidalNet
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
             logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


_MODELS: dict[tuple[str, int], torch.nn.Module] = {}


def zoo_model(spec: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised model for an arch spec (cached per session; do not mutate)."""
    key = (spec, seed)
    if key not in _MODELS:
        torch.manual_seed(seed)
        _MODELS[key] = instantiate(parse_arch_spec(spec)).eval()
    return _MODELS[key]


def save(obj: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """A local S3-compatible server (moto on 127.0.0.1) for the session; yields its ``host:port``."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


def s3_bucket_root(endpoint: str, bucket: str, prefix: str) -> str:
    """Create ``bucket`` on the moto server and return a dataset root URI inside it."""
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1"
