"""How hard a download tries and what it may cost: ``FetchPolicy``, enforced per file by ``TransferGuard``.

``host_slot`` caps the downloads in flight per host within one process (Google
Drive: ``drive_downloads``). Across a Ray build the same cap holds for the whole
cluster because the driver's scheduler (``build/scheduler.py``) starts at most that
many Drive downloads at once and pauses a host that asked to wait. Standard library
only (the build configuration builds a policy at start-up).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pipeline.errors import (
    CheckpointTooLargeError,
    DownloadDeadlineError,
    SizeMismatchError,
    StalledDownloadError,
)


@dataclass
class FetchPolicy:
    """Attempts, timeouts and backoff; the size cap, minimum rate and deadline (None or 0: no limit)."""

    retries: int = 3
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_bytes: int | None = 20 * 10**9
    """The largest checkpoint file accepted (announced or streamed)."""
    min_rate_bps: float = 10_000.0
    """Fail when fewer than ``min_rate_bps * rate_window_s`` bytes arrive in any ``rate_window_s``."""
    rate_window_s: float = 30.0
    deadline_s: float | None = 3600.0
    """Wall-clock budget of one model's download, all files and attempts together."""
    drive_downloads: int = 2
    """Google Drive downloads in flight at once in this process (0: no limit)."""
    host_downloads: int = 0
    """Downloads in flight at once from any other single host in this process (0: no limit)."""


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


class TransferGuard:
    """Checks one file's transfer against a policy: size cap, announced size, minimum rate, deadline.

    ``started`` is when the model's download began (the deadline counts from it);
    call ``start_attempt`` when a response starts, then ``add`` for each chunk.
    """

    def __init__(self, what: str, policy: FetchPolicy, started: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.policy, self.clock = what, policy, clock
        self.started = clock() if started is None else started
        self.offset = self.received = 0
        self.total: int | None = None
        self.samples: deque[tuple[float, int]] = deque()

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        if not self.policy.deadline_s:
            return None
        return self.policy.deadline_s - (self.clock() - self.started)

    def check_deadline(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise DownloadDeadlineError(f"{self.what}: not done after {self.policy.deadline_s:g} s "
                                        "(download deadline, --download-deadline)")

    def timeout(self, seconds: float) -> float:
        """A socket timeout that does not outlast the deadline."""
        left = self.remaining()
        return seconds if left is None else max(0.01, min(seconds, left))

    def check_announced(self, total: int | None) -> None:
        """Refuse up front a file whose announced size is over the cap."""
        cap = self.policy.max_bytes
        if total is not None and cap and total > cap:
            raise CheckpointTooLargeError(f"{self.what}: the server announces {_size(total)}, more than the "
                                          f"{_size(cap)} cap (--max-checkpoint-gb)")

    def start_attempt(self, offset: int, total: int | None) -> None:
        """A response begins: ``offset`` bytes are already on disk, ``total`` is the announced file size."""
        self.check_announced(total)
        self.offset, self.received, self.total = offset, 0, total
        self.samples = deque([(self.clock(), 0)])

    def add(self, n: int) -> None:
        """``n`` more bytes arrived: enforce the cap, the announced size, the deadline and the minimum rate."""
        self.received += n
        have, cap = self.offset + self.received, self.policy.max_bytes
        if cap and have > cap:
            raise CheckpointTooLargeError(f"{self.what}: more than the {_size(cap)} cap (--max-checkpoint-gb) "
                                          "received; download stopped")
        if self.total is not None and have > self.total:
            raise SizeMismatchError(f"{self.what}: received more than the {self.total} bytes the server announced")
        self.check_deadline()
        self._check_rate()

    def _check_rate(self) -> None:
        window, minimum = self.policy.rate_window_s, self.policy.min_rate_bps
        if not window or not minimum:
            return
        now = self.clock()
        self.samples.append((now, self.received))
        while len(self.samples) > 1 and self.samples[1][0] <= now - window:
            self.samples.popleft()
        since, at = self.samples[0]
        if since <= now - window and self.received - at < minimum * window:
            raise StalledDownloadError(f"{self.what}: stalled: {_size(self.received - at)} in the last {window:g} s "
                                       f"(minimum {_size(minimum)}/s, --min-download-rate)")


_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


@contextmanager
def host_slot(host: str, limit: int, guard: TransferGuard) -> Iterator[None]:
    """Hold one of ``limit`` download slots of ``host`` in this process (0: no limit), waiting until the deadline."""
    if limit <= 0:
        yield
        return
    with _SLOTS_LOCK:
        slots = _SLOTS.setdefault((host, limit), threading.BoundedSemaphore(limit))
    left = guard.remaining()
    if not slots.acquire(timeout=None if left is None else max(0.0, left)):
        raise DownloadDeadlineError(f"{guard.what}: no free download slot for {host} (at most {limit} at once) "
                                    f"before the {guard.policy.deadline_s:g} s deadline (--download-deadline)")
    try:
        yield
    finally:
        slots.release()
