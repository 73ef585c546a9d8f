"""Time one generated turn: time to first token and decode speed, for our loop and for stock llama-cpp-python.

Both loops are measured with the same definitions, so their numbers can be divided:

- **TTFT**: from the start of the call to the first sampled token (tokenization, template, prefill, and for
  a pack: tap read-out, head, and in ``exact`` mode the steered re-prefill).
- **decode tok/s**: llama.cpp decodes of generated tokens per second of wall time after the first token.
  Our loop decodes every generated token (also the last), so that is ``tokens / (seconds - ttft)``; the stock
  iterator decodes a token only when asked for the next, so we count the decodes between the first and
  the last token we receive. (``GenerationResult.tokens_per_second`` divides by ``tokens - 1`` instead and
  would make our loop look ~1/N slower than it is.)
- **CPU-time twins** (``cpu_ttft_s``, ``cpu_decode_tps``): the same intervals in process CPU time. When other
  jobs share the cores, wall time includes the time we were not scheduled, CPU time mostly does not, so
  CPU-time *ratios* between variants stay meaningful on a busy machine (with 1 thread; with several
  threads ggml's spin-waits count as CPU time too). Wall time remains the number users feel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..llama.chat_template import Message


@dataclass(frozen=True)
class TurnTiming:
    ttft_s: float
    decode_tps: float
    tokens: int
    prompt_tokens: int
    seconds: float
    steered: bool | None
    """Whether the control vector was on (None: no pack / stock loop)."""
    cpu_ttft_s: float = float("nan")
    cpu_decode_tps: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steered_turn(llm: Any, messages: Sequence[Message], max_tokens: int) -> TurnTiming:
    """One independent greedy turn of a :class:`~finesteer_edge.steered.SteeredLlama` (fresh KV cache).

    Runs ``chat(stream=True)`` after ``reset()``: the very code path of ``generate`` (an empty cache shares no
    prefix), but the stream tells us when the first token is out, to split CPU time there too.
    """
    from ..result import GenerationResult

    llm.reset()
    c0 = time.process_time()
    c_first = float("nan")
    result = None
    for item in llm.chat(list(messages), stream=True, max_tokens=max_tokens, temperature=0.0):
        if isinstance(item, GenerationResult):
            result = item
        elif c_first != c_first:  # first text piece: the first token has been sampled
            c_first = time.process_time()
    c_end = time.process_time()
    assert result is not None
    r = result
    gen_s = r.seconds - r.ttft_seconds
    tps = r.tokens / gen_s if r.tokens > 0 and gen_s > 0 else float("nan")
    cpu_gen = c_end - c_first
    cpu_tps = r.tokens / cpu_gen if r.tokens > 0 and cpu_gen > 0 else float("nan")
    return TurnTiming(ttft_s=r.ttft_seconds, decode_tps=tps, tokens=r.tokens, prompt_tokens=r.prompt_tokens,
                      seconds=r.seconds, steered=r.steered if llm.pack is not None else None,
                      cpu_ttft_s=c_first - c0, cpu_decode_tps=cpu_tps)


def open_stock_llama(model_path: str | Path, *, n_threads: int, n_ctx: int, n_batch: int = 512) -> Any:
    """llama-cpp-python's own ``Llama`` with the context settings our session uses.

    Flash attention is requested explicitly: our session leaves llama.cpp's default (auto), which turns it on
    for the CPU backend, while ``Llama`` defaults to off; comparing loops needs the same kernels.
    """
    import llama_cpp

    return llama_cpp.Llama(
        str(model_path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=n_threads,
        n_threads_batch=n_threads, flash_attn=True, verbose=False,
    )


def stock_turn(llama: Any, tokens: Sequence[int], max_tokens: int) -> TurnTiming:
    """One greedy turn of stock ``Llama.generate`` on pre-tokenized ``tokens`` (no prefix-cache reuse)."""
    llama.reset()  # otherwise generate() reuses the cached prompt prefix and skips the prefill we time
    t0, c0 = time.perf_counter(), time.process_time()
    t_first = t_last = t0
    c_first = c_last = c0
    received = 0
    n_gen = 0
    for tok in llama.generate(list(tokens), temp=0.0, repeat_penalty=1.0):
        now, cnow = time.perf_counter(), time.process_time()
        received += 1
        if received == 1:
            t_first, c_first = now, cnow
        t_last, c_last = now, cnow
        if _is_eog(llama, tok):
            break
        n_gen += 1
        if n_gen >= max_tokens:
            break
    decodes = received - 1
    tps = decodes / (t_last - t_first) if decodes > 0 and t_last > t_first else float("nan")
    cpu_tps = decodes / (c_last - c_first) if decodes > 0 and c_last > c_first else float("nan")
    return TurnTiming(ttft_s=t_first - t0, decode_tps=tps, tokens=n_gen, prompt_tokens=len(tokens),
                      seconds=t_last - t0, steered=None, cpu_ttft_s=c_first - c0, cpu_decode_tps=cpu_tps)


def _is_eog(llama: Any, tok: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama._model.vocab, tok))
