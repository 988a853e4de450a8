"""Ray orchestration of a build: download tasks feed a bounded pool of extractor actors.

The only module (with ``jobs/``) that imports Ray. Design:

* extractor actors: one GPU each when the cluster has GPUs, CPU actors otherwise
  (decided here from ``ray.cluster_resources()``, never a request that could wait
  forever); they receive file paths, never tensors, and write their model's rows
  straight to the dataset;
* download tasks (``num_cpus=0``, I/O bound) are assigned to an actor when
  submitted and scheduled on that actor's node, so the file is local to it; at
  most ``max_downloads`` run at once and at most ``prefetch`` wait per actor
  (backpressure bounds disk and memory);
* failures are values, not exceptions: a failed model becomes a failures row and
  the build goes on; a dead worker or actor is retried (transient), a bad
  checkpoint is not (deterministic);
* a watchdog reports when nothing completes for ``stall_timeout_s`` and fails
  fast when actors cannot be scheduled at all.

What runs where next is decided by ``build/scheduler.py`` (no Ray, unit-tested);
``RayBuild`` only submits, waits and reports outcomes back. The per-model work is
the ``BuildSteps`` it is given, the same functions the local runner calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import ray
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.build.actor_time import ActorClock
from pipeline.build.config import BuildConfig, BuildSummary
from pipeline.build.progress import BuildProgress
from pipeline.build.scheduler import DRIVE_HOST, BuildScheduler, Job
from pipeline.build.steps import BuildSteps, KeptCheckpoints, record_build_failure
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ConfigError, ExtractionTimeoutError, FilterlensError, SchedulingError
from pipeline.fetch.download import FetchedCheckpoint
from pipeline.fetch.policy import FetchPolicy
from pipeline.ray_cluster import connect
from pipeline.zoo.zoo_file import ZooEntry

log = logging.getLogger(__name__)


class RemoteFailure(FilterlensError):
    """An error raised inside a Ray task or actor, carried back as a value."""

    def __init__(self, error_class: str, message: str, stage: str, transient: bool, attempts: int = 1,
                 retry_after: float | None = None) -> None:
        super().__init__(message, attempts=attempts)
        self.error_class, self.stage, self.transient = error_class, stage, transient
        self.retry_after = retry_after


def _failure_value(exc: BaseException) -> dict:
    from pipeline.errors import describe

    stage, error_class, transient = describe(exc)
    return {"error": {"error_class": error_class, "message": str(exc).splitlines()[0] if str(exc) else error_class,
                      "stage": stage, "transient": transient, "attempts": getattr(exc, "attempts", 1),
                      "retry_after": getattr(exc, "retry_after", None)}}


def _as_failure(value: dict) -> RemoteFailure:
    error = value["error"]
    return RemoteFailure(error["error_class"], error["message"], error["stage"], error["transient"],
                         error["attempts"], error.get("retry_after"))


@ray.remote(num_cpus=0, max_retries=2)
def download_task(fetch: Callable, entry: dict, cache_dir: str, mirror: str | None, policy: dict) -> dict:
    """Fetch one entry's checkpoint on this node with ``fetch``; returns the FetchedCheckpoint as a dict or an error."""
    try:
        fetched = fetch(ZooEntry(**entry), cache_dir, mirror, FetchPolicy(**policy))
        return {"fetched": asdict(fetched)}
    except Exception as exc:  # noqa: BLE001 - failures travel as values
        return _failure_value(exc)


MAX_ACTOR_RESTARTS = 3


def _preload_extraction() -> None:
    """Import what an extraction needs (an import error surfaces in the first extraction, where it is recorded)."""
    import contextlib

    with contextlib.suppress(Exception):
        import pipeline.extract.extractor  # noqa: F401
DRIVER_TIMEOUT_GRACE_S = 30.0
"""How long past --extract-timeout the driver waits for the actor's own alarm before killing the actor."""


