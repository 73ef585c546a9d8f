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
