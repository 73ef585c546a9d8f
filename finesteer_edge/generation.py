"""The token loop of a turn: sample, detokenize, hold back possible stop strings, stream, stop.

Apart from :class:`~finesteer_edge.steered.SteeredLlama` because it starts where the steering decisions
end: the session holds the prefilled prompt and, on a steered turn, the control vector; all that is left of
steering here is the schedule's scale between decodes (``plan``). The same loop serves steered and unsteered
turns, so they sample alike.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .llama.stops import StopMatcher
from .result import GenerationResult
from .schedule import ScheduledControl
from .settings import SamplingParams

if TYPE_CHECKING:
    from .llama.session import LlamaSession


def generate_tokens(s: LlamaSession, result: GenerationResult, t0: float, sp: SamplingParams,
                    plan: ScheduledControl | None = None) -> Iterator[str | GenerationResult]:
    """Yield text pieces as they are decided, then ``result`` filled in (text, tokens, finish reason, times
    from ``t0``): ``stop`` (an end-of-generation token or a stop string), ``length`` or ``context``."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stopper = StopMatcher(sp.stop)
    pieces: list[str] = []
    ids: list[int] = []
    finish = "length"
    hit = False
    with s.sampler(temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p, min_p=sp.min_p,
                   seed=sp.seed, penalties=sp.penalties) as sampler:
        result.seed = sampler.seed if sp.temperature > 0 else None
        for _ in range(sp.max_tokens):
            tok = s.sample(sampler)
            if not ids and result.ttft_seconds == 0.0:
                result.ttft_seconds = time.perf_counter() - t0
            if s.is_eog(tok):
                finish = "stop"
                break
            ids.append(tok)
            emit, hit = stopper.feed(decoder.decode(s.piece(tok)))
            if emit:
                pieces.append(emit)
                yield emit
            if hit:
                finish = "stop"
                break
            if s.n_past + 1 > s.n_ctx:
                finish = "context"
                break
            if plan is not None:  # the turn's schedule: scale or clear the vector between decodes
                plan.before_decode(len(ids) - 1)
            s.decode([tok])
    if not hit:
        tail, hit = stopper.feed(decoder.decode(b"", final=True))
        tail += "" if hit else stopper.flush()
        if tail:
            pieces.append(tail)
            yield tail
    result.text = "".join(pieces)
    result.tokens = len(ids)
    result.token_ids = ids
    result.finish_reason = finish
    result.seconds = time.perf_counter() - t0
    yield result


def drain(it: Iterator[str | GenerationResult]) -> GenerationResult:
    """The result of a turn's stream, its pieces discarded (the non-streaming calls)."""
    result = None
    for item in it:
        if isinstance(item, GenerationResult):
            result = item
    assert result is not None
    return result
