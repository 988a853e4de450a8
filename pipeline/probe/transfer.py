"""The ``transfer`` perturbations: one fixed PGD set, computed once on a reference model, applied to every model.

PGD against each model is model-specific (a robust model gets a different attack
than a normal one); the transfer set makes every model see identical inputs, as
in the paper's notebook. It is stored in the dataset root
(``_probes/transfer-<digest>.npz``) with what it was made from, so every actor and
every later run of the same settings uses exactly the same perturbations.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import torch

from pipeline.errors import ProbeDataError
from pipeline.probe.config import ProbeConfig

TRANSFER_DIR = "_probes"


@dataclass
class TransferSet:
    """PGD perturbations of the probe images, computed on ``reference``."""

    deltas: torch.Tensor
    """float32 (N, C, H, W), stored as float16: identical for every model that loads it."""
    reference: str
    images_sha256: str


def images_digest(images: torch.Tensor) -> str:
    """SHA-256 of the probe images' float32 bytes (a transfer set belongs to exactly these images)."""
    return hashlib.sha256(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def transfer_name(config: ProbeConfig, reference: str, reference_sha256: str) -> str:
    """Path of the transfer set under the dataset root: a digest of everything it depends on."""
    parts = {**config.numbers(), "reference": reference, "reference_sha256": reference_sha256}
    parts.pop("kinds")
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{TRANSFER_DIR}/transfer-{digest}.npz"


def transfer_bytes(transfer: TransferSet) -> bytes:
    """The set as .npz bytes (written with ``DatasetStore.write_bytes``)."""
    buffer = io.BytesIO()
    np.savez(buffer, deltas=transfer.deltas.to("cpu", torch.float16).numpy(),
             reference=np.array(transfer.reference), images_sha256=np.array(transfer.images_sha256))
    return buffer.getvalue()


def load_transfer(fs: pafs.FileSystem, path: str) -> TransferSet:
    """Read a stored transfer set (ProbeDataError when it is missing or damaged)."""
    try:
        with fs.open_input_file(path) as handle:
            data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
            return TransferSet(torch.from_numpy(data["deltas"].astype(np.float32)), str(data["reference"]),
                               str(data["images_sha256"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ProbeDataError(f"the transfer set {path} cannot be read ({exc}); probe again to rebuild it") from None


def deltas_for(transfer: TransferSet, images: torch.Tensor, model_id: str) -> torch.Tensor:
    """The set's perturbations for exactly these images (ProbeDataError when they are other images)."""
    if tuple(transfer.deltas.shape) != tuple(images.shape) or transfer.images_sha256 != images_digest(images):
        raise ProbeDataError(f"{model_id}: the transfer set (from {transfer.reference}) was made for other probe "
                             f"images ({'x'.join(map(str, transfer.deltas.shape))}); models of another input "
                             f"shape need their own run")
    return transfer.deltas
