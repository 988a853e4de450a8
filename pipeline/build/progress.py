"""A build's progress on stderr: a bar on a TTY, plain lines otherwise (pipeline/progress.py), nothing when disabled."""

from __future__ import annotations

import time

from pipeline.progress import progress_bar


class BuildProgress:
    """A progress bar on stderr: models done/failed/remaining, MB/s downloaded, filters/s, ETA."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.started = time.perf_counter()
        self.bytes = 0
        self.filters = 0
        self.failed = 0
        self.bar = progress_bar(total, "build", "models", enabled)

    def add_bytes(self, n: int) -> None:
        self.bytes += n

    def model_done(self, filters: int = 0, failed: bool = False) -> None:
        self.filters += filters
        self.failed += failed
        self.bar.update(1)
        self.refresh()

    def refresh(self) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"failed {self.failed}, {self.bytes / elapsed / 1e6:.1f} MB/s, "
                                 f"{self.filters / elapsed / 1e6:.2f} M filters/s", refresh=False)

    def close(self) -> None:
        self.refresh()
        self.bar.close()
