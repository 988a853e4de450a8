"""Read the first stage of a model: the output of its first executed convolution, during a normal forward pass.

The hook sits on the conv that ran first (conv_index 0 of the traced order), so
whatever the model does to its input before that conv (its own normalisation,
a stem) is part of the measurement. A conv that runs twice is read at its first call.
"""

from __future__ import annotations

import torch
from torch import nn


class FirstStage:
    """Context manager: while active, ``output`` holds the first conv's output of the latest forward pass."""

    def __init__(self, conv: nn.Module) -> None:
        self.conv = conv
        self.output: torch.Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if self.output is None:
            self.output = output.detach()

    def run(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, first-stage output) of one forward pass of ``model`` on ``x`` (no gradients)."""
        self.output = None
        with torch.no_grad():
            logits = model(x)
        if self.output is None:
            raise RuntimeError("the first convolution did not run in the forward pass")
        return logits, self.output

    def __enter__(self) -> FirstStage:
        self._handle = self.conv.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def stage_outputs(conv_output: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two stages the probe reads: the conv output itself and ReLU of it."""
    return {"conv": conv_output, "conv_relu": torch.relu(conv_output)}
