"""Decode speed of a steered turn with a schedule vs plain llama.cpp decoding (issue 11 target: >= 0.95x).

The same long-answer prompt and 64 new tokens per turn (``ignore`` the end-of-turn token is not possible
through the public API, so the prompt asks for a long story and turns that end early are reported with
their token count). Variants, interleaved per round (rotating order), median over rounds:

* ``plain``: no pack (our loop, plain llama.cpp decode);
* ``steered_all``: gate forced open, the vector on for the whole turn (today's behaviour);
* ``steered_k16``: gate open, vector on for the prompt and 16 tokens, then cleared (one control change);
* ``steered_k16_linear``: 16 tokens decaying in 4 levels (four control changes);
* ``steered_k24_linear``: 24 tokens decaying in 4 levels, the bundled safety pack's schedule since 2026-12-07.

Decode rate = (tokens - 1) / (seconds - time to first token): the prefill (twice for an exact steered
turn) is excluded, the control-vector changes inside the turn (each a scheduler re-reserve) are not.

    python bench/schedule_speed.py [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

from finesteer_edge.measure.common import environment, interleaved, median, ratio, spread, text_table  # noqa: E402
from finesteer_edge.schedule import Schedule  # noqa: E402
from finesteer_edge.steered import SteeredLlama  # noqa: E402

PACK = _util.REPO / "finesteer_edge" / "packs" / "smollm2-135m-instruct-safety"
PROMPT = "Write a long story about a dragon who learns to bake bread. Use many details."
SCHEDULES = {"steered_all": Schedule(), "steered_k16": Schedule(tokens=16),
             "steered_k16_linear": Schedule(tokens=16, decay="linear", steps=4),
             "steered_k24_linear": Schedule(tokens=24, decay="linear", steps=4)}


def main() -> None:
    p = _util.base_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    rounds = 2 if args.quick else args.rounds
    model = _util.smollm2()
    plain = SteeredLlama(model, n_threads=args.threads, n_ctx=512)
    steered = SteeredLlama(model, PACK, n_threads=args.threads, n_ctx=512, gate="always", strength=0.5)

    def run(llm: SteeredLlama, schedule: Schedule | None):  # type: ignore[no-untyped-def]
        def go() -> dict[str, float]:
            if schedule is not None:
                llm.schedule = schedule
            r = llm.generate(PROMPT, max_tokens=args.tokens)
            return {"tokens": r.tokens, "decode_tps": ratio(r.tokens - 1, r.seconds - r.ttft_seconds),
                    "seconds": r.seconds, "steered": r.steered}
        return go

    runners = {"plain": run(plain, None), **{k: run(steered, s) for k, s in SCHEDULES.items()}}
    samples = interleaved(runners, rounds, warmup=1)
    out = {}
    base = median([x["decode_tps"] for x in samples["plain"]])
    rows = []
    for name, xs in samples.items():
        tps = [x["decode_tps"] for x in xs]
        out[name] = {"decode_tps_median": median(tps), "decode_tps_range": spread(tps), "ratio_vs_plain":
                     ratio(median(tps), base), "tokens": [x["tokens"] for x in xs],
                     "steered": all(x["steered"] for x in xs) if name != "plain" else False}
        rows.append([name, f"{median(tps):.1f}", f"{ratio(median(tps), base):.3f}x",
                     f"{min(x['tokens'] for x in xs)}-{max(x['tokens'] for x in xs)}"])
    print(text_table(["variant", "decode tok/s (median)", "vs plain", "tokens"], rows))
    plain.close()
    steered.close()
    _util.save("schedule_speed", {"variants": out, "rounds": rounds, "threads": args.threads, "prompt": PROMPT,
                                  "max_tokens": args.tokens, "strength": 0.5,
                                  "environment": environment(threads=args.threads),
                                  "command": "python bench/schedule_speed.py " + " ".join(sys.argv[1:])}, args)


if __name__ == "__main__":
    main()
