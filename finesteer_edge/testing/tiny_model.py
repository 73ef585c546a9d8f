"""Write a tiny, random llama GGUF that llama.cpp and HF transformers both load.

Tests and the quick benchmarks need a real model file that builds in milliseconds. The tokenizer is a
byte-level BPE (GPT-2 byte alphabet, a few merges) with ChatML special tokens and SmolLM2's chat
template shape, so tokenisation, templates, EOS handling and steering all run the real code paths.
Weights are drawn from a seeded normal distribution in HF layout; q/k are permuted the way llama.cpp's
HF converter does, so transformers' GGUF loader (which undoes the permutation) sees the same network.
"""

from __future__ import annotations

from dataclasses import dataclass
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

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_MERGES = ("Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t")


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


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types (1 normal, 3 control) and merges."""
    tokens = list(SPECIAL_TOKENS) + _byte_alphabet()
    for merge in _MERGES:
        tokens.append(merge.replace(" ", ""))
    types = [3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS))
    return tokens, types, list(_MERGES)


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half layout -> llama.cpp's interleaved rope layout (as convert_hf_to_gguf does)."""
    out_dim = w.shape[0]
    return w.reshape(n_head, 2, out_dim // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama(path: str | Path, config: TinyConfig | None = None) -> Path:
    """Write the tiny model to ``path`` (F32 weights) and return the path."""
    import gguf  # writer side only

    cfg = config or TinyConfig()
    path = Path(path)
    rng = np.random.default_rng(cfg.seed)
    tokens, types, merges = tiny_vocab()
    n_vocab = len(tokens)
    head_dim = cfg.n_embd // cfg.n_head
    d, std = cfg.n_embd, cfg.weight_std

    def rand(*shape: int, scale: float = std) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("finesteer-tiny-llama")
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(d)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)

    w.add_tensor("token_embd.weight", rand(n_vocab, d, scale=1.0))
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", (1.0 + rand(d, scale=0.1)))
        w.add_tensor(p + "attn_q.weight", _permute_qk(rand(d, d), cfg.n_head))
        w.add_tensor(p + "attn_k.weight", _permute_qk(rand(cfg.n_head_kv * head_dim, d), cfg.n_head_kv))
        w.add_tensor(p + "attn_v.weight", rand(cfg.n_head_kv * head_dim, d))
        w.add_tensor(p + "attn_output.weight", rand(d, d))
        w.add_tensor(p + "ffn_norm.weight", (1.0 + rand(d, scale=0.1)))
        w.add_tensor(p + "ffn_gate.weight", rand(cfg.n_ff, d))
        w.add_tensor(p + "ffn_up.weight", rand(cfg.n_ff, d))
        w.add_tensor(p + "ffn_down.weight", rand(d, cfg.n_ff))
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    w.add_tensor("output.weight", rand(n_vocab, d, scale=0.2))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
