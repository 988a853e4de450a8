"""The probe images: a local CIFAR folder, an ImageNet-style folder, or the demo's synthetic images. Never downloaded.

Images are float32 in [0, 1], (N, C, H, W), with int64 labels; the same config
gives the same images (a seeded choice for folders larger than ``n_images``).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch

from pipeline.errors import ConfigError, ProbeDataError
from pipeline.probe.config import ProbeConfig
from pipeline.train.data import ImageData, load_cifar, synthetic_split

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224
"""RobustBench's ImageNet preprocessing (Res256Crop224)."""


def load_probe_images(config: ProbeConfig, image_size: int | None = None) -> ImageData:
    """The probe set of ``config`` (``image_size``: side of the synthetic images, default 32)."""
    return _load(config.data, config.n_images, config.seed, image_size or 32)


@lru_cache(maxsize=4)
def _load(data: str, n_images: int, seed: int, image_size: int) -> ImageData:
    kind, _, folder = data.partition(":")
    if kind == "synthetic":
        return synthetic_split("test", n_images, seed, size=image_size)
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise ProbeDataError(f"--probe-data {data}: no folder {folder} (filterlens never downloads probe data)")
    if kind in ("cifar10", "cifar100"):
        try:
            images = load_cifar(kind, folder, "test")
        except ConfigError as exc:
            raise ProbeDataError(f"--probe-data {data}: {exc}") from None
        return subset(images, n_images, seed)
    return load_image_folder(folder, n_images, seed)


def subset(images: ImageData, n: int, seed: int) -> ImageData:
    """``n`` images chosen at random (seeded) in their original order; all of them when there are fewer."""
    if len(images) <= n:
        return images
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
    index = torch.from_numpy(chosen)
    return ImageData(images.images[index], images.labels[index], images.classes)


def load_image_folder(folder: str, n: int, seed: int) -> ImageData:
    """An ImageNet validation folder in ImageFolder layout (one sub-folder per class, sorted names = labels)."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    files = [(os.path.join(folder, c, f), label) for label, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(folder, c))) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise ProbeDataError(f"--probe-data imagenet:{folder}: no images in class sub-folders "
                             f"(expected {folder}/<class>/<image>.JPEG)")
    if len(files) > n:
        chosen = np.sort(np.random.default_rng(seed).choice(len(files), size=n, replace=False))
        files = [files[i] for i in chosen]
    pixels, labels = [], []
    for path, label in files:
        try:
            with Image.open(path) as image:
                pixels.append(resize_and_crop(image.convert("RGB")))
        except (OSError, UnidentifiedImageError) as exc:
            raise ProbeDataError(f"--probe-data: cannot read image {path}: {exc}") from None
        labels.append(label)
    return ImageData(torch.from_numpy(np.stack(pixels)), torch.tensor(labels, dtype=torch.int64), tuple(classes))


def resize_and_crop(image: object) -> np.ndarray:
    """Shorter side to 256 (bilinear), centre 224x224 crop, as float32 CHW in [0, 1]."""
    from PIL import Image

    width, height = image.size  # type: ignore[attr-defined]
    scale = IMAGENET_RESIZE / min(width, height)
    resized = image.resize((max(IMAGENET_CROP, round(width * scale)), max(IMAGENET_CROP, round(height * scale))),
                           Image.BILINEAR)  # type: ignore[attr-defined]
    left = (resized.size[0] - IMAGENET_CROP) // 2
    top = (resized.size[1] - IMAGENET_CROP) // 2
    crop = resized.crop((left, top, left + IMAGENET_CROP, top + IMAGENET_CROP))
    return np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 255.0


def check_fits(images: ImageData, input_shape: tuple[int, ...] | None, model_id: str) -> None:
    """Raise ProbeDataError unless the images have the model's input shape (C, H, W)."""
    if input_shape is None:
        return
    want = tuple(int(v) for v in input_shape[-3:])
    got = tuple(images.images.shape[1:])
    if want != got:
        raise ProbeDataError(f"{model_id}: probe images are {'x'.join(map(str, got))} but the model takes "
                             f"{'x'.join(map(str, want))}; use --probe-data of the model's training dataset")


def check_labels(images: ImageData, n_outputs: int, model_id: str) -> None:
    """Raise ProbeDataError when a label is not one of the model's outputs (data of another dataset)."""
    top = int(images.labels.max()) if len(images) else -1
    if top >= n_outputs:
        raise ProbeDataError(f"{model_id}: probe labels go up to {top} but the model has {n_outputs} outputs; "
                             f"use --probe-data of the model's training dataset")
