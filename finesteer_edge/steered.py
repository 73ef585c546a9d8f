"""``SteeredLlama``: a GGUF model plus (optionally) a steering pack, gated per turn.

Per turn (DESIGN.md section 4): render the conversation with the model's chat template, prefill the
new tokens unsteered while tapping the last token's hidden state at the gate and steer layers, run
the head, and when the gate opens set the control vector at the steer layer. ``exact`` mode then
re-prefills this turn's tokens with the vector on; ``fast`` mode steers from the first generated
token. The vector is cleared when the turn ends, so every turn is gated on its own.

Thread-safety: one instance owns one llama.cpp context. Calls from different threads are serialised
(a lock; a second thread waits). Re-entering the same instance from the thread that holds it, e.g.
starting a new call while a ``chat(stream=True)`` iterator is still open, raises
:class:`ConcurrentUseError`. Use one instance per concurrent conversation.
"""

from __future__ import annotations

import codecs
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConcurrentUseError, PackError
from .llama.chat_template import ChatTemplate, Message, normalize_messages
from .llama.session import ContextSettings, LlamaModel, LlamaSession, Penalties
from .llama.stops import StopMatcher
from .pack.pack import SteeringPack
from .result import GenerationResult, PackOutcome
from .schedule import ALWAYS, Schedule, ScheduledControl
from .selftest import SelfTestReport, run_selftest

log = logging.getLogger("finesteer_edge")

MODES = ("exact", "fast")
CONTEXT_POLICIES = ("error", "drop_oldest")
GATE_POLICIES = ("pack", "always", "never")
VECTOR_SOURCES = ("head", "mean")


@dataclass(frozen=True)
class Decision:
    gate_score: float
    open: bool
    vectors: dict[int, np.ndarray]
    expert_weights: np.ndarray


