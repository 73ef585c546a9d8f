"""Write tiny, random GGUFs of every supported architecture that llama.cpp (and HF transformers) load.

Tests and the quick benchmarks need real model files that build in milliseconds, one per architecture we
claim (``finesteer_edge.architectures.SUPPORTED_ARCHITECTURES``), so the architecture-specific parts of
llama.cpp (tensor layout, norms, rope style, biases, q/k norms, MoE routing, tied embeddings, soft-capping,
sliding windows, Granite's embedding/residual/attention/logit multipliers, OLMo 2's post-norms over whole
q/k projections, OLMo's weightless layer norms) run for real without anyone's weights. Each file has exactly
the tensors and metadata keys that the pinned llama.cpp loader requires for its architecture
(src/models/<arch>.cpp; Granite's optional multipliers too, since every Granite model sets them) and a chat
template in that model family's own style (ChatML for llama/qwen, ``<start_of_turn>`` for gemma,
``<|user|>`` for phi3, ``<|start_of_role|>`` for granite, Tulu's plain-text ``<|user|>`` for olmo/olmo2), so
the template path is exercised too.

The tokenizer is a byte-level BPE (GPT-2 byte alphabet, a few merges) with the family's special tokens.
Weights are drawn from a seeded normal distribution in HF layout; for the NORM-rope architectures (llama,
granite, olmo) q/k are permuted the way llama.cpp's HF converter does, so a loader that undoes the
permutation (transformers' GGUF loader for llama; tests/test_architectures.py by hand for granite and olmo)
sees the same network; the other architectures use NEOX rope and are stored unpermuted, as their converters do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma 3 style: BOS first, the system prompt folded into the first user turn, assistant called "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Gemma 2 style: like Gemma 3 but a system message is refused by the template itself.
GEMMA2_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Granite 3.x style: a system turn always (a default one if none is given), every turn closed by <|end_of_text|>.
GRANITE_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = 'You are a tiny test model.' %}"
    "{% set turns = messages %}{% endif %}"
    "{{ '<|start_of_role|>system<|end_of_role|>' + system + '<|end_of_text|>\n' }}"
    "{% for message in turns %}"
    "{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}"
)

# OLMo / OLMo 2 Instruct style (Tulu): BOS (== EOS) first, plain-text role markers, EOS after each answer.
TULU_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token + ('' if loop.last else '\n') }}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_MERGES = ("Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t")
# Per family: extra control tokens (appended after the llama vocabulary), BOS, EOS, add_bos, template.
_FAMILY = {
    "chatml": ((), "<|im_start|>", "<|im_end|>", False, CHATML_TEMPLATE),
    "gemma": (("<bos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<end_of_turn>", True, GEMMA_TEMPLATE),
    "gemma2": (("<bos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<end_of_turn>", True, GEMMA2_TEMPLATE),
    # llama.cpp sets attributes on <s>, </s> and <unk> for any model named "phi3": real Phi-3 vocabularies have them.
    "phi3": (("<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<s>", "<|end|>", False,
             PHI3_TEMPLATE),
    "granite": (("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>"), "<|end_of_text|>", "<|end_of_text|>",
                False, GRANITE_TEMPLATE),
    # OLMo's role markers are plain text; <|endoftext|> is BOS, EOS and the end of each answer.
    "tulu": ((), "<|endoftext|>", "<|endoftext|>", False, TULU_TEMPLATE),
}
_ARCH_FAMILY = {"llama": "chatml", "qwen2": "chatml", "qwen3": "chatml", "qwen3moe": "chatml",
                "gemma2": "gemma2", "gemma3": "gemma", "phi3": "phi3", "granite": "granite", "olmo2": "tulu",
                "olmo": "tulu"}
# Rope on adjacent pairs (llama.cpp's NORM rope): the HF converter permutes q/k rows for these.
_NORM_ROPE = ("llama", "granite", "olmo")
# No output.weight: the output shares the embeddings, as in the real models (Gemma 2 always, Granite 3.x).
_TIED_OUTPUT = ("gemma2", "granite")
# Granite's multipliers, Granite 3.x's values (its attention multiplier is 1/head_dim, not 1/sqrt(head_dim)).
GRANITE_EMBEDDING_SCALE, GRANITE_RESIDUAL_SCALE, GRANITE_LOGIT_SCALE = 12.0, 0.22, 8.0
TINY_ARCHITECTURES: tuple[str, ...] = tuple(_ARCH_FAMILY)
"""Every architecture this module can write (SUPPORTED_ARCHITECTURES and any candidate under test)."""
DEFAULT_TEMPLATE = object()
"""Sentinel: the architecture family's own chat template (pass None for a base model without one)."""


@dataclass(frozen=True)
class TinyConfig:
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    context_length: int = 1024
    seed: int = 0
    weight_std: float = 0.08
    n_expert: int = 4
    n_expert_used: int = 2
    n_ff_expert: int = 0
    """qwen3moe: per-expert FFN width (0: n_ff // 2)."""
    sliding_window: int = 64
    """Gemma only: a window shorter than the test prompts' conversations, so SWA masking really runs."""


