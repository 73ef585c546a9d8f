"""Load-time self-test of the steering path: run before a pack is trusted, fail closed.

On a short probe it proves, on the very llama.cpp build and model in use, that
1. the hidden-state tap returns finite (n_embd,) vectors at the pack's layers;
2. a control vector v set at the steer layer L shows up in the tap at L as exactly +v (so the tap
   reads ``l_out-L`` and the vector lands on block L's output, the same layer);
3. the taps of the other pack layers (gate, feature) below L are untouched by that vector;
4. the logits change while the vector is set, and are bit-identical to the unsteered logits once it
   is cleared (nothing leaks into later turns).
Any failure raises :class:`SelfTestError`; the caller must not generate unsteered instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .architectures import SUPPORTED_ARCHITECTURES
from .errors import SelfTestError
from .llama.session import LlamaSession

log = logging.getLogger("finesteer_edge")

PROBE_TEXT = "Steering self-test: the quick brown fox jumps over the lazy dog."


@dataclass(frozen=True)
class SelfTestReport:
    tap_method: str
    cvec_api: str
    steer_layer: int
    gate_layer: int
    max_tap_error: float
    logit_change: float

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


def run_selftest(session: LlamaSession, gate_layer: int, steer_layer: int,
                 other_layers: tuple[int, ...] = ()) -> SelfTestReport:
    if session.tap is None:
        raise SelfTestError("no hidden-state tap on this session")
    probe = session.tokenize(PROBE_TEXT, add_special=session.add_bos, parse_special=False)
    if session.n_ctx < len(probe) + 1:
        raise SelfTestError("context too small for the self-test probe")
    d = session.n_embd
    layers = tuple(sorted({gate_layer, steer_layer, *other_layers}))
    try:
        base_logits, base_h = _prefill(session, probe, layers)
        for layer, h in base_h.items():
            if h.shape != (d,) or not np.isfinite(h).all():
                raise SelfTestError(f"hidden-state tap at layer {layer} returned shape {h.shape} or non-finite values")
        if not np.isfinite(base_logits).all():
            raise SelfTestError("the model produced non-finite logits on the probe")
        rng = np.random.default_rng(1234)
        v = rng.standard_normal(d).astype(np.float32)
        v *= 0.5 * max(float(np.linalg.norm(base_h[steer_layer])), 1.0) / float(np.linalg.norm(v))
        buf, lo, hi = session.control_buffer({steer_layer: v})
        session.set_control(buf, lo, hi)
        try:
            steered_logits, steered_h = _prefill(session, probe, layers)
        finally:
            session.clear_control()
        arch = session.info.fingerprint.architecture
        change = float(np.abs(steered_logits - base_logits).max())
        if np.array_equal(steered_h[steer_layer], base_h[steer_layer]) and not change > 0:
            raise SelfTestError(
                f"the llama.cpp graph of architecture {arch!r} does not add control vectors (setting one changed "
                f"neither layer {steer_layer} nor the logits): steering cannot work on it (unsupported architecture)"
            )
        err = float(np.abs((steered_h[steer_layer] - base_h[steer_layer]) - v).max())
        tol = 1e-4 * float(np.abs(v).max() + np.abs(base_h[steer_layer]).max())
        if not err <= tol:
            raise SelfTestError(
                f"a control vector at layer {steer_layer} did not appear as +v in the tap at layer {steer_layer} "
                f"(max error {err:.3g}); taps and control vectors disagree on layer numbering (architecture {arch!r}: "
                "its control vector does not land on l_out-N)"
            )
        for layer in layers:
            if layer < steer_layer and not np.array_equal(steered_h[layer], base_h[layer]):
                raise SelfTestError(f"a control vector at layer {steer_layer} changed the tap at earlier layer {layer}")
        if not change > 0:
            raise SelfTestError("setting the control vector did not change the logits")
        cleared_logits, _ = _prefill(session, probe, layers)
        if not np.array_equal(cleared_logits, base_logits):
            raise SelfTestError("logits after clearing the control vector differ from unsteered logits")
    finally:
        session.clear_control()
        session.reset()
    if arch not in SUPPORTED_ARCHITECTURES:
        log.warning("architecture %r is not among the tested ones (%s); the self-test passed on it, so steering "
                    "is applied", arch, ", ".join(SUPPORTED_ARCHITECTURES))
    return SelfTestReport(
        tap_method=session.tap.method, cvec_api=session.cvec_api, steer_layer=steer_layer,
        gate_layer=gate_layer, max_tap_error=err, logit_change=change,
    )


def _prefill(
    session: LlamaSession, tokens: list[int], layers: tuple[int, ...]
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    session.reset()
    try:
        session.decode(tokens, capture=True)
    except RuntimeError as exc:
        raise SelfTestError(f"self-test prefill failed: {exc}") from exc
    return session.logits(), {layer: session.hidden(layer).copy() for layer in layers}
