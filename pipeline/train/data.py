"""Image classification data that needs no download: a procedural dataset, and CIFAR from a local folder.

The procedural dataset ("synthetic") is deterministic from a seed. Its ten
classes are defined by *structure* (oriented gratings, filled shapes, textures)
while colours, positions, sizes, frequencies and phases vary at random inside
every class. A CNN must therefore learn oriented edge and colour-contrast
detectors in its first layer to solve it, which is what the filter statistics
look at; and it is easy enough for a small net to learn in a minute on a CPU.

CIFAR-10/100 are read from a local folder in torchvision's layout
(``cifar-10-batches-py/`` or ``cifar-100-python/``), never downloaded. The
pickled batches are read with an unpickler that only accepts NumPy arrays, so a
tampered file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import ConfigError

SYNTHETIC_CLASSES = (
    "grating_0deg",
    "grating_45deg",
    "grating_90deg",
    "grating_135deg",
    "disc",
    "square",
    "triangle",
    "cross",
    "checkerboard",
    "rings",
)
"""Class names of the synthetic dataset, in label order."""

SPLIT_OFFSETS = {"train": 0, "test": 1_000_003}
"""Added to the seed per split, so train and test images never coincide."""

DATASETS = ("synthetic", "cifar10", "cifar100")


@dataclass
class ImageData:
    """Images in [0, 1] as float32 (N, C, H, W) with int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(x) for x in self.images.shape[1:])  # type: ignore[return-value]


# --- the procedural dataset ----------------------------------------------------------------

def _smooth_step(signed: np.ndarray, sharpness: float) -> np.ndarray:
    """Anti-aliased indicator of ``signed > 0`` (a logistic ramp about one pixel wide)."""
    return 1.0 / (1.0 + np.exp(-np.clip(signed * sharpness, -30.0, 30.0)))


