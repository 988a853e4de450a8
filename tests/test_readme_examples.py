"""Every code block of README.md runs, so the examples cannot rot.

The blocks are read from README.md when the tests are collected (never copied here).
Each runs in a fresh working folder that holds what the examples name, so their paths
work as written:

* ``dataset/``: a copy of a small dataset (tiny random-weight CNNs of the demo's
  architectures, robust and normal, two seeds, extracted with ``architecture`` names so
  that ``stats`` pairs them), built once per session;
* ``model.pt``: a random-weight checkpoint of the architecture the extract example binds
  (RobustBench's Carmon2019Unlabeled, a WRN-28-10);
* ``my_pairings.csv``: a robust/normal pairing table of the dataset's models.

``bash`` blocks run with ``bash -euo pipefail`` and the virtualenv's ``bin/`` first on
``PATH`` (``filterlens`` is this checkout's); ``python`` blocks run in a fresh interpreter;
``sql`` blocks run in DuckDB; ``yaml`` blocks must parse. A block marked
``<!-- no-test: reason -->`` on the line before its opening fence is skipped (it needs the
network, a cluster, or minutes); untagged blocks are layout diagrams, not code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import torch
import yaml

from pipeline.dataset.store import DatasetStore
from pipeline.extract.extractor import extract_model
from pipeline.zoo.spec import ModelRequest

README = Path(__file__).resolve().parent.parent / "README.md"
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "sql": "sql", "yaml": "yaml"}
NO_TEST = re.compile(r"<!--\s*no-test:\s*(.*?)\s*-->")
EXTRACT_ARCH = "robustbench:cifar10:Linf:Carmon2019Unlabeled"
DEMO_ARCHS = ("small_vgg", "small_resnet")


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str
    skip_reason: str | None

    @property
    def id(self) -> str:
        first = next((x for x in self.code.splitlines() if x.strip()), "")
        return f"L{self.line}-{self.language}-{re.sub(r'[^A-Za-z0-9]+', '-', first)[:40].strip('-')}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text`` with their language and no-test marker (``line``: the opening fence)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = re.match(r"^```(\S*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NO_TEST.search(before)
        blocks.append(Block(i + 1, match.group(1).lower(), "\n".join(lines[i + 1:end]) + "\n",
                            marker.group(1) if marker else None))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())
CODE_BLOCKS = [b for b in BLOCKS if b.language]


def test_readme_blocks_are_runnable_or_say_why_not() -> None:
    assert all(b.language in RUNNABLE for b in CODE_BLOCKS), [b.id for b in CODE_BLOCKS if b.language not in RUNNABLE]
    assert all(b.skip_reason for b in BLOCKS if b.skip_reason is not None)  # a marker gives its reason
    markers = re.findall(r"^\s*<!--\s*no-test:.*-->\s*$", README.read_text(), flags=re.M)
    assert len(markers) == sum(b.skip_reason is not None for b in BLOCKS)  # each is right before a block
    assert [b.language for b in BLOCKS if not b.language] and all(b.skip_reason is None for b in BLOCKS
                                                                  if not b.language)
    run = [b for b in CODE_BLOCKS if b.skip_reason is None]
    assert {b.language for b in run} >= {"bash", "python", "yaml"} and len(run) >= 8


# --- the working folder ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def readme_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset: the demo's architectures with random weights, normal and robust (Linf), two seeds."""
    root = tmp_path_factory.mktemp("readme") / "dataset"
    work = tmp_path_factory.mktemp("readme-checkpoints")
    store = DatasetStore(str(root))
    for arch in DEMO_ARCHS:
        for kind in ("normal", "adv"):
            for seed in (0, 1):
                torch.manual_seed(seed + 10 * (kind == "adv"))
                from pipeline.train import demo_models

                path = work / f"{arch}-{kind}-s{seed}.pt"
                torch.save(getattr(demo_models, arch)().state_dict(), path)
                robust = kind == "adv"
                request = ModelRequest(
                    model_id=f"readme/cifar10/{'Linf' if robust else 'none'}/{arch}-{kind}-s{seed}",
                    checkpoints=[str(path)], arch=f"pipeline.train.demo_models:{arch}", dataset="cifar10",
                    threat_model="Linf" if robust else "none", robust=robust, architecture=arch,
                    clean_acc=70.0 + seed + (0 if robust else 5), robust_acc=(45.0 + seed) if robust else 0.0)
                extract_model(request, store, device="cpu", progress=False)
    store.update_manifest({"command": "test"})
    return root


@pytest.fixture(scope="session")
def extract_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights of the architecture the README's extract example binds, saved as RobustBench stores them."""
    from pipeline.checkpoints.arch_spec import parse_arch_spec
    from pipeline.checkpoints.architectures import instantiate

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("readme-model") / "model.pt"
    torch.save(instantiate(parse_arch_spec(EXTRACT_ARCH)).state_dict(), path)
    return path


@pytest.fixture
def workdir(readme_dataset: Path, extract_checkpoint: Path, tmp_path: Path) -> Path:
    shutil.copytree(readme_dataset, tmp_path / "dataset")
    os.symlink(extract_checkpoint, tmp_path / "model.pt")
    pairs = ["Robust,Normal"] + [f"readme/cifar10/Linf/{a}-adv-s{s},readme/cifar10/none/{a}-normal-s{s}"
                                 for a in DEMO_ARCHS for s in (0, 1)]
    (tmp_path / "my_pairings.csv").write_text("\n".join(pairs) + "\n")
    return tmp_path


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "MPLBACKEND": "Agg"}


@pytest.mark.slow
@pytest.mark.parametrize("block", CODE_BLOCKS, ids=[b.id for b in CODE_BLOCKS])
def test_readme_block_runs(block: Block, request: pytest.FixtureRequest) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"README no-test: {block.skip_reason}")
    if block.language == "yaml":
        assert isinstance(yaml.safe_load(block.code), dict)
        return
    workdir: Path = request.getfixturevalue("workdir")
    if block.language == "sql":
        request.getfixturevalue("monkeypatch").chdir(workdir)  # relative paths as in the README
        with duckdb.connect() as con:
            con.sql(block.code).fetchall()
        return
    command = ["bash", "-euo", "pipefail", "-c", block.code] if RUNNABLE[block.language] == "bash" else [
        sys.executable, "-c", block.code]
    done = subprocess.run(command, cwd=workdir, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, f"README line {block.line} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
