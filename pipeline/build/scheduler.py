"""Which model goes where next in a distributed build: the bookkeeping, without Ray.

The Ray runner (``build/ray_runner.py``) asks this scheduler which downloads and
extractions to start, submits them, and reports each outcome back; everything
that decides (the least-loaded actor, backpressure, retries, dead actors) lives
here and is unit-tested with plain objects.

Rules:

* a download is assigned to the live actor with the fewest models in its pipe
  (downloading + waiting + extracting), only while that actor holds at most
  ``prefetch`` of them, and at most ``max_downloads`` run at once;
* a transient failure (a crashed worker, a dead actor, an error marked transient)
  is retried up to ``retries`` attempts in all, at the front of the queue; any
  other failure is final;
* an actor that died more than ``max_actor_restarts`` times is out: its waiting
  models go back to the queue; when no actor is left, every model not yet in
  flight fails with a SchedulingError.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.errors import SchedulingError
from pipeline.zoo.zoo_file import ZooEntry

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One attempt at one model: which actor it is assigned to, and its checkpoint once fetched."""

    entry: ZooEntry
    actor: int
    attempt: int
    started: float
    fetched: dict | None = None


FailureSink = Callable[[Job, BaseException, int, float], None]
"""Called once per model that finally fails: (job, error, attempts, seconds since its first attempt)."""


class BuildScheduler:
    """Queue, per-actor pipes and retry rules of one build."""

    def __init__(self, entries: Sequence[ZooEntry], n_actors: int, *, max_downloads: int, prefetch: int,
                 retries: int, max_actor_restarts: int, on_failure: FailureSink,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.todo: deque[tuple[ZooEntry, int]] = deque((e, 1) for e in entries)
        self.waiting: list[deque[Job]] = [deque() for _ in range(n_actors)]
        self.downloads = [0] * n_actors
        self.busy = [False] * n_actors
        self.alive = [True] * n_actors
        self.deaths = [0] * n_actors
        self.max_downloads, self.prefetch, self.retries = max_downloads, prefetch, retries
        self.max_actor_restarts = max_actor_restarts
        self.on_failure, self.clock = on_failure, clock
        self.started_at: dict[str, float] = {}

    # --- state ----------------------------------------------------------------------------------
    def load(self, actor: int) -> int:
        """Models in the actor's pipe: downloading for it, waiting for it, or extracting."""
        return len(self.waiting[actor]) + self.downloads[actor] + self.busy[actor]

    def in_flight(self) -> int:
        return sum(self.downloads) + sum(self.busy)

    def finished(self) -> bool:
        return not (self.todo or self.in_flight() or any(self.waiting))

    # --- what to start --------------------------------------------------------------------------
    def downloads_to_start(self) -> list[Job]:
        """New download jobs, each assigned to the least-loaded live actor with room in its pipe."""
        jobs = []
        while self.todo and sum(self.downloads) < self.max_downloads:
            candidates = [i for i, up in enumerate(self.alive) if up and self.load(i) < self.prefetch + 1]
            if not candidates:
                break
            actor = min(candidates, key=self.load)
            entry, attempt = self.todo.popleft()
            self.started_at.setdefault(entry.model_id, self.clock())
            self.downloads[actor] += 1
            jobs.append(Job(entry, actor, attempt, self.clock()))
        return jobs

    def extractions_to_start(self) -> list[Job]:
        """For each idle live actor, the next fetched checkpoint waiting for it."""
        jobs = []
        for actor, queue in enumerate(self.waiting):
            if self.alive[actor] and not self.busy[actor] and queue:
                jobs.append(queue.popleft())
                self.busy[actor] = True
        return jobs

    # --- outcomes -------------------------------------------------------------------------------
    def download_done(self, job: Job, fetched: dict) -> None:
        """The checkpoint is on the actor's node: queue it there (or back in the queue if the actor is gone)."""
        self.downloads[job.actor] -= 1
        job.fetched = fetched
        if self.alive[job.actor]:
            self.waiting[job.actor].append(job)
        else:
            self.todo.appendleft((job.entry, job.attempt))

    def download_failed(self, job: Job, exc: BaseException, transient: bool) -> None:
        self.downloads[job.actor] -= 1
        self._retry_or_fail(job, exc, transient)

    def extraction_done(self, job: Job) -> None:
        self.busy[job.actor] = False

    def extraction_failed(self, job: Job, exc: BaseException, transient: bool) -> None:
        self.busy[job.actor] = False
        self._retry_or_fail(job, exc, transient)

    def actor_died(self, job: Job, exc: BaseException) -> bool:
        """The actor died during ``job``; returns whether it will be used again (restarted by Ray)."""
        actor = job.actor
        self.busy[actor] = False
        self.deaths[actor] += 1
        self.alive[actor] = self.deaths[actor] <= self.max_actor_restarts
        if not self.alive[actor]:
            self.todo.extendleft((j.entry, j.attempt) for j in self.waiting[actor])
            self.waiting[actor].clear()
        self._retry_or_fail(job, exc, transient=True)
        return self.alive[actor]

    def strand_if_no_actor(self) -> int:
        """When every actor is out, fail the models not in flight; returns how many failed."""
        if any(self.alive):
            return 0
        stranded = list(self.todo) + [(j.entry, j.attempt) for q in self.waiting for j in q]
        self.todo.clear()
        for queue in self.waiting:
            queue.clear()
        for entry, attempt in stranded:
            self._fail(Job(entry, -1, attempt, self.clock()),
                       SchedulingError("every extractor actor died (out of memory? see the Ray logs)"))
        return len(stranded)

    def _retry_or_fail(self, job: Job, exc: BaseException, transient: bool) -> None:
        if transient and job.attempt < self.retries:
            log.info("%s: %s (attempt %d), retrying", job.entry.model_id, type(exc).__name__, job.attempt)
            self.todo.appendleft((job.entry, job.attempt + 1))
        else:
            self._fail(job, exc)

    def _fail(self, job: Job, exc: BaseException) -> None:
        attempts = max(job.attempt, getattr(exc, "attempts", 1))
        duration = self.clock() - self.started_at.get(job.entry.model_id, job.started)
        self.on_failure(job, exc, attempts, duration)