def _rotate(x: np.ndarray, y: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def _grating(theta_deg: float) -> Callable[..., np.ndarray]:
    def draw(x: np.ndarray, y: np.ndarray, p: dict[str, np.ndarray], sharp: float) -> np.ndarray:
        theta = np.deg2rad(theta_deg) + p["jitter"] * np.deg2rad(10.0)
        u = x * np.cos(theta) + y * np.sin(theta)
        wave = np.sin(2 * np.pi * p["freq"] * u + p["phase"])
        # square-ish wave: edges, not only a smooth sinusoid
        return _smooth_step(wave, sharp * 0.35)

    return draw


def _disc(x, y, p, sharp):  # noqa: ANN001, ANN202
    r = np.hypot(x - p["cx"], y - p["cy"])
    return _smooth_step(p["size"] - r, sharp)


def _square(x, y, p, sharp):  # noqa: ANN001, ANN202
    u, v = _rotate(x - p["cx"], y - p["cy"], p["angle"] * np.pi / 2)
    return _smooth_step(p["size"] * 0.85 - np.maximum(np.abs(u), np.abs(v)), sharp)


def _triangle(x, y, p, sharp):  # noqa: ANN001, ANN202
    u, v = _rotate(x - p["cx"], y - p["cy"], p["angle"] * 2 * np.pi / 3)
    inside = np.full_like(u, np.inf)
    for k in range(3):  # three half-planes of an equilateral triangle
        a = np.pi / 2 + k * 2 * np.pi / 3
        inside = np.minimum(inside, p["size"] * 0.6 - (u * np.cos(a) + v * np.sin(a)))
    return _smooth_step(inside, sharp)


def _cross(x, y, p, sharp):  # noqa: ANN001, ANN202
    u, v = _rotate(x - p["cx"], y - p["cy"], p["angle"] * np.pi / 2)
    arm = p["size"] * 0.28
    bar1 = np.minimum(arm - np.abs(u), p["size"] - np.abs(v))
    bar2 = np.minimum(arm - np.abs(v), p["size"] - np.abs(u))
    return _smooth_step(np.maximum(bar1, bar2), sharp)


def _checkerboard(x, y, p, sharp):  # noqa: ANN001, ANN202
    u, v = _rotate(x, y, p["angle"] * np.pi / 2)
    f = p["freq"] * 0.6
    return _smooth_step(np.sin(2 * np.pi * f * u + p["phase"]) * np.sin(2 * np.pi * f * v), sharp * 0.35)


def _rings(x, y, p, sharp):  # noqa: ANN001, ANN202
    r = np.hypot(x - p["cx"] * 0.5, y - p["cy"] * 0.5)
    return _smooth_step(np.sin(2 * np.pi * p["freq"] * 0.8 * r + p["phase"]), sharp * 0.35)


_DRAW = (_grating(0), _grating(45), _grating(90), _grating(135), _disc, _square, _triangle, _cross,
         _checkerboard, _rings)


def _colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background RGB colours with a minimum contrast (so every image has visible structure)."""
    fg = rng.uniform(0.0, 1.0, (n, 3))
    bg = rng.uniform(0.0, 1.0, (n, 3))
    low = np.linalg.norm(fg - bg, axis=1) < 0.45
    while low.any():
        bg[low] = rng.uniform(0.0, 1.0, (int(low.sum()), 3))
        low = np.linalg.norm(fg - bg, axis=1) < 0.45
    return fg, bg


def synthetic_images(n: int, seed: int, size: int = 32, noise: float = 0.06) -> ImageData:
    """``n`` images (class-balanced, shuffled) of the procedural dataset; the same (n, seed, size) gives the same bytes.

    Each image = background colour with a gentle colour gradient, the class's
    pattern painted in a random foreground colour, plus Gaussian pixel noise.
    """
    if n < 1 or size < 8:
        raise ConfigError(f"synthetic dataset needs n >= 1 and size >= 8 (got n={n}, size={size})")
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SYNTHETIC_CLASSES)
    rng.shuffle(labels)
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    x, y = x[None], y[None]
    params = {
        "jitter": rng.uniform(-1, 1, n),
        "freq": rng.uniform(2.0, 4.0, n),
        "phase": rng.uniform(0, 2 * np.pi, n),
        "cx": rng.uniform(-0.35, 0.35, n),
        "cy": rng.uniform(-0.35, 0.35, n),
        "size": rng.uniform(0.35, 0.6, n),
        "angle": rng.uniform(0, 1, n),
    }
    fg, bg = _colours(rng, n)
    grad = rng.uniform(-0.15, 0.15, (n, 3, 2))
    pixel_noise = rng.normal(0.0, noise, (n, 3, size, size))
    sharp = float(size)
    mask = np.empty((n, size, size))
    for label, draw in enumerate(_DRAW):
        idx = np.flatnonzero(labels == label)
        if idx.size:
            p = {k: v[idx][:, None, None] for k, v in params.items()}
            mask[idx] = draw(x, y, p, sharp)
    background = bg[:, :, None, None] + grad[:, :, 0, None, None] * x[:, None] + grad[:, :, 1, None, None] * y[:, None]
    images = background * (1 - mask[:, None]) + fg[:, :, None, None] * mask[:, None] + pixel_noise
    images = np.clip(images, 0.0, 1.0).astype(np.float32)
    return ImageData(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), SYNTHETIC_CLASSES)


def synthetic_split(split: str, n: int, seed: int, size: int = 32) -> ImageData:
    """The train or test split of the procedural dataset for ``seed`` (disjoint by construction)."""
    if split not in SPLIT_OFFSETS:
        raise ConfigError(f"split must be one of {', '.join(SPLIT_OFFSETS)}, not {split!r}")
    return synthetic_images(n, seed + SPLIT_OFFSETS[split], size=size)


# --- CIFAR from a local folder -------------------------------------------------------------

CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "meta", "fine_label_names"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; anything else is refused."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = _ArrayUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except FileNotFoundError:
        raise ConfigError(f"CIFAR file {path} is missing; the folder must be torchvision's layout") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read CIFAR file {path} ({exc}); is it the Python version of the dataset?") from None
    if not isinstance(data, dict):
        raise ConfigError(f"CIFAR file {path} does not hold a dict of arrays")
    return data


def cifar_folder(dataset: str, root: str) -> str:
    """The folder holding the pickled batches: ``root`` itself or ``root/cifar-10-batches-py`` (or -100)."""
    if dataset not in CIFAR_LAYOUT:
        raise ConfigError(f"{dataset!r} is not a CIFAR dataset; use cifar10 or cifar100")
    folder_name = CIFAR_LAYOUT[dataset][0]
    root = os.path.expanduser(root)
    for candidate in (os.path.join(root, folder_name), root):
        if os.path.isdir(candidate) and os.path.exists(os.path.join(candidate, CIFAR_LAYOUT[dataset][2][0])):
            return candidate
    raise ConfigError(
        f"no {dataset} in {root}: expected {os.path.join(root, folder_name)}/ in torchvision's layout "
        f"(the Python version); filterlens never downloads it, so place it there first")


def load_cifar(dataset: str, root: str, split: str, limit: int | None = None) -> ImageData:
    """CIFAR-10/100 ``split`` ("train" or "test") from a local folder in torchvision's layout."""
    folder = cifar_folder(dataset, root)
    _, train_files, test_files, label_key, meta_file, names_key = CIFAR_LAYOUT[dataset]
    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, not {split!r}")
    images, labels = [], []
    for name in train_files if split == "train" else test_files:
        batch = _load_pickle(os.path.join(folder, name))
        if b"data" not in batch or label_key not in batch:
            raise ConfigError(f"CIFAR file {os.path.join(folder, name)} lacks {b'data'!r} or {label_key!r}")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    x = np.concatenate(images)
    y = np.concatenate(labels)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    n_classes = 10 if dataset == "cifar10" else 100
    classes: tuple[str, ...] = tuple(str(i) for i in range(n_classes))
    meta_path = os.path.join(folder, meta_file)
    if os.path.exists(meta_path):
        meta = _load_pickle(meta_path)
        raw = meta.get(names_key.encode()) or meta.get(names_key)
        if raw is not None and len(raw) == n_classes:
            classes = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in raw)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ConfigError(f"{folder}: labels outside 0..{n_classes - 1}; is this {dataset}?")
    return ImageData(torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y), classes)


