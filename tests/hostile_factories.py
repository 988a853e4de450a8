"""Architecture factories that misbehave, for the zoo-code consent and containment tests (not trusted by default)."""

from __future__ import annotations

import signal
import sys

from torch import nn


def exits() -> nn.Module:
    sys.exit(0)


def hangs() -> nn.Module:
    signal.pause()  # until a signal: the per-model timeout
    raise AssertionError("unreachable")


def raises() -> nn.Module:
    raise RuntimeError("factory failed on purpose")


def side_effect() -> nn.Module:
    """Writes a marker file: proves whether the code ran at all."""
    import os

    with open(os.environ["HOSTILE_MARKER"], "w") as fh:
        fh.write("ran")
    from zoo_fixtures import tiny_net

    return tiny_net()
