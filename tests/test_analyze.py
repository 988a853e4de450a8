"""``pipeline.analyze``: the layers rows of a module, state dict or checkpoint, equal to what ``extract`` writes.

Also the ``filterlens extract`` messages: the result once (stdout), and a usage error (exit 2)
when a torchvision architecture has no dataset to size the forward pass.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CliResult, save, zoo_model

import pipeline
from pipeline.dataset.schema import arrow_schema
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ConfigError
from pipeline.extract.analyze import layers_table

ARCH = "zoo_fixtures:tiny_net"
ENSEMBLE = "zoo_fixtures:tiny_ensemble"


def written_layers(root: Path, model_id: str) -> pa.Table:
    """The layers file ``extract`` committed for ``model_id`` (exactly as written; both sides on the CPU)."""
    store = DatasetStore(str(root))
    return pq.read_table(store.layer_file(store.stored_model(model_id)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(zoo_model(ARCH, 3).state_dict(), tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.mark.parametrize("arch", [ARCH, None], ids=["forward", "state-dict"])
def test_analyze_a_path_gives_the_numbers_extract_writes(checkpoint: Path, tmp_path: Path, arch: str | None,
                                                         cli: Callable[..., CliResult]) -> None:
    args = ["--arch", arch] if arch else []
    result = cli("extract", checkpoint, "--out", tmp_path / "ds", "--model-id", "lab/tiny", "--dataset", "cifar10",
                 "--threat-model", "Linf", "--device", "cpu", *args)
    assert result.code == 0, result.err
    written = written_layers(tmp_path / "ds", "lab/tiny")
    table = layers_table(checkpoint, arch, "cifar10", model_id="lab/tiny", threat_model="Linf", device="cpu")
    assert table.schema == arrow_schema("layers") and table.equals(written)  # every column, every value
    frame = pipeline.analyze(str(checkpoint), arch, "cifar10", model_id="lab/tiny", threat_model="Linf",
                             device="cpu")
    pd.testing.assert_frame_equal(frame, written.to_pandas())
    assert list(frame.columns) == arrow_schema("layers").names
    assert frame["member_robust"].tolist() == [True] * len(frame)


def test_analyze_a_state_dict_and_a_module_match_the_checkpoint(checkpoint: Path) -> None:
    model = zoo_model(ARCH, 3)
    from_file = layers_table(checkpoint, ARCH, "cifar10", model_id="m", device="cpu")
    from_state = layers_table({"state_dict": model.state_dict()}, ARCH, "cifar10", model_id="m", device="cpu")
    assert from_state.equals(from_file)
    model.train()
    from_module = pipeline.analyze(model, dataset="cifar10", model_id="m", device="cpu")
    assert model.training  # its mode is restored
    pd.testing.assert_frame_equal(from_module, from_file.to_pandas())
    assert from_module["layer_name"].tolist() == ["conv1", "depthwise", "conv3", "skip"]  # forward order
    bare = pipeline.analyze(model.state_dict(), model_id="m", device="cpu")  # no arch: state-dict order
    assert bare["layer_name"].tolist() == ["conv1", "depthwise", "skip", "conv3", "unused"]
    assert bare["dataset"].tolist() == ["unknown"] * 5 and not bare["member_robust"].any()


def test_analyze_an_ensemble_counts_depth_per_member(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    members = [m.state_dict() for m in zoo_model(ENSEMBLE, 1).models]
    path = save(members, tmp_path / "ens.pt")  # a one-file ensemble: a list of state dicts
    assert cli("extract", path, "--out", tmp_path / "ds", "--arch", ENSEMBLE, "--model-id", "ens",
               "--dataset", "cifar10", "--device", "cpu").code == 0
    written = written_layers(tmp_path / "ds", "ens").to_pandas()
    pd.testing.assert_frame_equal(pipeline.analyze(path, ENSEMBLE, "cifar10", model_id="ens", device="cpu"), written)
    frame = pipeline.analyze(members, ENSEMBLE, "cifar10", model_id="ens", device="cpu")  # in memory
    pd.testing.assert_frame_equal(frame, written)
    assert sorted(set(frame["member"])) == [0, 1] and frame.groupby("member")["conv_index"].min().tolist() == [0, 0]


def test_analyze_writes_nothing_and_explains_missing_input_sizes(checkpoint: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pipeline.analyze(checkpoint, ARCH, "cifar10", device="cpu")
    pipeline.analyze(zoo_model(ARCH, 3), input_shape=(3, 16, 16), device="cpu")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="input_shape"):
        pipeline.analyze(zoo_model(ARCH, 3), device="cpu")  # dataset unknown: no image size
    with pytest.raises(ConfigError, match="a module is traced as it is"):
        pipeline.analyze(zoo_model(ARCH, 3), ARCH, "cifar10")


def test_importing_pipeline_imports_neither_torch_nor_pandas() -> None:
    code = "import sys, pipeline; print(sorted(m for m in ('torch', 'pandas', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- filterlens extract: messages and exit codes ---------------------------------------------------
def test_extract_prints_its_result_once(checkpoint: Path, tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    result = cli("extract", checkpoint, "--out", tmp_path / "ds", "--arch", ARCH, "--model-id", "once",
                 "--dataset", "cifar10")
    assert result.code == 0
    assert result.out.count("once: 4 conv layers, 160 3x3 filters") == 1
    assert "conv layers" not in result.err
    again = cli("extract", checkpoint, "--out", tmp_path / "ds", "--arch", ARCH, "--model-id", "once",
                "--dataset", "cifar10")
    assert again.code == 0 and again.out.count("already in") == 1 and "already complete" not in again.err


def test_extract_torchvision_without_a_dataset_is_a_usage_error(checkpoint: Path, tmp_path: Path,
                                                                cli: Callable[..., CliResult]) -> None:
    result = cli("extract", checkpoint, "--out", tmp_path / "ds", "--arch", "torchvision:resnet18")
    assert result.code == 2
    assert "cannot tell the input size" in result.err and "--dataset" in result.err and "--input-shape" in result.err
    assert not (tmp_path / "ds").exists()  # nothing written, not even a failures row
