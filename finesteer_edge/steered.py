"""``SteeredLlama``: a GGUF model plus (optionally) a steering pack, gated per turn.

Per turn (DESIGN.md section 4): render the conversation with the model's chat template, prefill the
new tokens unsteered while tapping the last token's hidden state at the gate and steer layers, run
the head, and when the gate opens set the control vector at the steer layer. ``exact`` mode then
re-prefills the whole conversation with the vector on (a chat's cached history too, so a chat turn is steered
exactly as ``generate`` steers the same conversation); ``fast`` mode steers from the first generated
token. The vector is cleared when the turn ends, so every turn is gated on its own, and no later turn reuses
KV cache that a vector computed.

This module holds the object and the order of a turn's steps; each step that is one idea of its own lives
apart: what of the conversation fits (context_fit.py), one pack's gate and vector (decide.py), adding the
open packs' vectors (multipack.py), the token loop (generation.py), the sampling keywords
(settings.merge_sampling), and everything llama.cpp (llama/).

Thread-safety: one instance owns one llama.cpp context. Calls from different threads are serialised
(a lock; a second thread waits). Re-entering the same instance from the thread that holds it, e.g.
starting a new call while a ``chat(stream=True)`` iterator is still open, raises
:class:`ConcurrentUseError`. Use one instance per concurrent conversation.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from .context_fit import check_context, drop_oldest_turns, fit_prompt
from .decide import decide_pack, open_packs_schedule, pack_name, pack_threshold, pack_vector_source
from .errors import ConcurrentUseError, PackError
from .gate_input import needs_span, user_span
from .generation import drain, generate_tokens
from .llama.batches import common_prefix
from .llama.chat_template import ChatTemplate, Message, normalize_messages
from .llama.model import LlamaModel
from .llama.session import ContextSettings, LlamaSession
from .model_info import read_model_info
from .multipack import Combined, Decision, PackSpec, combine, pack_specs
from .pack.pack import SteeringPack
from .result import GenerationResult, PackOutcome
from .schedule import ALWAYS, Schedule, ScheduledControl
from .selftest import SelfTestReport
from .settings import UNSET, Penalties, SamplingParams, SteeringSettings, merge_sampling
from .verify import VerifyReport, verify_pack
from .vocab import (
    COMBINE_POLICIES,
    CONTEXT_POLICIES,
    MODES,
    CombinePolicy,
    ContextPolicy,
    VectorSource,
    check_choice,
)

log = logging.getLogger("finesteer_edge")

__all__ = ["Decision", "PackSpec", "SamplingParams", "SteeredLlama", "SteeringSettings", "drop_oldest_turns"]


class SteeredLlama:
    """A llama.cpp model that applies one or several FineSteer packs per turn.

    Args:
        model_path: GGUF file, or a loaded :class:`LlamaModel` to share its weights with other instances
            (one context each: e.g. a server's parallel slots load the weights once).
        pack: a :class:`SteeringPack`, a pack directory, or None for plain generation.
        packs: several packs at once (instead of ``pack``): each a pack, a directory or a
            :class:`PackSpec` (pack + its own strength). Every pack's gate decides on its own from the same
            unsteered prefill; the open packs' vectors are added into one control vector (``combine``).
        mode: ``exact`` (default; steered turns re-prefill the conversation with the vector on) or
            ``fast`` (keep the unsteered prompt cache, steer generated tokens). None: the packs' default
            (``exact`` if any pack's manifest says so).
        n_ctx, n_threads, n_batch: llama.cpp context settings (threads default to the usable cores).
        strength: multiplies every pack's vector (1.0 = as trained), on top of each :class:`PackSpec`'s own.
        gate: ``pack`` (threshold tau), ``always`` or ``never`` (for baselines and debugging).
        vector_source: ``head`` (query-specific MoSE vector), ``mean`` (the pack's static mean
            vector from control.gguf), ``projected`` (the mean's direction at the length of the head's
            vector along it) or ``head_direction`` (the head's direction at the mean's length); None: each
            pack's default.
        threshold: gate threshold for every pack (open iff gate score >= threshold); None: each pack's tau.
            Higher: fewer turns steered, fewer false positives and fewer hits.
        combine: when several open packs add at one layer beyond what any of them does alone: ``cap``
            (scale the sum down to that norm; default), ``refuse`` (raise :class:`PackError`) or ``sum``.
        strict: flash attention off and F32 KV cache (bit-stable, slower; for exactness tests).
        allow_unsteered: if a pack cannot be loaded, verified or self-tested, continue without it
            instead of raising. Loud: logs an error and emits a warning. Off by default.
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
            None: the first pack's ``schedule`` (a pack without one: the whole turn). Several packs share the
            turn's schedule (the first pack that has one), since llama.cpp holds one control vector.

    Steering settings are read-only attributes (``mode``, ``strength``, ``gate``, ``vector_source``); change
    them with :meth:`set_steering`, which checks them.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | LlamaModel,
        pack: SteeringPack | str | os.PathLike[str] | PackSpec | None = None,
        *,
        packs: Sequence[SteeringPack | str | os.PathLike[str] | PackSpec] | None = None,
        mode: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        strength: float = 1.0,
        gate: str = "pack",
        vector_source: str | None = None,
        threshold: float | None = None,
        combine: CombinePolicy = "cap",
        strict: bool = False,
        tap_method: str = "auto",
        allow_unsteered: bool = False,
        context_policy: str = "error",
        tap_layers: Sequence[int] = (),
        chat_template: str | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        if mode is not None:
            check_choice(mode, MODES, "mode")
        requested = SteeringSettings(mode=mode or "exact", strength=strength, gate=gate,  # type: ignore[arg-type]
                                     vector_source=vector_source, threshold=threshold)  # type: ignore[arg-type]
        specs = pack_specs(pack, packs)
        if chat_template is not None:
            from .llama.chat_template import resolve_template_choice

            resolve_template_choice(chat_template)  # an unknown name or unreadable file fails before loading
        self.context_policy: ContextPolicy = check_choice(context_policy, CONTEXT_POLICIES, "context_policy")
        self.combine: CombinePolicy = check_choice(combine, COMBINE_POLICIES, "combine")
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._home_thread = threading.get_ident()
        self.foreign_thread_calls = 0
        """Calls from a thread other than the one that built this instance (whose load-time self-test ran
        llama.cpp there). llama.cpp's CPU backend keeps an OpenMP thread team per calling thread, and a context
        driven from a second thread decoded ~20% slower on 2 cores (SmolLM2: 108 vs 134 tok/s; README, Quick
        start): build the instance in the thread that will use it. Logged once, counted always."""
        self.unsteered_reason: str | None = None
        self.reports: list[VerifyReport] = []
        """One :func:`verify_pack` report per pack in use (checksums, fingerprint, self-test)."""
        settings = ContextSettings(n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, strict=strict,
                                   tap_method=tap_method)

        # Checksums and fingerprint before the context exists (a pack for another model is refused
        # before anything is allocated), the self-test on the context the turns will use.
        info = model_path.info if isinstance(model_path, LlamaModel) else None
        loaded: list[tuple[SteeringPack, float]] = []
        for spec in specs:
            try:
                info = info or read_model_info(model_path)  # type: ignore[arg-type]
                rep = verify_pack(spec.pack, info, selftest=False)
                assert rep.pack is not None
                loaded.append((rep.pack, spec.strength))
            except PackError as exc:
                self._refuse_or_continue(exc, allow_unsteered)
        layers = set(tap_layers).union(*(p.tap_layers for p, _ in loaded))
        self._session = LlamaSession(model_path, settings, tap_layers=tuple(sorted(layers)))
        self._packs: list[tuple[SteeringPack, float]] = []
        for p, s in loaded:
            try:
                self.reports.append(verify_pack(p, self._session))
                self._packs.append((p, s))
            except PackError as exc:
                self._refuse_or_continue(exc, allow_unsteered)
        manifest_modes = [p.manifest.mode for p, _ in self._packs]
        default_mode = "exact" if "exact" in manifest_modes or not manifest_modes else "fast"
        self._steering = replace(requested, mode=mode or default_mode)
        self._needs_span = needs_span([p.manifest for p, _ in self._packs])
        """Some pack's gate reads the last user message's tokens: prefills pool that span."""
        pack_schedules = [p.manifest.schedule for p, _ in self._packs if p.manifest.schedule is not None]
        self.schedule: Schedule = schedule or (pack_schedules[0] if pack_schedules else ALWAYS)
        """The turn's schedule (plain attribute, for sweeps): the argument, else the first pack's, else always on."""
        self._auto_schedule: Schedule | None = None if schedule is not None else self.schedule
        """The schedule picked from the packs (not given): each turn picks again from its open packs."""
        self.spread = None
        """A layer spread (:class:`~finesteer_edge.spread.Spread`) applied to every pack instead of each
        pack's own ``spread`` (None: each pack's manifest decides); plain attribute, for sweeps."""
        self._template = ChatTemplate.for_model(
            self._session.info.chat_template, chat_template, model_name=self._session.info.path.name,
            bos_token=self._session.token_text(self._session.bos),
            eos_token=self._session.token_text(self._session.eos),
        )

    def _refuse_or_continue(self, exc: PackError, allow_unsteered: bool) -> None:
        if not allow_unsteered:
            if getattr(self, "_session", None) is not None:
                self._session.close()
            raise exc
        self.unsteered_reason = f"{self.unsteered_reason}; {exc}" if self.unsteered_reason else str(exc)
        msg = f"STEERING DISABLED: the pack could not be applied ({exc}); generating UNSTEERED (allow_unsteered)"
        log.error(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ settings
    @property
    def steering(self) -> SteeringSettings:
        """The current steering settings (frozen; change them with :meth:`set_steering`)."""
        return self._steering

    def set_steering(self, settings: SteeringSettings | None = None, **changes: Any) -> SteeringSettings:
        """Replace the steering settings: a whole :class:`SteeringSettings`, or some fields of the current
        ones (``set_steering(mode="fast", strength=1.5)``). Checked like the constructor's arguments;
        takes effect from the next turn. Returns the new settings."""
        base = self._steering if settings is None else settings
        if not isinstance(base, SteeringSettings):
            raise TypeError(f"settings must be SteeringSettings, not {type(base).__name__}")
        new = replace(base, **changes) if changes else base
        self._check_settings(new)
        with self._guard():
            self._steering = new
        return new

    def _check_settings(self, st: SteeringSettings) -> SteeringSettings:
        """Refuse an ``enabled`` list naming a pack this instance does not hold (a typo must not mean unsteered)."""
        if not isinstance(st, SteeringSettings):
            raise TypeError(f"steering must be SteeringSettings, not {type(st).__name__}")
        if st.enabled is not None:
            loaded = self.pack_names
            unknown = [n for n in st.enabled if n not in loaded]
            if unknown:
                raise ValueError(f"enabled names pack(s) {', '.join(map(repr, unknown))} that this instance does not "
                                 f"hold (loaded: {', '.join(loaded) or 'none'})")
        return st

    def _turn_settings(self, steering: SteeringSettings | None) -> SteeringSettings:
        return self._steering if steering is None else self._check_settings(steering)

    @property
    def pack_names(self) -> list[str]:
        """Every pack's name (manifest name, else directory name), in load order: what ``enabled`` refers to."""
        return [pack_name(p) for p, _ in self._packs]

    @property
    def mode(self) -> str:
        return self._steering.mode

    @property
    def strength(self) -> float:
        return self._steering.strength

    @property
    def gate(self) -> str:
        return self._steering.gate

    @property
    def vector_source(self) -> VectorSource:
        """The vector source of the first pack (each pack's own default unless set)."""
        if self._packs:
            return pack_vector_source(self._packs[0][0], self._steering)
        return self._steering.vector_source or "head"

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
    def pack(self) -> SteeringPack | None:
        """The first pack in use (None without one)."""
        return self._packs[0][0] if self._packs else None

    @property
    def packs(self) -> list[SteeringPack]:
        """Every pack in use, in load order."""
        return [p for p, _ in self._packs]

    @property
    def pack_strengths(self) -> list[float]:
        """Each pack's own strength (its :class:`PackSpec`; 1.0 by default), in load order."""
        return [s for _, s in self._packs]

    @property
    def selftest(self) -> SelfTestReport | None:
        """The first pack's load-time self-test (every pack's is in :attr:`reports`)."""
        return self.reports[0].selftest if self.reports else None

    @property
    def chat_template(self) -> ChatTemplate:
        """The template turns are rendered with (``.name``: gguf, a built-in, a file name, or plain (fallback))."""
        return self._template

    @property
    def threshold(self) -> float | None:
        """The first pack's gate threshold: the settings' ``threshold``, else its tau (None without a pack)."""
        return pack_threshold(self.pack, self._steering) if self.pack else None

    # ------------------------------------------------------------------ public calls
    def generate(
        self,
        prompt_or_messages: str | Sequence[Message],
        *,
        sampling: SamplingParams | None = None,
        steering: SteeringSettings | None = None,
        max_tokens: int = UNSET,
        temperature: float = UNSET,
        seed: int | None = UNSET,
        top_k: int = UNSET,
        top_p: float = UNSET,
        min_p: float = UNSET,
        stop: Sequence[str] = UNSET,
        repeat_penalty: float = UNSET,
        repeat_last_n: int = UNSET,
        dry_multiplier: float = UNSET,
        penalties: Penalties | None = UNSET,
    ) -> GenerationResult:
        """One independent turn (fresh KV cache): gate, steer if the gate opens, generate.

        Sampling: ``sampling`` (default :class:`SamplingParams()`: 256 tokens, greedy), with any loose
        keyword given here replacing its field. ``repeat_penalty``/``repeat_last_n``/``dry_multiplier`` (or
        a whole :class:`Penalties`, which wins) add llama.cpp's repetition penalties to the sampler chain,
        greedy or not (off by default), the same for steered and unsteered turns.
        ``steering``: settings for this turn only (checked; the instance's own, :attr:`steering`, are left as
        they are), e.g. a subset of packs via ``enabled``.
        """
        params = merge_sampling(sampling, max_tokens=max_tokens, temperature=temperature, seed=seed, top_k=top_k,
                                top_p=top_p, min_p=min_p, stop=stop, penalties=penalties, repeat_penalty=repeat_penalty,
                                repeat_last_n=repeat_last_n, dry_multiplier=dry_multiplier)
        messages = normalize_messages(prompt_or_messages)
        st = self._turn_settings(steering)
        with self._guard():
            return drain(self._turn(messages, params, st, reuse_cache=False))

    def chat(
        self,
        messages: Sequence[Message],
        *,
        stream: bool = True,
        sampling: SamplingParams | None = None,
        steering: SteeringSettings | None = None,
        max_tokens: int = UNSET,
        temperature: float = UNSET,
        seed: int | None = UNSET,
        top_k: int = UNSET,
        top_p: float = UNSET,
        min_p: float = UNSET,
        stop: Sequence[str] = UNSET,
        repeat_penalty: float = UNSET,
        repeat_last_n: int = UNSET,
        dry_multiplier: float = UNSET,
        penalties: Penalties | None = UNSET,
    ) -> Iterator[str | GenerationResult] | GenerationResult:
        """Answer the last user turn of ``messages`` (the whole conversation so far).

        The KV cache of earlier turns is kept and reused. With ``stream`` (default) this returns an
        iterator yielding text pieces and, last, the :class:`GenerationResult`; otherwise the result.
        Sampling and ``steering`` as in :meth:`generate`.
        """
        params = merge_sampling(sampling, max_tokens=max_tokens, temperature=temperature, seed=seed, top_k=top_k,
                                top_p=top_p, min_p=min_p, stop=stop, penalties=penalties, repeat_penalty=repeat_penalty,
                                repeat_last_n=repeat_last_n, dry_multiplier=dry_multiplier)
        msgs = normalize_messages(messages)
        st = self._turn_settings(steering)
        if not stream:
            with self._guard():
                return drain(self._turn(msgs, params, st, reuse_cache=True))
        return self._stream(msgs, params, st)

    def _stream(self, msgs: list[dict[str, str]], params: SamplingParams,
                steering: SteeringSettings | None = None) -> Iterator[str | GenerationResult]:
        with self._guard():
            yield from self._turn(msgs, params, steering or self._steering, reuse_cache=True)

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

    def prefill_span(self, messages: Sequence[Message], tokens: Sequence[int]) -> tuple[int, int] | None:
        """The token span a capturing prefill of ``messages`` (rendered as ``tokens``) must pool for the packs'
        gates (the last user message), or None when every gate reads the last prompt token."""
        if not self._needs_span:
            return None
        return user_span(self._template, self._session, messages, len(tokens))

    def decide_prompt(self, prompt_or_messages: str | Sequence[Message],
                      steering: SteeringSettings | None = None) -> list[Decision]:
        """Every pack's gate and vector for a conversation, from one fresh unsteered prefill (no generation):
        what a turn would decide. The KV cache is left holding that prefill."""
        msgs = normalize_messages(prompt_or_messages)
        with self._guard():
            s = self._session
            tokens = self.prompt_tokens(msgs)
            check_context(tokens, s.n_ctx)
            s.clear_control()
            s.reset()
            s.decode(tokens, capture=True, span=self.prefill_span(msgs, tokens))
            return self.decide_all(self._turn_settings(steering))

    def decide(self) -> Decision:
        """The first pack's gate and vector for the hidden states of the last prefill (a pack required)."""
        if not self._packs:
            raise ValueError("decide() needs a pack")
        return self._decide(*self._packs[0], self._steering)

    def decide_all(self, steering: SteeringSettings | None = None) -> list[Decision]:
        """Every pack's gate and vector for the hidden states of the last prefill, in load order."""
        st = steering or self._steering
        return [self._decide(p, s, st) for p, s in self._packs]

    def steer_vectors(self, decisions: Sequence[Decision]) -> Combined:
        """The control vector for these decisions: the open packs' vectors, added per layer (``combine``)."""
        return combine(decisions, [pack_name(p) for p in self.packs], self.combine)

    def _decide(self, pack: SteeringPack, pack_strength: float, st: SteeringSettings) -> Decision:
        """One pack's decision (decide.py), with :attr:`spread` read now: a sweep may have set it since."""
        return decide_pack(self._session, pack, pack_strength, st, spread=self.spread)

    def _turn_schedule(self, decisions: Sequence[Decision]) -> Schedule:
        """This turn's schedule: :attr:`schedule` if it was given or changed (a sweep), else the open packs' own."""
        if self.schedule is not self._auto_schedule:
            return self.schedule
        return open_packs_schedule(self.packs, decisions)

    def _turn(self, messages: list[dict[str, str]], sampling: SamplingParams, steering: SteeringSettings, *,
              reuse_cache: bool) -> Iterator[str | GenerationResult]:
        t0 = time.perf_counter()
        s = self._session
        tokens, dropped = fit_prompt(self.prompt_tokens, messages, sampling.max_tokens, self.n_ctx, self.context_policy)
        span = self.prefill_span(drop_oldest_turns(messages, dropped) if dropped else messages, tokens)
        common = common_prefix(s.tokens, tokens) if reuse_cache else 0
        # never build on KV an earlier turn computed under its vector: each turn reads the conversation as the
        # unsteered model does (a gate-closed turn stays what no pack gives), and steers it itself
        common = min(common, s.unsteered_prefix)
        common = min(common, len(tokens) - 1)  # always decode at least one token to get fresh logits
        if span is not None:
            common = min(common, span[0])  # the gate pools the user message: compute it in this prefill
        check_context(tokens, s.n_ctx)
        if not reuse_cache:
            s.reset()  # a fresh turn: nothing cached in either context (the tap context too) shapes it
        s.truncate(common)
        new = tokens[common:]
        s.clear_control()
        decisions: list[Decision] = []
        if self._packs:
            s.decode(new, capture=True, span=span)  # one prefill: every pack's gate reads the same unsteered states
            decisions = self.decide_all(steering)
        else:
            s.decode(new)
        steered = any(d.open for d in decisions)
        plan: ScheduledControl | None = None
        try:
            if steered:
                vectors = self.steer_vectors(decisions).vectors
                schedule = self._turn_schedule(decisions)
                reprefill = steering.mode == "exact" and schedule.prompt
                if reprefill:
                    # The whole conversation, not only this turn's tokens: the vector at every position the model
                    # reads, as generate() and the paper do. Steering only the new turn on a cached history
                    # refused 25% of the held-out validation conversations against 67.5% (DESIGN-NOTES item 20).
                    # Truncate before the vector: a tap-context session then never computes them unsteered.
                    s.truncate(0)
                    common = 0
                buffer = s.control_buffer(vectors)
                s.set_control(*buffer)
                if reprefill:
                    s.decode(tokens)
                if not schedule.always_on:
                    plan = ScheduledControl(s, schedule, *buffer)
            first = decisions[0] if decisions else None
            result = GenerationResult(
                text="", steered=steered,
                gate_score=first.gate_score if first else None,
                expert_weights=[float(x) for x in first.expert_weights] if first else None,
                mode=steering.mode if self._packs else "none", tokens=0, seconds=0.0,
                threshold=first.threshold if first else None, prompt_tokens=len(tokens), cached_tokens=common,
                strength=steering.strength if self._packs else None, dropped_turns=dropped,
                packs=[PackOutcome(
                    name=pack_name(p), steered=d.open, gate_score=d.gate_score,
                    threshold=d.threshold, expert_weights=[float(x) for x in d.expert_weights],
                    strength=steering.strength * ps * p.manifest.strength,
                    enabled=steering.enabled is None or pack_name(p) in steering.enabled,
                ) for (p, ps), d in zip(self._packs, decisions, strict=True)],
            )
            yield from generate_tokens(s, result, t0, sampling, plan)
        finally:
            s.clear_control()

    # ------------------------------------------------------------------ concurrency
    @contextmanager
    def _guard(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            raise ConcurrentUseError(
                "this SteeredLlama is already busy in this thread (an open chat stream?); "
                "finish or close it first, or use a second instance"
            )
        if me != self._home_thread:
            if not self.foreign_thread_calls:
                log.info("SteeredLlama used from another thread than the one that built it: llama.cpp then "
                         "runs a second OpenMP thread team and decodes slower; build it in the thread using it")
            self.foreign_thread_calls += 1
        with self._lock:
            self._owner = me
            try:
                yield
            finally:
                self._owner = None
