"""What a build is asked to do (``BuildConfig``) and what it did (``BuildSummary``, merged with ``+``).

Standard library only: the CLI reads its defaults from ``BuildConfig`` at start-up.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.build.actor_time import ActorTime

if TYPE_CHECKING:
    from pipeline.fetch.policy import FetchPolicy
    from pipeline.probe.config import ProbeConfig


def default_checkpoint_cache() -> Path:
    return Path(os.environ.get("FILTERLENS_CACHE", Path.home() / ".cache" / "filterlens")) / "checkpoints"


@dataclass
class BuildConfig:
    """Everything a build needs besides the zoo."""

    out: str
    backend: str = "ray"
    address: str | None = None
    device: str = "auto"
    extractors: int | None = None
    max_downloads: int = 4
    prefetch: int = 2
    cache_dir: str = field(default_factory=lambda: str(default_checkpoint_cache()))
    cache_max_gb: float | None = None
    keep_checkpoints: bool = False
    mirror: str | None = None
    force: bool = False
    retries: int = 3
    timeout_s: float = 60.0
    max_checkpoint_gb: float = 20.0
    """Largest checkpoint file accepted (0: no cap)."""
    min_download_rate_kbs: float = 10.0
    """A download slower than this (KB/s) over ``rate_window_s`` fails as stalled (0: no minimum)."""
    rate_window_s: float = 30.0
    download_deadline_s: float = 3600.0
    """Wall-clock budget of one model's download, all files and attempts (0: none)."""
    drive_downloads: int = 2
    """Google Drive downloads in flight at once per process (0: no limit; not shared across Ray workers)."""
    stall_timeout_s: float = 300.0
    extract_timeout_s: float = 3600.0
    """Longest one model's extraction may take before it fails with ExtractionTimeoutError (0: no limit)."""
    trust_zoo_code: bool = False
    """Run ``module:factory`` architectures named by the zoo (pipeline/zoo/trust.py)."""
    progress: bool = True
    probe: ProbeConfig | None = None
    """Also probe every model's first stage (pipeline/probe/); None: no probe."""

    def policy(self) -> FetchPolicy:
        from pipeline.fetch.policy import FetchPolicy

        return FetchPolicy(retries=self.retries, read_timeout_s=self.timeout_s,
                           max_bytes=int(self.max_checkpoint_gb * 1e9) or None,
                           min_rate_bps=self.min_download_rate_kbs * 1e3, rate_window_s=self.rate_window_s,
                           deadline_s=self.download_deadline_s or None, drive_downloads=self.drive_downloads)


@dataclass
class BuildSummary:
    """Counts and timings of a build; summaries of parts merge with ``+``."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    filters: int = 0
    downloaded_bytes: int = 0
    download_seconds: float = 0.0
    extract_seconds: float = 0.0
    wall_seconds: float = 0.0
    probed: int = 0
    probe_failed: int = 0
    failures: list[dict] = field(default_factory=list)
    actors: list[ActorTime] = field(default_factory=list)
    """Per extractor actor (Ray builds): models, filters, busy and idle seconds."""

    def __add__(self, other: BuildSummary) -> BuildSummary:
        values = {k: getattr(self, k) + getattr(other, k) for k in asdict(self) if k not in ("failures", "actors")}
        return BuildSummary(**values, failures=self.failures + other.failures, actors=self.actors + other.actors)

    def add_probe(self, probed: bool, failure: dict | None) -> None:
        """Count one model's probe outcome (a failed probe is listed with the failures)."""
        self.probed += bool(probed)
        if failure is not None:
            self.probe_failed += 1
            self.failures.append(failure)

    def exit_code(self, allow_failures: bool = False) -> int:
        return 3 if (self.failed or self.probe_failed) and not allow_failures else 0

    def text(self) -> str:
        lines = [f"{self.done} models extracted, {self.skipped} skipped (already complete), {self.failed} failed "
                 f"in {self.wall_seconds:.1f}s: {self.filters} filters, "
                 f"{self.downloaded_bytes / 1e6:.1f} MB downloaded"]
        if self.probed or self.probe_failed:
            lines.append(f"  probed {self.probed} models, {self.probe_failed} probes failed (extractions kept)")
        if self.wall_seconds > 0 and self.done:
            lines.append(f"  {60 * self.done / self.wall_seconds:.1f} models/min, "
                         f"{self.filters / self.wall_seconds / 1e6:.2f} M filters/s")
        lines.extend("  " + actor.text() for actor in self.actors)
        for failure in self.failures:
            lines.append(f"  FAILED {failure['model_id']}: [{failure['stage']}] {failure['error_class']}: "
                         f"{failure['message']}")
        return "\n".join(lines)
