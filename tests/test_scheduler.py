"""The distributed build's decisions, without a cluster: assignment, backpressure, retries, dead actors."""

from __future__ import annotations

from pipeline.build.scheduler import BuildScheduler, Job
from pipeline.errors import SchedulingError
from pipeline.zoo.zoo_file import ZooEntry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(n_models: int, n_actors: int, **kw: int) -> tuple[BuildScheduler, list, Clock]:
    failures: list = []
    clock = Clock()
    options = {"max_downloads": 4, "prefetch": 1, "retries": 3, "max_actor_restarts": 1, **kw}
    scheduler = BuildScheduler([ZooEntry(model_id=f"m{i}", sources=[f"s{i}"]) for i in range(n_models)], n_actors,
                               on_failure=lambda job, exc, attempts, s: failures.append(
                                   (job.entry.model_id, type(exc).__name__, attempts, s)),
                               clock=clock, **options)
    return scheduler, failures, clock


def ids(jobs: list[Job]) -> list[tuple[str, int]]:
    return [(j.entry.model_id, j.actor) for j in jobs]


def test_downloads_go_to_the_least_loaded_actor_within_max_downloads() -> None:
    scheduler, _, _ = make(10, 3, max_downloads=4, prefetch=5)
    assert ids(scheduler.downloads_to_start()) == [("m0", 0), ("m1", 1), ("m2", 2), ("m3", 0)]
    assert scheduler.downloads_to_start() == []  # four in flight: the cap
    assert scheduler.downloads == [2, 1, 1]


def test_prefetch_bounds_each_actors_pipe() -> None:
    scheduler, _, _ = make(10, 2, max_downloads=10, prefetch=1)
    first = scheduler.downloads_to_start()
    assert ids(first) == [("m0", 0), ("m1", 1), ("m2", 0), ("m3", 1)]  # load <= prefetch + 1 per actor
    for job in first:
        scheduler.download_done(job, {"paths": []})
    started = scheduler.extractions_to_start()
    assert ids(started) == [("m0", 0), ("m1", 1)]
    assert scheduler.downloads_to_start() == []  # each actor: one extracting, one waiting
    scheduler.extraction_done(started[0])
    assert ids(scheduler.downloads_to_start()) == [("m4", 0)]


def test_transient_failures_retry_at_the_front_then_fail_with_all_attempts() -> None:
    scheduler, failures, clock = make(2, 1, retries=2, prefetch=0)
    job = scheduler.downloads_to_start()[0]
    clock.now = 5.0
    scheduler.download_failed(job, OSError("reset"), transient=True)
    assert list(scheduler.todo)[0][0].model_id == "m0" and list(scheduler.todo)[0][1] == 2
    retry = scheduler.downloads_to_start()[0]
    assert (retry.entry.model_id, retry.attempt) == ("m0", 2)
    clock.now = 7.5
    scheduler.download_failed(retry, OSError("reset"), transient=True)
    assert failures == [("m0", "OSError", 2, 7.5)]  # seconds since the first attempt started


def test_a_deterministic_failure_is_final_at_once() -> None:
    scheduler, failures, _ = make(1, 1)
    job = scheduler.downloads_to_start()[0]
    scheduler.download_done(job, {})
    scheduler.extractions_to_start()
    scheduler.extraction_failed(job, ValueError("bad checkpoint"), transient=False)
    assert failures == [("m0", "ValueError", 1, 0.0)]
    assert scheduler.finished()


def test_an_actor_dead_beyond_its_restarts_hands_its_queue_back() -> None:
    scheduler, failures, _ = make(4, 2, max_downloads=4, prefetch=1, max_actor_restarts=0)
    jobs = scheduler.downloads_to_start()
    for job in jobs:
        scheduler.download_done(job, {})
    running = scheduler.extractions_to_start()
    assert ids(running) == [("m0", 0), ("m1", 1)]
    assert scheduler.actor_died(running[0], RuntimeError("OOM")) is False
    assert scheduler.alive == [False, True] and scheduler.waiting[0] == type(scheduler.waiting[0])()
    # m0 is retried (attempt 2) and m2, which waited on actor 0, goes back to the queue
    assert sorted((e.model_id, a) for e, a in scheduler.todo) == [("m0", 2), ("m2", 1)]
    assert all(j.actor == 1 for j in scheduler.downloads_to_start())
    assert failures == []


def test_when_no_actor_is_left_the_rest_fail_with_a_scheduling_error() -> None:
    scheduler, failures, _ = make(3, 1, max_downloads=1, prefetch=0, max_actor_restarts=0, retries=1)
    job = scheduler.downloads_to_start()[0]
    scheduler.download_done(job, {})
    scheduler.extractions_to_start()
    scheduler.actor_died(job, RuntimeError("OOM"))
    assert failures == [("m0", "RuntimeError", 1, 0.0)]  # retries=1: no second attempt
    assert scheduler.strand_if_no_actor() == 2
    assert [(m, e) for m, e, _, _ in failures[1:]] == [("m1", SchedulingError.__name__),
                                                         ("m2", SchedulingError.__name__)]
    assert scheduler.finished()


