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
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass

import ray
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.build.runner import (
    BuildConfig,
    BuildProgress,
    BuildSummary,
    KeptCheckpoints,
    extract_fetched,
    record_build_failure,
)
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ConfigError, FilterlensError, SchedulingError
from pipeline.fetch.download import FetchedCheckpoint, FetchPolicy, fetch_entry
from pipeline.ray_cluster import connect
from pipeline.zoo.zoo_file import ZooEntry

log = logging.getLogger(__name__)


class RemoteFailure(FilterlensError):
    """An error raised inside a Ray task or actor, carried back as a value."""

    def __init__(self, error_class: str, message: str, stage: str, transient: bool, attempts: int = 1) -> None:
        super().__init__(message, attempts=attempts)
        self.error_class, self.stage, self.transient = error_class, stage, transient


def _failure_value(exc: BaseException) -> dict:
    from pipeline.errors import describe

    stage, error_class, transient = describe(exc)
    return {"error": {"error_class": error_class, "message": str(exc).splitlines()[0] if str(exc) else error_class,
                      "stage": stage, "transient": transient, "attempts": getattr(exc, "attempts", 1)}}


def _as_failure(value: dict) -> RemoteFailure:
    error = value["error"]
    return RemoteFailure(error["error_class"], error["message"], error["stage"], error["transient"],
                         error["attempts"])


@ray.remote(num_cpus=0, max_retries=2)
def download_task(entry: dict, cache_dir: str, mirror: str | None, policy: dict) -> dict:
    """Fetch one entry's checkpoint on this node; returns the FetchedCheckpoint as a dict or an error value."""
    try:
        fetched = fetch_entry(ZooEntry(**entry), cache_dir, mirror, FetchPolicy(**policy))
        return {"fetched": asdict(fetched)}
    except Exception as exc:  # noqa: BLE001 - failures travel as values
        return _failure_value(exc)


MAX_ACTOR_RESTARTS = 3


@ray.remote(max_restarts=MAX_ACTOR_RESTARTS, max_task_retries=0)
class Extractor:
    """Holds the dataset handle and the device; extracts one model at a time."""

    def __init__(self, out: str, device: str, threads: int, keep_checkpoints: bool,
                 cache_budget_bytes: float | None) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.store = DatasetStore(out)
        self.device = device
        self.keep_checkpoints = keep_checkpoints
        self.kept = KeptCheckpoints(cache_budget_bytes)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def extract(self, entry: dict, fetched: dict, force: bool) -> dict:
        checkpoint = FetchedCheckpoint(**fetched)
        try:
            result = extract_fetched(ZooEntry(**entry), checkpoint, self.store, self.device, force,
                                     self.keep_checkpoints)
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


@dataclass
class _Job:
    entry: ZooEntry
    actor: int
    attempt: int
    started: float
    fetched: dict | None = None


