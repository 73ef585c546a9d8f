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

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import file_sha256
from ..errors import DataError, LayerError
from ..gate_input import pool, user_span
from ..llama.session import LlamaSession
from ..progress import track
from ..steered import SteeredLlama
from ..vocab import SPAN_GATE_FEATURES
from .activations import SPLIT_CODES, ActivationsWriter
from .shapes import context_for
from .tasks import SELF, Item, load_gate_items, load_items, style_variants

POOLED_FEATURES = SPAN_GATE_FEATURES
"""Candidate gate features besides the runtime's last-prompt-token state (``h_layer.N``): the state at
the last token of the user's message and the mean over its tokens (gate-only extraction; computed by
``finesteer_edge.gate_input.pool``, as the runtime pools them)."""

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
    resume_dir: Path | None = None
    """Keep the rows done so far here (memmaps + a journal): an interrupted run with the same items,
    model and layers goes on from its last completed row. None: scratch space is removed on failure."""
    on_row: Callable[[int, int], None] | None = None
    """Called as ``on_row(done, total)`` after every row (and once for the rows resumed): a caller's
    own progress display (``show_progress=False`` then silences extract's bar)."""
    gate_only: bool = False
    """Gate rows only (``--gate-only``): every train/val prompt of the safety folder (tasks.GATE_FILES) in
    every conversation shape of ``shapes``, prefill only (no own answers, no deltas): cheap, and what
    ``train --gate-acts`` fits the gate on."""
    shapes: tuple[str, ...] = ("single", "history", "system", "after_refusal")
    shaped_fraction: float | None = None
    """Probability that an item is also rendered in each non-single shape of ``shapes``; None = 1 for gate-only
    extraction, 0 otherwise. Gate-only: every item. Otherwise: every original prompt, as a prefill-only row
    (id ``<id>@<shape>``) that ``train`` gives its original's target shift, as it does a style rewrite, so the
    head learns to answer a request the same way after a few exchanges or under a system prompt (issue 11)."""
    families_per_topic: int | None = None
    """Gate-only: phrasing families kept per topic pair (both halves), None = all."""
    skip_single: tuple[str, ...] = ()
    """Gate-only: sources whose first-turn rows are not extracted (another file holds them)."""
    sources: tuple[str, ...] = ()
    """Gate-only: keep only items of these sources (empty = all); e.g. to add rows to an earlier file."""
    realistic: bool = False
    """Safety, not gate-only: also the folder's realistic-use files as MoSE rows, each harmful request with its own
    target shift and the benign ones as negatives (tasks._realistic_targets; ``--realistic-data``)."""

    def __post_init__(self) -> None:
        if self.gate_only and self.realistic:
            raise DataError("--realistic-data adds MoSE targets; --gate-only already reads the realistic-use files")

    @property
    def shaped(self) -> float:
        if self.shaped_fraction is not None:
            return self.shaped_fraction
        return 1.0 if self.gate_only else 0.0


def _limit(items: list[Item], limit: int | None, *, by_source: bool = False) -> list[Item]:
    """At most ``limit`` items per (group, split), or per (group, source, split) with ``by_source``."""
    if limit is None:
        return items
    seen: dict[tuple[str, ...], int] = {}
    out = []
    for it in items:
        key = (it.group, it.source, it.split) if by_source else (it.group, it.split)
        if seen.get(key, 0) < limit:
            seen[key] = seen.get(key, 0) + 1
            out.append(it)
    return out


