"""One llama.cpp model and context, driven through the low-level API.

We do not use ``llama_cpp.Llama``: it ignores ``cb_eval`` and silently reuses cached prompt prefixes
across control-vector changes, which would mix steered and unsteered KV entries. This class keeps
the token list that is in the KV cache, so callers decide exactly what is re-used and what is
re-computed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from ..errors import ContextOverflowError, LayerError, ModelFileError
from ..model_info import ModelInfo
from ..settings import Penalties
from . import bindings
from .batches import common_prefix, relative_span, run_batches
from .control import ControlArgs, ControlVectorSetter, control_buffer
from .model import LlamaModel
from .sampler import Sampler
from .taps import LAYER_INP_ARCHITECTURES, CbEvalTap, HiddenTap, LayerInpTap
from .vocabulary import VocabularyMixin

GGML_TYPE_F32 = 0


def default_threads() -> int:
    """Physical-ish core count: ggml gains nothing from SMT siblings on these small models."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ContextSettings:
    n_ctx: int = 4096
    """Clamped to the model's training context."""
    n_batch: int = 512
    n_threads: int | None = None
    """None: all cores this process may use."""
    strict: bool = False
    """Flash attention off and an F32 KV cache: bit-stable numerics for exactness tests (slower)."""
    tap_method: str = "auto"
    """How hidden states are read: ``auto`` (``layer_inp`` where the architecture has it, else ``tap_context``),
    ``layer_inp``, ``tap_context`` (a second context with the callback, prefill only) or ``cb_eval`` (the callback
    in the generation context itself: slower decode, kept for comparison). See taps.py."""


