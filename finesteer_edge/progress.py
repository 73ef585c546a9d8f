"""Progress bars (rich) on a terminal; in logs (stderr not a terminal), a plain line at most once a minute."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def byte_progress(label: str, total: int | None, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_bytes)``; draws a transfer bar on stderr."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=_console(), transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def track(items: Iterable[T], label: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate with a progress bar on stderr; when stderr is a log file, a line per minute of long work."""
    if not enabled:
        yield from items
        return
    if not sys.stderr.isatty():
        yield from _log_progress(items, label, total)
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=label, total=total, console=_console(), transient=True)


LOG_EVERY_S = 60.0


def _log_progress(items: Iterable[T], label: str, total: int | None) -> Iterator[T]:
    """Jobs run under nohup or CI would otherwise be silent for an hour: one line per minute, none for
    work that ends sooner (so short commands keep a clean stderr)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    start = last = time.monotonic()
    for i, item in enumerate(items):
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            last = now
            of = f"/{total}" if total is not None else ""
            print(f"{label}: {i}{of} ({now - start:.0f} s)", file=sys.stderr, flush=True)
        yield item


class StageProgress:
    """One bar with a time estimate over a job of several stages (a terminal), or a line per stage (logs).

    Each stage has a weight (estimated work in any common unit); the bar's total is the sum, so the
    time estimate covers the whole job, not only the stage running. A skipped stage is taken out of
    the total rather than counted as done instantly, which would make the estimate far too hopeful.
    In a log (stderr not a terminal) it prints when a stage starts and ends, and at most once a
    minute how far the running stage is.
    """

    def __init__(self, weights: dict[str, float], *, enabled: bool = True) -> None:
        self.weights = dict(weights)
        self.enabled = enabled
        self._tty = enabled and sys.stderr.isatty()
        self._bar = None  # type: ignore[var-annotated]
        self._task = None  # type: ignore[var-annotated]
        self._done: dict[str, float] = {}
        self._stage: str | None = None
        self._started = time.monotonic()
        self._last_log = self._started

    def __enter__(self) -> StageProgress:
        if self._tty:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=_console(), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("starting", total=sum(self.weights.values()))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def _index(self, name: str) -> str:
        names = list(self.weights)
        return f"[{names.index(name) + 1}/{len(names)}] {name}"

    def say(self, text: str) -> None:
        """A line above the bar (or in the log)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def start(self, name: str, detail: str = "") -> None:
        self._stage = name
        self._done[name] = 0.0
        if self._bar is not None:
            self._bar.update(self._task, description=self._index(name))
        else:
            self.say(f"{self._index(name)}: {detail or 'running'}")

    def set_weight(self, name: str, weight: float) -> None:
        """Once a stage knows its size (e.g. the number of rows to extract)."""
        self.weights[name] = float(weight)
        if self._bar is not None:
            self._bar.update(self._task, total=sum(self.weights.values()))

    def update(self, name: str, fraction: float) -> None:
        """The stage is ``fraction`` (0..1) done."""
        w = self.weights[name]
        self._done[name] = min(max(fraction, 0.0), 1.0) * w
        if self._bar is not None:
            self._bar.update(self._task, completed=sum(self._done.values()))
            return
        now = time.monotonic()
        if self.enabled and now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            self.say(f"{self._index(name)}: {fraction:.0%} ({now - self._started:.0f} s in)")

    def finish(self, name: str, note: str) -> None:
        self._last_log = time.monotonic()  # the end line below says it; no "100%" line before it
        self.update(name, 1.0)
        self.say(f"{self._index(name)}: {note}")

    def skip(self, name: str, note: str) -> None:
        self.weights[name] = 0.0
        self._done[name] = 0.0
        if self._bar is not None:
            self._bar.update(self._task, total=sum(self.weights.values()), completed=sum(self._done.values()))
        self.say(f"{self._index(name)}: {note}")
