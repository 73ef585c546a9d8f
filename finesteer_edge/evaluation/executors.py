"""Where evaluation tasks run: in this process, or in N worker processes with one model each.

Why workers: a 135M model's matrices are too small for ggml to split well across threads, and on a
shared machine a 2-thread context collapses when a neighbour takes a core (its threads spin-wait for
each other: we measured 30 ms/token with 1 thread vs 440 ms/token with 2 under load). Two processes
with one thread each use 2 cores without that failure mode. Every task is an independent turn on a
fresh KV cache with the same settings, so the answer does not depend on which process ran it (the
runner's ``reuse_check`` re-generates some answers in the main process and compares tokens).

A task is ``(kind, gate, vector_source, mode, strength, payload, penalties)``: kind ``gen`` generates an
answer to the prompt text ``payload``, greedy with llama.cpp's repetition ``penalties`` (a
:class:`~finesteer_edge.settings.Penalties`; a 6-tuple task, without it, is plain greedy), kind ``mc`` scores
the :class:`MCItem` ``payload`` (log-probabilities: the sampler plays no part). The sampler travels in the task,
not in the executor, so the runner's cache key and the generation it stands for are built from the same value.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..settings import NO_PENALTIES, Penalties, SteeringSettings
from ..vocab import GatePolicy, Mode, VectorSource
from .mc import score_item

if TYPE_CHECKING:
    from ..steered import SteeredLlama

Task = (tuple[str, GatePolicy, VectorSource, Mode, float, Any, Penalties]
        | tuple[str, GatePolicy, VectorSource, Mode, float, Any])


@dataclass
class Gen:
    """One generated answer, shared by every method whose turn would have run the same operations."""

    text: str
    token_ids: list[int]
    steered: bool
    gate_score: float | None
    seconds: float
    finish_reason: str = ""
    """``stop`` (end-of-turn token or a stop string), ``length`` (max_tokens) or ``context``."""


def run_task(llm: SteeredLlama, task: Task, max_tokens: int) -> Any:
    """Set the instance's steering for this task (checked, like any other setting) and run it."""
    kind, gate, vector_source, mode, strength, payload = task[:6]
    penalties = task[6] if len(task) > 6 else NO_PENALTIES
    if not isinstance(penalties, Penalties):
        raise TypeError(f"a task's sampler must be Penalties, not {type(penalties).__name__}")
    llm.set_steering(SteeringSettings(mode=mode, strength=float(strength), gate=gate, vector_source=vector_source))
    if kind == "mc":
        return score_item(llm, payload)
    t = time.perf_counter()
    r = llm.generate(payload, max_tokens=max_tokens, temperature=0.0, penalties=penalties)
    return Gen(r.text, list(r.token_ids), r.steered, r.gate_score, time.perf_counter() - t, r.finish_reason)


class LocalExecutor:
    """Runs tasks one after the other on the given instance."""

    workers = 1

    def __init__(self, llm: SteeredLlama, max_tokens: int) -> None:
        self.llm = llm
        self.max_tokens = max_tokens

    def imap(self, tasks: Iterable[Task]) -> Iterator[Any]:
        for t in tasks:
            yield run_task(self.llm, t, self.max_tokens)

    def close(self, *, graceful: bool = True) -> None:
        pass


_WORKER: dict[str, Any] = {}


def _init_worker(model: str, pack: str, n_threads: int, n_ctx: int, max_tokens: int,
                 chat_template: str | None = None) -> None:
    # An exception escaping a Pool initializer makes multiprocessing respawn the worker forever: keep it
    # and raise it from the first task instead, where the caller sees it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        from ..steered import SteeredLlama

        _WORKER["llm"] = SteeredLlama(model, pack, n_threads=n_threads, n_ctx=n_ctx, chat_template=chat_template)
        _WORKER["max_tokens"] = max_tokens
    except Exception as exc:  # noqa: BLE001 - re-raised by _work
        _WORKER["error"] = exc


def _work(task: Task) -> Any:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return run_task(_WORKER["llm"], task, _WORKER["max_tokens"])


class PoolExecutor:
    """``workers`` spawned processes, each with its own SteeredLlama (``n_threads`` threads); order kept."""

    def __init__(self, model: Path, pack: Path, *, workers: int, n_threads: int, n_ctx: int, max_tokens: int,
                 chat_template: str | None = None) -> None:
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds llama.cpp threads
        self._pool = ctx.Pool(workers, initializer=_init_worker,
                              initargs=(str(model), str(pack), n_threads, n_ctx, max_tokens, chat_template))

    def imap(self, tasks: Iterable[Task]) -> Iterator[Any]:
        yield from self._pool.imap(_work, list(tasks), chunksize=1)

    def close(self, *, graceful: bool = True) -> None:
        """Let the workers exit (their CPU time then shows in RUSAGE_CHILDREN); ``graceful=False`` kills them."""
        if graceful:
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()
