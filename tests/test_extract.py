"""Extraction of real RobustBench architectures (random weights, the zoo's real wrappers) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import save, zoo_model

from pipeline.dataset.query import open_dataset
from pipeline.dataset.schema import arrow_schema
from pipeline.dataset.store import DatasetStore
from pipeline.extract.extractor import extract_model
from pipeline.zoo.spec import ModelRequest

WRN = "robustbench:cifar10:Linf:Carmon2019Unlabeled"          # WideResNet-28-10 (TRADES code, unused sub_block1)
PREACT = "robustbench:cifar10:Linf:Andriushchenko2020Understanding"  # PreAct-ResNet-18
IMAGENET = "robustbench:imagenet:Linf:Salman2020Do_R18"       # torchvision ResNet-18 behind a normaliser


def wrn_expected_order() -> list[str]:
    """From the architecture's code: in each block conv1, conv2, then the 1x1 shortcut (if any)."""
    names = ["conv1"]
    for group in (1, 2, 3):
        for i in range(4):
            names += [f"block{group}.layer.{i}.conv1", f"block{group}.layer.{i}.conv2"]
            if i == 0:
                names.append(f"block{group}.layer.{i}.convShortcut")
    return names


def preact_expected_order() -> list[str]:
    """PreActBlock.forward runs the shortcut *before* conv1 (unlike the definition order)."""
    names = ["conv1"]
    for layer in (1, 2, 3, 4):
        for i in range(2):
            if layer > 1 and i == 0:
                names.append(f"layer{layer}.{i}.shortcut.0")
            names += [f"layer{layer}.{i}.conv1", f"layer{layer}.{i}.conv2"]
    return names


def resnet18_expected_order() -> list[str]:
    names = ["model.conv1"]
    for layer in (1, 2, 3, 4):
        for i in range(2):
            names += [f"model.layer{layer}.{i}.conv1", f"model.layer{layer}.{i}.conv2"]
            if layer > 1 and i == 0:
                names.append(f"model.layer{layer}.{i}.downsample.0")
    return names


CASES = {
    # spec: (model_id, dataset, how the zoo wraps the file, expected order)
    WRN: ("robustbench/cifar10/Linf/Carmon2019Unlabeled", "cifar10",
          lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}}, wrn_expected_order),
    PREACT: ("robustbench/cifar10/Linf/Andriushchenko2020Understanding", "cifar10",
             lambda sd: {"last": sd, "best": sd}, preact_expected_order),
    IMAGENET: ("robustbench/imagenet/Linf/Salman2020Do_R18", "imagenet",
               # the zoo's file holds the bare torchvision keys; robustbench adds "model." itself
               lambda sd: {k.removeprefix("model."): v for k, v in sd.items()
                           if not k.startswith("normalize.")}, resnet18_expected_order),
}


@pytest.fixture(scope="module")
def zoo_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("zoo")
    store = DatasetStore(str(root / "dataset"))
    results = {}
    for spec, (model_id, dataset, wrap, _) in CASES.items():
        model = zoo_model(spec)
        path = save(wrap(model.state_dict()), root / f"{model_id.rsplit('/', 1)[1]}.pt")
        request = ModelRequest(model_id, checkpoints=[str(path)], arch=spec, dataset=dataset, threat_model="Linf", robust=True,
                               architecture=spec.rsplit(":", 1)[1], clean_acc=80.0, robust_acc=50.0, eps=8 / 255)
        results[spec] = extract_model(request, store, device="cpu", progress=False)
    return root / "dataset", results


def executed_convs(spec: str) -> dict[str, torch.nn.Conv2d]:
    modules = dict(zoo_model(spec).named_modules())
    return {name: modules[name] for name in CASES[spec][3]()}