def load_split(dataset: str, split: str, *, seed: int = 0, n: int | None = None, data_root: str | None = None,
               image_size: int = 32) -> ImageData:
    """One split of a training dataset by name: ``synthetic`` (generated) or ``cifar10``/``cifar100`` (local)."""
    if dataset == "synthetic":
        if n is None:
            raise ConfigError("the synthetic dataset needs a size (n)")
        return synthetic_split(split, n, seed, size=image_size)
    if dataset in CIFAR_LAYOUT:
        if not data_root:
            raise ConfigError(f"{dataset} needs --data-root pointing at a folder with torchvision's CIFAR files")
        return load_cifar(dataset, data_root, split, limit=n)
    raise ConfigError(f"unknown training dataset {dataset!r}; use one of {', '.join(DATASETS)}")


def class_grid(data: ImageData, per_class: int = 8) -> torch.Tensor:
    """A (3, H*classes, W*per_class) picture: one row of examples per class (for the README and eyeballing)."""
    rows = []
    for label in range(data.num_classes):
        idx = torch.nonzero(data.labels == label).flatten()[:per_class]
        row = [data.images[i] for i in idx] + [torch.zeros_like(data.images[0])] * (per_class - len(idx))
        rows.append(torch.cat(row, dim=2))
    return torch.cat(rows, dim=1)

