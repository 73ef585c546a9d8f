"""Every architecture we claim, on a tiny random GGUF of it: self-test, exact/fast steering, templates, HF layers.

One session-scoped model (and packs) per architecture keeps this fast: each test is a few short decodes.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from finesteer_edge import SteeredLlama, SteeringPack
from finesteer_edge.architectures import LAYER_INP_ARCHITECTURES, SUPPORTED_ARCHITECTURES
from finesteer_edge.errors import SelfTestError
from finesteer_edge.llama.chat_template import ChatTemplateError
from finesteer_edge.llama.session import ContextSettings, LlamaSession
from finesteer_edge.selftest import run_selftest
from finesteer_edge.testing.packs import make_random_pack
from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_bert, write_tiny_model

KW = dict(n_ctx=256, n_threads=1)
SMALL = TinyConfig(n_embd=128, n_head=4, n_head_kv=2, n_ff=256, n_expert=4, n_expert_used=2, sliding_window=16)
PROMPT = "Tell me a story about the sea."
# transformers' GGUF loader (installed version) maps these architectures to HF models.
HF_LOADABLE = ("llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3")
# These it cannot read, but transformers has the model class: the HF model is built from the GGUF by hand.
HF_BY_HAND = {"granite": "Granite", "olmo2": "Olmo2", "olmo": "Olmo"}


@pytest.fixture(scope="session", params=SUPPORTED_ARCHITECTURES)
def arch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    name = request.param
    root = tmp_path_factory.mktemp(f"arch_{name}")
    model = write_tiny_model(root / f"{name}.gguf", name, SMALL)
    return {
        "name": name, "model": model,
        "open": make_random_pack(model, root / "open", tau=-1.0, vector_norm=30.0),
        "closed": make_random_pack(model, root / "closed", tau=2.0, vector_norm=30.0),
    }


def test_selftest_passes_with_the_cheap_tap(arch: dict) -> None:
    llm = SteeredLlama(arch["model"], arch["open"], **KW)
    st = llm.selftest
    assert st is not None and st.logit_change > 0 and st.max_tap_error < 1e-3
    want = "layer_inp" if arch["name"] in LAYER_INP_ARCHITECTURES else "tap_context"
    assert st.tap_method == want
    llm.close()


def test_gate_closed_turns_are_bit_identical_to_plain(arch: dict) -> None:
    plain = SteeredLlama(arch["model"], **KW)
    closed = SteeredLlama(arch["model"], arch["closed"], **KW)
    opened = SteeredLlama(arch["model"], arch["open"], **KW)
    want = plain.generate(PROMPT, max_tokens=12)
    got = closed.generate(PROMPT, max_tokens=12)
    assert not got.steered and got.token_ids == want.token_ids
    assert opened.generate(PROMPT, max_tokens=12).token_ids != want.token_ids  # the vector does something
    # two-turn chat, cache reused: still identical to plain
    msgs = [{"role": "user", "content": PROMPT}]
    a = plain.chat(msgs, stream=False, max_tokens=8)
    b = closed.chat(msgs, stream=False, max_tokens=8)
    msgs2 = msgs + [{"role": "assistant", "content": a.text}, {"role": "user", "content": "And then?"}]  # type: ignore[union-attr]
    a2 = plain.chat(msgs2, stream=False, max_tokens=8)
    b2 = closed.chat(msgs2, stream=False, max_tokens=8)
    assert b.token_ids == a.token_ids and b2.token_ids == a2.token_ids and b2.cached_tokens > 0  # type: ignore[union-attr]
    for llm in (plain, closed, opened):
        llm.close()


def _reference(model: Path, tokens: list[int], vector: np.ndarray, layer: int, n: int, *,
               steer_prompt: bool) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and first-token logits, the behaviour each mode promises, by hand."""
    s = LlamaSession(model, ContextSettings(**KW))
    if steer_prompt:
        s.set_control(*s.control_buffer({layer: vector}))
    s.decode(tokens)
    first = s.logits()
    s.set_control(*s.control_buffer({layer: vector}))
    out = []
    with s.sampler() as smp:
        for _ in range(n):
            tok = s.sample(smp)
            if s.is_eog(tok):
                break
            out.append(tok)
            s.decode([tok])
    s.close()
    return out, first


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_modes_equal_their_reference(arch: dict, mode: str) -> None:
    llm = SteeredLlama(arch["model"], arch["open"], mode=mode, **KW)
    tokens = llm.prompt_tokens([{"role": "user", "content": PROMPT}])
    s = LlamaSession(arch["model"], ContextSettings(**KW), tap_layers=(1, 2))
    s.decode(tokens, capture=True)
    vector = SteeringPack.load(arch["open"]).evaluate(s.hidden(1), s.hidden(2)).vector
    s.close()
    got = llm.generate(PROMPT, max_tokens=12)
    assert got.steered and got.mode == mode
    want, first = _reference(arch["model"], tokens, vector, 2, 12, steer_prompt=mode == "exact")
    assert got.token_ids == want
    _, other = _reference(arch["model"], tokens, vector, 2, 12, steer_prompt=mode != "exact")
    assert np.abs(first - other).max() > 1e-3  # the two modes really differ (the prompt is steered or not)
    llm.close()