@pytest.mark.parametrize("spec", list(CASES))
def test_layers_in_execution_order_with_exact_counts(zoo_dataset: tuple[Path, dict], spec: str) -> None:
    root, _ = zoo_dataset
    model_id = CASES[spec][0]
    expected = CASES[spec][3]()
    with open_dataset(str(root)) as ds:
        rows = ds.sql(f"SELECT * FROM layers WHERE model_id = '{model_id}' ORDER BY conv_index").to_arrow_table().to_pylist()
        n_filters_stored = ds.sql(f"SELECT count(*) FROM filters WHERE model_id = '{model_id}'").fetchall()[0][0]
    assert [r["layer_name"] for r in rows] == expected
    convs = executed_convs(spec)
    n = len(expected)
    for index, row in enumerate(rows):
        conv = convs[row["layer_name"]]
        assert row["conv_index"] == index
        assert row["conv_depth_norm"] == pytest.approx(index / (n - 1))
        assert (row["out_channels"], row["in_channels"], row["groups"]) == (conv.out_channels, conv.in_channels, 1)
        assert (row["kernel_h"], row["kernel_w"]) == conv.kernel_size
        assert row["n_filters"] == conv.out_channels * conv.in_channels
        is3x3 = conv.kernel_size == (3, 3)
        for col in ("sparsity", "variance_entropy", "variance_entropy_raw", "orthogonality", "n_sparse",
                    "n_nonsparse", "pca_sum", "pca_scatter", "entropy_degenerate"):
            assert (row[col] is not None) == is3x3, (row["layer_name"], col)
        assert row["weight_abs_max"] == pytest.approx(conv.weight.detach().abs().max().item())
    expected_filters = sum(c.out_channels * c.in_channels for c in convs.values() if c.kernel_size == (3, 3))
    assert n_filters_stored == expected_filters


@pytest.mark.parametrize("spec", list(CASES))
def test_sampled_filters_are_bit_exact(zoo_dataset: tuple[Path, dict], spec: str) -> None:
    root, _ = zoo_dataset
    model_id = CASES[spec][0]
    order = CASES[spec][3]()
    convs = executed_convs(spec)
    rng = np.random.default_rng(0)
    with open_dataset(str(root)) as ds:
        for index, name in enumerate(order):
            weight = convs[name].weight.detach()
            if tuple(weight.shape[2:]) != (3, 3):
                continue
            o, i = int(rng.integers(weight.shape[0])), int(rng.integers(weight.shape[1]))
            row = ds.sql(f"SELECT * FROM filters WHERE model_id = '{model_id}' AND conv_index = {index} "
                         f"AND out_channel = {o} AND in_channel = {i}").to_arrow_table().to_pylist()
            assert len(row) == 1
            stored = np.array([row[0][f"w{k}"] for k in range(9)], dtype=np.float32)
            assert np.array_equal(stored, weight[o, i].reshape(-1).numpy()), (name, o, i)


def test_model_rows_are_complete(zoo_dataset: tuple[Path, dict]) -> None:
    root, results = zoo_dataset
    models = {r["model_id"]: r for r in DatasetStore(str(root)).models().to_pylist()}
    assert len(models) == 3
    for spec, (model_id, dataset, _, order) in CASES.items():
        row = models[model_id]
        model = zoo_model(spec)
        assert row["dataset"] == dataset and row["threat_model"] == "Linf" and row["robust"] is True
        assert row["arch_spec"] == spec and row["depth_source"] == "forward"
        assert row["n_conv_layers"] == len(order())
        assert row["n_params"] == sum(p.numel() for p in model.parameters())
        assert row["n_filters"] == results[spec].n_filters
        assert row["checkpoint_sha256"] == results[spec].checkpoint_sha256
        assert row["eps"] == pytest.approx(8 / 255) and row["clean_acc"] == 80.0
        assert row["input_shape"] == ("1x3x224x224" if dataset == "imagenet" else "1x3x32x32")
    wrn = models[CASES[WRN][0]]
    # the TRADES WideResNet defines sub_block1 but never runs it: its parameters are unused
    assert wrn["n_params_unused"] == sum(p.numel() for p in zoo_model(WRN).sub_block1.parameters())
    assert models[CASES[PREACT][0]]["n_params_unused"] == 0
    binding = json.loads(models[CASES[IMAGENET][0]]["metadata_json"])["binding"]
    assert binding["alignments"] == ["model: add 'model.'"]
    assert set(binding["missing_buffers"]) == {"normalize.mean", "normalize.std"}
    assert json.loads(models[CASES[PREACT][0]]["metadata_json"])["unwrap_paths"] == ["last"]


def test_written_parquet_matches_schemas_exactly(zoo_dataset: tuple[Path, dict]) -> None:
    root, _ = zoo_dataset
    files = list(root.rglob("*.parquet"))
    assert files
    for path in files:
        table = path.relative_to(root).parts[0]
        schema = pq.read_schema(path)
        expected = arrow_schema(table)
        assert [(f.name, f.type, f.nullable) for f in schema] == [(f.name, f.type, f.nullable) for f in expected]


def test_partition_values_are_real_columns(zoo_dataset: tuple[Path, dict]) -> None:
    root, _ = zoo_dataset
    for path in root.joinpath("filters").rglob("*.parquet"):
        dataset_dir, model_dir = path.parent.parent.name, path.parent.name
        table = pq.read_table(path, columns=["dataset", "model"])
        assert set(table["dataset"].to_pylist()) == {dataset_dir.removeprefix("dataset=")}
        assert set(table["model"].to_pylist()) == {model_dir.removeprefix("model=")}


