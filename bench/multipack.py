"""Two packs at once on SmolLM2 (safety + truthfulqa): gate identity, cap vs sum vs refuse, quality, TTFT.

Parts (each saved in bench/results/multipack.json and rendered into docs/BENCHMARKS.md):

1. ``gates``: every prompt's gate score and decision per pack, with both packs loaded vs each pack alone
   (one prefill each), on the validation and test prompts used below. Target: identical.
2. ``combine`` (validation only: this is where the policy is chosen): both gates forced open on harmful and
   benign val prompts and TruthfulQA val items, so both packs steer layer 12; answers with the summed vector
   (``sum``, llama.cpp's behaviour), the capped sum (``cap``) and the pack alone are compared (refusal /
   degenerate rates with the improved matcher, MC1); ``refuse`` would fail every such turn.
3. ``quality`` (test): safety refusal / over-refusal with both packs vs safety alone, TruthfulQA MC1 with both
   vs truthfulqa alone, at strength 1 with the chosen policy. A turn where the other pack's gate stays closed
   runs exactly the operations of the single-pack turn (tests/test_multipack.py), so only the turns where
   it opens are generated twice; ``reuse_checks`` regenerates a few of the others for real and compares tokens.
4. ``ttft``: time to first token on gate-closed turns (benign prompts where neither gate opens), no pack vs
   one pack vs two packs, interleaved rounds (rotated order), medians, ``--threads`` threads (default 1).

    python bench/multipack.py                 # full (about 15-25 min on a shared 2-core machine)
    python bench/multipack.py --quick         # small slices (checks it runs; numbers are noise)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
from _util import base_parser, save, smollm2

from finesteer_edge import SteeredLlama
from finesteer_edge.evaluation.datasets import PACKAGED_DATA, load_prompts
from finesteer_edge.evaluation.mc import MCItem, load_mc_items, mc1, mc_items_from_truthfulqa, score_item
from finesteer_edge.evaluation.refusal import is_degenerate, is_refusal
from finesteer_edge.measure.common import environment, interleaved, loadavg, median, ratio, spread
from finesteer_edge.resolve import resolve_pack

PACKS = ("smollm2-135m-instruct-safety", "smollm2-135m-instruct-truthfulqa")
GROUPS = ("harmful", "benign", "borderline")
MAX_TOKENS = 32
REUSE_CHECKS = 2


def gates(llm: SteeredLlama, text: str) -> list[tuple[float, bool]]:
    """Each pack's (gate score, open) from one unsteered prefill of ``text`` as a user turn."""
    out = [(float(d.gate_score), bool(d.open)) for d in llm.decide_prompt(text)]
    llm.session.reset()
    return out


def answer(llm: SteeredLlama, text: str) -> dict[str, Any]:
    r = llm.generate(text, max_tokens=MAX_TOKENS)
    return {"text": r.text, "token_ids": r.token_ids, "steered": r.steered, "refusal": is_refusal(r.text),
            "degenerate": is_degenerate(r.text)}


