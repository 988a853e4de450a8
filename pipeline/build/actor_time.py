"""Where each extractor actor's time went in a build: busy, or idle before its first model, between models, after.

The runner reports events with the driver's clock (``started``/``finished`` when an
extraction is submitted and when its result arrives); ``close`` splits each actor's
window (from the actors being ready to the build's end) into busy time and three kinds of
idle time. Idle *between* models is the one a build can remove: an actor that waits
there waited for a download (or for the driver). No Ray here: the runner feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ActorTime:
    """One extractor actor's share of a build."""

    actor: int
    models: int = 0
    """Models it extracted (results that were not skips)."""
    filters: int = 0
    busy_s: float = 0.0
    """Seconds with an extraction submitted to it and not yet returned."""
    extract_s: float = 0.0
    """Seconds its extractions took inside the actor (what the actor itself measured)."""
    idle_first_s: float = 0.0
    """Idle from the actors being ready to its first model (the first download)."""
    idle_between_s: float = 0.0
    """Idle between the end of one model and the start of the next (waiting for a download or the driver)."""
    idle_last_s: float = 0.0
    """Idle after its last model, until the build ended (no work left for it)."""

    @property
    def window_s(self) -> float:
        return self.busy_s + self.idle_first_s + self.idle_between_s + self.idle_last_s

    @property
    def filters_per_busy_s(self) -> float:
        return self.filters / self.busy_s if self.busy_s > 0 else 0.0

    def text(self) -> str:
        return (f"actor {self.actor}: {self.models} models, {self.filters / 1e6:.2f} M filters, busy "
                f"{self.busy_s:.1f}s ({self.filters_per_busy_s / 1e6:.2f} M filters/s busy), idle "
                f"{self.idle_first_s:.1f}s before its first model, {self.idle_between_s:.1f}s between models, "
                f"{self.idle_last_s:.1f}s after its last")


class ActorClock:
    """Collects submit/finish events per actor and turns them into ``ActorTime`` rows."""

    def __init__(self, n_actors: int, ready_at: float) -> None:
        self.ready_at = ready_at
        self.times = [ActorTime(actor=i) for i in range(n_actors)]
        self._running: dict[int, float] = {}
        self._last_end: dict[int, float] = {}

    def started(self, actor: int, at: float) -> None:
        """An extraction was submitted to ``actor``."""
        if actor in self._running:
            raise ValueError(f"actor {actor} was given a model while busy")
        previous = self._last_end.get(actor)
        if previous is None:
            self.times[actor].idle_first_s += max(0.0, at - self.ready_at)
        else:
            self.times[actor].idle_between_s += max(0.0, at - previous)
        self._running[actor] = at

    def finished(self, actor: int, at: float, filters: int = 0, extract_s: float = 0.0, counted: bool = True) -> None:
        """``actor``'s extraction returned (``counted``: it extracted a model; a failure or a skip is not)."""
        began = self._running.pop(actor, None)
        if began is None:
            raise ValueError(f"actor {actor} finished a model it was not given")
        row = self.times[actor]
        row.busy_s += max(0.0, at - began)
        row.extract_s += extract_s
        row.models += bool(counted)
        row.filters += filters
        self._last_end[actor] = at

    def close(self, at: float) -> list[ActorTime]:
        """The rows, with every actor's time after its last model (or its whole window, if it got none) as idle."""
        for actor, began in list(self._running.items()):  # still running at the end (a build stopped early)
            self.times[actor].busy_s += max(0.0, at - began)
            self._last_end[actor] = at
        self._running.clear()
        for row in self.times:
            last = self._last_end.get(row.actor)
            if last is None:
                row.idle_first_s = max(0.0, at - self.ready_at)
            else:
                row.idle_last_s = max(0.0, at - last)
        return self.times