@ray.remote(max_restarts=MAX_ACTOR_RESTARTS, max_task_retries=0)
class Extractor:
    """Holds the dataset handle and the device; extracts one model at a time."""

    def __init__(self, extract: Callable, out: str, device: str, threads: int, keep_checkpoints: bool,
                 cache_budget_bytes: float | None, timeout_s: float = 0.0, probe: object | None = None) -> None:
        import threading

        import torch

        torch.set_num_threads(max(1, threads))
        # the extraction modules (~0.5 s of imports) load while the first download runs, not inside the first model
        threading.Thread(target=_preload_extraction, name="preload", daemon=True).start()
        self.extract_step = extract
        self.store = DatasetStore(out)
        self.device = device
        self.keep_checkpoints = keep_checkpoints
        self.kept = KeptCheckpoints(cache_budget_bytes)
        self.timeout_s = timeout_s
        self.probe = probe

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def extract(self, entry: dict, fetched: dict, force: bool) -> dict:
        checkpoint = FetchedCheckpoint(**fetched)
        try:
            result = self.extract_step(ZooEntry(**entry), checkpoint, self.store, self.device, force,
                                       self.keep_checkpoints, self.timeout_s, self.probe)
            if self.keep_checkpoints:
                self.kept.add(checkpoint)
            return {"result": asdict(result)}
        except Exception as exc:  # noqa: BLE001 - failures travel as values
            failure = _failure_value(exc)
            if not failure["error"]["transient"] and not self.keep_checkpoints:
                checkpoint.delete_owned()  # it will not be retried: free the cache on this node
            return failure


@dataclass
class ActorPlan:
    device: str
    count: int
    num_cpus: float
    num_gpus: float


