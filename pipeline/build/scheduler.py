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
  flight fails with a SchedulingError;
* per host (``host_of``: Google Drive for ``gdrive:`` sources, else the URL's host)
  at most ``host_limits[host]`` downloads run at once across the whole build, every
  node included; a download that fails with a ``retry_after`` (Drive's quota, HTTP
  429) pauses new downloads from that host for that long. Models of other hosts go
  first meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

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


DRIVE_HOST = "drive.google.com"


def host_of(entry: ZooEntry) -> str | None:
    """The host a model's first source is downloaded from (None: local files, or no source)."""
    if not entry.sources:
        return None
    source = entry.sources[0]
    if source.startswith("gdrive:"):
        return DRIVE_HOST
    return urlsplit(source).netloc or None


FailureSink = Callable[[Job, BaseException, int, float], None]
"""Called once per model that finally fails: (job, error, attempts, seconds since its first attempt)."""


class BuildScheduler:
    """Queue, per-actor pipes and retry rules of one build."""

    def __init__(self, entries: Sequence[ZooEntry], n_actors: int, *, max_downloads: int, prefetch: int,
                 retries: int, max_actor_restarts: int, on_failure: FailureSink,
                 clock: Callable[[], float] = time.perf_counter, host_limits: Mapping[str, int] | None = None,
                 ) -> None:
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
        self.host_limits = {h: n for h, n in (host_limits or {}).items() if n > 0}
        self.host_busy: Counter[str] = Counter()
        self.paused_until: dict[str, float] = {}

    # --- state ----------------------------------------------------------------------------------
    def load(self, actor: int) -> int:
        """Models in the actor's pipe: downloading for it, waiting for it, or extracting."""
        return len(self.waiting[actor]) + self.downloads[actor] + self.busy[actor]

    def in_flight(self) -> int:
        return sum(self.downloads) + sum(self.busy)

    def waiting_for_a_host(self) -> bool:
        """True when models are queued but every one's host is full or paused (wait, do not give up)."""
        return bool(self.todo) and self._next_allowed() is None

    def finished(self) -> bool:
        return not (self.todo or self.in_flight() or any(self.waiting))

    # --- what to start --------------------------------------------------------------------------
    def downloads_to_start(self) -> list[Job]:
        """New download jobs, each assigned to the least-loaded live actor with room in its pipe."""
        jobs = []
        while self.todo and sum(self.downloads) < self.max_downloads:
            candidates = [i for i, up in enumerate(self.alive) if up and self.load(i) < self.prefetch + 1]
            position = self._next_allowed()
            if not candidates or position is None:
                break
            actor = min(candidates, key=self.load)
            entry, attempt = self.todo[position]
            del self.todo[position]
            self.started_at.setdefault(entry.model_id, self.clock())
            self.downloads[actor] += 1
            host = host_of(entry)
            if host:
                self.host_busy[host] += 1
            jobs.append(Job(entry, actor, attempt, self.clock()))
        return jobs

    def _next_allowed(self) -> int | None:
        """The first queued model whose host has a free slot and is not paused (the queue order otherwise)."""
        now = self.clock()
        for position, (entry, _) in enumerate(self.todo):
            host = host_of(entry)
            if host is None:
                return position
            if self.paused_until.get(host, 0.0) > now:
                continue
            if host in self.host_limits and self.host_busy[host] >= self.host_limits[host]:
                continue
            return position
        return None

    def _download_ended(self, job: Job) -> None:
        self.downloads[job.actor] -= 1
        host = host_of(job.entry)
        if host and self.host_busy[host] > 0:
            self.host_busy[host] -= 1

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
        self._download_ended(job)
        job.fetched = fetched
        if self.alive[job.actor]:
            self.waiting[job.actor].append(job)
        else:
            self.todo.appendleft((job.entry, job.attempt))

    def download_failed(self, job: Job, exc: BaseException, transient: bool) -> None:
        self._download_ended(job)
        wait = getattr(exc, "retry_after", None)
        host = host_of(job.entry)
        if host and wait:  # the host asked everybody to wait: no new download from it until then
            self.paused_until[host] = max(self.paused_until.get(host, 0.0), self.clock() + float(wait))
            log.info("%s asked to wait %.0fs; other hosts' models go first", host, float(wait))
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
