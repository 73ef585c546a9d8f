"""Progress bars (rich) that stay silent when disabled or when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
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
    """Iterate with a progress bar on stderr (no output when disabled or not a terminal)."""
    if not (enabled and sys.stderr.isatty()):
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=label, total=total, console=_console(), transient=True)
