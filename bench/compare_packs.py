"""Two safety packs side by side on the validation splits, with the CLI's default sampler and each pack's schedule.

Why: choosing whether to ship a rebuilt pack (e.g. MoSE trained with ``extract --end-of-turn`` targets) must
use validation data only; ``eval`` reports on test. Greedy, 64 new tokens, the CLI's repetition penalties
(repeat 1.1, DRY 0.8), every pack with its own manifest schedule. Prints a table and writes a JSON.

    OPENBLAS_NUM_THREADS=1 python bench/compare_packs.py OLD NEW --limit 40 --out bench/results/compare_packs.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from finesteer_edge.evaluation.datasets import PACKAGED_DATA, load_prompts
from finesteer_edge.evaluation.refusal import is_clean_refusal, is_degenerate, is_ended, is_refusal
from finesteer_edge.pull import pull
from finesteer_edge.settings import Penalties
from finesteer_edge.steered import SteeredLlama

GROUPS = ("harmful", "benign", "borderline")
PENALTIES = Penalties(repeat_penalty=1.1, repeat_last_n=64, dry_multiplier=0.8)  # the CLI's defaults


def run(pack: Path, model: Path, limit: int, threads: int, max_tokens: int) -> dict[str, dict[str, float]]:
    llm = SteeredLlama(model, pack, n_threads=threads, n_ctx=2048)
    out: dict[str, dict[str, float]] = {}
    for group in GROUPS:
        prompts = load_prompts(PACKAGED_DATA / "safety" / f"{group}_val.jsonl", group, "val", limit=limit)
        n = len(prompts)
        counts = {"refusal": 0, "degenerate": 0, "ended": 0, "clean": 0, "steered": 0}
        for p in prompts:
            r = llm.generate(p.text, max_tokens=max_tokens, penalties=PENALTIES)
            counts["refusal"] += is_refusal(r.text)
            counts["degenerate"] += is_degenerate(r.text)
            counts["ended"] += is_ended(r.finish_reason, r.tokens)
            counts["clean"] += is_clean_refusal(r.text, r.finish_reason, r.tokens)
            counts["steered"] += r.steered
        out[group] = {"n": n, **{k: v / n for k, v in counts.items()}}
    llm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packs", nargs="+", type=Path)
    ap.add_argument("--limit", type=int, default=40, help="First N prompts of each *_val file.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model = pull("smollm2-135m-instruct", show_progress=False)
    t0 = time.time()
    results = {str(p): run(p, model, args.limit, args.threads, args.max_tokens) for p in args.packs}
    print("| pack | group | n | steered | refusal | degenerate | ended | clean refusal |")
    print("|---|---|---|---|---|---|---|---|")
    for pack, res in results.items():
        for g, m in res.items():
            print(f"| {Path(pack).name} | {g} | {m['n']} | {m['steered']:.1%} | {m['refusal']:.1%} | "
                  f"{m['degenerate']:.1%} | {m['ended']:.1%} | {m['clean']:.1%} |")
    if args.out:
        args.out.write_text(json.dumps({"command": "python bench/compare_packs.py " + " ".join(
            map(str, args.packs)) + f" --limit {args.limit} --threads {args.threads}", "threads": args.threads,
            "max_tokens": args.max_tokens, "seconds": round(time.time() - t0, 1), "results": results}, indent=1))


if __name__ == "__main__":
    main()
