"""Fidelity: our runtime on the quantized GGUF vs a torch reference of the same weights.

Why: the pack is trained on torch activations but runs on llama.cpp's Q4_1 kernels with flash
attention and an F16 KV cache. If the hidden states at the gate layer drift, gate decisions near tau
flip and the vector changes; this measures by how much, on the evaluation prompts.

The reference: HF transformers loads the same GGUF (dequantised to float32:
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32)``), is fed exactly
the token ids our runtime used (SmolLM2's GGUF says ``add_bos_token=False``; re-tokenising on the HF
side could add or drop a BOS), and the pack's own head (the same ONNX file) runs on
``hidden_states[N + 1]`` for our layer N (DESIGN.md section 2). The reference vector is applied with
a forward hook adding it to the output of ``model.model.layers[steer_layer]`` at every position,
which is what our control vector does in exact mode.

Reported: gate decision agreement (score >= tau on both sides), gate score differences, cosine of
the two vectors (median, min), and, for the steered forward pass, top-1 agreement of the next token
and the cosine of the steering-induced logit shift. Needs torch and transformers (the ``dev``/``train``
extras); never imported by the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..gate_input import gate_state, head_state, pool, user_span
from ..progress import track

if TYPE_CHECKING:
    from ..steered import SteeredLlama

GATE_AGREEMENT_TARGET = 0.99


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)) / (na * nb))


def load_reference(model_path: str | Path, n_threads: int | None = None):  # type: ignore[no-untyped-def]
    """The torch reference model (float32, eval mode)."""
    import torch
    import transformers

    if n_threads:
        torch.set_num_threads(n_threads)
    p = Path(model_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    return model.eval()


def run_fidelity(llm: SteeredLlama, prompts: Sequence[str], *, reference: Any = None, progress: bool = True,
                 label: str = "fidelity") -> dict[str, Any]:
    """Compare ``llm`` (with its pack, strength 1) against the torch reference on ``prompts``."""
    import torch

    assert llm.pack is not None, "fidelity needs a pack"
    pack = llm.pack
    m = pack.manifest
    model = reference if reference is not None else load_reference(llm.model_info.path, llm.n_threads)
    s = llm.session
    rows: list[dict[str, Any]] = []
    for text in track(list(prompts), label, enabled=progress):
        msgs = [{"role": "user", "content": text}]
        toks = llm.prompt_tokens(msgs)
        span = user_span(llm.chat_template, s, msgs, len(toks))
        # ours: unsteered prefill with taps, head, then the steered prefill (exact mode) at strength 1
        s.clear_control()
        s.reset()
        s.decode(toks, capture=True, span=llm.prefill_span(msgs, toks))
        ours = pack.evaluate(gate_state(s, m), head_state(s, m))
        base_ours = s.logits()
        s.set_control(*s.control_buffer({m.steer_layer: ours.vector}))
        s.reset()
        s.decode(toks)
        steered_ours = s.logits()
        s.clear_control()
        s.reset()
        # reference: same ids, hidden_states[N + 1] = our layer N, hook on layers[steer]
        ids = torch.tensor([toks])
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        hs = out.hidden_states
        ref = pack.evaluate(pool(hs[m.gate_layer + 1][0].numpy(), span, m.gate_feature),
                            pool(hs[m.head_layer + 1][0].numpy(), span, m.head_feature))
        base_ref = out.logits[0, -1].numpy()
        vec = torch.from_numpy(np.asarray(ref.vector, dtype=np.float32))

        def add_vector(module, inputs, output, vec=vec):  # type: ignore[no-untyped-def]
            if isinstance(output, tuple):
                return (output[0] + vec,) + tuple(output[1:])
            return output + vec

        hook = model.model.layers[m.steer_layer].register_forward_hook(add_vector)
        try:
            with torch.no_grad():
                steered_ref = model(ids).logits[0, -1].numpy()
        finally:
            hook.remove()
        rows.append({
            "score": float(ours.gate_score), "score_ref": float(ref.gate_score),
            "open": bool(ours.gate_score >= m.tau), "open_ref": bool(ref.gate_score >= m.tau),
            "vector_cos": _cos(ours.vector, ref.vector),
            "vector_rel_diff": float(np.linalg.norm(ours.vector - ref.vector) / max(np.linalg.norm(ref.vector), 1e-12)),
            "base_top1_agree": bool(np.argmax(base_ours) == np.argmax(base_ref)),
            "steered_top1_agree": bool(np.argmax(steered_ours) == np.argmax(steered_ref)),
            "shift_cos": _cos(steered_ours - base_ours, steered_ref - base_ref),
            "n_tokens": len(toks),
        })
    return summarize(rows, float(m.tau))


def summarize(rows: Sequence[dict[str, Any]], tau: float) -> dict[str, Any]:
    """Aggregate per-prompt comparisons into the reported numbers."""
    if not rows:
        return {"n": 0}
    arr = {k: np.asarray([r[k] for r in rows], dtype=np.float64) for k in rows[0]}
    diff = np.abs(arr["score"] - arr["score_ref"])
    agree = arr["open"] == arr["open_ref"]
    return {
        "n": len(rows),
        "tau": tau,
        "gate_agreement": float(agree.mean()),
        "gate_disagreements": int((~agree).sum()),
        "open_rate": float(arr["open"].mean()),
        "open_rate_ref": float(arr["open_ref"].mean()),
        "score_abs_diff_median": float(np.median(diff)),
        "score_abs_diff_max": float(diff.max()),
        "near_tau": int((np.abs(arr["score_ref"] - tau) <= diff.max()).sum()),
        "vector_cos_median": float(np.median(arr["vector_cos"])),
        "vector_cos_min": float(arr["vector_cos"].min()),
        "vector_rel_diff_median": float(np.median(arr["vector_rel_diff"])),
        "base_top1_agreement": float(arr["base_top1_agree"].mean()),
        "steered_top1_agreement": float(arr["steered_top1_agree"].mean()),
        "logit_shift_cos_median": float(np.median(arr["shift_cos"])),
        "logit_shift_cos_min": float(arr["shift_cos"].min()),
        "prompt_tokens_median": float(np.median(arr["n_tokens"])),
        "settings": "runtime: llama.cpp default context settings (as users run it); reference: HF float32",
    }