def rate(xs: list[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def part_gates(llms: dict[str, SteeredLlama], texts: list[str]) -> dict[str, Any]:
    both = [gates(llms["both"], t) for t in texts]
    alone = [[gates(llms[name], t)[0] for name in PACKS] for t in texts]
    same = [b == a for b, a in zip(both, alone, strict=True)]
    return {"n": len(texts), "identical": sum(same), "both": both, "alone": alone,
            "open_counts": {name: sum(b[i][1] for b in both) for i, name in enumerate(PACKS)},
            "both_open": sum(b[0][1] and b[1][1] for b in both)}


def part_combine(model: Path, threads: int, safety_val: list[Any], mc_val: list[MCItem],
                 both_llm: SteeredLlama) -> dict[str, Any]:
    """Both packs forced open (``gate="always"``) on validation prompts: sum vs cap vs the pack alone.

    Forced, because both gates rarely open on the same natural prompt (``gates.both_open``); forcing puts
    both vectors on layer 12 of every prompt, the worst case the policy exists for.
    """
    pol = {p: SteeredLlama(model, packs=[resolve_pack(x) for x in PACKS], combine=p, gate="always",
                           n_threads=threads, n_ctx=1024) for p in ("sum", "cap")}
    alone = {name: SteeredLlama(model, resolve_pack(name), gate="always", n_threads=threads, n_ctx=1024)
             for name in PACKS}
    norms = [_sum_ratio(pol["sum"], x.text) for x in safety_val] + [_sum_ratio(pol["sum"], m.question) for m in mc_val]
    rows: dict[str, dict[str, list[bool]]] = {}
    for prompt in safety_val:
        for label, llm in (("sum", pol["sum"]), ("cap", pol["cap"]), ("alone", alone[PACKS[0]])):
            a = answer(llm, prompt.text)
            r = rows.setdefault(f"{prompt.group}:{label}", {"refusal": [], "degenerate": []})
            r["refusal"].append(a["refusal"])
            r["degenerate"].append(a["degenerate"])
    mc_rows: dict[str, list[Any]] = {"sum": [], "cap": [], "alone": []}
    for item in mc_val:
        for label, llm in (("sum", pol["sum"]), ("cap", pol["cap"]), ("alone", alone[PACKS[1]])):
            mc_rows[label].append(score_item(llm, item))
    for llm in (*pol.values(), *alone.values()):
        llm.close()
    return {
        "forced": True,
        "norm_ratio": {"n": len(norms), "median": median(norms), "range": spread(norms),
                       "above_one": sum(x > 1 + 1e-6 for x in norms)},
        "safety": {k: {"n": len(v["refusal"]), "refusal": rate(v["refusal"]), "degenerate": rate(v["degenerate"])}
                   for k, v in sorted(rows.items())},
        "mc1": {k: {"n": len(v), "mc1": mc1(v) if v else None} for k, v in mc_rows.items()},
    }


def _sum_ratio(llm: SteeredLlama, text: str) -> float:
    """||v_safety + v_truthfulqa|| / max of the two at layer 12 for this prompt (both gates open)."""
    import numpy as np

    ds = llm.decide_prompt(text)  # the prefill with the user-message span the gate features pool over
    llm.session.reset()
    vs = [next(iter(d.vectors.values())) for d in ds]
    return float(np.linalg.norm(vs[0] + vs[1]) / max(np.linalg.norm(v) for v in vs))


def part_quality(llms: dict[str, SteeredLlama], safety_test: list[Any], mc_test: list[MCItem]) -> dict[str, Any]:
    both, safety, tqa = llms["both"], llms[PACKS[0]], llms[PACKS[1]]
    out: dict[str, Any] = {"safety": {}, "reuse_checks": {"safety": [], "mc": []}}
    per_group: dict[str, dict[str, list[bool]]] = {}
    regenerated = 0
    for prompt in safety_test:
        g = gates(both, prompt.text)
        alone = answer(safety, prompt.text)
        together = alone
        if g[1][1]:  # truthfulqa's gate opens too: the turn differs, generate it
            together = answer(both, prompt.text)
            regenerated += 1
        elif len(out["reuse_checks"]["safety"]) < REUSE_CHECKS:
            out["reuse_checks"]["safety"].append(answer(both, prompt.text)["token_ids"] == alone["token_ids"])
        d = per_group.setdefault(prompt.group, {"alone": [], "both": [], "deg_alone": [], "deg_both": []})
        d["alone"].append(alone["refusal"])
        d["both"].append(together["refusal"])
        d["deg_alone"].append(alone["degenerate"])
        d["deg_both"].append(together["degenerate"])
    for group, d in per_group.items():
        out["safety"][group] = {
            "n": len(d["alone"]), "refusal_alone": rate(d["alone"]), "refusal_both": rate(d["both"]),
            "degenerate_alone": rate(d["deg_alone"]), "degenerate_both": rate(d["deg_both"])}
    out["safety_regenerated"] = regenerated
    base_scores, alone_scores, both_scores = [], [], []
    mc_regenerated = 0
    for item in mc_test:
        g = gates(both, item.question)
        a = score_item(tqa, item)
        alone_scores.append(a)
        if g[0][1]:
            both_scores.append(score_item(both, item))
            mc_regenerated += 1
        else:
            both_scores.append(a)
            if len(out["reuse_checks"]["mc"]) < REUSE_CHECKS:
                out["reuse_checks"]["mc"].append(score_item(both, item).logprob_sum == a.logprob_sum)
    tqa.set_steering(gate="never")
    base_scores = [score_item(tqa, item) for item in mc_test]
    tqa.set_steering(gate="pack")
    out["mc"] = {"n": len(mc_test), "mc1_base": mc1(base_scores), "mc1_alone": mc1(alone_scores),
                 "mc1_both": mc1(both_scores), "regenerated": mc_regenerated}
    return out


def part_ttft(model: Path, threads: int, texts: list[str], rounds: int) -> dict[str, Any]:
    variants = {
        "no_pack": SteeredLlama(model, n_threads=threads, n_ctx=1024),
        "one_pack": SteeredLlama(model, resolve_pack(PACKS[0]), n_threads=threads, n_ctx=1024),
        "two_packs": SteeredLlama(model, packs=[resolve_pack(x) for x in PACKS], n_threads=threads, n_ctx=1024),
    }

    def turn(llm: SteeredLlama, text: str) -> float:
        r = llm.generate(text, max_tokens=1)
        assert not r.steered, "a gate opened on a prompt chosen for closed gates"
        return r.ttft_seconds

    per_prompt = []
    for text in texts:
        samples = interleaved({n: (lambda o=o, t=text: turn(o, t)) for n, o in variants.items()}, rounds, warmup=1)
        per_prompt.append({n: median(v) for n, v in samples.items()})
    for llm in variants.values():
        llm.close()
    med = {n: median([p[n] for p in per_prompt]) for n in variants}
    return {"threads": threads, "rounds": rounds, "n_prompts": len(texts), "per_prompt": per_prompt, "median": med,
            "two_vs_one": ratio(med["two_packs"], med["one_pack"]),
            "one_vs_none": ratio(med["one_pack"], med["no_pack"]),
            "per_prompt_two_vs_one": [ratio(p["two_packs"], p["one_pack"]) for p in per_prompt]}


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=60, help="Test prompts per safety group.")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--ttft-prompts", type=int, default=8)
    p.add_argument("--parts", nargs="+", default=["gates", "combine", "quality", "ttft"],
                   help="Parts to run; the others are kept from an existing results file. 'norms' recounts only "
                        "combine's norm ratios.")
    p.add_argument("--model", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.limit, args.rounds, args.ttft_prompts = 6, 2, 2
    model = args.model or smollm2()
    data = PACKAGED_DATA
    lim_val = 8 if args.quick else None
    safety_val = [x for g in GROUPS for x in load_prompts(data / "safety" / f"{g}_val.jsonl", g, "val", limit=lim_val)]
    safety_test = [x for g in GROUPS
                   for x in load_prompts(data / "safety" / f"{g}_test.jsonl", g, "test", limit=args.limit)]
    mc_val = mc_items_from_truthfulqa(data / "truthfulqa" / "val.jsonl")[:lim_val]
    mc_test = load_mc_items(data / "truthfulqa" / "mc_test.jsonl")[: (12 if args.quick else None)]
    previous = args.results_dir / "multipack.json"
    kept = json.loads(previous.read_text()) if previous.is_file() else {}
    out: dict[str, Any] = {k: v for k, v in kept.items() if k not in args.parts and k not in ("env", "reruns")}
    out["reruns"] = kept.get("reruns", [])
    env = environment(model=str(model), threads=args.threads, limit=args.limit, max_tokens=MAX_TOKENS,
                      packs=list(PACKS), parts=args.parts)
    out["env"] = kept.get("env") or env  # the run that measured the kept parts; a partial re-run is recorded apart
    if kept.get("env"):
        out.setdefault("reruns", []).append(env)
    kw = dict(n_threads=args.threads, n_ctx=1024)
    llms = {"both": SteeredLlama(model, packs=[resolve_pack(x) for x in PACKS], **kw),
            **{name: SteeredLlama(model, resolve_pack(name), **kw) for name in PACKS}}
    t0 = time.time()
    if "gates" in args.parts:
        texts = [x.text for x in safety_val + safety_test] + [m.question for m in mc_val + mc_test]
        g = part_gates(llms, texts)
        out["gates"] = {k: v for k, v in g.items() if k not in ("both", "alone")}
        print(f"gates: {g['identical']}/{g['n']} identical; open {g['open_counts']}; both open {g['both_open']}",
              file=sys.stderr)
    if "combine" in args.parts:
        val = [x for x in safety_val if x.group == "harmful"] + [x for x in safety_val if x.group == "benign"][:30]
        out["combine"] = part_combine(model, args.threads, val, mc_val, llms["both"])
        print(f"combine: {out['combine']}", file=sys.stderr)
    if "norms" in args.parts and "combine" in out:
        val = [x for x in safety_val if x.group == "harmful"] + [x for x in safety_val if x.group == "benign"][:30]
        forced = SteeredLlama(model, packs=[resolve_pack(x) for x in PACKS], combine="sum", gate="always", **kw)
        norms = [_sum_ratio(forced, x.text) for x in val] + [_sum_ratio(forced, m.question) for m in mc_val]
        forced.close()
        out["combine"]["norm_ratio"] = {"n": len(norms), "median": median(norms), "range": spread(norms),
                                        "above_one": sum(x > 1 + 1e-6 for x in norms)}
    if "quality" in args.parts:
        out["quality"] = part_quality(llms, safety_test, mc_test)
        print(f"quality: {out['quality']}", file=sys.stderr)
    for llm in llms.values():
        llm.close()
    if "ttft" in args.parts:
        closed = []
        probe = SteeredLlama(model, packs=[resolve_pack(x) for x in PACKS], **kw)
        for x in load_prompts(data / "safety" / "benign_val.jsonl", "benign", "val"):
            if not any(o for _, o in gates(probe, x.text)):
                closed.append(x.text)
            if len(closed) == args.ttft_prompts:
                break
        probe.close()
        out["ttft"] = part_ttft(model, args.threads, closed, args.rounds)
        print(f"ttft: {out['ttft']['median']} two/one {out['ttft']['two_vs_one']:.3f}", file=sys.stderr)
    env.update(loadavg_end=loadavg(), seconds=time.time() - t0)
    save("multipack", out, args)


if __name__ == "__main__":
    main()
