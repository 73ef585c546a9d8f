"""The llama.cpp layer on a real (tiny) GGUF: taps, control vectors, layer numbering vs HF."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge.errors import ContextOverflowError
from finesteer_edge.llama.session import ContextSettings, LlamaSession

PROMPT = "<|im_start|>user\nHello there, the world<|im_end|>\n<|im_start|>assistant\n"


def session(model: Path, taps: tuple[int, ...] = (0, 1, 2), **kw: object) -> LlamaSession:
    return LlamaSession(model, ContextSettings(n_ctx=256, n_threads=2, strict=True, **kw), tap_layers=taps)  # type: ignore[arg-type]


def test_special_tokens_are_parsed(tiny_model: Path) -> None:
    s = session(tiny_model, ())
    toks = s.tokenize(PROMPT)
    assert toks[0] == 1 and 2 in toks  # <|im_start|> and <|im_end|> are single control tokens
    assert s.tokenize("<|im_start|>", parse_special=False) != [1]


@pytest.mark.parametrize("layer", [1, 2])
def test_control_vector_adds_exactly_v_to_l_out(tiny_model: Path, layer: int) -> None:
    s = session(tiny_model)
    toks = s.tokenize(PROMPT)
    s.decode(toks, capture=True)
    base = {n: s.hidden(n).copy() for n in (0, 1, 2)}
    base_logits = s.logits()
    v = np.random.default_rng(layer).standard_normal(s.n_embd).astype(np.float32) * 3
    s.set_control(*s.control_buffer({layer: v}))
    s.reset()
    s.decode(toks, capture=True)
    np.testing.assert_allclose(s.hidden(layer) - base[layer], v, atol=1e-5)
    for n in range(layer):  # layers below the vector are untouched, bit for bit
        np.testing.assert_array_equal(s.hidden(n), base[n])
    assert np.abs(s.logits() - base_logits).max() > 1e-3
    s.clear_control()
    s.reset()
    s.decode(toks, capture=True)
    np.testing.assert_array_equal(s.logits(), base_logits)


def test_short_control_buffer_is_refused(tiny_model: Path) -> None:
    s = session(tiny_model, ())
    with pytest.raises(ValueError, match="control buffer"):
        s.set_control(np.zeros((1, s.n_embd), np.float32), 1, 1)


@pytest.mark.parametrize("method", ["cb_eval", "tap_context"])
def test_cb_eval_tap_equals_layer_inp_tap(tiny_model: Path, method: str) -> None:
    a = session(tiny_model, tap_method="layer_inp")
    b = session(tiny_model, tap_method=method)
    assert (a.tap.method, b.tap.method) == ("layer_inp", method)  # type: ignore[union-attr]
    toks = a.tokenize(PROMPT * 3)
    for s in (a, b):
        s.decode(toks, capture=True)
    for n in (0, 1, 2):
        np.testing.assert_array_equal(a.hidden(n), b.hidden(n))
    np.testing.assert_array_equal(a.logits(), b.logits())


def test_long_prompt_in_several_batches_taps_the_last_token(tiny_model: Path) -> None:
    whole = LlamaSession(tiny_model, ContextSettings(n_ctx=512, n_batch=512, n_threads=2, strict=True), (1,))
    chunked = LlamaSession(tiny_model, ContextSettings(n_ctx=512, n_batch=16, n_threads=2, strict=True), (1,))
    toks = whole.tokenize(PROMPT * 4)
    assert len(toks) > 32
    whole.decode(toks, capture=True)
    chunked.decode(toks, capture=True)
    np.testing.assert_allclose(whole.hidden(1), chunked.hidden(1), rtol=1e-4, atol=1e-4)


def test_decode_past_context_raises(tiny_model: Path) -> None:
    s = LlamaSession(tiny_model, ContextSettings(n_ctx=32, n_threads=2))
    with pytest.raises(ContextOverflowError):
        s.decode(s.tokenize(PROMPT * 4))


def test_layer_convention_matches_hf_transformers(tiny_model: Path) -> None:
    """tap N == HF hidden_states[N+1]; control vector at N == forward hook adding v to layers[N].

    In the quick loop on purpose (a few seconds on the tiny model; torch and transformers are imported by
    the importer and fidelity tests anyway): every pack's layer numbers rest on this convention.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tiny_model.parent), gguf_file=tiny_model.name, dtype=torch.float32
    ).eval()
    s = session(tiny_model)
    toks = s.tokenize(PROMPT)
    s.decode(toks, capture=True)
    with torch.no_grad():
        ref = model(torch.tensor([toks]), output_hidden_states=True)
    for n in (0, 1, 2):
        hf = ref.hidden_states[n + 1][0, -1].numpy()
        assert np.abs(s.hidden(n) - hf).max() <= 1e-5 * np.abs(hf).max()
    n = 2
    v = np.random.default_rng(0).standard_normal(s.n_embd).astype(np.float32) * 5
    s.set_control(*s.control_buffer({n: v}))
    s.reset()
    s.decode(toks)

    def add_v(module, inputs, output):  # type: ignore[no-untyped-def]
        if isinstance(output, tuple):
            return (output[0] + torch.from_numpy(v),) + tuple(output[1:])
        return output + torch.from_numpy(v)

    hook = model.model.layers[n].register_forward_hook(add_v)
    with torch.no_grad():
        steered = model(torch.tensor([toks])).logits[0, -1].numpy()
    hook.remove()
    ours = s.logits()
    assert np.abs(steered - ref.logits[0, -1].numpy()).max() > 1.0  # the vector matters
    assert np.abs(ours - steered).max() <= 1e-5 * np.abs(steered).max()
    # and the same vector one layer off does not match: the test can fail
    s.set_control(*s.control_buffer({n - 1: v}))
    s.reset()
    s.decode(toks)
    assert np.abs(s.logits() - steered).max() > 1e-2


