"""Decode speed and time to first token on SmolLM2: plain vs gate closed vs gate open (fast, exact) vs stock.

For each thread count (1, 2) and prompt (a short chat turn, a ~500-token prompt) all five variants are
loaded side by side and run round-robin (rotated order), greedy, fresh KV cache per turn; we report
medians and ratios against "plain" (our loop, no pack) from the same rounds. The packs have random
weights with SmolLM2-sized heads (tau 2 = closed, tau -1 = open; gate layer 15, steer layer 10): the
cost of steering does not depend on what the weights say.

    python bench/decode.py            # full: 7 rounds, 128 new tokens
    python bench/decode.py --quick    # 2 rounds, 32 new tokens (checks it runs; numbers are noise)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
from _util import base_parser, save, smollm2

from finesteer_edge.measure.common import environment, loadavg, spread, text_table
from finesteer_edge.measure.prompts import PROMPTS
from finesteer_edge.measure.quick import VARIANTS, plan_packs, run_variants, summarize


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--prompts", nargs="+", default=["short", "long"], choices=sorted(PROMPTS))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: SmolLM2-135M-Instruct Q4_1).")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.max_tokens = 2, 32
    model = args.model or smollm2()
    out = {"env": environment(model=str(model), rounds=args.rounds, max_tokens=args.max_tokens), "groups": []}
    with tempfile.TemporaryDirectory(prefix="fse-bench-decode-") as tmp:
        plan = plan_packs(model, None, Path(tmp))
        out["pack"] = {"random": plan.random, "note": plan.note}
        for threads in args.threads:
            for prompt in args.prompts:
                t0, load0 = time.time(), loadavg()
                messages = [{"role": "user", "content": PROMPTS[prompt]}]
                samples, side = run_variants(model, plan, messages, threads=threads, n_ctx=2048,
                                             max_tokens=args.max_tokens, rounds=args.rounds, warmup=1)
                summary = summarize(samples)
                spreads = {f"decode_tps_{n}": spread([r.decode_tps for r in rs]) for n, rs in samples.items()}
                spreads.update({f"ttft_ms_{n}": spread([r.ttft_s * 1e3 for r in rs]) for n, rs in samples.items()})
                group = {
                    "threads": threads, "prompt": prompt, "prompt_tokens": side["prompt_tokens"],
                    "tap_method": side.get("tap_method"), "summary": summary, "spread": spreads,
                    "runs": {n: [r.to_dict() for r in rs] for n, rs in samples.items()},
                    "loadavg_start": load0, "loadavg_end": loadavg(), "seconds": time.time() - t0,
                }
                out["groups"].append(group)
                print(f"\n{threads} thread(s), {prompt} prompt ({side['prompt_tokens']} tokens), load {load0}",
                      file=sys.stderr)
                nan = float("nan")
                rows = [[n, f"{summary[f'decode_tps_{n}']:.1f}", f"{summary.get(f'decode_ratio_{n}', nan):.3f}",
                         f"{summary.get(f'cpu_decode_ratio_{n}', nan):.3f}", f"{summary[f'ttft_ms_{n}']:.1f}",
                         f"{summary.get(f'ttft_ratio_{n}', nan):.3f}", f"{summary.get(f'cpu_ttft_ratio_{n}', nan):.3f}",
                         f"{summary[f'tokens_{n}']:.0f}"] for n in VARIANTS]
                print(text_table(["variant", "tok/s", "ratio", "cpu ratio", "TTFT ms", "ratio", "cpu ratio", "tokens"],
                                 rows))
    out["env"]["loadavg_end"] = loadavg()
    save("decode", out, args)


if __name__ == "__main__":
    main()
