"""The in-process backend: the same per-model steps as Ray, one model after another (debugging, no Ray)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pipeline.build.config import BuildConfig, BuildSummary
from pipeline.build.progress import BuildProgress
from pipeline.build.steps import BuildSteps, KeptCheckpoints, record_build_failure
from pipeline.dataset.store import DatasetStore
from pipeline.errors import describe
from pipeline.zoo.zoo_file import ZooEntry

log = logging.getLogger(__name__)


def build_local(entries: Sequence[ZooEntry], config: BuildConfig, store: DatasetStore,
                progress: BuildProgress, steps: BuildSteps | None = None) -> BuildSummary:
    """Process the models one after another in this process (no Ray)."""
    steps = steps or BuildSteps()
    summary = BuildSummary()
    kept = KeptCheckpoints(config.cache_max_gb * 1e9 if config.cache_max_gb else None)

    def fail(entry: ZooEntry, exc: BaseException, attempts: int, started: float) -> None:
        summary.failures.append(record_build_failure(store, entry, exc, attempts, time.perf_counter() - started))
        summary.failed += 1
        progress.model_done(failed=True)

    for entry in entries:
        started = time.perf_counter()
        try:  # downloads retry transient errors themselves
            fetched = steps.fetch(entry, config.cache_dir, config.mirror, config.policy(), progress.add_bytes)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a failures row
            fail(entry, exc, getattr(exc, "attempts", 1), started)
            continue
        summary.downloaded_bytes += fetched.downloaded_bytes
        summary.download_seconds += fetched.seconds
        for attempt in range(1, config.retries + 1):
            t = time.perf_counter()
            try:
                result = steps.extract(entry, fetched, store, config.device, config.force, config.keep_checkpoints,
                                       config.extract_timeout_s, config.probe)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a failures row
                if describe(exc)[2] and attempt < config.retries:
                    log.info("%s: transient %s, retrying", entry.model_id, type(exc).__name__)
                    continue
                if not config.keep_checkpoints:
                    fetched.delete_owned()
                fail(entry, exc, attempt, started)
                break
            summary.extract_seconds += time.perf_counter() - t
            summary.done += not result.skipped
            summary.skipped += result.skipped
            summary.filters += result.n_filters
            summary.add_probe(result.probed, result.probe_failure)
            progress.model_done(result.n_filters)
            if config.keep_checkpoints:
                kept.add(fetched)
            break
    return summary
