"""Progress on long work: a tqdm bar on a terminal, plain lines every few seconds otherwise (logs, CI, Ray jobs).

``progress_bar(total, desc, unit, enabled)`` returns an object with tqdm's small
interface (``update``, ``set_postfix_str``, ``refresh``, ``close``, context manager),
so callers never care which one they got.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

PLAIN_INTERVAL_S = 10.0
"""Seconds between two plain progress lines."""


class PlainLines:
    """Progress as a line on stderr at most every ``interval`` seconds, and a last line when closed."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO,
                 interval: float = PLAIN_INTERVAL_S) -> None:
        self.total, self.desc, self.unit, self.stream, self.interval = total, desc, unit, stream, interval
        self.n = 0
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.closed = False
        self.emitted: int | None = None

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._emit()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        if time.monotonic() - self.last >= self.interval:
            self._emit()

    def _emit(self) -> None:
        self.last = time.monotonic()
        self.emitted = self.n
        of = f"/{self.total}" if self.total is not None else ""
        tail = f", {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {self.n}{of} {self.unit} after {self.last - self.started:.0f}s{tail}\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.emitted != self.n:  # the last state, unless just said
                self._emit()

    def __enter__(self) -> PlainLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, **tqdm_args: Any) -> Any:
    """A tqdm bar on a TTY, PlainLines on any other stderr, a silent bar when not ``enabled``."""
    from tqdm import tqdm

    if enabled and not sys.stderr.isatty():
        return PlainLines(total, desc, unit, sys.stderr)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True,
                **tqdm_args)
