"""The first-stage probe: hand-worked cases, seeds, a trained model, the transfer set (pipeline/probe/)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError, ProbeDataError
from pipeline.probe.config import ProbeConfig, parse_kinds
from pipeline.probe.data import check_fits, load_probe_images
from pipeline.probe.perturb import pgd, random_sign
from pipeline.probe.response import StageResponse, channel_change, relative_change
from pipeline.probe.run_one import probe_model
from pipeline.train.data import ImageData, synthetic_split


class StemNet(nn.Module):
    """A 3x3 first conv (given weights), then global pooling and a linear head."""

    def __init__(self, weight: torch.Tensor, num_classes: int = 10) -> None:
        super().__init__()
        c_out, c_in = weight.shape[:2]
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv.weight.data.copy_(weight)
        self.head = nn.Linear(c_out, num_classes)
        torch.manual_seed(0)
        nn.init.normal_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def identity_weight(channels: int = 3) -> torch.Tensor:
    weight = torch.zeros(channels, channels, 3, 3)
    for c in range(channels):
        weight[c, c, 1, 1] = 1.0
    return weight


def rows_by(table, kind: str, stage: str) -> dict:  # noqa: ANN001
    rows = [r for r in table.to_pylist() if r["perturbation"] == kind and r["stage"] == stage]
    assert len(rows) == 1
    return rows[0]


def run_probe(model: nn.Module, images: ImageData, **config: object):  # noqa: ANN201
    cfg = ProbeConfig(**{"kinds": ("pgd", "random"), "n_images": len(images), "batch_size": 16, **config})
    return probe_model(model, model.conv, "conv", images, cfg, torch.device("cpu"), "m", "synthetic")


@pytest.fixture(scope="module")
def images() -> ImageData:
    return synthetic_split("test", 40, seed=3, size=16)


def test_identity_first_conv_has_gain_one(images: ImageData) -> None:
    table = run_probe(StemNet(identity_weight()), images)
    for kind in ("pgd", "random"):
        for stage in ("conv", "conv_relu"):  # images are >= 0, so ReLU changes nothing either
            row = rows_by(table, kind, stage)
            assert row["gain_mean"] == pytest.approx(1.0, abs=1e-6)
            assert row["gain_median"] == pytest.approx(1.0, abs=1e-6)
            assert row["rel_change_mean"] == pytest.approx(row["delta_rel_mean"], rel=1e-6)
            assert row["n_undefined"] == 0 and row["n_gain_undefined"] == 0
            assert row["delta_linf"] <= 8 / 255 + 1e-7
            assert len(row["channel_rel_change"]) == 3


def test_box_filter_attenuates_random_signs_by_the_expected_factor() -> None:
    size = 64
    x = torch.full((32, 1, size, size), 0.5)  # constant grey: no clipping of +-eps
    box = StemNet(torch.full((1, 1, 3, 3), 1 / 9), num_classes=2)
    images = ImageData(x, torch.zeros(32, dtype=torch.int64), ("a", "b"))
    row = rows_by(run_probe(box, images, kinds=("random",)), "random", "conv")
    # zero padding: a pixel sees n_p in-bounds neighbours (9 inside, 6 on edges, 4 in corners);
    # E||B d||^2 = eps^2 sum n_p / 81 and ||B x||^2 = c^2 sum n_p^2 / 81, so the gain is sqrt(sum n_p / sum n_p^2).
    inner, edge, corner = (size - 2) ** 2, 4 * (size - 2), 4
    expected = math.sqrt((9 * inner + 6 * edge + 4 * corner) / (81 * inner + 36 * edge + 16 * corner))
    assert expected == pytest.approx(0.3357, abs=1e-4)
    assert row["gain_mean"] == pytest.approx(expected, abs=0.004)
    assert row["delta_rel_mean"] == pytest.approx((8 / 255) / 0.5, rel=1e-6)  # every pixel moved by exactly eps


def test_all_zero_first_conv_is_undefined_not_zero(images: ImageData) -> None:
    table = run_probe(StemNet(torch.zeros(4, 3, 3, 3)), images)
    for row in table.to_pylist():
        assert row["n_undefined"] == len(images) and row["n_gain_undefined"] == len(images)
        assert row["rel_change_mean"] is None and row["rel_change_q50"] is None and row["gain_mean"] is None
        assert row["channel_rel_change"] == [None] * 4


def test_relative_change_and_channels_by_hand() -> None:
    clean = torch.tensor([[[[3.0, 4.0]], [[0.0, 0.0]]]])  # one image, 2 channels of 1x2
    perturbed = torch.tensor([[[[3.0, 5.0]], [[1.0, 0.0]]]])
    change, defined = relative_change(clean, perturbed)
    assert change.tolist() == [pytest.approx(math.sqrt(2) / 5)] and defined.tolist() == [True]
    per_channel, channel_defined = channel_change(clean, perturbed)
    assert per_channel.tolist() == [[pytest.approx(0.2), 0.0]] and channel_defined.tolist() == [[True, False]]
    response = StageResponse()
    response.add(clean, perturbed - clean, clean, perturbed)
    assert response.summary()["channel_rel_change"] == [pytest.approx(0.2), None]


def test_perturbations_stay_in_the_box_and_are_seeded(images: ImageData) -> None:
    model = StemNet(identity_weight())
    x, y = images.images, images.labels
    a = pgd(model, x, y, 8 / 255, 3, 2 / 255, torch.Generator().manual_seed(5))
    b = pgd(model, x, y, 8 / 255, 3, 2 / 255, torch.Generator().manual_seed(5))
    c = pgd(model, x, y, 8 / 255, 3, 2 / 255, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) <= 8 / 255 + 1e-7
    assert float((x + a).min()) >= 0.0 and float((x + a).max()) <= 1.0
    signs = random_sign(torch.full((2, 3, 4, 4), 0.5), 0.1, torch.Generator().manual_seed(1))
    assert sorted({round(v, 6) for v in signs.flatten().tolist()}) == [-0.1, 0.1]


def test_probe_rows_are_reproducible_from_the_seed(images: ImageData) -> None:
    model = StemNet(torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(2)))
    numbers = ["rel_change_mean", "rel_change_q95", "gain_mean", "perturbed_acc", "delta_rel_mean"]

    def values(seed: int) -> list:
        table = run_probe(model, images, seed=seed)
        return [[r[k] for k in numbers] for r in table.to_pylist()]

    assert values(1) == values(1)
    assert values(1) != values(2)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, ImageData]:
    """A small conv net trained for a few seconds on the synthetic images (well above chance)."""
    torch.manual_seed(0)
    train = synthetic_split("train", 1024, seed=0, size=16)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(12):
        for start in range(0, 1024, 64):
            loss = nn.functional.cross_entropy(model(train.images[start:start + 64]), train.labels[start:start + 64])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval(), synthetic_split("test", 128, seed=0, size=16)


def test_pgd_lowers_the_accuracy_of_a_trained_model(trained: tuple[nn.Module, ImageData]) -> None:
    model, images = trained
    config = ProbeConfig(kinds=("pgd", "random"), n_images=len(images), batch_size=64)
    table = probe_model(model, model[0], "0", images, config, torch.device("cpu"), "trained", "synthetic")
    pgd_row, random_row = rows_by(table, "pgd", "conv"), rows_by(table, "random", "conv")
    assert pgd_row["clean_acc"] >= 40.0  # chance is 10%
    assert pgd_row["perturbed_acc"] <= pgd_row["clean_acc"] - 12.0  # measured: 49% clean, 29% under PGD
    assert random_row["perturbed_acc"] >= pgd_row["perturbed_acc"] + 10.0  # random signs barely hurt (48%)
    assert pgd_row["clean_acc"] == random_row["clean_acc"]


def test_config_validation_and_key() -> None:
    with pytest.raises(ConfigError, match="needs a folder"):
        ProbeConfig(data="cifar10")
    with pytest.raises(ConfigError, match="perturbations are"):
        ProbeConfig(kinds=("fgsm",))
    assert parse_kinds("all") == ("pgd", "random", "transfer")
    assert parse_kinds("random, pgd,random") == ("random", "pgd")
    assert ProbeConfig(batch_size=7).key() == ProbeConfig().key()  # the batch size changes no number
    assert ProbeConfig(eps=4 / 255).key() != ProbeConfig().key()
    assert ProbeConfig().step_size == pytest.approx(2.5 * (8 / 255) / 10)


def test_probe_data_errors(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ProbeDataError, match="no folder"):
        load_probe_images(ProbeConfig(data=f"cifar10:{tmp_path / 'missing'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbeDataError, match="no cifar10"):
        load_probe_images(ProbeConfig(data=f"cifar10:{tmp_path / 'empty'}"))
    with pytest.raises(ProbeDataError, match="no images"):
        load_probe_images(ProbeConfig(data=f"imagenet:{tmp_path / 'empty'}"))
    images = load_probe_images(ProbeConfig(n_images=4), image_size=16)
    with pytest.raises(ProbeDataError, match="16x16 but the model takes 3x32x32"):
        check_fits(images, (1, 3, 32, 32), "m")


def test_cifar_and_imagenet_folders_are_read_in_a_seeded_subset(tmp_path) -> None:  # noqa: ANN001
    import pickle

    from PIL import Image

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (50, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": list(range(10)) * 5}))
    first = load_probe_images(ProbeConfig(data=f"cifar10:{tmp_path}", n_images=8, seed=1))
    again = load_probe_images(ProbeConfig(data=f"cifar10:{tmp_path}", n_images=8, seed=1))
    assert first.images.shape == (8, 3, 32, 32) and torch.equal(first.images, again.images)
    index = int(first.labels[0])
    assert any(torch.equal(first.images[0], torch.from_numpy(data[i].reshape(3, 32, 32) / 255.0).float())
               for i in range(index, 50, 10))
    for label in ("n01", "n02"):
        (tmp_path / "imagenet" / label).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "imagenet" / label / "a.JPEG")
    folder_images = load_probe_images(ProbeConfig(data=f"imagenet:{tmp_path / 'imagenet'}", n_images=5))
    assert folder_images.images.shape == (2, 3, 224, 224) and folder_images.labels.tolist() == [0, 1]
    assert float(folder_images.images.max()) <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")
def test_probe_on_cuda_matches_cpu(images: ImageData) -> None:
    model = StemNet(torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(4)))
    config = ProbeConfig(kinds=("pgd", "random"), n_images=len(images), batch_size=16)
    cpu = probe_model(model, model.conv, "conv", images, config, torch.device("cpu"), "m", "synthetic").to_pylist()
    model_gpu = model.to("cuda")
    gpu = probe_model(model_gpu, model_gpu.conv, "conv", images, config, torch.device("cuda"), "m",
                      "synthetic").to_pylist()
    for a, b in zip(cpu, gpu, strict=True):
        assert a["rel_change_mean"] == pytest.approx(b["rel_change_mean"], rel=1e-4)
        assert a["gain_mean"] == pytest.approx(b["gain_mean"], rel=1e-4)
        assert a["delta_linf"] == pytest.approx(b["delta_linf"], abs=1e-6)