class LlamaSession(VocabularyMixin):
    """A context (KV cache, control vector, taps) on a model. Not thread-safe: SteeredLlama serialises access.

    The pieces it drives live apart, one job each: the weights (model.py), tokenizing (vocabulary.py),
    decoding a token list on a context (batches.py), setting a control vector (control.py), sampling
    (sampler.py), reading hidden states (taps.py).

    ``model`` is a GGUF path (the session loads and owns the weights) or a shared :class:`LlamaModel`
    (the session only borrows it; closing the session leaves the model loaded for its other users).
    """

    def __init__(self, model: str | Path | LlamaModel, settings: ContextSettings | None = None,
                 tap_layers: tuple[int, ...] = ()) -> None:
        self.settings = settings = settings or ContextSettings()
        self._ctx = None
        self._batch = None
        self._owned: LlamaModel | None = None
        self.tap: HiddenTap | None = None
        if isinstance(model, LlamaModel):
            self.model = model
        else:
            self.model = self._owned = LlamaModel(model)
        self.model.acquire()
        self._acquired = True
        self.info: ModelInfo = self.model.info
        self._vocab = self.model.vocab
        self.n_embd = self.model.n_embd
        self.n_layer = self.model.n_layer
        self.n_vocab = self.model.n_vocab
        n_ctx_train = self.model.n_ctx_train
        self.n_ctx = min(settings.n_ctx, n_ctx_train) if n_ctx_train > 0 else settings.n_ctx
        self.n_batch = min(settings.n_batch, self.n_ctx)
        self.n_threads = settings.n_threads or default_threads()

        bad = [n for n in tap_layers if not 0 <= n <= self.n_layer - 2]
        if bad:
            self.close()
            raise LayerError(
                f"cannot read hidden states at layer(s) {bad}: valid layers are 0..{self.n_layer - 2} "
                f"for this {self.n_layer}-layer model (the last block keeps only output rows)"
            )
        cb_tap = None
        method = settings.tap_method
        if tap_layers:
            if method == "auto":
                usable = self.info.fingerprint.architecture in LAYER_INP_ARCHITECTURES
                method = "layer_inp" if usable and bindings.layer_inp_api() is not None else "tap_context"
            if method in ("cb_eval", "tap_context"):
                cb_tap = CbEvalTap(tap_layers, self.n_embd, stop_after=method == "tap_context")
            elif method != "layer_inp":
                raise ValueError(f"unknown tap method {method!r}")
        self.tap_method = method if tap_layers else None

        # The tap context (tap_context method): the same parameters plus the callback; the generation
        # context never gets one, so generated tokens pay nothing for the tap.
        self._tap_ctx = None
        if method == "tap_context" and cb_tap is not None:
            self._tap_ctx = llama_cpp.llama_init_from_model(self.model.handle, self._cparams(cb_tap))
            if not self._tap_ctx:
                self.close()
                raise ModelFileError(f"llama.cpp could not create a tap context for {self.info.path}")
        cparams = self._cparams(cb_tap if method == "cb_eval" else None)
        ctx = llama_cpp.llama_init_from_model(self.model.handle, cparams)
        if not ctx:
            self.close()
            raise ModelFileError(f"llama.cpp could not create a context for {self.info.path} (n_ctx={self.n_ctx})")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._tap_mem = llama_cpp.llama_get_memory(self._tap_ctx) if self._tap_ctx is not None else None
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        if tap_layers:
            self.tap = cb_tap if cb_tap is not None else LayerInpTap(ctx, tap_layers, self.n_embd)
        self.tokens: list[int] = []
        """Tokens of the conversation, in order: in the KV cache, or (tap context) about to be."""
        self._n_done = 0
        """How many of ``tokens`` the generation context has computed (the rest is pending, tap context only)."""
        self._tap_tokens: list[int] = []
        """Tokens in the tap context's KV cache (blocks 0..max tap layer), computed under ``_tap_key``."""
        self._cvec = ControlVectorSetter(self.n_embd)
        self._control_key: bytes | None = None
        self._control_args: ControlArgs | None = None
        self._tap_key: bytes | None = None
        self._steered_from: int | None = None
        """The first position of the generation context's KV cache computed under a control vector (None: none)."""
        self._logits_ready = False

    def _cparams(self, cb_tap: CbEvalTap | None) -> llama_cpp.llama_context_params:
        settings = self.settings
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = 1
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.no_perf = True
        if settings.strict:
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            cparams.type_k = GGML_TYPE_F32
            cparams.type_v = GGML_TYPE_F32
        if cb_tap is not None:
            cparams.cb_eval = cb_tap.callback
            cparams.cb_eval_user_data = None
        return cparams

    # ----------------------------------------------------------------- KV cache
    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def unsteered_prefix(self) -> int:
        """How many leading positions of the KV cache were computed with no control vector set.

        Why: a later turn that reuses the cache beyond this point would read an earlier turn's steering
        (a gate-closed turn would no longer be what the unsteered model computes for the conversation).
        """
        return len(self.tokens) if self._steered_from is None else min(self._steered_from, len(self.tokens))

    def reset(self) -> None:
        """Forget the conversation in both contexts: what follows is computed as from a fresh session.

        The tap context forgets too. A capture over a cached prefix is not bit-identical to a fresh prefill
        (the last token computed alone vs in one batch with the rest differs by a few ulp), so keeping that
        cache across a reset made a "fresh" turn's gate read depend on earlier turns, and failed a second
        self-test on the same session (its unsteered probe reused the first run's cache, its steered probe,
        under another control vector, could not). ``truncate(0)`` keeps it: it only drops generation KV.
        """
        self._clear_generation()
        if self._tap_mem is not None:
            llama_cpp.llama_memory_clear(self._tap_mem, False)
        self._tap_tokens = []

    def _clear_generation(self) -> None:
        # data=False: mark every cell free without zeroing the KV buffers. Zeroing costs O(n_ctx), not
        # O(prompt) (a memset of the whole cache, timed by bench/probes.py; ~0.5 GiB at n_ctx 4096 for an 8B),
        # and generate() resets once per turn, exact mode twice. Free cells are masked out of attention,
        # exactly as the stale cells truncate() leaves behind with llama_memory_seq_rm.
        llama_cpp.llama_memory_clear(self._mem, False)
        self.tokens = []
        self._n_done = 0
        self._logits_ready = False
        self._steered_from = None

    def truncate(self, n: int) -> None:
        """Drop KV entries from position ``n`` on (generation context; the tap context matches prefixes itself).

        A steered exact-mode turn truncates to the cached prefix, often 0, before setting its vector: the tap
        context's unsteered copy of the prompt must survive that, or the next chat turn re-taps it all.
        """
        if n >= len(self.tokens):
            return
        if n <= 0:
            self._clear_generation()
            return
        if n < self._n_done:  # pending tokens (tap context) were never computed: dropping them is free
            ok = llama_cpp.llama_memory_seq_rm(self._mem, 0, n, -1)
            if not ok:  # pragma: no cover - partial removal unsupported (recurrent models)
                self.reset()
                return
            self._n_done = n
        del self.tokens[n:]
        self._logits_ready = False
        if self._steered_from is not None and self._steered_from >= n:
            self._steered_from = None

    def check_fits(self, n_new: int, *, reserve: int = 1) -> None:
        """Raise if ``n_new`` more tokens (plus ``reserve`` for generation) overflow the context."""
        need = self.n_past + n_new + reserve
        if need > self.n_ctx:
            raise ContextOverflowError(
                f"prompt needs {self.n_past + n_new} tokens (+{reserve} to generate) but the context holds "
                f"{self.n_ctx}; shorten it or raise n_ctx"
            )

    def decode(self, tokens: list[int], *, capture: bool | str = False, all_logits: bool = False,
               span: tuple[int, int] | None = None) -> np.ndarray | None:
        """Append ``tokens`` to the KV cache; logits of the last one become available.

        ``capture=True`` (or ``"last"``) records the last token's hidden states at the tap layers;
        ``capture="all"`` records every token's (for teacher-forced response means). ``span`` ([start, end)
        positions in the conversation, i.e. in ``tokens`` after this call) also pools the states of those tokens
        (``tap.span_mean`` / ``tap.span_last``); they must not lie in the cached prefix. ``all_logits``
        returns the (len(tokens), n_vocab) logits of every position (for scoring continuations).
        """
        if not tokens:
            raise ValueError("decode needs at least one token")
        n0, n1 = len(self.tokens), len(self.tokens) + len(tokens)
        if span is not None and not (capture and n0 <= span[0] < span[1] <= n1):
            raise ValueError(f"span {span} must be captured and lie within the new tokens [{n0}, {n1})")
        self.check_fits(len(tokens), reserve=0)
        tap = self.tap if capture else None
        if capture and tap is None:
            raise RuntimeError("this session has no hidden-state tap")
        if tap is not None and self._tap_ctx is not None:
            # Tap context: capture there; the generation context computes these tokens only when something
            # needs it (logits, sampling, the next decode), so a steered exact-mode turn that truncates them
            # first never computes them unsteered at all.
            self._tap_decode(list(tokens), capture="all" if capture == "all" else "last", span=span)
            self.tokens.extend(tokens)
            self._logits_ready = True
            if all_logits:
                return self._gen_decode(all_logits=True)
            return None
        self.tokens.extend(tokens)
        return self._gen_decode(all_logits=all_logits, tap=tap, capture_all=capture == "all", span=span)

    def _gen_decode(self, *, all_logits: bool = False, tap: HiddenTap | None = None,
                    capture_all: bool = False, span: tuple[int, int] | None = None) -> np.ndarray | None:
        """Compute ``tokens[_n_done:]`` in the generation context."""
        todo = self.tokens[self._n_done:]
        if not todo:
            return None
        if tap is not None:
            tap.start(all_rows=capture_all, span=relative_span(span, self._n_done))
        steered_before = self._steered_from
        if self._control_key is not None and self._steered_from is None:
            self._steered_from = self._n_done
        try:
            rows = self._run(self._ctx, todo, self._n_done, all_logits=all_logits, tap=tap)
        except BaseException:
            # Chunks decoded before the failure are in the KV cache: drop them so it matches ``tokens``.
            llama_cpp.llama_memory_seq_rm(self._mem, 0, self._n_done, -1)
            del self.tokens[self._n_done:]
            self._logits_ready = False
            self._steered_from = steered_before
            raise
        finally:
            if tap is not None:
                tap.stop()
        self._n_done = len(self.tokens)
        self._logits_ready = True
        return rows

    def _flush(self) -> None:
        """Let the generation context catch up with pending tokens (tap context only)."""
        if self._n_done < len(self.tokens):
            ready = self._logits_ready
            self._gen_decode()
            self._logits_ready = ready or self._logits_ready

    def _tap_decode(self, new: list[int], *, capture: str, span: tuple[int, int] | None = None) -> None:
        """Capture ``new`` (appended to ``tokens``) in the tap context, reusing its cached prefix.

        The tap context holds the conversation as computed under the control vector of the moment it was
        tapped; if that vector changed since, its cache is dropped. SteeredLlama taps with the vector
        cleared, so its gate reads the conversation as the unsteered model computes it.
        """
        assert self._tap_ctx is not None and self.tap is not None
        if self._tap_key != self._control_key:
            self._cvec(self._tap_ctx, self._control_args)
            self._tap_key = self._control_key
            llama_cpp.llama_memory_clear(self._tap_mem, False)
            self._tap_tokens = []
        context = self.tokens
        target = context + new
        keep = common_prefix(self._tap_tokens, target)
        keep = min(keep, len(context) if capture == "all" else len(target) - 1)
        if span is not None:
            keep = min(keep, span[0])  # the pooled span is computed in this capture, never read from the cache
        if keep < len(self._tap_tokens):
            if keep == 0 or not llama_cpp.llama_memory_seq_rm(self._tap_mem, 0, keep, -1):
                llama_cpp.llama_memory_clear(self._tap_mem, False)
                keep = 0
            del self._tap_tokens[keep:]
        try:
            if capture == "all" and keep < len(context):
                self._run(self._tap_ctx, context[keep:], keep)
                self._tap_tokens.extend(context[keep:])
                keep = len(context)
            todo = target[keep:]
            self.tap.start(all_rows=capture == "all", span=relative_span(span, keep))
            try:
                self._run(self._tap_ctx, todo, keep, tap=self.tap)
            finally:
                self.tap.stop()
            self._tap_tokens.extend(todo)
        except BaseException:
            llama_cpp.llama_memory_clear(self._tap_mem, False)
            self._tap_tokens = []
            raise

    def _run(self, ctx: llama_cpp.llama_context_p, tokens: list[int], pos0: int, *, all_logits: bool = False,
             tap: HiddenTap | None = None) -> np.ndarray | None:
        return run_batches(ctx, self._batch, tokens, pos0, n_batch=self.n_batch, n_vocab=self.n_vocab,
                           all_logits=all_logits, tap=tap)

    def logits(self) -> np.ndarray:
        """Logits (n_vocab,) after the last decode, copied."""
        if not self._logits_ready:
            raise RuntimeError("no logits: decode something first")
        self._flush()
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def hidden(self, layer: int) -> np.ndarray:
        """Last token's state at ``layer`` from the last capturing decode."""
        if self.tap is None:
            raise RuntimeError("this session has no hidden-state tap")
        return self.tap.last(layer)

    def hidden_span(self, layer: int, feature: str) -> np.ndarray:
        """The pooled state of the last capture's ``span`` at ``layer``: ``user_mean`` (mean over the span's
        tokens) or ``user_end`` (its last token)."""
        if self.tap is None:
            raise RuntimeError("this session has no hidden-state tap")
        if feature == "user_mean":
            return self.tap.span_mean(layer)
        if feature == "user_end":
            return self.tap.span_last(layer)
        raise ValueError(f"not a span feature: {feature!r}")

    def hidden_rows(self, layer: int) -> np.ndarray:
        """(n_tokens, n_embd) states at ``layer`` from the last ``capture="all"`` decode."""
        if self.tap is None:
            raise RuntimeError("this session has no hidden-state tap")
        return self.tap.rows(layer)

    # ----------------------------------------------------------------- control vectors
    @property
    def cvec_api(self) -> str:
        return self._cvec.name

    @property
    def control_active(self) -> bool:
        return self._control_key is not None

    def set_control(self, rows: np.ndarray, il_start: int, il_end: int) -> None:
        """Apply a control vector. ``rows`` is the full (n_layer - 1, n_embd) buffer, row 0 = layer 1.

        Always the full buffer: llama.cpp keeps rows a short buffer does not overwrite. An unchanged
        vector is not re-applied (each change costs a scheduler re-reserve).
        """
        buf = np.ascontiguousarray(rows, dtype=np.float32)
        if buf.shape != (self.n_layer - 1, self.n_embd):
            raise ValueError(f"control buffer must be {(self.n_layer - 1, self.n_embd)}, got {buf.shape}")
        if not 1 <= il_start <= il_end <= self.n_layer - 1:
            raise ValueError(f"bad control layer range {il_start}..{il_end}")
        key = np.int32(il_start).tobytes() + np.int32(il_end).tobytes() + buf.tobytes()
        if key == self._control_key:
            return
        self._flush()  # pending tokens were decoded before this vector: compute them without it
        try:
            self._cvec(self._ctx, (buf, il_start, il_end))
        except RuntimeError:
            self._control_key = self._control_args = None
            raise
        self._control_key = key
        self._control_args = (buf, il_start, il_end)
        self._logits_ready = False

    def clear_control(self) -> None:
        if self._control_key is None:
            return
        self._flush()
        self._cvec(self._ctx, None)
        self._control_key = self._control_args = None

    def control_buffer(self, vectors: dict[int, np.ndarray]) -> ControlArgs:
        """Full cvec buffer with ``vectors[layer]`` in place, and the layer range to enable."""
        return control_buffer(self.n_layer, self.n_embd, vectors)

    # ----------------------------------------------------------------- sampling
    def sampler(self, *, temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95,
                min_p: float = 0.05, seed: int | None = None, penalties: Penalties | None = None) -> Sampler:
        return Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                       penalties=penalties, vocab=self._vocab, n_vocab=self.n_vocab)

    def sample(self, sampler: Sampler) -> int:
        self._flush()
        return int(llama_cpp.llama_sampler_sample(sampler.chain, self._ctx, -1))

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_tap_ctx", None) is not None:
            llama_cpp.llama_free(self._tap_ctx)
            self._tap_ctx = None
        if getattr(self, "_acquired", False):
            self._acquired = False
            self.model.release()
        if self._owned is not None:  # a shared model stays loaded for its other sessions
            self._owned.close()
            self._owned = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down llama_cpp
            self.close()
