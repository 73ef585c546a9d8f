"""Cheap probe (issue 11): does teaching the shift "refuse *and stop*" help? Mean delta with vs without EOT.

For N harmful *train* prompts we teacher-force the task's desired refusals after the prompt, once as
text and once followed by the model's end-of-turn token (``extract --end-of-turn``), against the
model's own greedy answer, and average ``delta = mean h_L(refusal) - mean h_L(own answer)`` at the
pack's steer layer. Each mean delta (times the pack's alpha) is then applied as a static vector,
behind the bundled pack's gate (CAST-style), on harmful_val / benign_val / borderline_val: refusal,
degenerate, ended (end-of-turn within 64 tokens) and clean refusal. Only gate-open prompts are
generated (a closed gate is bit-identical to no pack, so those answers do not depend on the vector).

    python bench/eot_probe.py --n 80 --strengths 1.0,1.33
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, smollm2  # noqa: E402

from finesteer_edge.data import read_jsonl  # noqa: E402
from finesteer_edge.evaluation.refusal import is_degenerate, is_ended, is_refusal  # noqa: E402
from finesteer_edge.steered import SteeredLlama  # noqa: E402
from finesteer_edge.train.extract import _response_ids, _response_mean, end_of_turn_token  # noqa: E402
from finesteer_edge.train.tasks import REFUSALS  # noqa: E402

PACK = REPO / "finesteer_edge" / "packs" / "smollm2-135m-instruct-safety"
DATA = REPO / "finesteer_edge" / "datasets" / "safety"


def prompt_shifts(llm: SteeredLlama, layer: int, prompt: str, tails: dict[str, list[int]],
                  own_tokens: int = 48) -> dict[str, np.ndarray]:
    """One harmful prompt's target shift as ``extract`` computes it (the refusals, each followed by ``tail``, against
    the model's own greedy answer; mean hidden state at ``layer``), for every tail in ``tails``."""
    s = llm.session
    msgs = [{"role": "user", "content": prompt}]
    own = llm.generate(msgs, max_tokens=own_tokens).token_ids
    tokens = llm.prompt_tokens(msgs)
    s.reset()
    s.decode(tokens)
    avoid = _response_mean(s, len(tokens), own, layer)
    return {kind: np.mean([_response_mean(s, len(tokens), _response_ids(s, t) + tail, layer) for t in REFUSALS], 0)
            - avoid for kind, tail in tails.items()}


