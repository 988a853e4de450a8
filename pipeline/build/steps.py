"""The per-model steps every backend runs: fetch, extract, record a failure.

``BuildSteps`` bundles them; the local runner calls them in a loop and the Ray
runner inside its tasks and actors, so backends differ only in scheduling (the
datatrove / img2dataset distributor pattern). Tests pass their own steps.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.build.plan import recorded_validators
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ArchitectureBuildError, ExtractionTimeoutError
from pipeline.fetch.download import FetchedCheckpoint, fetch_entry, remove_if_empty
from pipeline.fetch.validators import changed, dataset_records, drop_record
from pipeline.zoo.zoo_file import ZooEntry

if TYPE_CHECKING:
    from pipeline.extract.extractor import ExtractResult
    from pipeline.probe.config import ProbeConfig


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise ExtractionTimeoutError in this thread after ``seconds`` (main thread only: SIGALRM; 0: no limit).

    Interrupts Python code that hangs (a ``signal.pause``, a loop); the alarm repeats
    every second after the deadline, so code that catches it and tries again is
    interrupted again, and whatever error escapes is reported as the timeout. Code
    stuck inside C is stopped by the Ray runner, which kills the actor from the driver.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    expired = []
    message = f"{what}: extraction took longer than {seconds:g}s (--extract-timeout)"

    def expire(signum: int, frame: object) -> None:
        expired.append(True)
        raise ExtractionTimeoutError(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    except BaseException as exc:
        if expired and not isinstance(exc, KeyboardInterrupt):
            raise ExtractionTimeoutError(message) from None
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def extract_fetched(entry: ZooEntry, fetched: FetchedCheckpoint, store: DatasetStore, device: str,
                    force: bool = False, keep_checkpoints: bool = False, timeout_s: float = 0.0,
                    probe: ProbeConfig | None = None) -> ExtractResult:
    """The per-model unit every backend runs after the download: extract, then free the cache.

    Architecture code that exits or hangs fails this model only (ArchitectureBuildError,
    ExtractionTimeoutError), so the build goes on.
    """
    from pipeline.extract.extractor import extract_model  # torch: only where extraction runs

    request = entry.request(fetched.paths)
    request.digest = (fetched.sha256, fetched.n_bytes)  # hashed by the download: not read again
    records = dataset_records(fetched.validators)
    if records:
        request.metadata["source_validators"] = records
    force = force or row_out_of_date(entry, fetched, store, records)
    try:
        with time_limit(timeout_s, entry.model_id):
            result = extract_model(request, store, device=device, force=force, progress=False, probe=probe)
    except SystemExit as exc:  # e.g. a zoo's module:factory that calls sys.exit
        raise ArchitectureBuildError(f"{entry.model_id}: the architecture code exited (exit code {exc.code!r})") \
            from None
    if not keep_checkpoints:
        fetched.delete_owned()
    return result


def row_out_of_date(entry: ZooEntry, fetched: FetchedCheckpoint, store: DatasetStore, records: list[dict]) -> bool:
    """Same bytes as the committed model, but its row names other sources or validators: rewrite it (else the
    next plan would fetch it again, and again)."""
    stored = store.stored_model(entry.model_id)
    if entry.sha256 or stored is None or stored.checkpoint_sha256 != fetched.sha256:
        return False  # verified by the zoo's digest, or extracted anyway
    if stored.source_uri != " ".join(entry.sources):
        return True
    recorded = recorded_validators(store, entry.model_id)
    return bool(records) and (not recorded or changed(recorded, records))


def record_build_failure(store: DatasetStore, entry: ZooEntry, exc: BaseException, attempts: int,
                         duration_s: float) -> dict:
    """Write the failures row of a zoo entry and return it (for the summary)."""
    return store.record_failure(entry.model_id, entry.dataset, " ".join(entry.sources), exc, attempts, duration_s)


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
            drop_record(Path(path))
            remove_if_empty(Path(path).parent)
            evicted.append(path)
        return evicted


@dataclass(frozen=True)
class BuildSteps:
    """The functions a runner calls for one model (module-level functions, so Ray can ship them)."""

    fetch: Callable[..., FetchedCheckpoint] = fetch_entry
    """``fetch(entry, cache_dir, mirror, policy, on_bytes=None) -> FetchedCheckpoint``"""
    extract: Callable[..., ExtractResult] = extract_fetched
    """``extract(entry, fetched, store, device, force, keep_checkpoints, timeout_s, probe) -> ExtractResult``"""
