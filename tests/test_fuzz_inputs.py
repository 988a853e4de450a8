"""Malformed inputs end in one line and the documented exit code, never a traceback (seeded fuzzing).

Checkpoints in every container (PyTorch zip, legacy pickle, safetensors, ONNX) are
truncated, bit-flipped and overwritten at random offsets; zoo files get a value of
the wrong YAML type in every field. Exit 2 is bad input (config), 3 a model that
cannot be extracted; 0 is allowed where a mutation happens to leave the tensors intact.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import torch
import yaml
from zoo_fixtures import tiny_net

MUTATIONS_PER_FORMAT = 15


def seed_files(tmp_path: Path) -> dict[str, bytes]:
    torch.manual_seed(0)
    state = tiny_net().state_dict()
    files = {}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files["zip.pt"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    files["legacy.pt"] = buffer.getvalue()
    from safetensors.torch import save

    files["m.safetensors"] = save({k: v.contiguous() for k, v in state.items()})
    onnx_path = tmp_path / "seed.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(tiny_net().eval(), torch.zeros(1, 3, 32, 32), str(onnx_path), dynamo=False)
    files["m.onnx"] = onnx_path.read_bytes()
    return files


def mutate(data: bytes, rng: random.Random, k: int) -> bytes:
    out = bytearray(data)
    if k % 3 == 0:
        return bytes(out[:rng.randrange(1, len(out))])
    if k % 3 == 1:
        for _ in range(8):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    start = rng.randrange(len(out))
    out[start:start + 64] = bytes(rng.randrange(256) for _ in range(64))
    return bytes(out)


def one_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("filterlens: error:")


def test_mutated_checkpoints_exit_2_or_3_with_one_line(tmp_path: Path, cli) -> None:  # noqa: ANN001
    rng = random.Random(1234)
    outcomes = {}
    for name, data in seed_files(tmp_path).items():
        for k in range(MUTATIONS_PER_FORMAT):
            path = tmp_path / f"{k}-{name}"
            path.write_bytes(mutate(data, rng, k))
            result = cli("-q", "extract", path, "--out", tmp_path / "ds", "--model-id", f"fuzz/{k}-{name}")
            assert result.code in (0, 2, 3), (path.name, result.code, result.err)
            assert result.code == 0 or one_line(result.err), (path.name, result.err)
            outcomes[(name, k)] = result.code
    assert sum(code == 3 for code in outcomes.values()) >= len(outcomes) // 2  # most mutations are caught


BAD_VALUES = {
    "id": [["a", "b"], {"x": 1}, True], "source": [12, {"a": 1}, [], [1, 2]], "sha256": [12345, "abc", "z" * 64],
    "arch": [5, ["timm:resnet18"], "nonsense spec"], "dataset": [[1], {"a": 1}],
    "threat_model": ["linf", 3], "robust": ["yes", 1], "input_shape": ["32x32", [3, 32, 32]],
    "architecture": [[1, 2]], "clean_acc": ["high", [1]], "robust_acc": ["x"], "eps": ["8/0", "a/b", [8]],
    "extra_data": ["yes", 2], "paper": [[1]], "venue": [{"a": 1}], "metadata": ["text", [1, 2]],
}


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_zoo_fields_of_the_wrong_type_exit_2_with_one_line(key: str, tmp_path: Path, cli) -> None:  # noqa: ANN001
    for value in BAD_VALUES[key]:
        entry = {"id": "lab/m", "source": "m.pt", "dataset": "cifar10", key: value}
        zoo = tmp_path / "zoo.yaml"
        zoo.write_text(yaml.safe_dump({"models": [entry]}))
        for argv in (("zoo", "list", zoo), ("build", zoo, "--out", tmp_path / "ds", "--dry-run")):
            result = cli(*argv)
            assert result.code == 2 and one_line(result.err), (key, value, result.code, result.err)
            assert "lab/m" in result.err or key == "id", (key, value, result.err)


@pytest.mark.parametrize("text", ["defaults: 5\nmodels: []\n", "models: {a: 1}\n", "- just a list\n",
                                  "models: [\n", "\udcff".encode("utf-8", "surrogateescape").decode("latin-1")])
def test_malformed_zoo_documents_exit_2_with_one_line(text: str, tmp_path: Path, cli) -> None:  # noqa: ANN001
    zoo = tmp_path / "zoo.yaml"
    zoo.write_bytes(text.encode("latin-1") if text.startswith("\xed") else text.encode())
    result = cli("zoo", "list", zoo)
    assert result.code == 2 and one_line(result.err), (text, result.err)