MARKERS = {"chatml": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
           "gemma": ("<start_of_turn>user\n", "<start_of_turn>model\n"),
           "phi3": ("<|user|>", "<|assistant|>"),  # llama.cpp right-strips Phi-3's special tokens: no "\n" token
           "granite": ("<|start_of_role|>user<|end_of_role|>", "<|start_of_role|>assistant<|end_of_role|>"),
           "tulu": ("<|user|>\n", "<|assistant|>\n")}  # plain text in OLMo's vocabulary, not special tokens
FAMILY = {"llama": "chatml", "qwen2": "chatml", "qwen3": "chatml", "qwen3moe": "chatml",
          "gemma2": "gemma", "gemma3": "gemma", "phi3": "phi3", "granite": "granite", "olmo2": "tulu", "olmo": "tulu"}
END_OF_TURN = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>", "phi3": "<|end|>", "granite": "<|end_of_text|>",
               "tulu": "<|endoftext|>"}


def test_chat_template_renders_the_family_format(arch: dict) -> None:
    llm = SteeredLlama(arch["model"], **KW)
    s = llm.session
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}]
    text = "".join(s.token_text(t) for t in llm.prompt_tokens(msgs))
    user, gen = MARKERS[FAMILY[arch["name"]]]
    assert llm.chat_template.name == "gguf"
    assert text.count(user) == 2 and text.endswith(gen) and "hello" in text
    if arch["name"].startswith("gemma"):
        assert text.startswith("<bos><start_of_turn>user\n") and text.count("<bos>") == 1
    if FAMILY[arch["name"]] == "tulu":  # BOS is <|endoftext|>, which also closes each answer
        assert text.startswith("<|endoftext|><|user|>\nhi\n<|assistant|>\nhello<|endoftext|>\n<|user|>")
        assert text.count("<|endoftext|>") == 2
    if arch["name"] == "granite":  # a default system turn when the conversation has none
        assert text.startswith("<|start_of_role|>system<|end_of_role|>") and text.count("<|end_of_text|>") == 4
    # system prompts, as each template defines them
    sys_msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    if arch["name"] == "gemma2":  # Gemma 2's own template refuses a system role; the built-in folds it
        with pytest.raises(ChatTemplateError, match="--chat-template"):
            llm.prompt_tokens(sys_msgs)
        folded = SteeredLlama(arch["model"], chat_template="gemma", **KW)
        text = "".join(s.token_text(t) for t in folded.prompt_tokens(sys_msgs))
        assert "<start_of_turn>user\nBe brief.\n\nhi<end_of_turn>" in text and "system" not in text
        folded.close()
    else:
        text = "".join(s.token_text(t) for t in llm.prompt_tokens(sys_msgs))
        if arch["name"] == "gemma3":
            assert "<start_of_turn>user\nBe brief.\n\nhi<end_of_turn>" in text and "system" not in text
        else:
            assert re.search(r"system(\|>|<\|end_of_role\|>)?\n?Be brief\.", text)
            assert text.index("Be brief.") < text.index("hi") and text.count("system") == 1
    llm.close()


def test_generation_stops_at_the_family_end_of_turn_token(arch: dict) -> None:
    llm = SteeredLlama(arch["model"], **KW)
    eos = llm.session.eos
    assert llm.session.is_eog(eos)
    assert llm.session.token_text(eos) == END_OF_TURN[FAMILY[arch["name"]]]
    llm.close()


