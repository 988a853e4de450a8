"""One probe image seen by the first stage, kept for the notebook's figure (filters / clean / perturbed / difference).

The paper's notebook shows, for one CIFAR-10 image and its adversarial version, the
first conv's filters and ReLU(conv(x)) of a robust model beside a normal one. The
probe keeps exactly that for its first image and the first ``EXAMPLE_CHANNELS``
output channels: the filters, the clean and perturbed images, and both activations,
float16 in one small ``.npz`` per probe (``DatasetPaths.probe_example_for``).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.fs as pafs

if TYPE_CHECKING:
    import torch

EXAMPLE_CHANNELS = 16


def example_arrays(weight: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, clean: torch.Tensor,
                   perturbed: torch.Tensor, kind: str) -> dict[str, np.ndarray]:
    """The arrays of one image (first dimension already removed): filters, images, ReLU activations."""
    import torch

    c = EXAMPLE_CHANNELS

    def half(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().astype(np.float16)

    return {"filters": half(weight[:c]), "image": half(x), "perturbed_image": half(x + delta),
            "clean": half(torch.relu(clean[:c])), "perturbed": half(torch.relu(perturbed[:c])),
            "perturbation": np.array(kind)}


def example_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_example(fs: pafs.FileSystem, path: str) -> dict[str, np.ndarray] | None:
    """The example arrays, or None when there is no (readable) example file."""
    try:
        with fs.open_input_file(path) as handle:
            data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None
