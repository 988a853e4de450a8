"""Probe one bound model: every perturbation, both stages, the model's accuracies -> its probes rows.

``probe_model`` is what every caller runs (``extract``/``build --probe`` in the
actor that already holds the bound model, ``filterlens probe`` for models already
extracted, the transfer set's reference): it takes a model and its first conv,
returns an Arrow table of the probes schema, and writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import torch
from torch import nn

from pipeline.dataset.layout import slugify, utcnow
from pipeline.dataset.schema import to_table
from pipeline.probe.config import STAGES, ProbeConfig
from pipeline.probe.data import check_labels
from pipeline.probe.example import example_arrays
from pipeline.probe.perturb import clip_to_image, pgd, random_sign
from pipeline.probe.response import StageResponse
from pipeline.probe.stage import FirstStage, stage_outputs
from pipeline.train.data import ImageData

log = logging.getLogger(__name__)

KIND_SEED_OFFSET = {"pgd": 1, "random": 2, "transfer": 3}
"""Each perturbation draws from its own stream of the seed (adding one kind changes no other)."""


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with no parameter gradients (PGD needs gradients of the input only); restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def perturbation(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: ProbeConfig,
                 generator: torch.Generator, transfer: torch.Tensor | None) -> torch.Tensor:
    """The perturbation of one batch for ``kind``."""
    if kind == "pgd":
        return pgd(model, x, y, config.eps, config.pgd_steps, config.step_size, generator)
    if kind == "random":
        return random_sign(x, config.eps, generator)
    if transfer is None:
        raise ValueError("the transfer perturbation needs the transfer set")
    return clip_to_image(x, transfer, config.eps)  # stored as float16: back inside the box


def probe_model(model: nn.Module, first_conv: nn.Module, layer_name: str, images: ImageData, config: ProbeConfig,
                device: torch.device, model_id: str, dataset: str, transfer: torch.Tensor | None = None,
                reference: str | None = None, example: dict | None = None) -> pa.Table:
    """The probes rows of one model (model x perturbation x stage), computed on ``images``.

    ``example``, when given, receives the first image's arrays for the notebook's figure
    (pipeline/probe/example.py), under the comparable perturbation (transfer, else pgd, else random).

    ``transfer`` holds the fixed perturbations of the ``transfer`` kind (same shape as
    the images); without it that kind is not measured.
    """
    started = time.perf_counter()
    kinds = [k for k in config.kinds if k != "transfer" or transfer is not None]
    responses = {(k, s): StageResponse() for k in kinds for s in STAGES}
    correct = {"clean": 0, **{k: 0 for k in kinds}}
    size = {k: [0.0, 0.0] for k in kinds}  # sum of ||d||/||x||, max |d|
    generators = {k: torch.Generator().manual_seed(config.seed * 10 + KIND_SEED_OFFSET[k]) for k in kinds}
    n = len(images)
    example_kind = next(k for k in ("transfer", "pgd", "random") if k in kinds)
    with frozen(model), FirstStage(first_conv) as first:
        for start in range(0, n, config.batch_size):
            x = images.images[start:start + config.batch_size].to(device, torch.float32)
            y = images.labels[start:start + config.batch_size].to(device)
            logits, clean = first.run(model, x)
            if start == 0:
                check_labels(images, int(logits.shape[-1]), model_id)
            correct["clean"] += int((logits.argmax(-1) == y).sum())
            clean_stages = stage_outputs(clean)
            for kind in kinds:
                fixed = transfer[start:start + config.batch_size].to(device) if kind == "transfer" else None
                delta = perturbation(kind, model, x, y, config, generators[kind], fixed)
                logits_p, perturbed = first.run(model, x + delta)
                correct[kind] += int((logits_p.argmax(-1) == y).sum())
                flat_x = torch.linalg.vector_norm(x.reshape(len(x), -1).double(), dim=1)
                flat_d = torch.linalg.vector_norm(delta.reshape(len(x), -1).double(), dim=1)
                size[kind][0] += float(torch.where(flat_x > 0, flat_d / flat_x.clamp_min(1e-300), 0).sum())
                size[kind][1] = max(size[kind][1], float(delta.abs().max()))
                for stage, value in stage_outputs(perturbed).items():
                    responses[(kind, stage)].add(x, delta, clean_stages[stage], value)
                if example is not None and start == 0 and kind == example_kind:
                    example.update(example_arrays(first_conv.weight, x[0], delta[0], clean[0], perturbed[0], kind))
    seconds = time.perf_counter() - started
    rows = []
    for (kind, stage), response in responses.items():
        row = {
            "model_id": model_id, "dataset": dataset, "model": slugify(model_id), "perturbation": kind,
            "stage": stage, "layer_name": layer_name, "probe_data": config.data_kind, "n_images": n,
            "eps": config.eps, "seed": config.seed,
            "pgd_steps": config.pgd_steps if kind != "random" else None,
            "pgd_step_size": config.step_size if kind != "random" else None,
            "reference_model": reference if kind == "transfer" else None,
            **response.summary(),
            "delta_rel_mean": size[kind][0] / n, "delta_linf": size[kind][1],
            "clean_acc": 100.0 * correct["clean"] / n, "perturbed_acc": 100.0 * correct[kind] / n,
            "probe_config": config.key(), "device": str(device), "probe_seconds": seconds, "probed_at": utcnow(),
        }
        rows.append(row)
    log.info("%s: probed %d images x %s in %.1fs", model_id, n, ",".join(kinds), seconds)
    return to_table("probes", {name: [r[name] for r in rows] for name in rows[0]})
