"""Safe checkpoint loading: formats, zoo wrappers, ensembles, and every bad input."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file

from pipeline.checkpoints.load import (
    ConvWeight,
    checkpoint_members,
    conv_weight_keys,
    detect_format,
    load_checkpoint,
    state_dict_convs,
    suspected_transposed,
    unwrap_state_dict,
)
from pipeline.digest import sha256_of_files
from pipeline.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NoConvWeightsError,
    NotACheckpointError,
    UnsafeCheckpointError,
)


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {
        "conv1.weight": torch.randn(4, 3, 3, 3),
        "bn1.weight": torch.ones(4),
        "bn1.running_mean": torch.zeros(4),
        "layer.0.conv.weight": torch.randn(8, 4, 3, 3),
        "shortcut.weight": torch.randn(8, 4, 1, 1),
        "fc.weight": torch.randn(10, 8),
        "fc.bias": torch.zeros(10),
    }


def assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("wrapper", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 10, "optimizer": {"lr": 0.1}},
    lambda sd: {"model": sd},
    lambda sd: {"net": sd, "acc": 0.9},
    lambda sd: {"last": sd, "best": {k: v * 0 for k, v in sd.items()}},
    lambda sd: {"checkpoint": {"state_dict": sd}},
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
], ids=["plain", "state_dict", "model", "net", "last-over-best", "nested", "dataparallel"])
def test_zoo_wrappers_are_unwrapped(tmp_path: Path, wrapper) -> None:  # noqa: ANN001
    sd = small_state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save(wrapper(sd), path)
    loaded = load_checkpoint(path)
    assert loaded.format == "torch-zip"
    assert len(loaded.state_dicts) == 1
    assert_same_tensors(loaded.state_dicts[0], sd)
    assert loaded.sha256 == sha256_of_files([path])[0]
    assert loaded.n_bytes == path.stat().st_size


def test_legacy_pickle_format(tmp_path: Path) -> None:
    sd = small_state_dict()
    path = tmp_path / "legacy.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert detect_format(path) == "torch-legacy"
    assert_same_tensors(load_checkpoint(path).state_dicts[0], sd)


def test_safetensors_format(tmp_path: Path) -> None:
    sd = small_state_dict()
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    loaded = load_checkpoint(path)
    assert loaded.format == "safetensors"
    assert loaded.state_dicts[0].keys() == sd.keys()
    for k in sd:
        assert torch.equal(loaded.state_dicts[0][k], sd[k])


def test_ensemble_as_list_in_one_file_and_as_several_files(tmp_path: Path) -> None:
    a, b = small_state_dict(1), small_state_dict(2)
    torch.save([a, {"state_dict": b}], tmp_path / "ens.pt")
    one_file = load_checkpoint(tmp_path / "ens.pt")
    assert len(one_file.state_dicts) == 2
    assert_same_tensors(one_file.state_dicts[1], b)
    torch.save(a, tmp_path / "m0.pt")
    torch.save(b, tmp_path / "m1.pt")
    two_files = load_checkpoint([tmp_path / "m0.pt", tmp_path / "m1.pt"])
    assert len(two_files.state_dicts) == 2
    convs, _ = state_dict_convs(two_files.state_dicts)
    assert [c.name for c in convs] == ["members.0.conv1", "members.0.layer.0.conv", "members.0.shortcut",
                                       "members.1.conv1", "members.1.layer.0.conv", "members.1.shortcut"]
    # the digest of several files is the digest of their digests, in order
    import hashlib

    digests = [sha256_of_files([tmp_path / f])[0] for f in ("m0.pt", "m1.pt")]
    assert two_files.sha256 == hashlib.sha256("".join(digests).encode()).hexdigest()


def test_members_of_one_loaded_file_keep_their_raw_wrappers() -> None:
    a, b = small_state_dict(1), small_state_dict(2)
    policy = {"model": {"module." + k: v for k, v in a.items()}, "bn": {"running_mean": torch.zeros(1)}}
    members = checkpoint_members([{"state_dict": b}, policy], "ens.pt")
    assert [(where, list(sd)) for _, sd, where in members] == [("state_dict", list(b)), ("model", list(a))]
    assert members[1][0] is policy  # the raw member, for ensembles that bind several of its state dicts
    with pytest.raises(NoConvWeightsError, match=r"^ens\.pt: holds no state dict \(found dict with keys epoch\)"):
        checkpoint_members({"epoch": 3}, "ens.pt")


@pytest.mark.parametrize(("name", "suspect"), [
    ("decoder.deconv1", True), ("up.0", True), ("model.up1.conv", True), ("upsample.1", True),
    ("head.ConvTranspose", True), ("layer_up.conv", True), ("up_blocks.0.conv", True), ("dec.upconv2", True),
    ("group.conv", False), ("setup.conv", False), ("cup.1", False), ("features.0", False),
    ("block1.layer.0.conv1", False),
])
def test_names_that_suggest_transposed_convs(name: str, suspect: bool) -> None:
    assert suspected_transposed([ConvWeight(name, torch.zeros(1, 1, 3, 3))]) == ([name] if suspect else [])


def test_state_dict_conv_order_and_param_count() -> None:
    sd = small_state_dict()
    convs, n_params = state_dict_convs([sd])
    assert [c.name for c in convs] == ["conv1", "layer.0.conv", "shortcut"]
    assert n_params == sum(v.numel() for k, v in sd.items() if not k.endswith("running_mean"))
    assert conv_weight_keys({"x": torch.randn(2, 2, 3, 3)}) == ["x"]  # fallback: any 4D float tensor


def test_onnx_convs_in_graph_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)  # grouped: 4 in / 2 groups
    w3 = rng.standard_normal((5, 6, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Identity", ["w2_src"], ["w2"]),
        helper.make_node("Conv", ["b", "w2", "b2"], ["c"], name="grouped", group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "w3"], ["y"], name="pointwise"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2_src"),
                     numpy_helper.from_array(np.zeros(6, np.float32), "b2"), numpy_helper.from_array(w3, "w3")])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    loaded = load_checkpoint(path)
    assert loaded.format == "onnx"
    names = [c.name for c in loaded.onnx_convs]
    assert names == ["stem", "grouped", "pointwise"]
    grouped = loaded.onnx_convs[1]
    assert grouped.groups == 2 and grouped.stride == "2x2" and grouped.has_bias is True
    assert np.array_equal(grouped.weight.numpy(), w2)
    assert loaded.onnx_n_params == w1.size + w2.size + 6 + w3.size


# --- bad inputs ---------------------------------------------------------------------------------
class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204 - the attack: unpickling would create a file
        return (os.system, (f"touch {self.path}",))


def test_code_bearing_zip_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": small_state_dict(), "hook": _Payload(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_code_bearing_raw_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weights": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_whole_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Conv2d(3, 4, 3), path)
    with pytest.raises(UnsafeCheckpointError, match="state_dict"):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_zip_checkpoint(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "trunc.pt"
    torch.save(small_state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CorruptCheckpointError, match="truncated or damaged"):
        load_checkpoint(path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file(small_state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(path)


def test_empty_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="empty"):
        load_checkpoint(path)


@pytest.mark.parametrize(("content", "hint"), [
    (b"<!DOCTYPE html><html><body>Google Drive quota exceeded</body></html>", "HTML page"),
    (b"\x00\x11random bytes that are no checkpoint at all", "not a zip, pickle, safetensors or ONNX header"),
    (b"secret-token-1234 in a text file", "not a zip, pickle, safetensors or ONNX header"),
])
def test_not_a_checkpoint(tmp_path: Path, content: bytes, hint: str) -> None:
    path = tmp_path / "download.pt"
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError, match=hint) as caught:
        load_checkpoint(path)
    message = str(caught.value).split(f"{path}: ", 1)[1]
    assert content[:6].decode("latin-1") not in message  # the file's bytes are never quoted


def test_corrupt_onnx(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage-that-is-not-protobuf" * 3)
    with pytest.raises((CorruptCheckpointError, NotACheckpointError)):
        load_checkpoint(path)


def test_no_conv_weights(tmp_path: Path) -> None:
    path = tmp_path / "mlp.pt"
    torch.save({"fc1.weight": torch.randn(4, 4), "fc1.bias": torch.zeros(4)}, path)
    with pytest.raises(NoConvWeightsError, match="no 4D convolution weights"):
        load_checkpoint(path)


def test_no_state_dict_at_all(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, path)
    with pytest.raises(NoConvWeightsError, match="holds no state dict"):
        load_checkpoint(path)


def test_unwrap_reports_the_path_taken() -> None:
    sd = small_state_dict()
    assert unwrap_state_dict({"last": sd, "best": sd})[1] == "last"
    assert unwrap_state_dict({"ckpt": {"model_state_dict": sd}})[1] == "ckpt/model_state_dict"


def test_hashing_ahead_gives_the_same_digest_and_declines_what_it_cannot_hash(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.digest as digest_module

    files = []
    for i in range(2):
        files.append(tmp_path / f"m{i}.pt")
        files[-1].write_bytes(os.urandom(100_000 + i))
    wait = digest_module.sha256_of_files_soon(files)
    assert wait is not None and wait() == sha256_of_files(files) and wait()[1] == 200_001
    assert digest_module.sha256_of_files_soon([tmp_path / "absent.pt"]) is None
    assert digest_module.sha256_of_files_soon([tmp_path]) is None  # a folder: not a local file
    assert digest_module.sha256_of_files_soon([]) is None

    def unreadable(paths: object) -> tuple[str, int]:
        raise PermissionError("denied")

    monkeypatch.setattr(digest_module, "sha256_of_files", unreadable)
    wait = digest_module.sha256_of_files_soon(files)
    assert wait is not None and wait() is None  # the caller hashes again, where the error is recorded


def test_hash_behind_equals_hashing_in_order_whatever_the_chunking() -> None:
    import hashlib

    from pipeline.digest import HashBehind

    rng = np.random.default_rng(3)
    chunks = [rng.standard_normal(n).astype(np.float32) for n in (0, 1, 9, 4096, 100_003)]
    behind = HashBehind(b"header")
    for chunk in chunks:
        behind.update(memoryview(chunk).cast("B"))
    expected = hashlib.sha256(b"header" + b"".join(c.tobytes() for c in chunks)).hexdigest()
    assert behind.hexdigest() == expected
    assert behind.hexdigest() == expected  # asking twice changes nothing
    assert HashBehind().hexdigest() == hashlib.sha256(b"").hexdigest()
    reordered = HashBehind(b"header")
    for chunk in reversed(chunks):
        reordered.update(chunk.tobytes())
    assert reordered.hexdigest() != expected  # the order of the bytes is hashed, not their set

    failing = HashBehind()
    failing.update(np.arange(10, dtype=np.float32)[::2])  # not contiguous: hashlib refuses it, in the thread
    for _ in range(2):  # raised where the caller is, not lost in the thread, and again: never a digest without it
        with pytest.raises((BufferError, TypeError, ValueError)):
            failing.hexdigest()
    with pytest.raises((BufferError, TypeError, ValueError)):
        failing.update(b"more")
