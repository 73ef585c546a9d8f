"""One request's turn in its own thread, its text pieces handed to the event loop through a queue.

llama.cpp calls block, so a turn runs in its slot's own thread (the thread that built the slot's context,
reused for every turn: a thread per request makes the allocator's per-thread arenas, and so the RSS, grow,
and llama.cpp's OpenMP team is per calling thread, see ``Slot.executor``). The turn owns the request's
slot until it ends and then gives it back. The route awaits pieces from the queue. When the client
goes away the route sets ``cancel``; the thread checks it after every piece and closes the generator,
so generation stops within a token and the slot is free again. A streaming route learns of the
disconnect from sse-starlette; for a non-streaming one (and for any request until its first piece) the
turn watches the connection itself (:meth:`Turn.watch`: a task waiting for the ASGI ``http.disconnect``
message, as Starlette's own streaming response does), so the disconnect is noticed when it happens,
whether tokens are flowing or not, with no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request

from ..pack.pack import SteeringPack
from ..result import GenerationResult
from .slots import Slot, SlotPool
from .steering import SteeringChoice, report, settings

log = logging.getLogger("finesteer_edge.serve")

DONE = object()
"""Queue item after the GenerationResult: the turn is over."""

GONE = object()
"""Queue item put by the watcher: the client disconnected (:meth:`Turn.next` raises :class:`ClientGone`)."""


class ClientGone(Exception):
    """The client closed the connection; the turn was cancelled."""


class Turn:
    def __init__(self, pool: SlotPool, slot: Slot, choice: SteeringChoice, messages: Sequence[dict[str, str]],
                 sampling: dict[str, Any], packs: dict[str, SteeringPack],
                 on_end: Callable[[Turn], None] | None = None) -> None:
        self._packs = packs
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.cancel = threading.Event()
        self.steering: dict[str, object] | None = None
        self.pieces = 0
        """Text pieces generated so far."""
        self.pieces_after_cancel = 0
        """Pieces generated after ``cancel`` was set (at most one: the check follows every piece)."""
        self.cancelled = False
        """The turn ended because it was cancelled (client gone, shutdown), not by itself."""
        self._on_end = on_end
        self._watcher: asyncio.Task[None] | None = None
        self._future = slot.executor.submit(self._work, pool, slot, choice, list(messages), sampling)

    def _put(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop closed under us: shutting down
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _work(self, pool: SlotPool, slot: Slot, choice: SteeringChoice, messages: list[dict[str, str]],
              sampling: dict[str, Any]) -> None:
        it = None
        try:
            llm = slot.llm
            steering = settings(choice, self._packs)
            # A fresh KV cache per request: the last request's cache may hold steered keys and values.
            llm.reset()
            it = llm.chat(messages, stream=True, steering=steering, **sampling)
            for item in it:  # type: ignore[union-attr]
                if isinstance(item, GenerationResult):
                    self.steering = report(choice, item, self._packs)
                else:
                    self.pieces += 1
                    self.pieces_after_cancel += self.cancel.is_set()
                self._put(item)
                if self.cancel.is_set() and not isinstance(item, GenerationResult):
                    self.cancelled = True
                    break
        except BaseException as exc:  # handed to the route, which maps it to an API error
            self._put(exc)
        else:
            self._put(DONE)
        finally:
            if it is not None:
                it.close()  # type: ignore[union-attr]
            pool.release(slot)
            if self._on_end is not None:
                self._on_end(self)

    def watch(self, request: Request) -> None:
        """Cancel the turn the moment ``request``'s client disconnects, until :meth:`unwatch`. For a
        non-streaming request (and any request until its first piece): a stream is watched by
        sse-starlette, and two tasks should not both read one connection's messages."""
        if self._watcher is None:
            self._watcher = self._loop.create_task(self._watch(request))

    def unwatch(self) -> None:
        """Stop watching the connection (idempotent)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self, request: Request) -> None:
        try:
            # The body has been read, so the next message is http.disconnect (sent when the client goes
            # away, or once the response is complete); Starlette's StreamingResponse waits the same way.
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # not expected; say so rather than let a gone client's turn run unnoticed
            log.exception("cannot watch the connection for a disconnect; the turn runs to its end")
            return
        self.cancel.set()
        self._queue.put_nowait(GONE)

    async def next(self) -> object:
        """The next item: a text piece, the GenerationResult, an exception, or DONE; raises
        :class:`ClientGone` when the watched client disconnected (the turn is already cancelled)."""
        item = await self._queue.get()
        if item is GONE:
            raise ClientGone()
        return item

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(Exception):  # its outcome went to the queue already
            self._future.result(timeout)
