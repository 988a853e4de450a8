"""Build a filter dataset from a whole zoo: plan, fetch, extract, record - on Ray or in-process.

Both backends call the same per-model functions (``fetch_entry`` for the
download, ``extract_fetched`` for the extraction, ``record_build_failure`` for
failures), so they differ only in scheduling. Ray lives in
``pipeline.build.ray_runner``; the in-process backend here runs the same steps one
model after another (for debugging, and machines without Ray).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from pipeline.dataset.layout import StoredModel
from pipeline.dataset.store import DatasetStore
from pipeline.errors import describe
from pipeline.fetch.download import FetchedCheckpoint, FetchPolicy, fetch_entry
from pipeline.zoo.zoo_file import ZooEntry, load_zoo_file, select

if TYPE_CHECKING:
    from pipeline.extract.extractor import ExtractResult

log = logging.getLogger(__name__)


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
    stall_timeout_s: float = 300.0
    progress: bool = True

    def policy(self) -> FetchPolicy:
        return FetchPolicy(retries=self.retries, read_timeout_s=self.timeout_s)


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
    wait_download_seconds: float = 0.0
    busy_extract_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)

    def __add__(self, other: BuildSummary) -> BuildSummary:
        values = {k: getattr(self, k) + getattr(other, k) for k in asdict(self) if k != "failures"}
        return BuildSummary(**values, failures=self.failures + other.failures)

    def exit_code(self, allow_failures: bool = False) -> int:
        return 3 if self.failed and not allow_failures else 0

    def text(self) -> str:
        lines = [f"{self.done} models extracted, {self.skipped} skipped (already complete), {self.failed} failed "
                 f"in {self.wall_seconds:.1f}s: {self.filters} filters, "
                 f"{self.downloaded_bytes / 1e6:.1f} MB downloaded"]
        if self.wall_seconds > 0 and self.done:
            lines.append(f"  {60 * self.done / self.wall_seconds:.1f} models/min, "
                         f"{self.filters / self.wall_seconds / 1e6:.2f} M filters/s")
        for failure in self.failures:
            lines.append(f"  FAILED {failure['model_id']}: [{failure['stage']}] {failure['error_class']}: "
                         f"{failure['message']}")
        return "\n".join(lines)


class BuildProgress:
    """A progress bar on stderr: models done/failed/remaining, MB/s downloaded, filters/s, ETA."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.started = time.perf_counter()
        self.bytes = 0
        self.filters = 0
        self.failed = 0
        self.bar = tqdm(total=total, unit="model", desc="build", file=sys.stderr, disable=not enabled or None,
                        dynamic_ncols=True)

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


def load_entries(zoo: str | Sequence[ZooEntry], model_info: str | None = None, datasets: Sequence[str] | None = None,
                 threat_models: Sequence[str] | None = None, models: Sequence[str] | None = None,
                 limit: int | None = None) -> list[ZooEntry]:
    """Entries of a zoo file, of the built-in ``robustbench`` catalog, or given directly; then filtered."""
    if isinstance(zoo, str):
        if zoo == "robustbench":
            from pipeline.zoo.robustbench import robustbench_catalog

            entries = robustbench_catalog(model_info=model_info)
        else:
            entries = load_zoo_file(zoo)
    else:
        entries = list(zoo)
    return select(entries, datasets, threat_models, models, limit)


def can_skip(entry: ZooEntry, complete: dict[str, StoredModel]) -> bool:
    """Skip a model already complete under the current schema, with the same expected digest (or,
    when the zoo gives none, the same sources); a changed checkpoint is still caught after download."""
    model = complete.get(entry.id)
    if model is None:
        return False
    if entry.sha256:
        return model.checkpoint_sha256 == entry.sha256.lower()
    return model.source_uri == " ".join(entry.sources)