def make_sources(sources: list[str], n_actors: int, **kw: object) -> tuple[BuildScheduler, list, Clock]:
    failures: list = []
    clock = Clock()
    options = {"max_downloads": 10, "prefetch": 10, "retries": 3, "max_actor_restarts": 1, **kw}
    scheduler = BuildScheduler([ZooEntry(model_id=f"m{i}", sources=[s]) for i, s in enumerate(sources)], n_actors,
                               on_failure=lambda job, exc, attempts, s: failures.append(job.entry.model_id),
                               clock=clock, **options)
    return scheduler, failures, clock


def test_drive_downloads_are_capped_across_all_actors_and_other_hosts_go_first() -> None:
    from pipeline.build.scheduler import DRIVE_HOST, host_of

    sources = ["gdrive:a", "gdrive:b", "gdrive:c", "https://github.com/x/y.pt", "/local/z.pt", "gdrive:d"]
    assert [host_of(ZooEntry(model_id="x", sources=[s])) for s in sources[2:5]] == [DRIVE_HOST, "github.com", None]
    scheduler, _, _ = make_sources(sources, 3, host_limits={DRIVE_HOST: 2})
    started = scheduler.downloads_to_start()
    assert [j.entry.model_id for j in started] == ["m0", "m1", "m3", "m4"]  # m2, m5 wait for a Drive slot
    assert scheduler.host_busy[DRIVE_HOST] == 2
    scheduler.download_done(started[0], {})
    assert [j.entry.model_id for j in scheduler.downloads_to_start()] == ["m2"]


def test_a_retry_after_pauses_the_host_for_everybody_then_the_model_is_retried() -> None:
    from pipeline.build.scheduler import DRIVE_HOST
    from pipeline.errors import DriveQuotaError

    scheduler, failures, clock = make_sources(["gdrive:a", "gdrive:b", "https://h/x.pt"], 1,
                                              host_limits={DRIVE_HOST: 1})
    first = scheduler.downloads_to_start()
    assert [j.entry.model_id for j in first] == ["m0", "m2"]
    scheduler.download_failed(first[0], DriveQuotaError("quota", retry_after=60), transient=True)
    assert scheduler.downloads_to_start() == [] and scheduler.waiting_for_a_host()  # m0 (retry) and m1 wait
    clock.now = 61.0
    again = scheduler.downloads_to_start()
    assert [(j.entry.model_id, j.attempt) for j in again] == [("m0", 2)]  # one Drive slot: m1 still waits
    assert failures == []


def test_actor_clock_splits_each_window_into_busy_and_three_idle_kinds() -> None:
    from pipeline.build.actor_time import ActorClock

    clock = ActorClock(3, ready_at=10.0)
    clock.started(0, 12.0)             # waited 2 s for its first download
    clock.finished(0, 15.0, filters=300, extract_s=2.5)
    clock.started(0, 15.5)             # 0.5 s between models
    clock.finished(0, 17.0, filters=100, extract_s=1.0, counted=False)  # a skip or failure: busy, not a model
    clock.started(1, 10.0)
    clock.finished(1, 19.0, filters=900, extract_s=8.0)
    rows = clock.close(20.0)           # actor 2 never got a model
    assert [(r.models, r.filters, r.busy_s, r.extract_s, r.idle_first_s, r.idle_between_s, r.idle_last_s)
            for r in rows] == [(1, 400, 4.5, 3.5, 2.0, 0.5, 3.0), (1, 900, 9.0, 8.0, 0.0, 0.0, 1.0),
                               (0, 0, 0.0, 0.0, 10.0, 0.0, 0.0)]
    assert [r.window_s for r in rows] == [10.0, 10.0, 10.0]
    assert rows[1].filters_per_busy_s == 100.0 and rows[2].filters_per_busy_s == 0.0
    assert rows[0].text() == ("actor 0: 1 models, 0.00 M filters, busy 4.5s (0.00 M filters/s busy), idle 2.0s before "
                              "its first model, 0.5s between models, 3.0s after its last")


def test_actor_clock_refuses_impossible_events_and_closes_running_work() -> None:
    import pytest

    from pipeline.build.actor_time import ActorClock

    clock = ActorClock(1, ready_at=0.0)
    with pytest.raises(ValueError, match="not given"):
        clock.finished(0, 1.0)
    clock.started(0, 1.0)
    with pytest.raises(ValueError, match="while busy"):
        clock.started(0, 2.0)
    (row,) = clock.close(4.0)  # stopped while extracting: the time counts as busy
    assert (row.busy_s, row.idle_first_s, row.idle_last_s, row.models) == (3.0, 1.0, 0.0, 0)
