"""Decode speed and TTFT per architecture: plain vs gate closed vs gate open (fast, exact), tiny random models.

For every architecture in ``SUPPORTED_ARCHITECTURES`` a tiny random GGUF (d=512, 8 layers, F32: a token
takes a few ms on one core; control-token logits zeroed so greedy turns run to the token
limit) is written, plus the real SmolLM2-135M (llama). Each model's variants are
loaded side by side and run round-robin (rotated order), greedy, fresh KV cache per turn, on a short chat
turn; medians and ratios against *plain* (our loop, no pack: plain llama.cpp on the same file) from the
same rounds. Timing on a shared machine is noisy, so each model also gets a deterministic count: how
many times llama.cpp calls the Python tap callback per *generated* token (0 means the tap is free).
``gate closed (cb_eval)`` is the previous fallback for architectures without layer-input
outputs, the Python callback in the generation context itself, to show what the tap context saves.
Packs have random weights (gate layer n_layer/2, steer layer n_layer/3); costs do not depend on them.

    python bench/architectures.py                 # 9 rounds, 128 new tokens, 1 thread
    python bench/architectures.py --quick         # 2 rounds, 16 new tokens (checks it runs; noise)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
from _util import base_parser, save, smollm2

from finesteer_edge.architectures import LAYER_INP_ARCHITECTURES, SUPPORTED_ARCHITECTURES
from finesteer_edge.measure.common import environment, loadavg, median, ratio, spread, text_table
from finesteer_edge.measure.prompts import SHORT_PROMPT
from finesteer_edge.measure.quick import plan_packs, run_variants, summarize
from finesteer_edge.steered import SteeredLlama
from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_model

VARIANTS = ("plain", "gate_closed", "gate_open_fast", "gate_open_exact", "gate_closed_cb_eval")
BENCH_CONFIG = TinyConfig(n_layer=8, n_embd=512, n_head=8, n_head_kv=4, n_ff=1024, context_length=2048,
                          n_expert=4, n_expert_used=2, sliding_window=512)


def callback_calls_per_token(model: Path, pack: Path, tap_method: str, threads: int) -> float | None:
    """Tap-callback invocations per generated token in a gate-closed turn (None: no callback at all)."""
    llm = SteeredLlama(model, pack, n_threads=threads, n_ctx=2048, tap_method=tap_method)
    try:
        tap = llm.session.tap
        if tap is None or not hasattr(tap, "calls"):
            return None
        counts = []
        for n in (1, 33):
            before = tap.calls
            r = llm.generate(SHORT_PROMPT, max_tokens=n)
            assert r.tokens == n and not r.steered
            counts.append(tap.calls - before)
        return (counts[1] - counts[0]) / 32
    finally:
        llm.close()


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--archs", nargs="+", default=list(SUPPORTED_ARCHITECTURES) + ["smollm2"])
    args = p.parse_args()
    if args.quick:
        args.rounds, args.max_tokens = 2, 16
    out = {"env": environment(threads=args.threads, rounds=args.rounds, max_tokens=args.max_tokens,
                              config=vars(BENCH_CONFIG)), "models": []}
    messages = [{"role": "user", "content": SHORT_PROMPT}]
    with tempfile.TemporaryDirectory(prefix="fse-bench-arch-") as tmp:
        for arch in args.archs:
            work = Path(tmp) / arch
            work.mkdir()
            if arch == "smollm2":
                model, architecture = smollm2(), "llama"
            else:
                model, architecture = write_tiny_model(work / f"{arch}.gguf", arch, BENCH_CONFIG, endless=True), arch
            plan = plan_packs(model, None, work)
            t0, load0 = time.time(), loadavg()
            samples, side = run_variants(model, plan, messages, threads=args.threads, n_ctx=2048,
                                         max_tokens=args.max_tokens, rounds=args.rounds, warmup=1, variants=VARIANTS)
            summary = summarize(samples)
            extra = "gate_closed_cb_eval"
            summary[f"decode_ratio_{extra}"] = ratio(summary[f"decode_tps_{extra}"], summary["decode_tps_plain"])
            summary[f"ttft_ratio_{extra}"] = ratio(summary[f"ttft_ms_{extra}"], summary["ttft_ms_plain"])
            summary[f"cpu_decode_ratio_{extra}"] = ratio(summary[f"cpu_decode_tps_{extra}"],
                                                         summary["cpu_decode_tps_plain"])
            calls = {m: callback_calls_per_token(model, plan.closed, m, args.threads)
                     for m in ("auto", "cb_eval")}
            row = {
                "model": arch, "architecture": architecture, "file": model.name,
                "tap_method": "layer_inp" if architecture in LAYER_INP_ARCHITECTURES else "tap_context",
                "prompt_tokens": side["prompt_tokens"], "summary": summary,
                "callback_calls_per_token": calls["auto"], "callback_calls_per_token_cb_eval": calls["cb_eval"],
                "spread": {f"decode_tps_{n}": spread([r.decode_tps for r in rs]) for n, rs in samples.items()},
                "runs": {n: [r.to_dict() for r in rs] for n, rs in samples.items()},
                "loadavg_start": load0, "loadavg_end": loadavg(), "seconds": time.time() - t0,
            }
            out["models"].append(row)
            rows = [[n, f"{summary[f'decode_tps_{n}']:.1f}", f"{summary.get(f'decode_ratio_{n}', 1.0):.3f}",
                     f"{summary.get(f'cpu_decode_ratio_{n}', 1.0):.3f}", f"{summary[f'ttft_ms_{n}']:.1f}",
                     f"{summary.get(f'ttft_ratio_{n}', 1.0):.3f}", f"{median([r.tokens for r in samples[n]]):.0f}"]
                    for n in VARIANTS]
            print(f"\n{arch} ({row['tap_method']}), {side['prompt_tokens']} prompt tokens, {args.threads} thread(s), "
                  f"load {load0}; tap callback calls per generated token: {calls['auto']} "
                  f"(cb_eval in the generation context: {calls['cb_eval']})", file=sys.stderr)
            print(text_table(["variant", "tok/s", "ratio", "cpu ratio", "TTFT ms", "ratio", "tokens"], rows),
                  file=sys.stderr)
    out["env"]["loadavg_end"] = loadavg()
    save("architectures", out, args)


if __name__ == "__main__":
    main()