def extract(model_path: Path, cfg: ExtractConfig) -> Path:
    augment = cfg.task == "safety" if cfg.augment is None else cfg.augment
    if cfg.gate_only:
        items, files = load_gate_items(cfg.data, families_per_topic=cfg.families_per_topic)
        if cfg.sources:
            items = [it for it in items if it.source in cfg.sources]
        items = with_shapes(_limit(items, cfg.limit, by_source=True), cfg.shapes, shaped_fraction=cfg.shaped,
                            skip_single=cfg.skip_single)
        augment = False
    else:
        items, files = load_items(cfg.task, cfg.data, negatives=cfg.negatives,
                                  pairs_per_question=cfg.pairs_per_question, realistic=cfg.realistic)
        items = _limit(items, cfg.limit, by_source=cfg.realistic)  # a quick realistic run keeps every source
    originals = list(items)
    if augment:
        items += style_variants(items)
    if not cfg.gate_only and cfg.shaped > 0:
        items += [it for it in with_shapes(originals, cfg.shapes, shaped_fraction=cfg.shaped)
                  if it.shape != "single"]
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
    extra = [f"f_{k}.{n}" for k in POOLED_FEATURES for n in cands]
    plan = _plan(model_path, s, items, cands, gate, steer, cfg)
    done_rows = _resume(cfg.resume_dir, plan)
    writer = ActivationsWriter(cfg.out, len(items), s.n_embd, list(cands), extra=extra, scratch=cfg.resume_dir)
    rows: dict[str, list[Any]] = {"id": [], "group": [], "split": [], "variant": [], "prompt": [], "own_answer": [],
                                  "source": [], "shape": []}
    for row in done_rows:
        for key in rows:
            rows[key].append(row[key])
    seconds_before = done_rows[-1]["seconds"] if done_rows else 0.0
    journal = (cfg.resume_dir / JOURNAL).open("a", encoding="utf-8") if cfg.resume_dir is not None else None
    t0 = time.perf_counter()
    try:
        if cfg.on_row is not None and done_rows:
            cfg.on_row(len(done_rows), len(items))
        todo = list(enumerate(items))[len(done_rows):]
        heads = HeadCache()
        for i, item in track(todo, f"extracting {cfg.task}", total=len(todo), enabled=cfg.show_progress):
            if cfg.gate_only:
                own = _extract_gate_row(llm, s, item, i, writer, cands, gate, steer, heads)
            else:
                own = _extract_one(llm, s, item, i, writer, cands, gate, steer, cfg.own_tokens, eot, heads)
            row = {"id": item.id, "group": item.group, "split": item.split, "variant": item.variant,
                   "prompt": item.prompt, "own_answer": own, "source": item.source or item.group,
                   "shape": item.shape}
            for key in rows:
                rows[key].append(row[key])
            if journal is not None:  # data first, then the journal line that says the row is done
                writer.flush()
                elapsed = round(seconds_before + time.perf_counter() - t0, 1)
                journal.write(json.dumps({"i": i, **row, "seconds": elapsed}, ensure_ascii=False) + "\n")
                journal.flush()
            if cfg.on_row is not None:
                cfg.on_row(i + 1, len(items))
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
            "gate_only": cfg.gate_only,
            "shapes": list(cfg.shapes) if cfg.gate_only or cfg.shaped > 0 else ["single"],
            "shaped_fraction": cfg.shaped,
            "families_per_topic": cfg.families_per_topic,
            "skip_single": list(cfg.skip_single),
            "sources": list(cfg.sources),
            "seconds": round(seconds_before + time.perf_counter() - t0, 1),
            "resumed_rows": len(done_rows),
            "rows": rows,
        }
        if journal is not None:
            journal.close()
            journal = None
        return writer.finish(meta)
    except BaseException:
        writer.abort()
        raise
    finally:
        if journal is not None:
            journal.close()
        llm.close()


JOURNAL = "rows.jsonl"
PLAN = "plan.json"


