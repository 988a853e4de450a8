"""Training: the synthetic dataset, the CIFAR folder reader, PGD, normal vs adversarial training."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, UnknownArchitectureError
from pipeline.train.config import TrainConfig
from pipeline.train.config import demo_arch_spec as arch_spec
from pipeline.train.data import (
    SYNTHETIC_CLASSES,
    load_cifar,
    load_split,
    synthetic_images,
    synthetic_split,
)
from pipeline.train.demo_models import ARCHITECTURES, tiny_cnn
from pipeline.train.recipe import lr_at, pgd_linf
from pipeline.train.run_one import train_one

# --- the synthetic dataset --------------------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_in_range() -> None:
    a = synthetic_images(200, seed=3)
    b = synthetic_images(200, seed=3)
    c = synthetic_images(200, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (200, 3, 32, 32) and a.images.dtype == torch.float32
    assert torch.bincount(a.labels).tolist() == [20] * 10
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
    assert a.classes == SYNTHETIC_CLASSES and a.num_classes == 10 and a.input_shape == (3, 32, 32)


def test_synthetic_train_and_test_splits_differ() -> None:
    train, test = synthetic_split("train", 50, seed=0), synthetic_split("test", 50, seed=0)
    assert not torch.equal(train.images, test.images)
    assert torch.equal(synthetic_split("test", 50, seed=0).images, test.images)
    with pytest.raises(ConfigError, match="split"):
        synthetic_split("val", 10, seed=0)


def _mean_abs_gradients(images: torch.Tensor) -> tuple[float, float]:
    gray = images.mean(1)
    dx = (gray[:, :, 1:] - gray[:, :, :-1]).abs().mean()
    dy = (gray[:, 1:, :] - gray[:, :-1, :]).abs().mean()
    return float(dx), float(dy)


def test_synthetic_gratings_are_oriented() -> None:
    """The 0-degree gratings vary along x (vertical stripes), the 90-degree ones along y: the classes carry edges."""
    data = synthetic_images(400, seed=1, noise=0.0)
    dx0, dy0 = _mean_abs_gradients(data.images[data.labels == 0])
    dx90, dy90 = _mean_abs_gradients(data.images[data.labels == 2])
    assert dx0 > 3 * dy0
    assert dy90 > 3 * dx90


def test_synthetic_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        synthetic_images(0, seed=0)
    with pytest.raises(ConfigError, match="needs a size"):
        load_split("synthetic", "train")
    with pytest.raises(ConfigError, match="unknown training dataset"):
        load_split("mnist", "train", n=5)


# --- CIFAR from a local folder ----------------------------------------------------------------


def _write_batch(path: str, images: np.ndarray, labels: list[int], key: bytes = b"labels") -> None:
    with open(path, "wb") as fh:
        pickle.dump({b"data": images.reshape(len(labels), -1), key: labels, b"batch_label": b"x"}, fh)


def _fake_cifar10(root: str) -> tuple[np.ndarray, np.ndarray]:
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    for i in range(5):
        _write_batch(os.path.join(folder, f"data_batch_{i + 1}"), train[2 * i:2 * i + 2], [i, 9 - i])
    _write_batch(os.path.join(folder, "test_batch"), test, [3, 1, 4, 1])
    with open(os.path.join(folder, "batches.meta"), "wb") as fh:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, fh)
    return train, test


def test_cifar10_reads_torchvision_layout(tmp_path) -> None:
    train_pixels, test_pixels = _fake_cifar10(str(tmp_path))
    train = load_cifar("cifar10", str(tmp_path), "train")
    assert train.images.shape == (10, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(train_pixels.astype(np.float32) / 255.0))
    assert train.labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    assert train.classes[3] == "class3"
    # the batches folder itself works as the root too; limit keeps the first images
    test = load_split("cifar10", "test", data_root=str(tmp_path / "cifar-10-batches-py"), n=3)
    assert test.labels.tolist() == [3, 1, 4]
    assert torch.equal(test.images, torch.from_numpy(test_pixels[:3].astype(np.float32) / 255.0))


def test_cifar100_uses_fine_labels(tmp_path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    pixels = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3, 32, 32)
    _write_batch(str(folder / "train"), pixels, [99, 42], key=b"fine_labels")
    _write_batch(str(folder / "test"), pixels[:1], [7], key=b"fine_labels")
    data = load_cifar("cifar100", str(tmp_path), "train")
    assert data.labels.tolist() == [99, 42] and data.num_classes == 100


def test_cifar_missing_or_hostile_files_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="never downloads"):
        load_cifar("cifar10", str(tmp_path), "train")
    with pytest.raises(ConfigError, match="--data-root"):
        load_split("cifar10", "train")
    _fake_cifar10(str(tmp_path))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": [0]}, fh)
    with pytest.raises(ConfigError, match="refusing to load"):
        load_cifar("cifar10", str(tmp_path), "train")
    assert not marker.exists()


# --- PGD and the schedule ---------------------------------------------------------------------


def test_pgd_stays_in_the_eps_ball_and_raises_the_loss() -> None:
    torch.manual_seed(0)
    model = tiny_cnn().eval()
    data = synthetic_images(32, seed=5)
    eps = 8 / 255
    x_adv = pgd_linf(model, data.images, data.labels, eps, steps=5, step_size=2 / 255,
                     generator=torch.Generator().manual_seed(0))
    assert float((x_adv - data.images).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        clean_loss = torch.nn.functional.cross_entropy(model(data.images), data.labels)
        adv_loss = torch.nn.functional.cross_entropy(model(x_adv), data.labels)
    assert adv_loss > clean_loss
    assert torch.equal(pgd_linf(model, data.images, data.labels, 0.0, 5, 0.1), data.images)


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    lrs = [lr_at(s, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1 / 15)
    assert lrs[14] == pytest.approx(0.1)
    assert max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < 0.001 and all(a >= b for a, b in zip(lrs[14:], lrs[15:], strict=False))


# --- configuration ----------------------------------------------------------------------------


def test_config_hash_ignores_runtime_settings_only() -> None:
    base = TrainConfig(arch=arch_spec("tiny_cnn"), n_train=100, n_test=50)
    assert replace(base, threads=1, device="cpu", data_root="/x").config_hash() == base.config_hash()
    for change in ({"epochs": 6}, {"seed": 1}, {"adversarial": True}, {"eps": 4 / 255}, {"n_train": 101},
                   {"lr": 0.05}, {"arch": arch_spec("small_vgg")}):
        assert replace(base, **change).config_hash() != base.config_hash(), change


def test_config_ids_and_validation() -> None:
    config = TrainConfig(arch=arch_spec("small_resnet"), seed=1, adversarial=True)
    assert config.model_id == "filterlens-demo/synthetic/Linf/small_resnet-adv-s1"
    assert config.checkpoint_name == "synthetic-Linf-small_resnet-adv-s1.pt"
    assert (config.n_train, config.n_test) == (5000, 1000)
    assert replace(config, adversarial=False).model_id == "filterlens-demo/synthetic/none/small_resnet-normal-s1"
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(arch=arch_spec("tiny_cnn"), epochs=0)
    with pytest.raises(ConfigError, match="attack_steps"):
        TrainConfig(arch=arch_spec("tiny_cnn"), adversarial=True, attack_steps=0)
    with pytest.raises(UnknownArchitectureError):
        TrainConfig(arch="no spec at all")


def test_a_factory_with_the_wrong_number_of_classes_is_refused(tmp_path) -> None:
    _fake_cifar10(str(tmp_path))
    config = TrainConfig(arch=arch_spec("small_vgg_c100"), dataset="cifar10", data_root=str(tmp_path), epochs=1)
    with pytest.raises(ConfigError, match="100 outputs"):
        train_one(config)


def test_every_factory_builds_a_32px_classifier() -> None:
    for name, (_, factory) in ARCHITECTURES.items():
        model = factory().eval()
        out = model(torch.zeros(2, 3, 32, 32))
        assert out.shape == (2, 100 if name.endswith("_c100") else 10), name


# --- training ---------------------------------------------------------------------------------

TINY = TrainConfig(arch=arch_spec("tiny_cnn"), n_train=1000, n_test=300, epochs=4, batch_size=64,
                   eps=16 / 255, attack_steps=2, step_size=2.5 * (16 / 255) / 2, eval_steps=5,
                   n_eval_robust=300, threads=1, device="cpu")


@pytest.fixture(scope="module")
def trained() -> dict:
    return {adv: train_one(replace(TINY, adversarial=adv)) for adv in (False, True)}


def test_training_converges_above_chance(trained) -> None:
    normal = trained[False]
    assert normal.clean_acc > 40.0  # chance is 10%
    assert [h["epoch"] for h in normal.history] == [1, 2, 3, 4]
    assert normal.history[-1]["loss"] < normal.history[0]["loss"]
    assert normal.n_params == sum(p.numel() for p in tiny_cnn().parameters())


def test_adversarial_training_raises_pgd_accuracy(trained) -> None:
    normal, robust = trained[False], trained[True]
    assert robust.robust_acc >= normal.robust_acc + 10.0, (normal.robust_acc, robust.robust_acc)
    assert robust.clean_acc > 25.0


def test_training_is_deterministic(trained) -> None:
    again = train_one(replace(TINY, adversarial=False, epochs=4))
    assert again.state_dict_bytes == trained[False].state_dict_bytes
    assert (again.clean_acc, again.robust_acc) == (trained[False].clean_acc, trained[False].robust_acc)


def test_training_on_a_local_cifar_folder_with_augmentation(tmp_path) -> None:
    _fake_cifar10(str(tmp_path))
    config = TrainConfig(arch=arch_spec("tiny_cnn"), dataset="cifar10", data_root=str(tmp_path), epochs=2,
                         batch_size=4, adversarial=True, attack_steps=1, eval_steps=1, threads=1, device="cpu")
    result = train_one(config)
    assert config.model_id == "filterlens-demo/cifar10/Linf/tiny_cnn-adv-s0"
    assert len(result.history) == 2 and all(np.isfinite(h["loss"]) for h in result.history)
    assert result.clean_acc in (0.0, 25.0, 50.0, 75.0, 100.0)  # 4 held-out images
    assert (result.n_train_images, result.n_eval_clean, result.n_eval_robust) == (10, 4, 4)
    with pytest.raises(ConfigError, match="--data-root"):
        TrainConfig(arch=arch_spec("tiny_cnn"), dataset="cifar100")
    with pytest.raises(ConfigError, match="unknown training dataset"):
        TrainConfig(arch=arch_spec("tiny_cnn"), dataset="imagenet")


def test_architecture_names() -> None:
    from pipeline.train.zoo_writer import architecture_name

    assert architecture_name(arch_spec("small_wrn"), "SmallWideResNet") == "SmallPreActWRN-8-2 (16/32/64)"
    assert architecture_name("timm:resnet18", "ResNet") == "resnet18"
    assert architecture_name("robustbench:cifar10:Linf:Wong2020Fast", "PreActResNet") == "PreActResNet"
    assert architecture_name("mypackage.nets:build") == "build"
