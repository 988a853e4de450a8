"""Tiny architectures for tests, importable as arch specs ``zoo_fixtures:<factory>``."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv1 (3x3) -> depthwise (3x3, groups=8) -> conv3 (3x3); a 1x1 skip that runs *after* conv3;
    a 3x3 conv that never runs; a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.skip = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.unused = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.depthwise(x))
        y = self.conv3(x)
        y = y + self.skip(x)
        return self.fc(y.mean((2, 3)))


def tiny_net() -> nn.Module:
    return TinyNet()


def tiny_bytes(seed: int) -> bytes:
    """A TinyNet state dict with seeded random weights, as ``torch.save`` bytes."""
    import io

    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(tiny_net().state_dict(), buffer)
    return buffer.getvalue()


class TinyEnsemble(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.models = nn.ModuleList([TinyNet(), TinyNet()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(m(x) for m in self.models) / len(self.models)


def tiny_ensemble() -> nn.Module:
    return TinyEnsemble()


def not_a_module() -> int:
    return 3


class SuicidalNet(TinyNet):
    """Kills its own process (SIGKILL) the first time it runs, to test actor restarts.

    The marker file is ``$FILTERLENS_TEST_DIE_ONCE`` (set before the Ray workers start)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os
        import signal
        from pathlib import Path

        marker = os.environ.get("FILTERLENS_TEST_DIE_ONCE")
        if marker and not Path(marker).exists():
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def suicidal_net() -> nn.Module:
    return SuicidalNet()


class SlowTinyNet(TinyNet):
    """Logs each forward pass to ``$FILTERLENS_TEST_MARKERS/forward.log`` and sleeps, so a test can kill
    a build in the middle of an extraction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os
        import time
        from pathlib import Path

        markers = os.environ.get("FILTERLENS_TEST_MARKERS")
        if markers:
            with open(Path(markers) / "forward.log", "a") as log:
                log.write("forward\n")
        time.sleep(float(os.environ.get("FILTERLENS_SLOW_FORWARD_S", "0.3")))
        return super().forward(x)


def slow_tiny_net() -> nn.Module:
    return SlowTinyNet()
