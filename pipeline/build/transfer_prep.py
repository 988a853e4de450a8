"""Before a probe run: choose the ``transfer`` reference model and make sure its perturbation set is stored.

The driver does this once, so every extractor (local or Ray actor) reads the same
set from the dataset root instead of computing its own. The reference is the
``--probe-reference`` model, else the first zoo entry with an architecture: the
same zoo gives the same reference, and so the same probe key, run after run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import torch

from pipeline.build.config import BuildConfig
from pipeline.build.steps import BuildSteps
from pipeline.checkpoints.load import load_checkpoint
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ConfigError, FilterlensError, ProbeUnavailableError
from pipeline.extract.extractor import ordered_convs, resolve_device
from pipeline.probe.config import ProbeConfig
from pipeline.probe.data import check_fits, load_probe_images
from pipeline.probe.perturb import pgd
from pipeline.probe.run_one import KIND_SEED_OFFSET, frozen
from pipeline.probe.transfer import TransferSet, images_digest, transfer_bytes, transfer_name
from pipeline.zoo.spec import ModelRequest
from pipeline.zoo.zoo_file import ZooEntry

log = logging.getLogger(__name__)


def with_reference(probe: ProbeConfig, entries: Sequence[ZooEntry]) -> ProbeConfig:
    """``probe`` with its transfer reference fixed (ConfigError for a --probe-reference not in the zoo)."""
    if "transfer" not in probe.kinds:
        return probe
    if probe.reference is not None:
        if not any(e.model_id == probe.reference and e.arch for e in entries):
            raise ConfigError(f"--probe-reference {probe.reference}: no zoo entry with an architecture has this id")
        return probe
    first = next((e for e in entries if e.arch), None)
    return replace(probe, reference=first.model_id) if first is not None else probe


def compute_transfer(request: ModelRequest, probe: ProbeConfig, device: torch.device) -> TransferSet:
    """PGD perturbations of the probe images against the reference model."""
    loaded = load_checkpoint(request.checkpoints, digest=request.digest)
    ordered = ordered_convs(request, loaded, device)
    if ordered.model is None:
        raise ProbeUnavailableError(f"{request.model_id}: the transfer reference needs an architecture")
    images = load_probe_images(probe, image_size=int(ordered.input_shape[-1]) if ordered.input_shape else None)
    check_fits(images, ordered.input_shape, request.model_id)
    generator = torch.Generator().manual_seed(probe.seed * 10 + KIND_SEED_OFFSET["transfer"])
    deltas = []
    with frozen(ordered.model) as model:
        for start in range(0, len(images), probe.batch_size):
            x = images.images[start:start + probe.batch_size].to(device)
            y = images.labels[start:start + probe.batch_size].to(device)
            deltas.append(pgd(model, x, y, probe.eps, probe.pgd_steps, probe.step_size, generator).cpu())
    return TransferSet(torch.cat(deltas), request.model_id, images_digest(images.images))


def prepare_transfer(entries: Sequence[ZooEntry], config: BuildConfig, store: DatasetStore,
                     steps: BuildSteps) -> ProbeConfig:
    """The run's probe config with its stored transfer set; without the ``transfer`` kind when it cannot be made."""
    probe = config.probe
    assert probe is not None
    if "transfer" not in probe.kinds:
        return probe
    reference = next((e for e in entries if e.model_id == probe.reference), None)
    if reference is None:
        log.warning("no zoo entry has an architecture: probing without the transfer perturbation")
        return probe.with_transfer(None, None)
    try:
        stored = store.stored_model(reference.model_id)
        sha = reference.sha256 or (stored.checkpoint_sha256 if stored is not None else None)
        fetched = None
        if sha is None:
            fetched = steps.fetch(reference, config.cache_dir, config.mirror, config.policy())
            sha = fetched.sha256
        name = transfer_name(probe, reference.model_id, sha.lower())
        if not store.file_exists(store.path(name)):
            fetched = fetched or steps.fetch(reference, config.cache_dir, config.mirror, config.policy())
            request = reference.request(fetched.paths)
            request.digest = (fetched.sha256, fetched.n_bytes)
            log.info("computing the transfer perturbations on %s", reference.model_id)
            store.write_bytes(transfer_bytes(compute_transfer(request, probe, resolve_device(config.device))),
                              store.path(name))
        return probe.with_transfer(name, reference.model_id)
    except FilterlensError as exc:
        log.error("the transfer perturbations could not be computed on %s (%s: %s); probing without them",
                  reference.model_id, type(exc).__name__, exc)
        return probe.with_transfer(None, None)