class SteeredLlama:
    """A llama.cpp model that applies a FineSteer pack per turn.

    Args:
        model_path: GGUF file, or a loaded :class:`LlamaModel` to share its weights with other instances
            (one context each: e.g. a server's parallel slots load the weights once).
        pack: a :class:`SteeringPack`, a pack directory, or None for plain generation.
        mode: ``exact`` (default; steered turns re-prefill their own tokens with the vector on) or
            ``fast`` (keep the unsteered prompt cache, steer generated tokens). None: the pack's default.
        n_ctx, n_threads, n_batch: llama.cpp context settings (threads default to the usable cores).
        strength: multiplies the pack's vector (1.0 = as trained).
        gate: ``pack`` (threshold tau), ``always`` or ``never`` (for baselines and debugging).
        vector_source: ``head`` (query-specific MoSE vector) or ``mean`` (the pack's static mean
            vector from control.gguf); None: the pack's default.
        strict: flash attention off and F32 KV cache (bit-stable, slower; for exactness tests).
        allow_unsteered: if the pack cannot be loaded, verified or self-tested, continue without
            steering instead of raising. Loud: logs an error and emits a warning. Off by default.
        context_policy: what a turn does when the conversation does not fit into ``n_ctx`` with room to
            generate. ``error`` (default): raise :class:`ContextOverflowError` and leave the instance and its
            KV cache as they were. ``drop_oldest``: leave out the oldest user/assistant exchanges (system
            messages and the turn being answered are always kept) until the prompt fits with room for
            ``min(max_tokens, n_ctx // 2)`` new tokens; the count is ``GenerationResult.dropped_turns``. The
            caller's message list is not changed (:func:`drop_oldest_turns` trims it the same way).
        tap_layers: extra layers whose hidden states the session reads (activation extraction).
        chat_template: None (default): the GGUF's ``tokenizer.chat_template``; a model without one (or with
            one the renderer cannot run) falls back to plain text with a warning. Or a built-in name
            (``chatml``, ``llama3``, ``gemma``, ``phi3``, ``plain``), a Jinja file path, or Jinja source.
        schedule: when in a steered turn the vector is on (:class:`~finesteer_edge.schedule.Schedule`);
            None: the pack's ``schedule`` (a pack without one: the whole turn).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | LlamaModel,
        pack: SteeringPack | str | os.PathLike[str] | None = None,
        *,
        mode: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        strength: float = 1.0,
        gate: str = "pack",
        vector_source: str | None = None,
        strict: bool = False,
        tap_method: str = "auto",
        allow_unsteered: bool = False,
        context_policy: str = "error",
        tap_layers: Sequence[int] = (),
        chat_template: str | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if gate not in GATE_POLICIES:
            raise ValueError(f"gate must be one of {GATE_POLICIES}, not {gate!r}")
        if vector_source is not None and vector_source not in VECTOR_SOURCES:
            raise ValueError(f"vector_source must be one of {VECTOR_SOURCES}, not {vector_source!r}")
        if not np.isfinite(strength):
            raise ValueError("strength must be finite")
        if context_policy not in CONTEXT_POLICIES:
            raise ValueError(f"context_policy must be one of {CONTEXT_POLICIES}, not {context_policy!r}")
        if chat_template is not None:
            from .llama.chat_template import resolve_template_choice

            resolve_template_choice(chat_template)  # an unknown name or unreadable file fails before loading
        self.context_policy = context_policy
        self._lock = threading.Lock()
        self._owner: int | None = None
        self.unsteered_reason: str | None = None
        self.selftest: SelfTestReport | None = None
        settings = ContextSettings(n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, strict=strict,
                                   tap_method=tap_method)

        loaded: SteeringPack | None = None
        try:
            if pack is not None:
                loaded = pack if isinstance(pack, SteeringPack) else SteeringPack.load(Path(pack))
                from .model_info import read_model_info

                info = model_path.info if isinstance(model_path, LlamaModel) else read_model_info(model_path)
                loaded.check_model(info)
        except PackError as exc:
            loaded = self._refuse_or_continue(exc, allow_unsteered)
        self.pack = loaded
        taps = tuple(sorted(set(tap_layers) | set(loaded.tap_layers if loaded else ())))
        self._session = LlamaSession(model_path, settings, tap_layers=taps)
        if loaded is not None:
            try:
                m = loaded.manifest
                self.selftest = run_selftest(self._session, m.gate_layer, m.steer_layer, (m.head_layer,))
            except PackError as exc:
                self.pack = self._refuse_or_continue(exc, allow_unsteered)
        m = self.pack.manifest if self.pack else None
        self.mode = mode or (m.mode if m else "exact")
        self.strength = float(strength)
        self.gate = gate
        self.vector_source = vector_source or ("mean" if m and m.vector_source == "control" else "head")
        self.schedule: Schedule = schedule or (m.schedule if m and m.schedule else ALWAYS)
        self.spread = m.spread if m else None
        """The pack's layer spread (:class:`~finesteer_edge.spread.Spread`) or None; plain attribute for sweeps."""
        self._template = ChatTemplate.for_model(
            self._session.info.chat_template, chat_template, model_name=self._session.info.path.name,
            bos_token=self._session.token_text(self._session.bos),
            eos_token=self._session.token_text(self._session.eos),
        )

    def _refuse_or_continue(self, exc: PackError, allow_unsteered: bool) -> None:
        if not allow_unsteered:
            raise exc
        self.unsteered_reason = str(exc)
        msg = f"STEERING DISABLED: the pack could not be applied ({exc}); generating UNSTEERED (allow_unsteered)"
        log.error(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return None

    # ------------------------------------------------------------------ properties
    @property
    def session(self) -> LlamaSession:
        return self._session

    @property
    def n_ctx(self) -> int:
        return self._session.n_ctx

    @property
    def n_threads(self) -> int:
        return self._session.n_threads

    @property
    def model_info(self):  # type: ignore[no-untyped-def]
        return self._session.info

    @property
    def chat_template(self) -> ChatTemplate:
        """The template turns are rendered with (``.name``: gguf, a built-in, a file name, or plain (fallback))."""
        return self._template

    @property
    def threshold(self) -> float | None:
        return self.pack.manifest.tau if self.pack else None

    # ------------------------------------------------------------------ public calls
    def generate(
        self,
        prompt_or_messages: str | Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        stop: Sequence[str] = (),
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        dry_multiplier: float = 0.0,
        penalties: Penalties | None = None,
    ) -> GenerationResult:
        """One independent turn (fresh KV cache): gate, steer if the gate opens, generate.

        ``repeat_penalty``/``repeat_last_n``/``dry_multiplier`` (or a full :class:`Penalties`, which wins)
        add llama.cpp's repetition penalties to the sampler chain, greedy or not (off by default).
        """
        messages = normalize_messages(prompt_or_messages)
        pen = penalties or Penalties(repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                                     dry_multiplier=dry_multiplier)
        with self._guard():
            it = self._turn(messages, reuse_cache=False, max_tokens=max_tokens, temperature=temperature,
                            seed=seed, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop, penalties=pen)
            return _drain(it)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        stream: bool = True,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        stop: Sequence[str] = (),
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        dry_multiplier: float = 0.0,
        penalties: Penalties | None = None,
    ) -> Iterator[str | GenerationResult] | GenerationResult:
        """Answer the last user turn of ``messages`` (the whole conversation so far).

        The KV cache of earlier turns is kept and reused. With ``stream`` (default) this returns an
        iterator yielding text pieces and, last, the :class:`GenerationResult`; otherwise the result.
        """
        msgs = normalize_messages(messages)
        pen = penalties or Penalties(repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                                     dry_multiplier=dry_multiplier)
        kwargs = dict(max_tokens=max_tokens, temperature=temperature, seed=seed, top_k=top_k, top_p=top_p,
                      min_p=min_p, stop=stop, penalties=pen)
        if not stream:
            with self._guard():
                return _drain(self._turn(msgs, reuse_cache=True, **kwargs))  # type: ignore[arg-type]
        return self._stream(msgs, kwargs)

    def _stream(self, msgs: list[dict[str, str]], kwargs: dict) -> Iterator[str | GenerationResult]:  # type: ignore[type-arg]
        with self._guard():
            yield from self._turn(msgs, reuse_cache=True, **kwargs)

    def reset(self) -> None:
        """Forget the conversation (empties the KV cache)."""
        with self._guard():
            self._session.reset()

    def close(self) -> None:
        with self._guard():
            self._session.close()

    def __enter__(self) -> SteeredLlama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the turn
    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        s = self._session
        text = self._template.render(messages, add_generation_prompt=True)
        toks = s.tokenize(text, add_special=False, parse_special=True)
        if s.add_bos and (not toks or toks[0] != s.bos):
            toks.insert(0, s.bos)
        if not toks:  # the model file's fault (template or vocabulary) unless there was nothing to say
            from .errors import ModelFileError
            from .llama.chat_template import ChatTemplateError

            if text:
                raise ModelFileError(f"{self._session.info.path.name}: its tokenizer produced no tokens for the prompt")
            if self._template.available:
                raise ChatTemplateError("the model's chat template rendered nothing for this conversation")
            raise ValueError("the prompt is empty")
        return toks

    def _fit_context(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[int], int]:
        """Prompt tokens under the context policy, and how many oldest exchanges were left out.

        Only renders and tokenizes: the KV cache is untouched until the prompt is known to fit, so an
        overflow (raised by the caller) leaves the instance exactly as it was.
        """
        tokens = self.prompt_tokens(messages)
        room = max(1, min(max_tokens, self.n_ctx // 2))
        n_max = len(_exchanges(messages)) if self.context_policy == "drop_oldest" else 0
        if len(tokens) + room <= self.n_ctx or n_max == 0:
            return tokens, 0
        # Fewest exchanges to drop: binary search (the prompt shrinks as more are dropped), so a long
        # history costs O(log n) renders per turn rather than one per dropped exchange.
        tried: dict[int, list[int]] = {}

        def fits(k: int) -> bool:
            tried[k] = self.prompt_tokens(drop_oldest_turns(messages, k))
            return len(tried[k]) + room <= self.n_ctx

        if not fits(n_max):
            return tried[n_max], n_max  # the shortest possible; may still overflow (raised by the caller)
        lo, hi = 1, n_max
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid + 1
        if lo not in tried:
            fits(lo)
        return tried[lo], lo

    def decide(self) -> Decision:
        """Gate and vector for the hidden states of the last prefill (pack required)."""
        assert self.pack is not None
        m = self.pack.manifest
        s = self._session
        out = self.pack.evaluate(s.hidden(m.gate_layer), s.hidden(m.head_layer))
        is_open = {"pack": out.gate_score >= m.tau, "always": True, "never": False}[self.gate]
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, not warned
            if self.vector_source == "head":
                vectors = {m.steer_layer: out.vector * self.strength}
            else:
                vectors = {layer: v * self.strength for layer, v in self.pack.control.directions.items()}
            if self.spread is not None:
                self.spread.check(s.n_layer)
                vectors = self.spread.apply(vectors)
        for v in vectors.values():
            if not np.isfinite(v).all():
                raise PackError("the steering vector is not finite; refusing to generate")
        return Decision(out.gate_score, bool(is_open), vectors, out.expert_weights)

    def _turn(
        self, messages: list[dict[str, str]], *, reuse_cache: bool, max_tokens: int, temperature: float,
        seed: int | None, top_k: int, top_p: float, min_p: float, stop: Sequence[str],
        penalties: Penalties | None = None,
    ) -> Iterator[str | GenerationResult]:
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        t0 = time.perf_counter()
        s = self._session
        tokens, dropped = self._fit_context(messages, max_tokens)
        common = _common_prefix(s.tokens, tokens) if reuse_cache else 0
        common = min(common, len(tokens) - 1)  # always decode at least one token to get fresh logits
        _check_context(tokens, s.n_ctx)
        s.truncate(common)
        new = tokens[common:]
        s.clear_control()
        decision: Decision | None = None
        if self.pack is not None:
            s.decode(new, capture=True)
            decision = self.decide()
        else:
            s.decode(new)
        steered = decision is not None and decision.open
        plan: ScheduledControl | None = None
        try:
            if steered:
                assert decision is not None
                reprefill = self.mode == "exact" and self.schedule.prompt
                if reprefill:
                    s.truncate(common)  # before the vector: a tap-context session then never computes them unsteered
                buffer = s.control_buffer(decision.vectors)
                s.set_control(*buffer)
                if reprefill:
                    s.decode(new)
                if not self.schedule.always_on:
                    plan = ScheduledControl(s, self.schedule, *buffer)
            result = GenerationResult(
                text="", steered=steered,
                gate_score=decision.gate_score if decision else None,
                expert_weights=[float(x) for x in decision.expert_weights] if decision else None,
                mode=self.mode if self.pack else "none", tokens=0, seconds=0.0,
                threshold=self.threshold, prompt_tokens=len(tokens), cached_tokens=common,
                strength=self.strength if self.pack else None, dropped_turns=dropped,
                packs=[PackOutcome(
                    name=self.pack.manifest.name, steered=steered, gate_score=decision.gate_score,
                    threshold=self.pack.manifest.tau,
                    expert_weights=[float(x) for x in decision.expert_weights], strength=self.strength,
                )] if self.pack is not None and decision is not None else [],
            )
            yield from self._generate(result, t0, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                      top_k=top_k, top_p=top_p, min_p=min_p, stop=stop, plan=plan,
                                      penalties=penalties)
        finally:
            s.clear_control()

    def _generate(self, result: GenerationResult, t0: float, *, max_tokens: int, temperature: float,
                  seed: int | None, top_k: int, top_p: float, min_p: float,
                  stop: Sequence[str], plan: ScheduledControl | None = None,
                  penalties: Penalties | None = None) -> Iterator[str | GenerationResult]:
        s = self._session
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stopper = StopMatcher(stop)
        pieces: list[str] = []
        ids: list[int] = []
        finish = "length"
        hit = False
        with s.sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                       penalties=penalties) as sampler:
            result.seed = sampler.seed if temperature > 0 else None
            for _ in range(max_tokens):
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

    # ------------------------------------------------------------------ concurrency
    @contextmanager
    def _guard(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            raise ConcurrentUseError(
                "this SteeredLlama is already busy in this thread (an open chat stream?); "
                "finish or close it first, or use a second instance"
            )
        with self._lock:
            self._owner = me
            try:
                yield
            finally:
                self._owner = None


def _drain(it: Iterator[str | GenerationResult]) -> GenerationResult:
    result = None
    for item in it:
        if isinstance(item, GenerationResult):
            result = item
    assert result is not None
    return result


def _exchanges(messages: Sequence[Message]) -> list[list[int]]:
    """Indices of the droppable exchanges, oldest first: each starts at a user message (or is whatever
    non-system messages precede the first one) and runs up to the next user message. System messages
    and the last exchange (the turn being answered) are never among them."""
    groups: list[list[int]] = []
    for i, m in enumerate(messages):
        if m["role"] == "system":
            continue
        if m["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append(i)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    return [g for g in groups if last_user is None or g[-1] < last_user][: max(0, len(groups) - 1)]


def drop_oldest_turns(messages: Sequence[Message], n: int) -> list[dict[str, str]]:
    """``messages`` without its ``n`` oldest user/assistant exchanges, as ``context_policy="drop_oldest"``
    renders them (use it with ``GenerationResult.dropped_turns`` to trim a kept history the same way)."""
    drop = {i for g in _exchanges(messages)[:n] for i in g}
    return [dict(m) for i, m in enumerate(messages) if i not in drop]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _check_context(tokens: list[int], n_ctx: int) -> None:
    from .errors import ContextOverflowError

    if len(tokens) + 1 > n_ctx:
        raise ContextOverflowError(
            f"the prompt is {len(tokens)} tokens but the context holds {n_ctx} (one more is needed to "
            f"generate); shorten the conversation, /reset, or raise n_ctx"
        )