def test_state_dict_order_without_architecture_keeps_every_conv(tmp_path: Path) -> None:
    model = zoo_model(WRN)
    path = save({"state_dict": model.state_dict()}, tmp_path / "wrn.pt")
    store = DatasetStore(str(tmp_path / "ds"))
    result = extract_model(ModelRequest("wrn-bare", checkpoints=[str(path)], dataset="cifar10"), store, device="cpu",
                           progress=False)
    row = store.models().to_pylist()[0]
    assert row["depth_source"] == "state_dict" and row["n_params_unused"] is None and row["arch_spec"] is None
    n_convs_in_state_dict = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert result.n_conv_layers == n_convs_in_state_dict == 37  # 28 that run + 9 of sub_block1


def test_custom_factory_depthwise_unused_and_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    from zoo_fixtures import tiny_net

    model = tiny_net()
    path = save(model.state_dict(), tmp_path / "tiny.pt")
    store = DatasetStore(str(tmp_path / "ds"))
    extract_model(ModelRequest("tiny", checkpoints=[str(path)], arch="zoo_fixtures:tiny_net", dataset="cifar10"), store,
                  device="cpu", progress=False)
    with open_dataset(str(tmp_path / "ds")) as ds:
        layers = ds.sql("SELECT layer_name, groups, in_channels, n_filters FROM layers ORDER BY conv_index").fetchall()
        (unused,) = ds.sql("SELECT n_params_unused FROM models").fetchall()[0]
    assert layers == [("conv1", 1, 3, 24), ("depthwise", 8, 8, 8), ("conv3", 1, 8, 128), ("skip", 1, 8, 128)]
    assert unused == model.unused.weight.numel() + model.unused.bias.numel()


def test_ensemble_of_two_files_binds_each_member(tmp_path: Path) -> None:
    from zoo_fixtures import tiny_ensemble

    torch.manual_seed(1)
    ensemble = tiny_ensemble()
    paths = [save(m.state_dict(), tmp_path / f"m{i}.pt") for i, m in enumerate(ensemble.models)]
    store = DatasetStore(str(tmp_path / "ds"))
    extract_model(ModelRequest("ens", checkpoints=[str(p) for p in paths], arch="zoo_fixtures:tiny_ensemble", dataset="cifar10"),
                  store, device="cpu", progress=False)
    with open_dataset(str(tmp_path / "ds")) as ds:
        names = [r[0] for r in ds.sql("SELECT layer_name FROM layers ORDER BY member, conv_index").fetchall()]
        members, = ds.sql("SELECT n_ensemble_members FROM models").fetchall()[0]
        w = ds.sql("SELECT w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM filters WHERE member = 1 AND conv_index = 0 "
                   "AND out_channel = 2 AND in_channel = 1").fetchall()[0]
    assert members == 2
    assert names == [f"models.{i}.{n}" for i in range(2) for n in ("conv1", "depthwise", "conv3", "skip")]
    assert np.array_equal(np.array(w, dtype=np.float32), ensemble.models[1].conv1.weight[2, 1].detach().reshape(-1).numpy())