def _plan(model_path: Path, s: LlamaSession, items: list[Item], cands: list[int], gate: int, steer: int,
          cfg: ExtractConfig) -> dict[str, Any]:
    """What the rows of a resumable extraction depend on; a journal written under another plan is discarded."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.id, it.prompt, it.target, it.split, it.group, it.variant, it.gate_only,
                             it.desired, it.undesired], ensure_ascii=False).encode())
    st = Path(model_path).stat()
    return {"items_sha256": h.hexdigest(), "n_rows": len(items), "model": s.info.fingerprint.to_dict(),
            "model_file": {"name": Path(model_path).name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
            "layers": cands, "gate_layer": gate, "steer_layer": steer, "own_tokens": cfg.own_tokens,
            "n_ctx": s.n_ctx, "chat_template": cfg.chat_template, "end_of_turn": cfg.end_of_turn,
            "gate_only": cfg.gate_only}


def _resume(folder: Path | None, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows already done under the same plan (in order, 0..k-1); resets the folder for another plan."""
    if folder is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    plan_path, journal = folder / PLAN, folder / JOURNAL
    try:
        same = json.loads(plan_path.read_text(encoding="utf-8")) == json.loads(json.dumps(plan))
    except (OSError, ValueError):
        same = False
    if not same:
        for p in folder.iterdir():
            if p.is_file():
                p.unlink()
        plan_path.write_text(json.dumps(plan), encoding="utf-8")
        return []
    done: list[dict[str, Any]] = []
    try:
        lines = journal.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # the line being written when the run was stopped
            break
        if not isinstance(row, dict) or row.get("i") != len(done):
            break
        done.append(row)
    # rewrite the journal as exactly the rows kept, so a torn last line cannot precede new ones
    tmp = journal.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done), encoding="utf-8")
    os.replace(tmp, journal)
    return done


def _extract_one(llm: SteeredLlama, s: LlamaSession, item: Item, i: int, writer: ActivationsWriter,
                 cands: list[int], gate: int, steer: int, own_tokens: int, eot: int | None = None,
                 heads: HeadCache | None = None) -> str | None:
    messages = conversation(item)
    prompt = llm.prompt_tokens(messages)
    if len(prompt) + 2 > s.n_ctx:
        raise DataError(f"item {item.id}: the prompt is {len(prompt)} tokens, too long for n_ctx {s.n_ctx}")
    own_text = None
    undesired_ids: list[list[int]] = []
    contrast = item.target and not item.gate_only
    if contrast:
        if item.undesired is SELF:
            if heads is not None:
                heads.forget()  # generate prefills the whole prompt in its own batches
            r = llm.generate(messages, max_tokens=own_tokens)
            own_text = r.text
            undesired_ids = [r.token_ids or s.tokenize(FALLBACK_COMPLIANCE, parse_special=False)]
        else:
            undesired_ids = [_response_ids(s, t) for t in item.undesired]
    span = user_span(llm.chat_template, s, messages, len(prompt))
    (heads or HeadCache()).prefill(s, prompt, span)
    states = {n: s.hidden(n) for n in set(cands) | {steer}}
    values: dict[str, Any] = {f"h_layer.{n}": states[n] for n in cands}
    for n in cands:  # the pooled gate features too, so that this file's rows can train any runtime gate
        values.update({f"f_{kind}.{n}": s.hidden_span(n, kind) for kind in POOLED_FEATURES})
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
    text = llm.chat_template.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}],
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



def with_shapes(items: list[Item], shapes: tuple[str, ...], *, shaped_fraction: float = 1.0,
                skip_single: tuple[str, ...] = ()) -> list[Item]:
    """Each item as a first turn and in other conversation shapes (shapes.py, ``train`` pool).

    Every non-single shape is added with probability ``shaped_fraction`` (a hash of the id decides, so
    reruns agree); ``skip_single`` lists sources whose first-turn rows another activations file already
    holds (the MoSE extraction). ``after_refusal`` contexts refuse a harmful request of the same split,
    never the item itself.
    """
    harmful = {sp: [it.prompt for it in items if it.target and it.split == sp] for sp in ("train", "val")}
    out = []
    for it in items:
        for shape in shapes:
            if shape == "single":
                if it.source not in skip_single:
                    out.append(it)
                continue
            if _unit(f"{it.id}|{shape}") >= shaped_fraction:
                continue
            pool = [p for p in harmful[it.split] if p != it.prompt] or None
            ctx = context_for(shape, it.id, pool="train", harmful_pool=pool)
            out.append(Item(f"{it.id}@{shape}", it.prompt, it.target, it.split, it.group, gate_only=True,
                            source=it.source, context=ctx.context, shape=shape))
    return out


def _unit(key: str) -> float:
    import hashlib

    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0x100000000


def conversation(item: Item) -> list[dict[str, str]]:
    return [*item.context, {"role": "user", "content": item.prompt}]


