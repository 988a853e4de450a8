"""L-infinity perturbations of [0, 1] images, all seeded: PGD against a model, and random signs.

Random numbers come from a CPU ``torch.Generator`` and are moved to the device, so a
seed gives the same perturbation on CPU and GPU (up to the model's own arithmetic).
Every returned perturbation ``d`` keeps ``x + d`` inside [0, 1] and ``|d| <= eps``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def clip_to_image(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """``delta`` within the eps box and such that ``x + delta`` stays in [0, 1]."""
    return (x + delta.clamp(-eps, eps)).clamp(0.0, 1.0) - x


def uniform(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the CPU (reproducible everywhere), then moved to ``device``."""
    return torch.rand(shape, generator=generator, dtype=torch.float32).to(device)


def random_sign(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform random sign noise: every pixel moves by +eps or -eps (then clipped to the image range)."""
    signs = torch.where(uniform(x.shape, generator, x.device) < 0.5, -1.0, 1.0)
    return clip_to_image(x, eps * signs, eps)


def pgd(model: Model, x: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, step_size: float,
        generator: torch.Generator, random_start: bool = True) -> torch.Tensor:
    """Untargeted L-infinity PGD (Madry et al. 2018) on the cross-entropy of ``model``: the perturbation.

    Starts from a uniform point of the eps box (``random_start``), then ``steps`` signed
    gradient ascent steps, each projected back onto the box and the image range.
    Only the input gets gradients; the caller runs the model in eval mode.
    """
    delta = (uniform(x.shape, generator, x.device) * 2 - 1) * eps if random_start else torch.zeros_like(x)
    delta = clip_to_image(x, delta, eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = clip_to_image(x, delta.detach() + step_size * grad.sign(), eps)
    return delta.detach()
