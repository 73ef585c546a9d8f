"""``extract``: run the GGUF model over training prompts and record what SCS and MoSE learn from.

For every prompt (rendered with the model's chat template, generation prompt added) we prefill
through the runtime's own session, with the steering taps, and keep the last prompt token's state at
the candidate gate layers and the steer layer. For targets we also teacher-force the desired and the
undesired responses after the prompt and keep ``delta = mean_t h_L(desired) - mean_t h_L(undesired)``
over the response tokens at the steer layer L (DESIGN.md section 1). With no undesired response
given (safety), the model's own greedy answer is the undesired one: that is the behaviour to steer
away from.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import file_sha256
from ..errors import DataError, LayerError
from ..llama.session import LlamaSession
from ..progress import track
from ..steered import SteeredLlama
from .activations import SPLIT_CODES, ActivationsWriter
from .tasks import SELF, Item, load_items, style_variants

# When the model's own answer is empty (it stops at once), contrast against a plain compliant opener.
FALLBACK_COMPLIANCE = "Sure, here is how to do that."


def default_layers(n_layer: int) -> tuple[int, int, list[int]]:
    """(gate, steer, candidate gate layers) for a model depth.

    Steer at ~3/8 of the depth (the paper's 12 of 32); gate at mid-depth, where the one-class SCS score
    separates best on SmolLM2 (DESIGN.md section 8); candidates span 1/4..2/3 so ``train`` can pick.
    """
    top = n_layer - 2
    steer = min(max(1, round(n_layer * 0.375)), top)
    gate = min(max(1, round(n_layer * 0.5)), top)
    cands = {min(max(1, round(n_layer * f)), top) for f in (0.25, 0.33, 0.4, 0.45, 0.55, 0.6, 0.67)}
    return gate, steer, sorted(cands | {gate, steer})


@dataclass
class ExtractConfig:
    task: str
    data: Path
    out: Path
    gate_layer: int | None = None
    steer_layer: int | None = None
    gate_layers: list[int] | None = None
    negatives: list[Path] = field(default_factory=list)
    pairs_per_question: int = 1
    augment: bool | None = None
    """Style rewrites for the gate (augment.py); None = on for the safety task, off otherwise."""
    limit: int | None = None
    """At most this many items per (group, split): quick runs and tests."""
    own_tokens: int = 48
    end_of_turn: bool = False
    """Teacher-force each desired response followed by the model's end-of-turn token (issue 11), so the
    shift points at "refuse and stop" rather than at a refusal sentence the model then repeats."""
    n_ctx: int = 2048
    threads: int | None = None
    show_progress: bool = True
    chat_template: str | None = None
    """None: the model's own (plain with a warning if it has none); or a built-in name / Jinja file."""


def _limit(items: list[Item], limit: int | None) -> list[Item]:
    if limit is None:
        return items
    seen: dict[tuple[str, str], int] = {}
    out = []
    for it in items:
        key = (it.group, it.split)
        if seen.get(key, 0) < limit:
            seen[key] = seen.get(key, 0) + 1
            out.append(it)
    return out


def extract(model_path: Path, cfg: ExtractConfig) -> Path:
    augment = cfg.task == "safety" if cfg.augment is None else cfg.augment
    items, files = load_items(cfg.task, cfg.data, negatives=cfg.negatives, pairs_per_question=cfg.pairs_per_question)
    items = _limit(items, cfg.limit)
    if augment:
        items += style_variants(items)
    llm = SteeredLlama(model_path, n_ctx=cfg.n_ctx, n_threads=cfg.threads, chat_template=cfg.chat_template)
    n_layer = llm.session.n_layer
    gate, steer, cands = default_layers(n_layer)
    gate = cfg.gate_layer if cfg.gate_layer is not None else gate
    steer = cfg.steer_layer if cfg.steer_layer is not None else steer
    cands = sorted(set(cfg.gate_layers or cands) | {gate})
    if steer < 1:
        raise LayerError("the steer layer must be >= 1: llama.cpp cannot apply a control vector to layer 0")
    llm.close()
    taps = tuple(sorted(set(cands) | {steer}))
    # LayerError here if a layer is out of range for this model
    with warnings.catch_warnings():  # the template warning (if any) was shown by the first instance
        warnings.simplefilter("ignore", UserWarning)
        llm = SteeredLlama(model_path, n_ctx=cfg.n_ctx, n_threads=cfg.threads, tap_layers=taps,
                           chat_template=cfg.chat_template)
    s = llm.session
    eot = end_of_turn_token(llm) if cfg.end_of_turn else None
    writer = ActivationsWriter(cfg.out, len(items), s.n_embd, list(cands))
    rows: dict[str, list[Any]] = {"id": [], "group": [], "split": [], "variant": [], "prompt": [], "own_answer": []}
    t0 = time.perf_counter()
    try:
        for i, item in enumerate(track(items, f"extracting {cfg.task}", total=len(items), enabled=cfg.show_progress)):
            own = _extract_one(llm, s, item, i, writer, cands, gate, steer, cfg.own_tokens, eot)
            for key, value in (("id", item.id), ("group", item.group), ("split", item.split),
                               ("variant", item.variant), ("prompt", item.prompt), ("own_answer", own)):
                rows[key].append(value)
        meta = {
            "task": cfg.task,
            "model": s.info.fingerprint.to_dict(),
            "model_name": s.info.name,
            "model_file": str(Path(model_path).name),
            "gate_layer": gate,
            "steer_layer": steer,
            "gate_layers": cands,
            "own_tokens": cfg.own_tokens,
            "end_of_turn": None if eot is None else {"token": eot, "text": s.token_text(eot)},
            "n_ctx": s.n_ctx,
            "chat_template": llm.chat_template.name,
            "data_files": {str(p): file_sha256(p) for p in files},
            "pairs_per_question": cfg.pairs_per_question,
            "augment": augment,
            "limit": cfg.limit,
            "seconds": round(time.perf_counter() - t0, 1),
            "rows": rows,
        }
        return writer.finish(meta)
    except BaseException:
        writer.abort()
        raise
    finally:
        llm.close()


def _extract_one(llm: SteeredLlama, s: LlamaSession, item: Item, i: int, writer: ActivationsWriter,
                 cands: list[int], gate: int, steer: int, own_tokens: int, eot: int | None = None) -> str | None:
    messages = [{"role": "user", "content": item.prompt}]
    prompt = llm.prompt_tokens(messages)
    if len(prompt) + 2 > s.n_ctx:
        raise DataError(f"item {item.id}: the prompt is {len(prompt)} tokens, too long for n_ctx {s.n_ctx}")
    own_text = None
    undesired_ids: list[list[int]] = []
    contrast = item.target and not item.gate_only
    if contrast:
        if item.undesired is SELF:
            r = llm.generate(messages, max_tokens=own_tokens)
            own_text = r.text
            undesired_ids = [r.token_ids or s.tokenize(FALLBACK_COMPLIANCE, parse_special=False)]
        else:
            undesired_ids = [_response_ids(s, t) for t in item.undesired]
    s.reset()
    s.decode(prompt, capture="last")
    states = {n: s.hidden(n) for n in set(cands) | {steer}}
    values: dict[str, Any] = {f"h_layer.{n}": states[n] for n in cands}
    values.update(h_gate=states[gate], h_steer=states[steer], split=SPLIT_CODES[item.split],
                  label=1 if item.target else 0)
    if contrast:
        room = s.n_ctx - len(prompt) - 1
        tail = [] if eot is None else [eot]
        want = np.mean([_response_mean(s, len(prompt), (_response_ids(s, t) + tail)[:room], steer)
                        for t in item.desired], 0)
        avoid = np.mean([_response_mean(s, len(prompt), ids[:room], steer) for ids in undesired_ids], 0)
        values.update(delta=(want - avoid).astype(np.float32), has_delta=1)
    writer.put(i, **values)
    return own_text


def end_of_turn_token(llm: SteeredLlama) -> int:
    """The token that ends an assistant turn in this model's chat template (``<|im_end|>`` for SmolLM2).

    Read from the template itself: the first end-of-generation token after an assistant message's
    text. Not ``llama_vocab_eot``: SmolLM2's GGUF says ``<|endoftext|>`` there, a token its template
    never emits. Falls back to the vocabulary's EOS when the template shows none.
    """
    s = llm.session
    marker = "Okay."
    text = llm._template.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}],
                                add_generation_prompt=False)
    after = text[text.rfind(marker) + len(marker):] if marker in text else ""
    for tok in s.tokenize(after, add_special=False, parse_special=True):
        if s.is_eog(tok):
            return tok
    return s.eos


def _response_ids(s: LlamaSession, text: str) -> list[int]:
    ids = s.tokenize(text, add_special=False, parse_special=False)
    if not ids:
        raise DataError(f"response {text!r} tokenizes to nothing")
    return ids


def _response_mean(s: LlamaSession, prompt_len: int, ids: list[int], layer: int) -> np.ndarray:
    """Mean state at ``layer`` over the response tokens, teacher-forced after the cached prompt."""
    s.truncate(prompt_len)
    s.decode(ids, capture="all")
    return s.hidden_rows(layer).mean(0)

