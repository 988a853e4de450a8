"""torch's intra-op threads during the per-layer loop of extraction and import (CPU only)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def layer_loop_threads(device: torch.device) -> int | None:
    """torch intra-op threads for the per-layer loop on CPU: one core fewer than the process may use (at least 1),
    leaving one to the writer's encoding thread and the digest thread; None (no change) on a GPU. It only lowers
    torch's threads when they would take every core (``torch_threads`` never raises them): a Ray actor with
    ``OMP_NUM_THREADS`` below the cores, or torch on the physical cores of an SMT host, keeps its setting.

    The loop's products are small (a 640x5760 Gram, 16384-row blocks of the sums): with every core
    given to torch as well, the threads oversubscribe the cores and spin. On 2 cores a WRN-28-10
    extraction took 0.79 s wall and 1.45 CPU-s with 2 torch threads, 0.59 s and 0.97 CPU-s with 1.
    """
    if device.type != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


@contextlib.contextmanager
def torch_threads(limit: int | None) -> Iterator[None]:
    """Cap torch's intra-op threads at ``limit`` inside the block (never raise them), then restore them."""
    before = torch.get_num_threads()
    if limit is None or limit >= before:
        yield
        return
    torch.set_num_threads(limit)
    try:
        yield
    finally:
        torch.set_num_threads(before)