@pytest.mark.slow
def test_layer_numbering_matches_hf_transformers(arch: dict, tmp_path: Path) -> None:
    """tap N == HF hidden_states[N+1], on transformers' own GGUF loader for every architecture it reads, on the
    HF model built from the GGUF by hand for the others transformers has (granite, olmo2, olmo)."""
    if arch["name"] not in HF_LOADABLE and arch["name"] not in HF_BY_HAND:
        pytest.skip(f"transformers cannot load {arch['name']} GGUFs")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # transformers' loader takes head_dim, Gemma's query scale and Qwen3-MoE's expert width from its config
    # defaults, not the GGUF: size this model so those defaults are right (head_dim 128/256, experts 768).
    head_dim = 256 if arch["name"].startswith("gemma") else 128
    cfg = TinyConfig(n_embd=2 * head_dim, n_head=2, n_head_kv=1, n_ff=256, n_ff_expert=768, sliding_window=16)
    model_path = write_tiny_model(tmp_path / f"{arch['name']}-hf.gguf", arch["name"], cfg)
    if arch["name"] in HF_BY_HAND:
        model = _hf_model_by_hand(model_path, arch["name"], torch, transformers)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32
            ).eval()
    s = LlamaSession(model_path, ContextSettings(n_ctx=256, n_threads=1, strict=True), tap_layers=(0, 1, 2))
    toks = s.tokenize(PROMPT)
    s.decode(toks, capture=True)
    with torch.no_grad():
        ref = model(torch.tensor([toks]), output_hidden_states=True)
    for n in (0, 1, 2):
        hf = ref.hidden_states[n + 1][0, -1].numpy()
        err = np.abs(s.hidden(n) - hf).max() / np.abs(hf).max()
        off = np.abs(s.hidden(n) - ref.hidden_states[n][0, -1].numpy()).max() / np.abs(hf).max()
        assert err <= 1e-3 < 0.1 < off, (n, err, off)  # float32 rounding vs the neighbouring layer
    np.testing.assert_allclose(s.logits(), ref.logits[0, -1].numpy(), atol=1e-3 * np.abs(ref.logits).max().item())
    s.close()


# GGUF tensor -> HF parameter (per block), for the architectures built by hand.
_HF_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_HF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_model_by_hand(path: Path, name: str, torch: Any, transformers: Any) -> Any:
    """The HF model of ``name`` with every parameter read from the GGUF: its config from the GGUF's metadata
    (Granite's four multipliers included), q/k rows un-permuted for the NORM-rope architectures (llama.cpp's
    converter interleaves them), and no HF parameter left at its random init."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def kv(key: str) -> Any:
        return reader.fields[f"{name}.{key}"].contents()

    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    n_head, n_head_kv = kv("attention.head_count"), kv("attention.head_count_kv")
    config = dict(
        vocab_size=tensors["token_embd.weight"].shape[0], hidden_size=kv("embedding_length"),
        intermediate_size=kv("feed_forward_length"), num_hidden_layers=kv("block_count"),
        num_attention_heads=n_head, num_key_value_heads=n_head_kv, max_position_embeddings=kv("context_length"),
        rope_parameters={"rope_type": "default", "rope_theta": kv("rope.freq_base")},
        tie_word_embeddings="output.weight" not in tensors,
    )
    if name == "olmo":  # weightless LayerNorm; HF fixes its eps at 1e-5
        assert np.float32(kv("attention.layer_norm_epsilon")) == np.float32(1e-5)
    else:
        config["rms_norm_eps"] = kv("attention.layer_norm_rms_epsilon")
    if name == "granite":
        config.update(embedding_multiplier=kv("embedding_scale"), residual_multiplier=kv("residual_scale"),
                      attention_multiplier=kv("attention.scale"), logits_scaling=kv("logit_scale"))
    cls = HF_BY_HAND[name]
    model = getattr(transformers, f"{cls}ForCausalLM")(getattr(transformers, f"{cls}Config")(**config))
    norm_rope = name in ("granite", "olmo")  # llama.cpp's NORM rope: the converter permuted q/k
    state = {}
    for key, w in tensors.items():
        if key.startswith("blk."):
            _, block, part, kind = key.split(".")
            if norm_rope and part in ("attn_q", "attn_k"):
                heads = n_head if part == "attn_q" else n_head_kv
                w = w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
            hf = f"model.layers.{block}.{_HF_BLOCK_NAMES[part]}.{kind}"
        else:
            part, kind = key.split(".")
            hf = f"{_HF_GLOBAL_NAMES[part]}.{kind}"
        state[hf] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if config["tie_word_embeddings"] else set()), (
        missing, unexpected)
    return model.float().eval()


def test_an_architecture_without_steering_support_is_refused_at_load(tmp_path: Path) -> None:
    """BERT's llama.cpp graph adds no control vector and names no l_out-N: the pack must be refused, clearly."""
    model = write_tiny_bert(tmp_path / "bert.gguf")
    pack = make_random_pack(model, tmp_path / "pack", gate_layer=1, steer_layer=1, tau=-1.0)
    with pytest.raises(SelfTestError, match=r"no l_out-1 tensor.*unsupported architecture"):
        SteeredLlama(model, pack, n_ctx=128, n_threads=1)
    with pytest.warns(RuntimeWarning, match="STEERING DISABLED"):
        llm = SteeredLlama(model, pack, n_ctx=128, n_threads=1, allow_unsteered=True)
    assert llm.pack is None and "unsupported architecture" in (llm.unsteered_reason or "")
    llm.close()


