"""Shared fixtures: small generated checkpoints, an in-process CLI runner, offline settings."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pipeline.architectures import instantiate, parse_arch_spec
from pipeline.cli import main


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