def plan(entries: Sequence[ZooEntry], store: DatasetStore, force: bool) -> tuple[list[ZooEntry], list[ZooEntry]]:
    """(entries to process, entries skipped as complete)."""
    if force:
        return list(entries), []
    complete = store.complete_models()
    todo = [e for e in entries if not can_skip(e, complete)]
    skipped = [e for e in entries if can_skip(e, complete)]
    return todo, skipped


def extract_fetched(entry: ZooEntry, fetched: FetchedCheckpoint, store: DatasetStore, device: str,
                    force: bool = False, keep_checkpoints: bool = False) -> ExtractResult:
    """The per-model unit every backend runs after the download: extract, then free the cache."""
    from pipeline.extract.extractor import extract_model  # torch: only where extraction runs

    request = entry.request(fetched.paths)
    request.digest = (fetched.sha256, fetched.n_bytes)  # hashed by the download: not read again
    result = extract_model(request, store, device=device, force=force, progress=False)
    if not keep_checkpoints:
        fetched.delete_owned()
    return result


def record_build_failure(store: DatasetStore, entry: ZooEntry, exc: BaseException, attempts: int,
                         duration_s: float) -> dict:
    """Write the failures row of a zoo entry and return it (for the summary)."""
    return store.record_failure(entry.id, entry.dataset, " ".join(entry.sources), exc, attempts, duration_s)


class KeptCheckpoints:
    """Checkpoints kept after extraction (--keep-checkpoints), evicted oldest first beyond a byte budget.

    Only files whose model is done are ever evicted, so a checkpoint waiting for
    its extraction is never deleted under it.
    """

    def __init__(self, max_bytes: float | None) -> None:
        self.max_bytes = max_bytes
        self.kept: list[tuple[str, int]] = []

    def add(self, fetched: FetchedCheckpoint) -> list[str]:
        """Remember a finished model's cached files; return the files evicted to stay within budget."""
        self.kept += [(p, Path(p).stat().st_size) for p, owned in zip(fetched.paths, fetched.owned, strict=True)
                      if owned and Path(p).exists()]
        evicted = []
        while self.max_bytes is not None and self.kept and sum(n for _, n in self.kept) > self.max_bytes:
            path, _ = self.kept.pop(0)
            Path(path).unlink(missing_ok=True)
            evicted.append(path)
        return evicted


def build_local(entries: Sequence[ZooEntry], config: BuildConfig, store: DatasetStore,
                progress: BuildProgress) -> BuildSummary:
    """Process the models one after another in this process (no Ray)."""
    summary = BuildSummary()
    kept = KeptCheckpoints(config.cache_max_gb * 1e9 if config.cache_max_gb else None)

    def fail(entry: ZooEntry, exc: BaseException, attempts: int, started: float) -> None:
        summary.failures.append(record_build_failure(store, entry, exc, attempts, time.perf_counter() - started))
        summary.failed += 1
        progress.model_done(failed=True)

    for entry in entries:
        started = time.perf_counter()
        try:  # downloads retry transient errors themselves
            fetched = fetch_entry(entry, config.cache_dir, config.mirror, config.policy(), progress.add_bytes)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a failures row
            fail(entry, exc, getattr(exc, "attempts", 1), started)
            continue
        summary.downloaded_bytes += fetched.downloaded_bytes
        summary.download_seconds += fetched.seconds
        for attempt in range(1, config.retries + 1):
            t = time.perf_counter()
            try:
                result = extract_fetched(entry, fetched, store, config.device, config.force, config.keep_checkpoints)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a failures row
                if describe(exc)[2] and attempt < config.retries:
                    log.info("%s: transient %s, retrying", entry.id, type(exc).__name__)
                    continue
                if not config.keep_checkpoints:
                    fetched.delete_owned()
                fail(entry, exc, attempt, started)
                break
            summary.extract_seconds += time.perf_counter() - t
            summary.done += not result.skipped
            summary.skipped += result.skipped
            summary.filters += result.n_filters
            progress.model_done(result.n_filters)
            if config.keep_checkpoints:
                kept.add(fetched)
            break
    return summary