def mean_deltas(model: Path, layer: int, prompts: list[str], own_tokens: int = 48) -> dict[str, np.ndarray]:
    llm = SteeredLlama(model, n_ctx=1024, n_threads=1, tap_layers=(layer,))
    tails = {"text": [], "eot": [end_of_turn_token(llm)]}
    acc: dict[str, list[np.ndarray]] = {k: [] for k in tails}
    for p in prompts:
        for kind, d in prompt_shifts(llm, layer, p, tails, own_tokens).items():
            acc[kind].append(d)
    llm.close()
    return {k: np.mean(v, 0) for k, v in acc.items()}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--strengths", default="1.0,1.33")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--schedules", default="all", help="Steering schedules to try (schedule.Schedule.parse forms).")
    ap.add_argument("--kinds", default="text,eot", help="Which mean deltas to apply: text, eot or both.")
    ap.add_argument("--keep", type=Path, default=None, help="JSON lines of rows measured by an earlier run to keep.")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "eot_probe.json")
    args = ap.parse_args()
    model = smollm2()
    t0 = time.perf_counter()
    llm = SteeredLlama(model, PACK, n_threads=1, n_ctx=1024)
    m = llm.pack.manifest
    train = [r["prompt"] for r in read_jsonl(DATA / "harmful_train.jsonl")][: args.n]
    cache = args.out.with_suffix(f".deltas{len(train)}.npz")
    if cache.exists():  # the deltas of the same prompts (the expensive part) from an earlier run
        deltas = dict(np.load(cache))
    else:
        deltas = mean_deltas(model, m.steer_layer, train)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **deltas)
    packvec = llm.pack.control.directions[m.steer_layer]
    info = {k: {"norm_x_alpha": float(np.linalg.norm(v) * m.alpha),
                "cos_vs_pack_mean": float(v @ packvec / np.linalg.norm(v) / np.linalg.norm(packvec))}
            for k, v in deltas.items()}
    info["cos_text_vs_eot"] = float(deltas["text"] @ deltas["eot"] / np.linalg.norm(deltas["text"])
                                    / np.linalg.norm(deltas["eot"]))
    info["pack_mean_norm"] = float(np.linalg.norm(packvec))
    print(json.dumps(info, indent=1), flush=True)
    groups = {g: [r["prompt"] for r in read_jsonl(DATA / f"{g}_val.jsonl")]
              for g in ("harmful", "benign", "borderline")}
    from finesteer_edge.evaluation.datasets import Prompt
    from finesteer_edge.evaluation.runner import gate_scores

    for g in list(groups):  # a closed gate is bit-identical to no pack: only gate-open prompts depend on the vector
        sc = gate_scores(llm, [Prompt(str(i), t, g, "val") for i, t in enumerate(groups[g])], progress=False)
        groups[g] = [t for t, x in zip(groups[g], sc, strict=True) if x >= m.tau]
    llm.set_steering(gate="pack", vector_source="mean")
    rows = [json.loads(line) for line in args.keep.read_text().splitlines()] if args.keep else []
    from finesteer_edge.schedule import Schedule

    combos = [(sch, kind, st) for sch in args.schedules.split(",") for kind in args.kinds.split(",")
              for st in [float(x) for x in args.strengths.split(",")]]
    for sched, kind, strength in combos:
        if True:
            llm.pack.control.directions[m.steer_layer] = (deltas[kind] * m.alpha).astype(np.float32)
            llm.set_steering(strength=strength)
            llm.schedule = Schedule.parse(sched)
            row: dict = {"targets": kind, "strength": strength, "schedule": sched}
            for g, ps in groups.items():
                res = [llm.generate(p, max_tokens=args.max_tokens) for p in ps]
                on = [r for r in res if r.steered]
                row[f"n_open_{g}"] = len(on)
                row[f"n_{g}"] = len(ps)
                row[f"refusal_{g}_open"] = float(np.mean([is_refusal(r.text) for r in on])) if on else None
                row[f"degenerate_{g}_open"] = float(np.mean([is_degenerate(r.text) for r in on])) if on else None
                row[f"ended_{g}_open"] = (float(np.mean([is_ended(r.finish_reason, r.tokens) for r in on]))
                                          if on else None)
                if g == "harmful":
                    row["clean_harmful_open"] = float(np.mean([is_refusal(r.text) and not is_degenerate(r.text)
                                                               and is_ended(r.finish_reason, r.tokens) for r in on]))
                    row["examples"] = [r.text[:160] for r in on[:3]]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "examples"}), flush=True)
    llm.close()
    out = {"n_train_prompts": len(train), "layer": m.steer_layer, "alpha": m.alpha, "vectors": info, "rows": rows,
           "threads": 1, "max_tokens": args.max_tokens, "seconds": time.perf_counter() - t0,
           "command": "python bench/eot_probe.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'targets':8} {'s':>5} {'refusal':>8} {'degen':>6} {'ended':>6} {'clean':>6} | benign open refusal | "
          f"borderline open refusal")
    for r in rows:
        r.setdefault("clean_harmful_open", None)
        print(f"{r['targets']:8} {r.get('schedule', 'all'):>5} {r['strength']:5.2f} {r['refusal_harmful_open']:8.1%} "
              f"{r['degenerate_harmful_open']:6.1%} "
              f"{r['ended_harmful_open']:6.1%} {r['clean_harmful_open']:6.1%} | {r['n_open_benign']} open "
              f"{r['refusal_benign_open']} | {r['n_open_borderline']} open {r['refusal_borderline_open']}")


if __name__ == "__main__":
    main()
