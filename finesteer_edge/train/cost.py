"""What an extraction will cost on this machine, before it runs: token counts times measured speeds.

A profile of extraction (gate rows on SmolLM2, 1 thread) put 99% of its time in ``llama_decode``: the rest
(templates, tokenizing, taps, writing rows) is noise. So an extraction's time is its prompt tokens over the
model's prefill speed plus its generated tokens over its decode speed. The token counts come from rendering
and tokenizing every planned row exactly as ``extract`` will (no model compute: a second for thousands of
rows); the speeds are measured on the user's model, with the run's threads and taps, in a few seconds. No
table of models or machines: a 0.5B model on a slow laptop and SmolLM2 on a fast one are both measured.

``make-pack --budget auto`` (its default) uses it to choose how many rows per file fit its time target.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..gate_input import user_span
from ..steered import SteeredLlama
from .extract import HeadCache, conversation
from .tasks import SELF, Item

CALIBRATION_TEXT = ("Tell me how households plan a weekly budget, what they usually forget, and how a "
                    "spreadsheet or an app can help them keep track of bills, savings and groceries. ")
PREFILL_TOKENS = 64
"""A typical row's prompt length (a rendered single-turn prompt is 40-80 tokens; prefill speed depends on it)."""
DECODE_TOKENS = 16
ROW_SECONDS = 0.03
"""Per row beyond the token model (templates, tokenizing, taps, writing the row, the tap callback's Python on
the ``tap_context`` path): make-pack's two extractions ran 25-46 ms per row longer than their token estimate
without this term, 2 threads: on SmolLM2 28 and 33 ms (bench/results/make_pack_auto.json, whose estimate
predates the term), on the 0.5B-shaped model of bench/shaped_model.py 46 and 25 ms (a first run, not kept; its
kept run, with the term, bench/results/make_pack_qwen05_shape.json, estimated 13.9 min and took 13.1)."""


@dataclass(frozen=True)
class Speeds:
    """Tokens per second of this model on this machine, as extraction decodes them (taps on)."""

    prefill_tps: float
    decode_tps: float


@dataclass(frozen=True)
class Work:
    """What an extraction decodes: prompt/teacher-forced tokens in batches, and single generated tokens."""

    rows: int = 0
    prefill_tokens: int = 0
    decode_steps: int = 0

    def __add__(self, other: Work) -> Work:
        return Work(self.rows + other.rows, self.prefill_tokens + other.prefill_tokens,
                    self.decode_steps + other.decode_steps)

    def seconds(self, speeds: Speeds) -> float:
        return (self.prefill_tokens / speeds.prefill_tps + self.decode_steps / speeds.decode_tps
                + self.rows * ROW_SECONDS)


def measure_speeds(llm: SteeredLlama, *, repeats: int = 3) -> Speeds:
    """Median of ``repeats`` prefills of PREFILL_TOKENS tokens (every row captured at the taps, as extraction
    captures them; on the ``tap_context`` path that computes the tap context alone, as extraction does) and the
    mean of DECODE_TOKENS single-token decodes with their logits (generation), on ``llm``'s session; the
    first prefill warms up."""
    s = llm.session
    ids = s.tokenize(CALIBRATION_TEXT * 8, add_special=False, parse_special=False)[:PREFILL_TOKENS]
    capture = "all" if s.tap is not None else False
    times = []
    for _ in range(repeats + 1):
        s.reset()
        t0 = time.perf_counter()
        s.decode(ids, capture=capture)
        times.append(time.perf_counter() - t0)
    prefill = sorted(times[1:])[len(times[1:]) // 2]
    s.reset()
    s.decode(ids[:8])
    s.logits()
    token = ids[-1]
    t0 = time.perf_counter()
    for _ in range(DECODE_TOKENS):
        s.decode([token])
        s.logits()
    decode = (time.perf_counter() - t0) / DECODE_TOKENS
    s.reset()
    return Speeds(prefill_tps=len(ids) / prefill, decode_tps=1.0 / decode)


def mose_work(llm: SteeredLlama, items: Iterable[Item], *, own_tokens: int, end_of_turn: bool = False) -> Work:
    """The MoSE extraction's work (``extract._extract_one``): each prompt's prefill (its head kept from the
    previous row as ``extract.HeadCache`` keeps it); for a contrast row also the model's own answer (the whole
    prompt + ``own_tokens`` generated: an upper bound, answers may end sooner) and every desired and undesired
    response teacher-forced after the prompt."""
    w, prev = Work(), None
    for it in items:
        messages = [{"role": "user", "content": it.prompt}]
        prompt = llm.prompt_tokens(messages)
        head = _head(llm, messages, prompt)
        prefill, steps = 0, 0
        if it.target and not it.gate_only:
            if it.undesired is SELF:
                prefill += len(prompt) + own_tokens  # generate's prefill, then the answer teacher-forced
                steps += own_tokens
                prev = None  # generate used the KV cache: the next prefill starts from nothing
            else:
                prefill += sum(_n_tokens(llm, t) for t in it.undesired)
            prefill += sum(_n_tokens(llm, t) + int(end_of_turn) for t in it.desired)
        prefill += len(prompt) - (len(head) if head == prev else 0)
        prev = head
        w += Work(1, prefill, steps)
    return w


def gate_work(llm: SteeredLlama, items: Iterable[Item]) -> Work:
    """Gate-only rows (``extract._extract_gate_row``): one prefill of the whole conversation each, less the
    head the previous row left in the KV cache."""
    w, prev = Work(), None
    for it in items:
        messages = conversation(it)
        prompt = llm.prompt_tokens(messages)
        head = _head(llm, messages, prompt)
        w += Work(1, len(prompt) - (len(head) if head == prev else 0), 0)
        prev = head
    return w


def _head(llm: SteeredLlama, messages: list[dict[str, str]], prompt: list[int]) -> list[int]:
    """What ``extract.HeadCache`` keeps between rows: the prompt before the last user message."""
    span = user_span(llm.chat_template, llm.session, messages, len(prompt))
    return prompt[: HeadCache.head_length(prompt, span)]


def _n_tokens(llm: SteeredLlama, text: str) -> int:
    return len(llm.session.tokenize(text, add_special=False, parse_special=False))