def test_torchvision_spec_infers_classes_from_the_checkpoint(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    path = save(model.state_dict(), tmp_path / "r18.pt")
    store = DatasetStore(str(tmp_path / "ds"))
    result = extract_model(ModelRequest("tv", checkpoints=[str(path)], arch="torchvision:resnet18", dataset="cifar10"),
                           store, device="cpu", progress=False)
    assert result.n_conv_layers == 20
    assert store.models().to_pylist()[0]["input_shape"] == "1x3x32x32"


def test_a_model_without_3x3_convs_is_extracted_with_no_filters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = save({"stem.weight": torch.randn(8, 3, 7, 7), "proj.weight": torch.randn(16, 8, 1, 1),
                 "fc.weight": torch.randn(10, 16)}, tmp_path / "vit-like.pt")
    store = DatasetStore(str(tmp_path / "ds"))
    result = extract_model(ModelRequest("no3x3", checkpoints=[str(path)], dataset="cifar10"), store, device="cpu",
                           progress=False)
    assert (result.n_conv_layers, result.n_filters) == (2, 0)
    row = store.models().to_pylist()[0]
    assert (row["n_conv_layers"], row["n_conv3x3_layers"], row["n_filters"], row["n_filter_files"]) == (2, 0, 0, 0)
    with open_dataset(str(tmp_path / "ds")) as ds:
        layers = ds.sql("SELECT layer_name, kernel_h, n_filters, sparsity FROM layers ORDER BY conv_index").fetchall()
        (n_rows,) = ds.sql("SELECT count(*) FROM filters").fetchall()[0]
    assert layers == [("stem", 7, 24, None), ("proj", 1, 128, None)] and n_rows == 0


class WithTransposed(torch.nn.Module):
    """An encoder conv and a decoder ConvTranspose2d with a 3x3 kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.deconv1 = torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.up = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 4, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.deconv1(self.enc(x)))


def with_transposed() -> torch.nn.Module:
    return WithTransposed()


def test_transposed_convs_warn_once_without_an_architecture(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    path = save(with_transposed().state_dict(), tmp_path / "ae.pt")
    store = DatasetStore(str(tmp_path / "ds"))
    with caplog.at_level("WARNING", logger="pipeline.extract.extractor"):
        bare = extract_model(ModelRequest("ae", checkpoints=[str(path)], dataset="cifar10"), store, device="cpu",
                             progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["ae: 2 4-D weights look like transposed/up-sampling convs (deconv1, up.0); without --arch "
                        "their shapes cannot tell them from Conv2d, so they are kept as ordinary convs; pass --arch "
                        "to keep only nn.Conv2d"]
    assert bare.n_conv_layers == 3  # the shapes (c_in, c_out/groups, 3, 3) pass for ordinary convs
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline.extract.extractor"):
        bound = extract_model(ModelRequest("ae-arch", checkpoints=[str(path)], arch="test_extract:with_transposed",
                                           dataset="cifar10"), store, device="cpu", progress=False)
    assert bound.n_conv_layers == 1 and not caplog.records  # with the architecture only nn.Conv2d counts


def test_a_timm_served_entry_binds_from_its_release_layout(tmp_path: Path) -> None:
    from test_catalog_bind import timm_release_file

    spec = "robustbench:cifar10:Linf:Debenedetti2022Light_XCiT-S12"
    model = zoo_model(spec)
    stored = timm_release_file(model)  # the official XCiT keys under "model", as timm's filter expects them
    assert "pos_embeder.token_projection.weight" in stored["model"]
    path = save(stored, tmp_path / "debenedetti2022light-xcit-s-cifar10-linf.pth.tar")
    store = DatasetStore(str(tmp_path / "ds"))
    result = extract_model(ModelRequest("xcit", checkpoints=[str(path)], arch=spec, dataset="cifar10"), store,
                           device="cpu", progress=False)
    binding = json.loads(store.models().to_pylist()[0]["metadata_json"])["binding"]
    assert binding["alignments"] == ["model: remapped by timm.models.xcit.checkpoint_filter_fn, add 'model.'"]
    assert binding["missing_buffers"] == ["normalize.mean", "normalize.std"]
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert result.n_conv_layers == len(convs) == 29  # 4 stem, the 1x1 positional projection, 2 per block
    with open_dataset(str(tmp_path / "ds")) as ds:
        first, = ds.sql("SELECT layer_name FROM layers WHERE conv_index = 0").fetchall()[0]
        w = ds.sql("SELECT w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM filters WHERE conv_index = 0 "
                   "AND out_channel = 5 AND in_channel = 2").fetchall()[0]
    assert first == "model.patch_embed.proj.0.0"
    expected = model.model.patch_embed.proj[0][0].weight[5, 2].detach().reshape(-1).numpy()
    assert np.array_equal(np.array(w, dtype=np.float32), expected)


def test_the_cpu_layer_loop_leaves_a_core_to_the_writer_and_restores_torch_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from pipeline.extract import extractor, threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert threads.layer_loop_threads(torch.device("cpu")) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert threads.layer_loop_threads(torch.device("cpu")) == 1
    assert threads.layer_loop_threads(torch.device("meta")) is None  # not a CPU: no change

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads.torch_threads(5):  # never raised above what the process has
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), threads.torch_threads(1):
            raise RuntimeError("a failed layer")
        assert torch.get_num_threads() == 2  # restored after a failure too

        seen = []
        real = extractor._write_layers

        def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            seen.append(torch.get_num_threads())
            return real(*args, **kwargs)

        monkeypatch.setattr(extractor, "_write_layers", spy)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        save({"conv.weight": torch.randn(8, 3, 3, 3)}, tmp_path / "m.pt")
        extract_model(ModelRequest("t/threads", checkpoints=[str(tmp_path / "m.pt")], dataset="cifar10"),
                      DatasetStore(str(tmp_path / "ds")), device="cpu", progress=False)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
