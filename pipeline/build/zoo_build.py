"""``build_zoo``: plan a zoo against the dataset, run the chosen runner, record the build in the manifest.

The runners (``pipeline.build.local_runner.build_local``, ``pipeline.build.ray_runner.build_on_ray``)
run the same per-model steps (``pipeline.build.steps.BuildSteps``) and differ only in scheduling; this
module picks one and hands it the steps.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence

from pipeline import __version__
from pipeline.build.config import BuildConfig, BuildSummary
from pipeline.build.local_runner import build_local
from pipeline.build.plan import load_entries, plan
from pipeline.build.progress import BuildProgress
from pipeline.build.steps import BuildSteps
from pipeline.dataset.layout import utcnow
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ConfigError
from pipeline.extract.row_update import update_row
from pipeline.zoo.trust import require_consent
from pipeline.zoo.zoo_file import ZooEntry

log = logging.getLogger(__name__)


def update_skipped_rows(store: DatasetStore, skipped: Sequence[ZooEntry]) -> list[str]:
    """Write the zoo's new metadata (accuracies, architecture, paper...) into complete models' rows, no download."""
    updated = []
    for entry in skipped:
        changed = update_row(store, entry.model_id, entry.request([]))
        if changed:
            log.info("%s: updated %s from the zoo", entry.model_id, ", ".join(changed))
            updated.append(entry.model_id)
    return updated


def build_zoo(zoo: str | Sequence[ZooEntry], out: str, *, backend: str = "ray", device: str = "auto",
              force: bool = False, allow_failures: bool = False, progress: bool = True,
              model_info: str | None = None, datasets: Sequence[str] | None = None,
              threat_models: Sequence[str] | None = None, models: Sequence[str] | None = None,
              limit: int | None = None, command: str | None = None, steps: BuildSteps | None = None,
              **options: object) -> BuildSummary:
    """Build (or complete) the filter dataset at ``out`` from a zoo; returns the summary.

    ``zoo`` is a zoo YAML path, ``"robustbench"``, or a list of entries. Failed
    models are recorded in ``failures/`` and the build goes on; ``allow_failures``
    is accepted for symmetry with the CLI, which turns failures into exit code 3.
    """
    del allow_failures  # the caller decides what failures mean for its exit code
    if backend not in ("ray", "local"):
        raise ConfigError(f"unknown backend {backend!r}; use ray or local")
    config = BuildConfig(out=out, backend=backend, device=device, force=force, progress=progress,
                         **options)  # type: ignore[arg-type]
    entries = load_entries(zoo, model_info, datasets, threat_models, models, limit)
    require_consent(entries, config.trust_zoo_code)  # before anything downloads or runs
    store = DatasetStore(out)
    started = time.perf_counter()
    if config.probe is not None:
        from pipeline.build.transfer_prep import with_reference

        config.probe = with_reference(config.probe, entries)
    probe_key = config.probe.key() if config.probe is not None else None
    todo, skipped = plan(entries, store, config.force, mirror=config.mirror, probe_key=probe_key)
    if config.probe is not None and todo:
        from pipeline.build.transfer_prep import prepare_transfer  # torch: only for probe runs

        config.probe = prepare_transfer(entries, config, store, steps or BuildSteps())
    log.info("%d models: %d to process, %d already complete", len(entries), len(todo), len(skipped))
    updated = update_skipped_rows(store, skipped)
    bar = BuildProgress(len(todo), enabled=progress)
    try:
        if not todo:
            summary = BuildSummary()
        elif backend == "local":
            summary = build_local(todo, config, store, bar, steps or BuildSteps())
        else:
            from pipeline.build.ray_runner import build_on_ray

            summary = build_on_ray(todo, config, store, bar, steps or BuildSteps())
    finally:
        bar.close()
    summary.skipped += len(skipped)
    summary.wall_seconds = time.perf_counter() - started
    store.update_manifest({
        "command": command or "build", "backend": backend, "host": socket.gethostname(),
        "pipeline_version": __version__, "finished_at": utcnow().isoformat(), "models": len(entries),
        "done": summary.done, "skipped": summary.skipped, "failed": summary.failed,
        "seconds": round(summary.wall_seconds, 3), "metadata_updated": len(updated),
    })
    store.write_index()  # readers of a large root then read two row files, not one per model
    return summary