def _start_actors(plan: ActorPlan, config: BuildConfig, store: DatasetStore) -> tuple[list, list[str]]:
    budget = config.cache_max_gb * 1e9 / plan.count if config.cache_max_gb else None  # each actor's share
    actors = [Extractor.options(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus).remote(
        store.uri, plan.device, int(plan.num_cpus) or 1, config.keep_checkpoints, budget)
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


def build_on_ray(entries: list[ZooEntry], config: BuildConfig, store: DatasetStore,
                 progress: BuildProgress) -> BuildSummary:
    """Run a build on the connected (or a new local) Ray cluster."""
    connect(config.address)
    plan = plan_actors(config, ray.cluster_resources())
    log.info("%d extractor actor(s) on %s (%g CPU, %g GPU each)", plan.count, plan.device, plan.num_cpus,
             plan.num_gpus)
    actors, nodes = _start_actors(plan, config, store)
    summary = BuildSummary()
    policy = asdict(config.policy())
    todo: deque[tuple[ZooEntry, int]] = deque((e, 1) for e in entries)
    downloading: dict[ray.ObjectRef, _Job] = {}
    waiting: list[deque[_Job]] = [deque() for _ in actors]
    extracting: dict[ray.ObjectRef, _Job] = {}
    busy = [False] * len(actors)
    alive = [True] * len(actors)
    deaths = [0] * len(actors)
    started_at: dict[str, float] = {}
    last_progress = time.perf_counter()
    last_tick = last_progress

    def load(i: int) -> int:
        return len(waiting[i]) + sum(1 for j in downloading.values() if j.actor == i) + busy[i]

    def fail(job: _Job, exc: BaseException) -> None:
        attempts = max(job.attempt, getattr(exc, "attempts", 1))
        duration = time.perf_counter() - started_at.get(job.entry.id, job.started)
        summary.failures.append(record_build_failure(store, job.entry, exc, attempts, duration))
        summary.failed += 1
        progress.model_done(failed=True)

    def retry_or_fail(job: _Job, exc: BaseException, transient: bool) -> None:
        if transient and job.attempt < config.retries:
            log.info("%s: %s (attempt %d), retrying", job.entry.id, type(exc).__name__, job.attempt)
            todo.appendleft((job.entry, job.attempt + 1))
        else:
            fail(job, exc)

    while todo or downloading or extracting or any(waiting):
        # 1. downloads, assigned to the least loaded live actor, on its node
        while todo and len(downloading) < config.max_downloads:
            candidates = [i for i in range(len(actors)) if alive[i] and load(i) < config.prefetch + 1]
            if not candidates:
                break
            i = min(candidates, key=load)
            entry, attempt = todo.popleft()
            started_at.setdefault(entry.id, time.perf_counter())
            strategy = NodeAffinitySchedulingStrategy(nodes[i], soft=True)
            ref = download_task.options(scheduling_strategy=strategy).remote(
                asdict(entry), config.cache_dir, config.mirror, policy)
            downloading[ref] = _Job(entry, i, attempt, time.perf_counter())
        # 2. hand ready checkpoints to idle actors
        for i, actor in enumerate(actors):
            if alive[i] and not busy[i] and waiting[i]:
                job = waiting[i].popleft()
                extracting[actor.extract.remote(asdict(job.entry), job.fetched, config.force)] = job
                busy[i] = True
        if not any(alive):
            stranded = [(e, a) for e, a in todo] + [(j.entry, j.attempt) for q in waiting for j in q]
            todo.clear()
            for q in waiting:
                q.clear()
            for entry, attempt in stranded:
                fail(_Job(entry, -1, attempt, time.perf_counter()),
                     SchedulingError("every extractor actor died (out of memory? see the Ray logs)"))
            if not (downloading or extracting):
                break
        if not (downloading or extracting):
            continue
        done, _ = ray.wait(list(downloading) + list(extracting), num_returns=1, timeout=1.0)
        now = time.perf_counter()
        if not any(busy):
            summary.wait_download_seconds += now - last_tick
        else:
            summary.busy_extract_seconds += now - last_tick
        last_tick = now
        for ref in done:
            last_progress = now
            if ref in downloading:
                job = downloading.pop(ref)
                try:
                    value = ray.get(ref)
                except (RayTaskError, WorkerCrashedError) as exc:
                    retry_or_fail(job, exc, transient=True)
                    continue
                if "error" in value:
                    failure = _as_failure(value)
                    fail(job, failure)  # download errors were already retried inside the task
                    continue
                job.fetched = value["fetched"]
                summary.downloaded_bytes += job.fetched["downloaded_bytes"]
                summary.download_seconds += job.fetched["seconds"]
                progress.add_bytes(job.fetched["downloaded_bytes"])
                if alive[job.actor]:
                    waiting[job.actor].append(job)
                else:
                    todo.appendleft((job.entry, job.attempt))
            else:
                job = extracting.pop(ref)
                busy[job.actor] = False
                try:
                    value = ray.get(ref)
                except RayActorError as exc:
                    deaths[job.actor] += 1
                    alive[job.actor] = deaths[job.actor] <= MAX_ACTOR_RESTARTS
                    log.warning("extractor actor %d died while extracting %s (%s)%s", job.actor, job.entry.id,
                                type(exc).__name__, "" if alive[job.actor] else "; it will not be restarted")
                    if not alive[job.actor]:
                        todo.extendleft((j.entry, j.attempt) for j in waiting[job.actor])
                        waiting[job.actor].clear()
                    retry_or_fail(job, exc, transient=True)
                    continue
                if "error" in value:
                    failure = _as_failure(value)
                    retry_or_fail(job, failure, transient=failure.transient)
                    continue
                result = value["result"]
                summary.done += not result["skipped"]
                summary.skipped += result["skipped"]
                summary.filters += result["n_filters"]
                summary.extract_seconds += result["seconds"]
                progress.model_done(result["n_filters"])
        progress.refresh()
        progress.bar.refresh()
        if now - last_progress > config.stall_timeout_s:
            _report_stall(downloading, extracting, now - last_progress)
            last_progress = now
    for actor in actors:
        ray.kill(actor)
    return summary


def _report_stall(downloading: dict, extracting: dict, seconds: float) -> None:
    """Say what the build is waiting for instead of hanging silently."""
    log.warning(
        "no model finished in the last %.0fs: %d downloads in flight (%s), %d extractions in flight (%s); "
        "cluster resources %s, available %s", seconds, len(downloading),
        ", ".join(j.entry.id for j in list(downloading.values())[:5]), len(extracting),
        ", ".join(j.entry.id for j in list(extracting.values())[:5]), ray.cluster_resources(),
        ray.available_resources())
