"""extract's HeadCache: consecutive rows share their head (system prompt, user header) through the KV cache,
and a row's states must not depend on the row before it (resumed runs, row order) or differ from a fresh
prefill beyond float noise; on both tap paths (layer_inp: llama, tap_context: qwen2)."""

from __future__ import annotations

import numpy as np
import pytest

from finesteer_edge.gate_input import user_span
from finesteer_edge.steered import SteeredLlama
from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_model
from finesteer_edge.train.extract import HeadCache

LAYERS = (1, 2)
A = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "How do I bake bread at home?"}]
B = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Where do otters sleep at night?"}]
C = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Where do otters sleep at night?"}]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def llm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model = write_tiny_model(tmp_path_factory.mktemp("heads") / f"{request.param}.gguf", request.param,
                             TinyConfig(n_layer=4, n_embd=64, n_head=2, n_head_kv=1, n_ff=128))
    llm = SteeredLlama(model, n_ctx=512, n_threads=1, tap_layers=LAYERS)
    yield llm
    llm.close()


def _row(llm: SteeredLlama, heads: HeadCache, messages: list[dict[str, str]]) -> tuple[np.ndarray, ...]:
    s = llm.session
    prompt = llm.prompt_tokens(messages)
    span = user_span(llm.chat_template, s, messages, len(prompt))
    heads.prefill(s, prompt, span)
    return tuple(x for n in LAYERS for x in (s.hidden(n), s.hidden_span(n, "user_mean"), s.hidden_span(n, "user_end")))


def test_a_row_is_the_same_after_any_row(llm: SteeredLlama) -> None:
    s = llm.session
    fresh = _row(llm, HeadCache(), B)
    heads = HeadCache()
    _row(llm, heads, A)  # same head as B: B reuses it
    decoded: list[int] = []
    real = s.decode

    def counting(tokens, **kw):  # type: ignore[no-untyped-def]
        decoded.append(len(tokens))
        return real(tokens, **kw)

    s.decode = counting  # type: ignore[method-assign]
    try:
        after_a = _row(llm, heads, B)
        reused = list(decoded)
        decoded.clear()
        after_c = _row(llm, heads, C)  # another system prompt: nothing to reuse, both batches decoded
        c_batches = list(decoded)
        decoded.clear()
        after_c_b = _row(llm, heads, B)
    finally:
        del s.decode
    prompt = llm.prompt_tokens(B)
    start = user_span(llm.chat_template, s, B, len(prompt))[0]
    assert reused == [len(prompt) - start] and start > 5  # only the user message and what follows
    assert len(c_batches) == 2
    for x, y, z in zip(fresh, after_a, after_c_b, strict=True):
        assert np.array_equal(x, y) and np.array_equal(x, z)  # bit for bit, whatever came before
    assert not np.allclose(after_c[0], fresh[0])  # the negative control: the system prompt is in the state


def test_two_batches_match_one_fresh_prefill(llm: SteeredLlama) -> None:
    """The states equal those of one prefill of the whole prompt (how extraction ran before) up to float noise."""
    s = llm.session
    ours = _row(llm, HeadCache(), B)
    prompt = llm.prompt_tokens(B)
    span = user_span(llm.chat_template, s, B, len(prompt))
    s.reset()
    s.decode(prompt, capture="all", span=span)
    one = tuple(x for n in LAYERS for x in (s.hidden(n), s.hidden_span(n, "user_mean"), s.hidden_span(n, "user_end")))
    errs = [float(np.linalg.norm(x - y) / np.linalg.norm(y)) for x, y in zip(ours, one, strict=True)]
    # the KV cache holds F16 keys and values: the head's, read back by the second batch, carry its rounding
    assert max(errs) < 1e-3
