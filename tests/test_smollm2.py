"""The real SmolLM2-135M-Instruct Q4_1: templates, self-test, gating, and layers vs HF transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import SteeredLlama
from finesteer_edge.llama.session import ContextSettings, LlamaSession
from finesteer_edge.testing.packs import make_random_pack

pytestmark = pytest.mark.slow

KW = dict(n_ctx=1024, n_threads=2)


@pytest.fixture(scope="module")
def packs(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("smolpacks")
    return {
        "open": make_random_pack(smollm2, root / "open", gate_layer=15, steer_layer=12, tau=-1.0, vector_norm=40.0),
        "closed": make_random_pack(smollm2, root / "closed", gate_layer=15, steer_layer=12, tau=2.0, vector_norm=40.0),
    }


def test_chat_template_and_tokens(smollm2: Path) -> None:
    llm = SteeredLlama(smollm2, **KW)
    toks = llm.prompt_tokens([{"role": "user", "content": "Hi"}])
    text = "".join(llm.session.token_text(t) for t in toks)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert toks[0] == 1  # <|im_start|> parsed as the special token, and no extra BOS (add_bos_token=False)
    # llama-cpp-python's own Jinja formatter, fed the GGUF template, renders the same prompt
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(llm.model_info.chat_template, eos_token="<|im_end|>", bos_token="<|im_start|>")
    stock = fmt(messages=[{"role": "user", "content": "Hi"}]).prompt
    assert llm.session.tokenize(stock) == toks
    r = llm.generate("Write one sentence about cats.", max_tokens=24)
    assert r.tokens > 3 and r.text.strip()


def test_selftest_gate_closed_and_steering(smollm2: Path, packs: dict[str, Path]) -> None:
    plain = SteeredLlama(smollm2, **KW)
    closed = SteeredLlama(smollm2, packs["closed"], **KW)
    opened = SteeredLlama(smollm2, packs["open"], **KW)
    assert closed.selftest and closed.selftest.tap_method == "layer_inp"
    q = "How do I bake bread at home?"
    base = plain.generate(q, max_tokens=32)
    steered = opened.generate(q, max_tokens=32)
    after = closed.generate(q, max_tokens=32)
    assert not after.steered and after.token_ids == base.token_ids
    assert steered.steered and steered.token_ids != base.token_ids
    fast = SteeredLlama(smollm2, packs["open"], mode="fast", **KW).generate(q, max_tokens=32)
    assert fast.steered and fast.token_ids[0] == base.token_ids[0]  # fast steers from the 2nd token on


def test_layer_convention_matches_hf_on_smollm2(smollm2: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2.parent), gguf_file=smollm2.name, dtype=torch.float32
    ).eval()
    s = LlamaSession(smollm2, ContextSettings(n_ctx=256, n_threads=2, strict=True), tap_layers=(6, 12, 15))
    toks = s.tokenize("<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n")
    s.decode(toks, capture=True)
    with torch.no_grad():
        ref = model(torch.tensor([toks]), output_hidden_states=True)

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    for n in (6, 12, 15):  # Q4_1 in llama.cpp vs dequantized fp32 in torch: ~2% apart, neighbours much further
        same = rel(s.hidden(n), ref.hidden_states[n + 1][0, -1].numpy())
        assert same < 0.05
        assert same < 0.3 * rel(s.hidden(n), ref.hidden_states[n][0, -1].numpy())
        assert same < 0.3 * rel(s.hidden(n), ref.hidden_states[n + 2][0, -1].numpy())
    base_ours, base_ref = s.logits(), ref.logits[0, -1].numpy()
    v = np.random.default_rng(0).standard_normal(576).astype(np.float32)
    v *= 30 / np.linalg.norm(v)
    s.set_control(*s.control_buffer({12: v}))
    s.reset()
    s.decode(toks)

    def add_v(module, inputs, output):  # type: ignore[no-untyped-def]
        if isinstance(output, tuple):
            return (output[0] + torch.from_numpy(v),) + tuple(output[1:])
        return output + torch.from_numpy(v)

    hook = model.model.layers[12].register_forward_hook(add_v)
    with torch.no_grad():
        steered_ref = model(torch.tensor([toks])).logits[0, -1].numpy()
    hook.remove()
    d_ours, d_ref = s.logits() - base_ours, steered_ref - base_ref
    cos = float(d_ours @ d_ref / np.linalg.norm(d_ours) / np.linalg.norm(d_ref))
    assert cos > 0.99