def plan_actors(config: BuildConfig, resources: dict) -> ActorPlan:
    """How many extractor actors, on which device, with which resources - from what the cluster has."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if config.device.startswith("cuda") and gpus < 1:
        raise SchedulingError("--device cuda was requested but the Ray cluster has no GPU; "
                              "use --device cpu or auto, or add GPU workers")
    use_gpu = gpus >= 1 and config.device in ("auto", "cuda")
    if config.device not in ("auto", "cpu") and not config.device.startswith("cuda"):
        raise ConfigError(f"unknown device {config.device!r}; use auto, cpu or cuda")
    if use_gpu:
        count = config.extractors or int(gpus)
        if count > gpus:
            raise SchedulingError(f"{count} GPU extractors asked for, but the cluster has {gpus:g} GPUs")
        return ActorPlan("cuda", count, min(1.0, cpus / count) if cpus else 0.0, 1.0)
    if cpus < 1:
        raise SchedulingError("the Ray cluster has no CPU to run extractor actors on")
    count = config.extractors or max(1, int(cpus // 2))
    if count > cpus:
        raise SchedulingError(f"{count} CPU extractors asked for, but the cluster has {cpus:g} CPUs; "
                              f"use --extractors {int(cpus)} or fewer")
    return ActorPlan("cpu", count, max(1.0, float(int(cpus // count))), 0.0)


def _start_actors(plan: ActorPlan, config: BuildConfig, store: DatasetStore, steps: BuildSteps) -> tuple[list, list[str]]:
    budget = config.cache_max_gb * 1e9 / plan.count if config.cache_max_gb else None  # each actor's share
    actors = [Extractor.options(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus).remote(
        steps.extract, store.uri, plan.device, int(plan.num_cpus) or 1, config.keep_checkpoints, budget,
        config.extract_timeout_s, config.probe)
        for _ in range(plan.count)]
    refs = [a.node_id.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=config.stall_timeout_s)
    if len(ready) < len(refs):
        for actor in actors:
            ray.kill(actor)
        raise SchedulingError(
            f"{len(refs) - len(ready)} of {plan.count} extractor actors ({plan.num_cpus:g} CPU, {plan.num_gpus:g} GPU "
            f"each) could not start within {config.stall_timeout_s:.0f}s; cluster resources: "
            f"{ray.cluster_resources()}, available: {ray.available_resources()}")
    return actors, ray.get(refs)


class RayBuild:
    """One build on a Ray cluster: start actors, then submit, wait and report until the scheduler is done."""

    def __init__(self, entries: list[ZooEntry], config: BuildConfig, store: DatasetStore,
                 progress: BuildProgress, steps: BuildSteps) -> None:
        self.config, self.store, self.progress, self.steps = config, store, progress, steps
        self.entries = entries
        self.summary = BuildSummary()
        self.policy = asdict(config.policy())
        self.downloading: dict[ray.ObjectRef, Job] = {}
        self.extracting: dict[ray.ObjectRef, Job] = {}
        self.actors: list = []
        self.nodes: list[str] = []
        self.extract_started: dict[ray.ObjectRef, float] = {}
        self.timed_out: set[ray.ObjectRef] = set()

    def run(self) -> BuildSummary:
        connect(self.config.address)
        plan = plan_actors(self.config, ray.cluster_resources())
        log.info("%d extractor actor(s) on %s (%g CPU, %g GPU each)", plan.count, plan.device, plan.num_cpus,
                 plan.num_gpus)
        self.actors, self.nodes = _start_actors(plan, self.config, self.store, self.steps)
        self.clock = ActorClock(len(self.actors), time.perf_counter())
        self.scheduler = BuildScheduler(
            self.entries, len(self.actors), max_downloads=self.config.max_downloads, prefetch=self.config.prefetch,
            retries=self.config.retries, max_actor_restarts=MAX_ACTOR_RESTARTS, on_failure=self._record_failure,
            host_limits={DRIVE_HOST: self.config.drive_downloads})
        try:
            self._loop()
        finally:
            self.summary.actors = self.clock.close(time.perf_counter())
            for actor in self.actors:
                ray.kill(actor)
        return self.summary

    def _loop(self) -> None:
        last_progress = time.perf_counter()
        while not self.scheduler.finished():
            self._submit()
            self.scheduler.strand_if_no_actor()
            if not (self.downloading or self.extracting):
                if self.scheduler.finished() or not any(self.scheduler.alive):
                    break
                time.sleep(0.5 if self.scheduler.waiting_for_a_host() else 0)  # a host asked to wait
                continue
            done, _ = ray.wait([*self.downloading, *self.extracting], num_returns=1, timeout=1.0)
            now = time.perf_counter()
            for ref in done:
                last_progress = now
                if ref in self.downloading:
                    self._download_finished(ref)
                else:
                    self._extraction_finished(ref)
            self._stop_overdue(now)
            self.progress.refresh()
            self.progress.bar.refresh()
            if now - last_progress > self.config.stall_timeout_s:
                self._report_stall(now - last_progress)
                last_progress = now

    def _submit(self) -> None:
        for job in self.scheduler.downloads_to_start():
            strategy = NodeAffinitySchedulingStrategy(self.nodes[job.actor], soft=True)
            ref = download_task.options(scheduling_strategy=strategy).remote(
                self.steps.fetch, asdict(job.entry), self.config.cache_dir, self.config.mirror, self.policy)
            self.downloading[ref] = job
        for job in self.scheduler.extractions_to_start():
            ref = self.actors[job.actor].extract.remote(asdict(job.entry), job.fetched, self.config.force)
            self.extracting[ref] = job
            self.extract_started[ref] = time.perf_counter()
            self.clock.started(job.actor, self.extract_started[ref])

    def _download_finished(self, ref: ray.ObjectRef) -> None:
        job = self.downloading.pop(ref)
        try:
            value = ray.get(ref)
        except (RayTaskError, WorkerCrashedError) as exc:
            self.scheduler.download_failed(job, exc, transient=True)
            return
        if "error" in value:  # retried inside the task already; again here only after a host's "wait"
            failure = _as_failure(value)
            self.scheduler.download_failed(job, failure, transient=failure.transient and bool(failure.retry_after))
            return
        fetched = value["fetched"]
        self.summary.downloaded_bytes += fetched["downloaded_bytes"]
        self.summary.download_seconds += fetched["seconds"]
        self.progress.add_bytes(fetched["downloaded_bytes"])
        self.scheduler.download_done(job, fetched)

    def _stop_overdue(self, now: float) -> None:
        """Kill (Ray restarts it) an actor whose extraction outlived the limit plus a grace the actor's own
        alarm did not meet: architecture code stuck in C, or one that ignores signals."""
        if self.config.extract_timeout_s <= 0:
            return
        limit = self.config.extract_timeout_s + DRIVER_TIMEOUT_GRACE_S
        for ref, started in list(self.extract_started.items()):
            if ref in self.extracting and ref not in self.timed_out and now - started > limit:
                job = self.extracting[ref]
                log.warning("%s: extraction still running after %.0fs; stopping its actor", job.entry.model_id,
                            now - started)
                self.timed_out.add(ref)
                ray.kill(self.actors[job.actor], no_restart=False)

    def _extraction_finished(self, ref: ray.ObjectRef) -> None:
        job = self.extracting.pop(ref)
        self.extract_started.pop(ref, None)
        try:
            value = ray.get(ref)
        except RayActorError as exc:
            self.clock.finished(job.actor, time.perf_counter(), counted=False)
            if ref in self.timed_out:
                self.timed_out.discard(ref)
                self.scheduler.extraction_failed(job, ExtractionTimeoutError(
                    f"{job.entry.model_id}: extraction took longer than {self.config.extract_timeout_s:g}s "
                    "(--extract-timeout); its actor was stopped"), transient=False)
                return
            alive = self.scheduler.actor_died(job, exc)
            log.warning("extractor actor %d died while extracting %s (%s)%s", job.actor, job.entry.model_id,
                        type(exc).__name__, "" if alive else "; it will not be restarted")
            return
        result = value.get("result") or {}
        self.clock.finished(job.actor, time.perf_counter(), filters=result.get("n_filters", 0),
                            extract_s=result.get("seconds", 0.0), counted=bool(result) and not result["skipped"])
        if "error" in value:
            failure = _as_failure(value)
            self.scheduler.extraction_failed(job, failure, transient=failure.transient)
            return
        self.scheduler.extraction_done(job)
        self.summary.done += not result["skipped"]
        self.summary.skipped += result["skipped"]
        self.summary.filters += result["n_filters"]
        self.summary.add_probe(result["probed"], result["probe_failure"])
        self.summary.extract_seconds += result["seconds"]
        self.progress.model_done(result["n_filters"])

    def _record_failure(self, job: Job, exc: BaseException, attempts: int, duration_s: float) -> None:
        self.summary.failures.append(record_build_failure(self.store, job.entry, exc, attempts, duration_s))
        self.summary.failed += 1
        self.progress.model_done(failed=True)

    def _report_stall(self, seconds: float) -> None:
        """Say what the build is waiting for instead of hanging silently."""
        log.warning(
            "no model finished in the last %.0fs: %d downloads in flight (%s), %d extractions in flight (%s); "
            "cluster resources %s, available %s", seconds, len(self.downloading),
            ", ".join(j.entry.model_id for j in list(self.downloading.values())[:5]), len(self.extracting),
            ", ".join(j.entry.model_id for j in list(self.extracting.values())[:5]), ray.cluster_resources(),
            ray.available_resources())


def build_on_ray(entries: list[ZooEntry], config: BuildConfig, store: DatasetStore,
                 progress: BuildProgress, steps: BuildSteps | None = None) -> BuildSummary:
    """Run a build on the connected (or a new local) Ray cluster."""
    return RayBuild(entries, config, store, progress, steps or BuildSteps()).run()