@pytest.mark.parametrize("method", ["layer_inp", "cb_eval", "tap_context"])
def test_all_rows_capture_matches_one_token_at_a_time(tiny_model: Path, method: str) -> None:
    """Teacher forcing reads every response token's state; it must equal the states token by token."""
    s = LlamaSession(tiny_model, ContextSettings(n_ctx=256, n_batch=8, n_threads=2, strict=True, tap_method=method),
                     tap_layers=(1, 2))
    toks = s.tokenize(PROMPT)
    s.decode(toks[:5])
    s.decode(toks[5:], capture="all")
    rows = s.hidden_rows(2)
    assert rows.shape == (len(toks) - 5, s.n_embd)
    np.testing.assert_array_equal(rows[-1], s.hidden(2))
    s.truncate(5)
    for i, tok in enumerate(toks[5:]):
        s.decode([tok], capture=True)
        np.testing.assert_allclose(s.hidden(2), rows[i], rtol=1e-4, atol=1e-4)


def test_all_logits_equal_one_token_at_a_time(tiny_model: Path) -> None:
    s = LlamaSession(tiny_model, ContextSettings(n_ctx=256, n_batch=8, n_threads=2, strict=True))
    toks = s.tokenize(PROMPT)
    rows = s.decode(toks, all_logits=True)
    assert rows is not None and rows.shape == (len(toks), s.n_vocab)
    np.testing.assert_array_equal(rows[-1], s.logits())
    s.reset()
    for i, tok in enumerate(toks):
        s.decode([tok])
        np.testing.assert_allclose(s.logits(), rows[i], rtol=1e-4, atol=1e-4)


def test_tap_context_generation_equals_a_plain_context(tiny_model: Path) -> None:
    """The two-context tap: captures in its own context, so the generation context is a plain one.

    Tokens captured are computed in the generation context only when needed (logits, sampling, the next
    decode, a control-vector change); a truncation first drops them uncomputed. Whatever the order, the
    logits are bit-identical to a session without any tap.
    """
    plain = LlamaSession(tiny_model, ContextSettings(n_ctx=256, n_threads=2))
    s = LlamaSession(tiny_model, ContextSettings(n_ctx=256, n_threads=2, tap_method="tap_context"), tap_layers=(1, 2))
    toks = s.tokenize(PROMPT)
    plain.decode(toks)
    s.decode(toks, capture=True)
    assert s.n_past == len(toks) and s._n_done == 0  # captured, not yet computed for generation
    np.testing.assert_array_equal(s.logits(), plain.logits())
    assert s._n_done == len(toks)
    # steered: truncate, set the vector, re-decode (exact mode); pending tokens are never computed unsteered
    v = np.random.default_rng(3).standard_normal(s.n_embd).astype(np.float32) * 5
    s.decode([toks[0]], capture=True)
    s.truncate(len(toks))
    assert s._n_done == len(toks)
    for sess in (s, plain):
        sess.set_control(*sess.control_buffer({2: v}))
        sess.decode(toks[:3])
    np.testing.assert_array_equal(s.logits(), plain.logits())
    # a capture under the vector reads it at its layer (the tap context follows the control vector)
    s.reset()
    s.decode(toks, capture=True)
    h_steered = s.hidden(2).copy()
    s.clear_control()
    s.reset()
    s.decode(toks, capture=True)
    np.testing.assert_allclose(h_steered - s.hidden(2), v, atol=1e-4)
    s.close()
    plain.close()


def test_tap_context_stops_the_graph_after_the_last_tap_layer(tiny_model: Path) -> None:
    """The tap context computes blocks 0..max(tap layers) only: later l_out nodes are never reached."""
    s = LlamaSession(tiny_model, ContextSettings(n_ctx=256, n_threads=2, tap_method="tap_context"), tap_layers=(1,))
    seen: list[bytes] = []
    tap = s.tap
    real = tap._api.get_name  # type: ignore[union-attr]

    def spy(t: int) -> bytes:
        name = real(t)
        if name.startswith(b"l_out-"):
            seen.append(name)
        return name

    tap._api = dataclasses.replace(tap._api, get_name=spy)  # type: ignore[union-attr]
    s.decode(s.tokenize(PROMPT), capture=True)
    assert set(seen) <= {b"l_out-0", b"l_out-1"} and b"l_out-1" in seen
    s.close()


def test_tap_context_reset_taps_as_a_fresh_session(tiny_model: Path) -> None:
    """``reset`` empties the tap context too: a capture after it is bit-identical to a new session's.

    The tap context used to keep its cache across resets, so the re-tap computed the last token alone over
    the cached prefix (a few ulp off a full prefill) and a "fresh" turn's gate depended on earlier turns.
    ``truncate(0)`` (a steered exact turn before setting its vector) keeps the tap cache: it is unsteered.
    """
    cfg = ContextSettings(n_ctx=256, n_threads=1, tap_method="tap_context")
    fresh = LlamaSession(tiny_model, cfg, tap_layers=(1, 2))
    s = LlamaSession(tiny_model, cfg, tap_layers=(1, 2))
    toks = s.tokenize(PROMPT * 2)
    fresh.decode(toks, capture=True)
    for _ in range(2):
        s.decode(toks, capture=True)
        for n in (1, 2):
            np.testing.assert_array_equal(s.hidden(n), fresh.hidden(n))
        s.reset()
    s.decode(toks, capture=True)
    s.truncate(0)
    assert s.n_past == 0 and s._tap_tokens == toks  # the unsteered tap copy survives a generation truncate
    s.close()
    fresh.close()
