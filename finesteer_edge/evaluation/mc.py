"""MC1 scoring from the model's own log-likelihood, with and without steering.

MC1 (TruthfulQA): each question has one correct choice among 2-5; the model "answers" with the
choice whose tokens it finds most likely as the start of its reply. We score
``log p(choice tokens | chat-templated question, assistant turn started)``: the sum over the
choice's tokens (MC1 as published) and the length-normalised mean (reported alongside, because the
sum favours short choices). Scoring uses :meth:`LlamaSession.decode` with ``all_logits=True``: the
prompt is prefilled once, then every choice is decoded on top of it (its KV entries are dropped
before the next choice), so an item costs one prefill plus the choices' tokens.

Steering follows the runtime exactly (:class:`SteeredLlama` ``_turn``): the question prompt is
prefilled **unsteered** while the gate and head layers are tapped; :meth:`SteeredLlama.decide`
applies the instance's ``gate`` policy, ``vector_source`` and ``strength``. When the gate opens,
``exact`` mode prefills the prompt again with the vector on and scores the choices with it;
``fast`` mode keeps the unsteered prompt (so the first choice token is scored from the unsteered
logits, as fast mode samples the first generated token) and applies the vector to the choice tokens.
A closed gate scores exactly as without a pack.

Not thread-safe: it drives the instance's session directly. Use one SteeredLlama per thread.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import read_jsonl, text_field, text_list
from ..errors import DataError

if TYPE_CHECKING:
    from ..steered import SteeredLlama

MAX_FALSE_CHOICES = 4
"""Validation items get the best answer plus at most this many false answers, as mc_test.jsonl has."""


@dataclass(frozen=True)
class MCItem:
    id: str
    question: str
    choices: tuple[str, ...]
    label: int
    """Index of the one correct choice."""


@dataclass
class MCScore:
    id: str
    logprob_sum: list[float]
    logprob_mean: list[float]
    n_tokens: list[int]
    label: int
    steered: bool
    gate_score: float | None
    pred: int = field(init=False)
    pred_norm: int = field(init=False)

    def __post_init__(self) -> None:
        self.pred = int(np.argmax(self.logprob_sum))
        self.pred_norm = int(np.argmax(self.logprob_mean))

    @property
    def correct(self) -> bool:
        return self.pred == self.label

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.label

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "logprob_sum": self.logprob_sum, "logprob_mean": self.logprob_mean,
            "n_tokens": self.n_tokens, "label": self.label, "pred": self.pred, "pred_norm": self.pred_norm,
            "correct": self.correct, "correct_norm": self.correct_norm, "steered": self.steered,
            "gate_score": self.gate_score,
        }


# ------------------------------------------------------------------------------------------ data
def load_mc_items(path: str | Path) -> list[MCItem]:
    """MC items from a JSONL with ``question``, ``choices`` and ``label`` (truthfulqa/mc_test.jsonl)."""
    items = []
    for i, row in enumerate(read_jsonl(path, required=("question", "choices", "label")), 1):
        where = f"{path}:{i}"
        choices = text_list(row, "choices", where)
        label = row["label"]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise DataError(f"{where}: label must be an index into choices (0..{len(choices) - 1})")
        if len(choices) < 2:
            raise DataError(f"{where}: an MC item needs at least 2 choices")
        items.append(MCItem(str(row.get("id", f"item-{i}")), text_field(row, "question", where), tuple(choices),
                            label))
    return items


def mc_items_from_truthfulqa(path: str | Path, *, seed: int = 0, max_false: int = MAX_FALSE_CHOICES) -> list[MCItem]:
    """MC items from TruthfulQA rows (``question``, ``best_answer``, ``incorrect_answers``).

    Choices are the best answer plus the first ``max_false`` incorrect answers (mc_test.jsonl has
    2-5 choices, so validation is as hard as test), shuffled with ``random.Random(seed)``: one
    generator for the whole file, so the order is reproducible and the answer is not always first.
    """
    rng = random.Random(seed)
    items = []
    for i, row in enumerate(read_jsonl(path, required=("question", "best_answer", "incorrect_answers")), 1):
        where = f"{path}:{i}"
        best = text_field(row, "best_answer", where)
        false = [a for a in text_list(row, "incorrect_answers", where) if a != best][:max_false]
        if not false:
            raise DataError(f"{where}: no incorrect answer differs from best_answer")
        choices = [best, *false]
        order = list(range(len(choices)))
        rng.shuffle(order)
        items.append(MCItem(str(row.get("id", f"tqa-{i}")), text_field(row, "question", where),
                            tuple(choices[j] for j in order), order.index(0)))
    return items


def load_any_mc(path: str | Path, *, seed: int = 0) -> list[MCItem]:
    """MC items from either format: ``choices``/``label`` rows, or TruthfulQA rows turned into items."""
    first = read_jsonl(path)[0]
    if "choices" in first:
        return load_mc_items(path)
    return mc_items_from_truthfulqa(path, seed=seed)


# ------------------------------------------------------------------------------------------ scoring
def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (float32 loses the small differences between choices)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def continuation_tokens(llm: SteeredLlama, prompt_tokens: Sequence[int], text: str) -> list[int]:
    """Token ids of ``text`` as the model would see it right after the prompt.

    Tokenising prompt + text together and checking that the prompt's ids come back unchanged guards
    against merges across the boundary; when they do not, ``text`` is tokenised on its own.
    """
    s = llm.session
    prompt_text = "".join(s.token_text(t) for t in prompt_tokens)
    joint = s.tokenize(prompt_text + text, add_special=False, parse_special=True)
    n = len(prompt_tokens)
    if joint[:n] == list(prompt_tokens) and len(joint) > n:
        return joint[n:]
    toks = s.tokenize(text, add_special=False, parse_special=False)
    if not toks:
        raise DataError(f"choice {text!r} has no tokens")
    return toks


def score_continuations(llm: SteeredLlama, prompt_tokens: Sequence[int], continuations: Sequence[Sequence[int]],
                        messages: Sequence[dict[str, str]] | None = None,
                        ) -> tuple[list[np.ndarray], bool, float | None]:
    """Per-token log-probabilities of each continuation after the prompt, steered as ``llm`` would steer.

    Returns (log-probs per continuation, whether the vector was on, gate score or None without a pack).
    Uses the instance's current steering settings and every loaded pack (gate score: the first pack's).
    """
    s = llm.session
    prompt = list(prompt_tokens)
    if any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token")
    s.check_fits(len(prompt) + max(len(c) for c in continuations), reserve=0)
    s.clear_control()
    s.reset()
    try:
        if llm.packs:  # messages: the conversation behind the prompt, for gates that read the user message
            s.decode(prompt, capture=True, span=llm.prefill_span(messages, prompt) if messages is not None else None)
            decisions = llm.decide_all()
        else:
            s.decode(prompt)
            decisions = []
        last = s.logits()
        steered = any(d.open for d in decisions)
        if steered:
            s.set_control(*s.control_buffer(llm.steer_vectors(decisions).vectors))
            if llm.mode == "exact":
                s.reset()
                s.decode(prompt)
                last = s.logits()
        first = log_softmax(last)
        out = []
        for cont in continuations:
            s.truncate(len(prompt))
            lp = [first[cont[0]]]
            if len(cont) > 1:
                rows = log_softmax(s.decode(list(cont[:-1]), all_logits=True))  # type: ignore[arg-type]
                lp.extend(rows[np.arange(len(cont) - 1), list(cont[1:])])
            out.append(np.asarray(lp, dtype=np.float64))
        return out, steered, (decisions[0].gate_score if decisions else None)
    finally:
        s.clear_control()
        s.reset()


def score_item(llm: SteeredLlama, item: MCItem) -> MCScore:
    """Score every choice of ``item`` (see the module docstring for how steering is applied)."""
    messages = [{"role": "user", "content": item.question}]
    prompt = llm.prompt_tokens(messages)
    conts = [continuation_tokens(llm, prompt, c) for c in item.choices]
    lps, steered, gate_score = score_continuations(llm, prompt, conts, messages)
    return MCScore(
        id=item.id,
        logprob_sum=[float(x.sum()) for x in lps],
        logprob_mean=[float(x.mean()) for x in lps],
        n_tokens=[len(x) for x in lps],
        label=item.label,
        steered=steered,
        gate_score=gate_score,
    )


def mc1(scores: Sequence[MCScore], *, normalised: bool = False) -> float:
    """Fraction of items whose highest-scoring choice is the correct one."""
    if not scores:
        return float("nan")
    return float(np.mean([s.correct_norm if normalised else s.correct for s in scores]))