def test_readme_lists_exactly_the_tested_architectures() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Supported architectures", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- `([a-z0-9]+)`", section, flags=re.M)
    assert listed == list(SUPPORTED_ARCHITECTURES)


def test_selftest_runs_twice_on_one_session(arch: dict) -> None:
    """Two packs (or the same one twice) self-test on one session; the second run used to fail on tap_context.

    The tap context kept its cache across ``reset()``: the second run's unsteered probe reused it (last token
    computed alone) while its steered probe was a fresh prefill, ~1 ulp apart at the layers below the vector.
    """
    s = LlamaSession(arch["model"], ContextSettings(**KW), tap_layers=(0, 1, 2))
    first = run_selftest(s, 0, 1)
    again = run_selftest(s, 0, 1)
    other = run_selftest(s, 1, 2)
    assert first == again and other.steer_layer == 2
    s.close()
    both = SteeredLlama(arch["model"], packs=[arch["open"], arch["open"]], **KW)
    assert len(both.reports) == 2 and all(r.selftest is not None for r in both.reports)
    both.close()


def test_a_steered_turn_leaves_no_trace_in_later_gate_reads(arch: dict) -> None:
    """After a steered turn: a fresh turn whose gate closes is plain, bit for bit, and reads the gate as a
    fresh instance does; on tap_context, a chat turn's gate reads the conversation as an instance that never
    steered does (its tap context never sees a control vector) and as a prefill of the whole conversation does."""
    plain = SteeredLlama(arch["model"], **KW)
    fresh = SteeredLlama(arch["model"], arch["closed"], **KW)
    llm = SteeredLlama(arch["model"], arch["closed"], **KW)
    want = plain.generate(PROMPT, max_tokens=10)
    ref = fresh.generate(PROMPT, max_tokens=10)
    llm.set_steering(gate="always")
    assert llm.generate(PROMPT, max_tokens=10).token_ids != want.token_ids  # steered: the vector does something
    llm.set_steering(gate="pack")
    got = llm.generate(PROMPT, max_tokens=10)
    assert not got.steered and got.token_ids == want.token_ids
    assert got.gate_score == ref.gate_score  # bit-identical: a fresh turn reuses nothing in the tap context
    for x in (plain, fresh, llm):
        x.close()
    # chat: turn 1 forced steered, turn 2 gated by the pack, against an instance never steered and against the
    # conversation prefilled from scratch. No KV cache a vector computed is reused (DESIGN-NOTES item 20), so this
    # holds for the layer_inp tap too, whose gate reads the generation context. Strict contexts (F32 KV cache, no
    # flash attention): there a capture over the cached prefix is bit-identical to a fresh prefill on every
    # architecture here, where the default F16 cache puts ~1e-3 relative noise on the hidden states (gate scores
    # ~0.1 apart by up to 1.3e-4 on olmo2), more than some wrong reads would move them (a changed last character
    # of the user message moves granite's score by 5e-5).
    llm, never, fresh = (SteeredLlama(arch["model"], arch["closed"], strict=True, **KW) for _ in range(3))
    msgs = [{"role": "user", "content": PROMPT}]
    llm.set_steering(gate="always")
    t1 = llm.chat(msgs, stream=False, max_tokens=6)
    assert t1.steered  # type: ignore[union-attr]
    llm.set_steering(gate="pack")
    msgs2 = msgs + [{"role": "assistant", "content": t1.text}, {"role": "user", "content": "And then?"}]  # type: ignore[union-attr]
    never.chat(msgs, stream=False, max_tokens=6)
    a2 = llm.chat(msgs2, stream=False, max_tokens=6)
    b2 = never.chat(msgs2, stream=False, max_tokens=6)
    assert a2.cached_tokens == 0 and not a2.steered  # type: ignore[union-attr]
    assert a2.gate_score == b2.gate_score and a2.token_ids == b2.token_ids  # type: ignore[union-attr]
    cold = fresh.generate(msgs2, max_tokens=1)
    assert cold.gate_score is not None and a2.gate_score is not None  # type: ignore[union-attr]
    assert abs(a2.gate_score - cold.gate_score) <= 1e-6 * max(1.0, abs(cold.gate_score))  # type: ignore[union-attr]
    for x in (llm, never, fresh):
        x.close()
