"""The slot pool: N llama.cpp contexts on one loaded model, each request holding one slot at a time.

A slot has one :class:`SteeredLlama` holding every served pack (or none), all slots on the same
:class:`LlamaModel`, so weights are in memory once and every slot has one context with its own KV cache
and control vector: concurrent requests never see each other's steering. A request's pack subset is a
per-turn setting (``SteeringSettings.enabled``), not another instance. A request owns its slot for the
whole turn; the generation thread hands it back when the turn ends (normally, on error, or when the
client went away). Waiting requests queue up to ``max_queue``; beyond that, or after ``queue_timeout``
seconds, the server answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..steered import SteeredLlama
from .errors import APIError


@dataclass
class Slot:
    index: int
    llm: SteeredLlama
    """This slot's one context, with every served pack loaded."""
    executor: ThreadPoolExecutor
    """The slot's one thread: it built ``llm`` (the load-time self-test decodes) and runs every turn on it.
    llama.cpp's CPU backend keeps an OpenMP thread team per calling thread; a context first used by one
    thread and then driven from another ran ~20% slower on 2 cores (SmolLM2, 2 threads: 108 vs 134 tok/s through
    the Python API, README; about 90 vs 138 for a streamed server request, docs/SERVE.md; both one-off
    observations), so a slot never changes threads."""

    def close(self) -> None:
        self.executor.submit(self.llm.close).result()
        self.executor.shutdown(wait=True)


def slot_thread(index: int) -> ThreadPoolExecutor:
    """The single thread slot ``index`` lives on."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"finesteer-slot-{index}")


class SlotPool:
    """Async hand-out of idle slots with a bounded wait queue; release is safe from any thread."""

    def __init__(self, slots: list[Slot], *, max_queue: int, queue_timeout: float, retry_after: int = 1) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.retry_after = retry_after
        self._idle: asyncio.Queue[Slot] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.waiting = 0

    def _queue(self) -> asyncio.Queue[Slot]:
        loop = asyncio.get_running_loop()
        if self._idle is None or self._loop is not loop:
            self._loop = loop
            self._idle = asyncio.Queue()
            for s in self.slots:
                self._idle.put_nowait(s)
        return self._idle

    @property
    def idle(self) -> int:
        return self._idle.qsize() if self._idle is not None else len(self.slots)

    def _busy(self, why: str) -> APIError:
        return APIError(503, f"all {len(self.slots)} slot(s) are busy ({why}); retry later or start the server "
                        "with a larger --parallel/--max-queue", code="server_busy",
                        headers={"Retry-After": str(self.retry_after)})

    async def acquire(self) -> Slot:
        q = self._queue()
        if not q.empty():
            return q.get_nowait()
        if self.waiting >= self.max_queue:
            raise self._busy(f"{self.waiting} request(s) already waiting")
        self.waiting += 1
        try:
            return await asyncio.wait_for(q.get(), self.queue_timeout)
        except asyncio.TimeoutError:
            raise self._busy(f"waited {self.queue_timeout:g} s") from None
        finally:
            self.waiting -= 1

    def release(self, slot: Slot) -> None:
        """Give ``slot`` back; may be called from the generation thread."""
        loop, q = self._loop, self._idle
        assert loop is not None and q is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
            loop.call_soon_threadsafe(q.put_nowait, slot)

    def close(self) -> None:
        for s in self.slots:
            s.close()