def conversation_states(llm: SteeredLlama, messages: list[dict[str, str]], layers: list[int],
                        heads: HeadCache | None = None) -> tuple[dict[int, np.ndarray], tuple[int, int]]:
    """The state at ``layers`` of every prompt token from the last user message on (the rows before it, the
    head, are not captured: ``HeadCache``), and that message's span among these rows.

    The runtime gates turn k from the prefill of the whole rendered conversation (only the new tokens
    are decoded, the rest come from the KV cache, which holds the same keys and values); its feature is
    the last row here. tests/test_gate_shapes.py checks that both agree on a multi-turn chat.
    """
    s = llm.session
    prompt = llm.prompt_tokens(messages)
    if len(prompt) + 2 > s.n_ctx:
        raise DataError(f"the conversation is {len(prompt)} tokens, too long for n_ctx {s.n_ctx}")
    span = user_span(llm.chat_template, s, messages, len(prompt))
    start = (heads or HeadCache()).prefill(s, prompt, span)
    return {n: s.hidden_rows(n) for n in layers}, (span[0] - start, span[1] - start)


class HeadCache:
    """Prefill a row's prompt as two batches, the head (everything before the last user message: system
    prompt, earlier turns, the user header) and the rest, and keep the head in the KV cache for the next row.

    Consecutive rows mostly share their head (single-turn prompts under the default system prompt): on the
    shipped safety data at the default budget, make-pack's two extractions prefill 109k instead of 146k tokens
    (``cost.py``'s count). Always two batches, even with nothing cached, so a row's states never depend on
    which row came before it or on whether the run resumed (tests/test_extract_heads.py). Against one
    prefill of the whole prompt, as extraction ran before: bit-identical on SmolLM2 Q4_1 (30 validation
    prompts, gate and steer layers), within 5e-4 relative on the tiny F32 test models. Anything else that
    decodes on the session in between (``generate``) must call :meth:`forget`.
    """

    def __init__(self) -> None:
        self.head: list[int] | None = None

    def forget(self) -> None:
        self.head = None

    @staticmethod
    def head_length(prompt: list[int], span: tuple[int, int]) -> int:
        """Where the head ends: the user message's first token, leaving at least one token to capture."""
        return max(0, min(span[0], len(prompt) - 1))

    def prefill(self, s: LlamaSession, prompt: list[int], span: tuple[int, int]) -> int:
        """Decode ``prompt`` on ``s``, capturing every row from the user message's first token (``span[0]``) on
        and pooling ``span``; returns that position (the first captured row).

        Both batches are captures (the head's rows are dropped): on the ``tap_context`` path a capture runs in
        the tap context alone and one that is not would compute the head in the generation context too."""
        start = self.head_length(prompt, span)
        head = prompt[:start]
        if self.head is not None and self.head == head and s.tokens[:start] == head:
            s.truncate(start)
        else:
            s.reset()
            if head:
                s.decode(head, capture="all")
        self.head = head
        s.decode(prompt[start:], capture="all", span=span)
        return start


def _extract_gate_row(llm: SteeredLlama, s: LlamaSession, item: Item, i: int, writer: ActivationsWriter,
                      cands: list[int], gate: int, steer: int, heads: HeadCache | None = None) -> None:
    """The runtime's feature (last prompt token) for the whole conversation, plus pooled user-message
    features for the feature study (bench/gate_ceiling.py)."""
    try:
        states, (start, end) = conversation_states(llm, conversation(item), sorted(set(cands) | {steer}), heads)
    except DataError as exc:
        raise DataError(f"item {item.id}: {exc}") from None
    values: dict[str, Any] = {"h_gate": states[gate][-1], "h_steer": states[steer][-1]}
    for n in cands:
        rows = states[n]
        values[f"h_layer.{n}"] = rows[-1]
        for kind in POOLED_FEATURES:
            values[f"f_{kind}.{n}"] = pool(rows, (start, end), kind)
    values.update(split=SPLIT_CODES[item.split], label=1 if item.target else 0)
    writer.put(i, **values)