def _byte_alphabet() -> list[str]:
    """GPT-2's reversible byte -> printable unicode mapping, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def tiny_vocab(extra_special: tuple[str, ...] = ()) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types (1 normal, 3 control) and merges; ``extra_special`` are appended as control."""
    tokens = list(SPECIAL_TOKENS) + _byte_alphabet()
    for merge in _MERGES:
        tokens.append(merge.replace(" ", ""))
    types = [3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS))
    tokens += list(extra_special)
    types += [3] * len(extra_special)
    return tokens, types, list(_MERGES)


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half layout -> llama.cpp's interleaved rope layout (as convert_hf_to_gguf does)."""
    out_dim = w.shape[0]
    return w.reshape(n_head, 2, out_dim // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama(path: str | Path, config: TinyConfig | None = None) -> Path:
    """Write the tiny llama model to ``path`` (F32 weights) and return the path."""
    return write_tiny_model(path, "llama", config)


def write_tiny_model(path: str | Path, architecture: str = "llama", config: TinyConfig | None = None, *,
                     chat_template: str | None | object = DEFAULT_TEMPLATE, endless: bool = False,
                     vocab: tuple[list[str], list[int], list[str]] | None = None,
                     tokenizer_pre: str = "default") -> Path:
    """Write a tiny random GGUF of ``architecture`` (one of TINY_ARCHITECTURES) and return its path.

    ``chat_template``: the family's own template by default, a Jinja string, or None for a base model
    with no ``tokenizer.chat_template`` key at all. ``endless``: zero the output rows of the control
    tokens, so their logit is 0 while the maximum over ~280 random logits is positive: greedy turns never
    end early (benchmarks need turns of a fixed length). ``vocab`` (tokens, token types, merges) and
    ``tokenizer_pre``: a real model's tokenizer instead of the byte-level toy one, so a model of a real
    model's shape tokenizes text into as many tokens as the real one (bench/shaped_model.py); it must
    hold the family's special tokens.
    """
    import gguf  # writer side only

    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"no tiny model for architecture {architecture!r}; known: {TINY_ARCHITECTURES}")
    cfg = config or TinyConfig()
    path = Path(path)
    extra, bos, eos, add_bos, template = _FAMILY[_ARCH_FAMILY[architecture]]
    if chat_template is not DEFAULT_TEMPLATE:
        template = chat_template  # type: ignore[assignment]
    rng = np.random.default_rng(cfg.seed)
    tokens, types, merges = tiny_vocab(extra) if vocab is None else vocab
    n_vocab = len(tokens)
    head_dim = cfg.n_embd // cfg.n_head
    d, std, kv = cfg.n_embd, cfg.weight_std, cfg.n_head_kv * (cfg.n_embd // cfg.n_head)

    def rand(*shape: int, scale: float = std) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return 1.0 + rand(n, scale=0.1)

    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name(f"finesteer-tiny-{architecture}")
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(d)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    if architecture == "olmo":  # plain LayerNorm without weights
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-5 if architecture != "gemma2" and architecture != "gemma3" else 1e-6)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_file_type(0)
    if architecture == "qwen3moe":
        w.add_expert_count(cfg.n_expert)
        w.add_expert_used_count(cfg.n_expert_used)
        w.add_expert_feed_forward_length(cfg.n_ff_expert or cfg.n_ff // 2)
    if architecture in ("gemma2", "gemma3"):
        w.add_sliding_window(cfg.sliding_window)
    if architecture == "granite":
        w.add_embedding_scale(GRANITE_EMBEDDING_SCALE)
        w.add_residual_scale(GRANITE_RESIDUAL_SCALE)
        w.add_attention_scale(1.0 / head_dim)
        w.add_logit_scale(GRANITE_LOGIT_SCALE)
    if architecture == "gemma2":
        w.add_attn_logit_softcapping(50.0)
        w.add_final_logit_softcapping(30.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokenizer_pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(bos))
    w.add_eos_token_id(tokens.index(eos))
    w.add_pad_token_id(0)
    w.add_add_bos_token(add_bos)
    if template is not None:
        w.add_chat_template(str(template))

    control = np.array([t == 3 for t in types])
    embd = rand(n_vocab, d, scale=1.0 if architecture[:5] != "gemma" and architecture != "granite" else 0.1)
    if endless and architecture in _TIED_OUTPUT:  # the embedding rows are the output rows
        embd[control] = 0.0
    w.add_tensor("token_embd.weight", embd)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        if architecture not in ("olmo2", "olmo"):  # OLMo 2 normalises after each sublayer; OLMo has no weights
            w.add_tensor(p + "attn_norm.weight", norm(d))
        q, k, v = rand(d, d), rand(kv, d), rand(kv, d)
        if architecture in _NORM_ROPE:
            q, k = _permute_qk(q, cfg.n_head), _permute_qk(k, cfg.n_head_kv)
        if architecture == "phi3":  # fused q|k|v, as Phi-3's own qkv_proj
            w.add_tensor(p + "attn_qkv.weight", np.concatenate([q, k, v]))
        else:
            w.add_tensor(p + "attn_q.weight", q)
            w.add_tensor(p + "attn_k.weight", k)
            w.add_tensor(p + "attn_v.weight", v)
        if architecture == "qwen2":  # Qwen2 has q/k/v biases
            w.add_tensor(p + "attn_q.bias", rand(d))
            w.add_tensor(p + "attn_k.bias", rand(kv))
            w.add_tensor(p + "attn_v.bias", rand(kv))
        if architecture in ("qwen3", "qwen3moe", "gemma3"):  # per-head RMS norms on q and k
            w.add_tensor(p + "attn_q_norm.weight", norm(head_dim))
            w.add_tensor(p + "attn_k_norm.weight", norm(head_dim))
        if architecture == "olmo2":  # RMS norms over the whole q and k projections (all heads at once)
            w.add_tensor(p + "attn_q_norm.weight", norm(d))
            w.add_tensor(p + "attn_k_norm.weight", norm(kv))
        w.add_tensor(p + "attn_output.weight", rand(d, d))
        if architecture in ("gemma2", "gemma3", "olmo2"):
            w.add_tensor(p + "post_attention_norm.weight", norm(d))
            w.add_tensor(p + "post_ffw_norm.weight", norm(d))
        if architecture not in ("olmo2", "olmo"):
            w.add_tensor(p + "ffn_norm.weight", norm(d))
        if architecture == "qwen3moe":
            n_exp, ff = cfg.n_expert, cfg.n_ff_expert or cfg.n_ff // 2
            w.add_tensor(p + "ffn_gate_inp.weight", rand(n_exp, d, scale=0.5))
            w.add_tensor(p + "ffn_gate_exps.weight", rand(n_exp, ff, d))
            w.add_tensor(p + "ffn_up_exps.weight", rand(n_exp, ff, d))
            w.add_tensor(p + "ffn_down_exps.weight", rand(n_exp, d, ff))
        elif architecture == "phi3":  # fused gate|up, as Phi-3's gate_up_proj
            w.add_tensor(p + "ffn_up.weight", rand(2 * cfg.n_ff, d))
            w.add_tensor(p + "ffn_down.weight", rand(d, cfg.n_ff))
        else:
            w.add_tensor(p + "ffn_gate.weight", rand(cfg.n_ff, d))
            w.add_tensor(p + "ffn_up.weight", rand(cfg.n_ff, d))
            w.add_tensor(p + "ffn_down.weight", rand(d, cfg.n_ff))
    if architecture != "olmo":
        w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    if architecture not in _TIED_OUTPUT:
        out = rand(n_vocab, d, scale=0.2)
        if endless:
            out[control] = 0.0
        w.add_tensor("output.weight", out)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def bench_config(**overrides: int) -> TinyConfig:
    """A tiny model sized so one decoded token takes a few ms on one core (per-architecture benchmarks)."""
    base = TinyConfig(n_layer=10, n_embd=512, n_head=8, n_head_kv=4, n_ff=1536, context_length=2048)
    return replace(base, **overrides)


def write_tiny_bert(path: str | Path, *, n_embd: int = 64, n_layer: int = 3, n_ff: int = 128, n_head: int = 2,
                    seed: int = 0) -> Path:
    """A tiny BERT encoder: an architecture steering must REFUSE (its llama.cpp graph has no control
    vector and no ``l_out-N`` names), to test that the refusal is clear and happens at load."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, types, merges = tiny_vocab()
    d, n_ctx = n_embd, 128

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.08).astype(np.float32)

    ones, zeros = np.ones(d, np.float32), np.zeros(d, np.float32)
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_name("finesteer-tiny-bert")
    w.add_context_length(n_ctx)
    w.add_embedding_length(d)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_token_type_count(2)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_tensor("token_embd.weight", rand(len(tokens), d))
    w.add_tensor("token_types.weight", rand(2, d))
    w.add_tensor("position_embd.weight", rand(n_ctx, d))
    w.add_tensor("token_embd_norm.weight", ones)
    w.add_tensor("token_embd_norm.bias", zeros)
    for i in range(n_layer):
        p = f"blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", rand(d, d))
        w.add_tensor(p + "attn_output_norm.weight", ones)
        w.add_tensor(p + "attn_output_norm.bias", zeros)
        w.add_tensor(p + "ffn_up.weight", rand(n_ff, d))
        w.add_tensor(p + "ffn_down.weight", rand(d, n_ff))
        w.add_tensor(p + "layer_output_norm.weight", ones)
        w.add_tensor(p + "layer_output_norm.bias", zeros)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
