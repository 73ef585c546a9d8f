"""Render docs/BENCHMARKS.md from bench/results/*.json (every section degrades to a note when its file is missing).

    python bench/report.py            # re-render only, no measuring

The 8B section mixes measured numbers with arithmetic; every arithmetic figure is labelled as such and
shows its inputs, so it can be checked or redone with other assumptions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

# Where the results live and the report goes. Defined here, the bottom layer, so that _util (which
# re-renders the report after each script) can import them without the two importing each other.
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "BENCHMARKS.md"

# Llama-3.1-8B (the size class the paper steers), for the arithmetic in "how it scales".
EIGHT_B = {"name": "Llama-3.1-8B Q4_K_M", "params": 8.03e9, "file_bytes": 4.92e9, "d": 4096, "n_layer": 32}
SMOLLM2_PARAMS = 134.5e6  # SmolLM2-135M (tied embeddings)

VARIANT_LABELS = {
    "stock": "stock `llama_cpp.Llama`",
    "plain": "plain (our loop, no pack)",
    "gate_closed": "gate closed",
    "gate_open_fast": "gate open, fast",
    "gate_open_exact": "gate open, exact",
}
HEAD_LABELS = {
    "onnx_folded": "ONNX folded",
    "runtime": "runtime (`HeadRunner.run`)",
    "runtime_cold": "runtime, cold caches",
    "onnx_folded_2t": "ONNX folded, 2 threads",
    "onnx_unfolded": "ONNX unfolded",
    "onnx_unfolded_noopt": "ONNX unfolded, no graph opt.",
    "numpy_folded": "numpy folded",
}


def f(v: Any, digits: int = 2, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}{suffix}"


def load(results: Path, name: str) -> dict[str, Any] | None:
    p = results / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def missing(script: str) -> str:
    return f"_Not measured yet: run `python bench/{script}`._\n"


def env_line(env: dict[str, Any]) -> str:
    v = env.get("versions", {})
    return (f"{env.get('time_utc', '?')}, {env.get('cpu', '?')} ({env.get('cpus_usable', '?')} usable CPUs), "
            f"load average {env.get('loadavg_start')} -> {env.get('loadavg_end')}, "
            f"llama-cpp-python {v.get('llama_cpp_python', '?')}, onnxruntime {v.get('onnxruntime', '?')}, "
            f"numpy {v.get('numpy', '?')}, Python {v.get('python', '?')}, "
            f"OPENBLAS_NUM_THREADS={env.get('openblas_num_threads')}")


# ----------------------------------------------------------------------------------------------- sections
def section_decode(dec: dict[str, Any] | None) -> str:
    out = ["## 1. Decode speed and time to first token (SmolLM2-135M-Instruct Q4_1)\n"]
    if dec is None:
        return "\n".join(out) + missing("decode.py")
    e = dec["env"]
    out.append(f"Measured {env_line(e)}. {e['rounds']} interleaved rounds (+1 warm-up) per group, "
               f"{e['max_tokens']} new tokens max, greedy, fresh KV cache every turn; medians, with [min-max]. "
               "Ratios are against *plain* from the same rounds; *(CPU time)* is the same ratio in process CPU "
               "time, which other jobs on the machine barely disturb (meaningful with 1 thread; with 2, ggml's "
               "spin-waits count too). Packs: random weights, SmolLM2-sized head, "
               "gate layer 15, steer layer 10 (tau 2 closes the gate, tau -1 opens it).\n")
    for g in dec["groups"]:
        s, sp = g["summary"], g.get("spread", {})
        out.append(f"**{g['threads']} thread(s), {g['prompt']} prompt ({g['prompt_tokens']} tokens)**, "
                   f"tap `{g.get('tap_method')}`, load {g['loadavg_start']} -> {g['loadavg_end']}\n")
        rows = []
        for n in VARIANT_LABELS:
            if f"decode_tps_{n}" not in s:
                continue
            lo, hi = sp.get(f"decode_tps_{n}", [None, None])
            tlo, thi = sp.get(f"ttft_ms_{n}", [None, None])
            rows.append([VARIANT_LABELS[n], f"{f(s[f'decode_tps_{n}'], 1)} [{f(lo, 1)}-{f(hi, 1)}]",
                         f(s.get(f"decode_ratio_{n}"), 3), f(s.get(f"cpu_decode_ratio_{n}"), 3),
                         f"{f(s[f'ttft_ms_{n}'], 1)} [{f(tlo, 1)}-{f(thi, 1)}]",
                         f(s.get(f"ttft_ratio_{n}"), 3), f(s.get(f"cpu_ttft_ratio_{n}"), 3), f(s[f"tokens_{n}"], 0)])
        out.append(_md(["variant", "decode tok/s", "ratio", "ratio (CPU time)", "TTFT ms", "ratio",
                        "ratio (CPU time)", "new tokens"], rows))
        out.append(f"\nplain / stock decode: {f(s.get('decode_ratio_plain_vs_stock'), 3)}; exact mode's extra TTFT "
                   f"{f(s.get('exact_extra_ms'), 1)} ms = {f(s.get('exact_extra_over_prefill'), 2)} x the plain TTFT "
                   "(one prefill).\n")
    return "\n".join(out)


def section_head(head: dict[str, Any] | None) -> str:
    out = ["## 2. Steering head latency (per query, batch 1)\n"]
    if head is None:
        return "\n".join(out) + missing("head.py")
    e = head["env"]
    out.append(f"Measured {env_line(e)}. Synthetic weights, K = 8 experts, k = 10 basis vectors, router and MLP "
               "hidden width = d (as the released FineSteer scripts). Every variant's outputs are checked against "
               "the float64 folded reference (max relative error shown) before timing; calls are interleaved; "
               "medians in ms, [min-max]. *cold caches*: 64 MB streamed through the caches before each call "
               "(untimed), as a prefill does before the head runs in a real turn. "
               "onnxruntime: 1 intra-op thread unless noted, graph optimisations on "
               "(which constant-folds key(C)/value(C) of the unfolded graph at load); *no graph opt.* computes all "
               "three projections per query, as the official torch module does.\n")
    variants = [v for v in HEAD_LABELS if v in head["latency"][0]]
    rows = []
    for lat in head["latency"]:
        rows.append([lat["d"], *(f"{f(lat[v]['median_ms'], 3)} [{f(lat[v]['min_ms'], 3)}-{f(lat[v]['max_ms'], 2)}]"
                                 for v in variants), f"{lat['max_rel_err']:.1e}"])
    out.append(_md(["d", *(HEAD_LABELS[v] for v in variants), "max rel. err"], rows))
    bw = []
    for lat in head["latency"]:
        nbytes = lat["onnx_bytes"]["folded"]
        bw.append(f"d={lat['d']}: {nbytes / 1e6:.1f} MB of weights per query -> "
                  f"{nbytes / (lat['onnx_folded']['median_ms'] * 1e-3) / 1e9:.1f} GB/s (ONNX folded), "
                  f"{nbytes / (lat['numpy_folded']['median_ms'] * 1e-3) / 1e9:.1f} GB/s (numpy)")
    out.append("\nEffective weight bandwidth (folded head bytes / median time): " + "; ".join(bw) + ".\n")
    narrow = head.get("narrow") or {}
    if narrow.get("latency"):
        h = narrow["hidden"]
        out.append(f"**MLP hidden width capped at {h}** (what `finesteer-edge train` builds by default for d > {h}; "
                   "the router is unchanged): the same measurement, and the pack it makes.\n")
        rows = [[lat["d"], h, *(f(lat[v]["median_ms"], 3) for v in ("onnx_folded", "numpy_folded", "runtime")),
                 f(s["pack_folded"] / 1e6, 1)] for lat, s in zip(narrow["latency"], narrow["size"], strict=True)]
        out.append(_md(["d", "MLP hidden", "ONNX folded ms", "numpy folded ms", "runtime (HeadRunner.run) ms",
                        "pack folded MB"], rows))
    return "\n".join(out)


def section_size(head: dict[str, Any] | None) -> str:
    out = ["## 3. Pack size, folded vs unfolded\n"]
    if head is None:
        return "\n".join(out) + missing("head.py")
    out.append("A real pack written by the pack writer (`manifest.json` + `head.onnx` + `control.gguf`), K = 8, "
               "k = 10, MLP hidden = d; *unfolded* swaps in the head with query/key/value `Linear(d, d)` and the "
               "prototype bank (not a loadable pack format: it is what shipping the official layout would weigh). "
               "MB = 10^6 bytes.\n")
    rows = [[s["d"], f(s["head_folded"] / 1e6, 2), f(s["head_unfolded"] / 1e6, 2), f(s["pack_folded"] / 1e6, 2),
             f(s["pack_unfolded"] / 1e6, 2), f(s["pack_unfolded"] / s["pack_folded"], 2),
             f"{s['params_folded']:,}", f"{s['params_unfolded']:,}"] for s in head["size"]]
    out.append(_md(["d", "head folded MB", "head unfolded MB", "pack folded MB", "pack unfolded MB",
                    "unfolded / folded", "params folded", "params unfolded"], rows))
    return "\n".join(out) + "\n"


def section_memory(mem: dict[str, Any] | None) -> str:
    out = ["## 4. Resident memory (RSS)\n"]
    if mem is None:
        return "\n".join(out) + missing("memory.py")
    e = mem["env"]
    out.append(f"Measured {env_line(e)}. One fresh process per variant and round ({e['rounds']} rounds, medians): "
               f"import, load (n_ctx {e['n_ctx']}, 2 threads), one 64-token greedy turn on the short prompt. "
               "MiB = 2^20 bytes.\n")
    v = mem["variants"]
    rows = [[k, f(v[k]["imported"]["rss"] / 2**20, 1), f(v[k]["loaded"]["rss"] / 2**20, 1),
             f(v[k]["after_turn"]["rss"] / 2**20, 1), f(v[k]["after_turn"]["peak_rss"] / 2**20, 1)] for k in v]
    out.append(_md(["variant", "after imports MiB", "after load MiB", "after turn MiB", "peak MiB"], rows))
    if "plain" in v and "steered" in v:
        delta = (v["steered"]["after_turn"]["rss"] - v["plain"]["after_turn"]["rss"]) / 2**20
        out.append(f"\nSteered minus plain after the turn: **{delta:+.1f} MiB** (onnxruntime, the head, the pack's "
                   "control vector and the tap buffers).\n")
    if mem.get("head_rss"):
        rows = [[r["d"], "`HeadRunner` (runtime)" if r["how"] == "runner" else "bare onnxruntime session",
                 f(r["head_bytes"] / 2**20, 1), f(r["resident"] / 2**20, 1), f(r["resident"] / r["head_bytes"], 2)]
                for r in mem["head_rss"].values()]
        out.append("A folded head alone (K = 8, k = 10, MLP hidden = d), RSS growth when loaded, file bytes dropped:\n")
        out.append(_md(["d", "loaded by", "head.onnx MiB", "resident MiB", "resident / file"], rows))
    return "\n".join(out) + "\n"


def section_schedule(sp: dict[str, Any] | None) -> str:
    """Issue 11: decode speed of a steered turn under a steering schedule vs plain decoding."""
    out = ["## Steering schedule: decode speed of a steered turn (issue 11)\n"]
    if sp is None:
        return "\n".join(out) + missing("schedule_speed.py")
    e = sp["environment"]
    out.append(f"`{sp['command']}`: {sp['threads']} llama.cpp thread(s), {sp['rounds']} interleaved rounds (rotating "
               f"order, medians), up to {sp['max_tokens']} new tokens, strength {sp['strength']}, gate forced open; "
               f"CPU {e.get('cpu')}, load average {e.get('loadavg_start')} at start. Decode rate = (tokens - 1) / "
               "(seconds - time to first token): prefill excluded, control-vector changes inside the turn included. "
               "Target: >= 0.95x plain.\n")
    v = sp["variants"]
    rows = [[k, f(x["decode_tps_median"], 1), f"{f(x['decode_tps_range'][0], 1)}-{f(x['decode_tps_range'][1], 1)}",
             f"{f(x['ratio_vs_plain'], 3)}x", f"{min(x['tokens'])}-{max(x['tokens'])}"] for k, x in v.items()]
    out.append(_md(["variant", "decode tok/s (median)", "range", "vs plain", "tokens per turn"], rows))
    return "\n".join(out) + "\n"


def section_torch(tr: dict[str, Any] | None) -> str:
    out = ["## 5. The torch reference (HF transformers fp32 on the same GGUF)\n"]
    if tr is None:
        return "\n".join(out) + missing("torch_ref.py")
    e = tr["env"]
    out.append(f"Measured {env_line(e)}, torch {e['versions'].get('torch', '?')}, transformers "
               f"{e['versions'].get('transformers', '?')}. The reference dequantises the Q4_1 GGUF to fp32 "
               f"(load {f(tr.get('torch_load_seconds'), 1)} s). *torch steered* = the official FineSteer path: a "
               "forward pass for the last token's hidden states, the unfolded head in torch, then `generate` with "
               f"a forward hook on `model.model.layers[{e.get('steer_layer')}]` adding the vector at every position "
               "(= our exact mode). Torch generates exactly the requested tokens (`min_new_tokens`), ours may stop "
               f"at end-of-sequence. {e['rounds']} interleaved rounds, {e['max_tokens']} new tokens, medians; same "
               "thread count for torch (`set_num_threads`) and llama.cpp.\n")
    labels = {"torch_plain": "torch fp32, plain", "torch_steered": "torch fp32, FineSteer (hook)",
              "ours_plain": "ours, plain (Q4_1)", "ours_exact": "ours, gate open exact (Q4_1)",
              "ours_plain_q4_0": "ours, plain, requantized Q4_0"}
    for g in tr["groups"]:
        s = g["summary"]
        out.append(f"**{g['threads']} thread(s), {g['prompt']} prompt ({g['prompt_tokens']} tokens)**, "
                   f"load {g['loadavg_start']} -> {g['loadavg_end']}\n")
        rows = [[label, f(s.get(f"decode_tps_{n}"), 1), f(s.get(f"ttft_ms_{n}"), 0), f(s.get(f"turn_s_{n}"), 2)]
                for n, label in labels.items() if f"decode_tps_{n}" in s]
        out.append(_md(["variant", "decode tok/s", "TTFT ms", "turn s"], rows))
        out.append(f"\nDecode speed-up, ours / torch: plain {f(s['speedup_decode_plain'], 1, 'x')}, steered "
                   f"{f(s['speedup_decode_steered'], 1, 'x')} (in CPU time: plain "
                   f"{f(s.get('cpu_speedup_decode_plain'), 1, 'x')}, steered "
                   f"{f(s.get('cpu_speedup_decode_steered'), 1, 'x')}); steered TTFT speed-up "
                   f"{f(s['speedup_ttft_steered'], 2, 'x')}.\n")
        if s.get("decode_tps_ours_plain_q4_0") and s.get("ttft_ms_ours_plain_q4_0"):
            out.append(f"Same weights requantized to Q4_0 vs the Q4_1 file: decode "
                       f"{f(s['decode_tps_ours_plain_q4_0'] / s['decode_tps_ours_plain'], 2, 'x')} faster, time to "
                       f"first token {f(s['ttft_ms_ours_plain'] / s['ttft_ms_ours_plain_q4_0'], 2, 'x')} shorter.\n")
    return "\n".join(out) + "\n"


def _cmd(argv_tail: str) -> str:
    """A recorded command line (interpreter dropped) as a user would type it."""
    return (argv_tail.replace("-c from finesteer_edge.cli.app import main; main() ", "finesteer-edge ")
            .replace("-m llama_cpp.server", "python -m llama_cpp.server"))


def section_serve(sv: dict[str, Any] | None) -> str:
    out = ["## 8. The OpenAI-compatible server (`finesteer-edge serve`) vs `python -m llama_cpp.server`\n"]
    if sv is None:
        out.append(missing("serve.py"))
        return "\n".join(out)
    e = sv["env"]
    out.append(f"Measured {env_line(e)}; SmolLM2-135M-Instruct Q4_1, {e['threads']} llama.cpp threads (2 slots: "
               f"{e['threads_per_slot_2']} each), n_ctx {e['n_ctx']}, greedy, {e['max_tokens']} tokens max, streamed "
               f"with the openai client, every prompt distinct from its first message on (no cached prefix to reuse), "
               f"{e['rounds']} interleaved rounds, medians "
               "[min-max]. *steered*: `gate: always` (every request steered by the safety pack); *gated (closed)*: "
               "the pack's own gate, closed on these benign prompts. Commands: "
               + "; ".join(f"`{_cmd(v)}`" for v in e["commands"].values()) + ".\n")

    def mr(d: dict[str, Any], k: str, scale: float = 1.0, digits: int = 1) -> str:
        lo, hi = d[k + "_range"]
        return f"{f(d[k] * scale, digits)} [{f(lo * scale, digits)}-{f(hi * scale, digits)}]"

    def steered(v: dict[str, Any]) -> str:
        flags = [x for smp in v["samples"] for x in (smp["steered"] if isinstance(smp["steered"], list)
                                                     else [smp["steered"]])]
        return "-" if all(x is None for x in flags) else f"{sum(bool(x) for x in flags)}/{len(flags)}"

    rows = [[k, mr(v, "ttft_s", 1000), mr(v, "tps"), f(v["tokens"], 0), steered(v)] for k, v in sv["single"].items()]
    out.append("**One client**\n")
    out.append(_md(["server", "TTFT ms", "decode tok/s", "tokens", "steered"], rows))
    rows = [[k, mr(v, "agg_tps"), mr(v, "ttft_s", 1000), steered(v)] for k, v in sv["pair"].items()]
    out.append("\n**Two clients at once**\n")
    out.append(_md(["server", "aggregate tok/s", "TTFT ms", "steered"], rows))
    out.append("\nHow to read it: a steered request in `exact` mode (the pack's default) prefills its prompt twice "
               "(once to gate, once with the vector on), so its TTFT is about twice the unsteered one by design; "
               "decode speed is the steering target. Every request of `serve` starts on a fresh KV cache (a cached "
               "prefix could hold another request's steering), while llama_cpp.server reuses the previous prompt's "
               "longest common prefix, which helps it on multi-turn chats; these prompts share no prefix. A load "
               "average above 2 means other jobs shared the 2 cores: compare ratios, not absolute numbers. The "
               "aggregate tok/s of two clients counts wall time including the prefills, so steered (exact) pairs "
               "pay the second prefill there too.\n")
    r = sv["ratios"]
    out.append("\n**Ratios** (target: unsteered >= 0.95x llama_cpp.server, steered >= 0.95x unsteered)\n")
    out.append(_md(["ratio", "value"], [[k, f(v, 3)] for k, v in r.items()]))
    return "\n".join(out)


def section_scaling(sc: dict[str, Any] | None, dec: dict[str, Any] | None, head: dict[str, Any] | None,
                    mem: dict[str, Any] | None) -> str:
    out = ["## 6. How it scales\n"]
    if sc is None:
        out.append(missing("scaling.py"))
    else:
        e = sc["env"]
        out.append(f"Measured {env_line(e)}, {e['threads']} threads, {e['rounds']} interleaved rounds, medians.\n")
        out.append("**Prompt length** (SmolLM2, measured). Gate closed should add a constant (tap read-out + head); "
                   "exact mode one prefill of the turn's tokens, i.e. *x prefill* ~1.\n")
        rows = [[g["prompt_tokens"], f(g["summary"]["ttft_ms_plain"], 1), f(g["summary"]["closed_extra_ms"], 2),
                 f(g["summary"]["ttft_ratio_gate_closed"], 3), f(g["summary"]["ttft_ms_gate_open_fast"], 1),
                 f(g["summary"]["exact_extra_ms"], 1), f(g["summary"]["exact_extra_over_prefill"], 2)]
                for g in sc["prompt_length"]]
        out.append(_md(["prompt tokens", "plain TTFT ms", "gate closed extra ms", "closed / plain", "fast TTFT ms",
                        "exact extra ms", "exact extra / prefill"], rows))
        mt = sc.get("multi_turn")
        if mt:
            fresh = (f" = {f(mt['exact_over_fresh'], 2)} x the same conversation prefilled fresh without a vector "
                     f"({f(mt['ttft_ms_plain_fresh'], 1)} ms; turn 1 was steered too, so turn 2 first prefilled the "
                     "conversation unsteered for its gate, which on SmolLM2's llama architecture reads the generation "
                     "context); after a gate-closed turn 1, gate open exact "
                     f"{f(mt['ttft_ms_gate_open_exact_after_closed'], 1)} = "
                     f"{f(mt['exact_after_closed_over_fresh'], 2)} x" if "ttft_ms_plain_fresh" in mt else "")
            out.append(f"\n**A chat's second turn** (measured): {mt['new_tokens']} new tokens on "
                       f"{mt['history_tokens']} cached ones (turn 1 = the long prompt). TTFT ms: plain "
                       f"{f(mt['ttft_ms_plain'], 1)}, gate closed {f(mt['ttft_ms_gate_closed'], 1)}, gate open fast "
                       f"{f(mt['ttft_ms_gate_open_fast'], 1)}, gate open exact {f(mt['ttft_ms_gate_open_exact'], 1)}"
                       f"{fresh}. Plain, gate-closed and fast turns prefill only the new tokens; a steered exact turn "
                       "prefills the whole conversation again with the vector, so that a chat turn is steered as the "
                       "same conversation is in one fresh turn (DESIGN-NOTES item 20).\n")
        out.append("\n**Model shape** (random llama models, Q8_0, 256-token prompt, session level, measured). "
                   "*tap extra*: prefill with the hidden-state tap minus without; *cvec change*: the first decode "
                   "after setting a control vector minus a steady one (llama.cpp re-reserves its scheduler; a steered "
                   "turn pays it when the vector is set and again on the next decode after it is cleared); *decode "
                   "ratio*: per-token time without / with an active vector.\n")
        rows = [[r["d"], r["n_layer"], f(r["model_bytes"] / 1e6, 0), f(r["prefill_plain_ms"], 1),
                 f(r["tap_extra_ms"], 2), f(r["token_plain_ms"], 2), f(r["token_cvec_ms"], 2),
                 f(r["decode_ratio_cvec"], 3), f(r["cvec_change_ms"], 2),
                 f(r["cvec_clear_first_ms"] - r["token_plain_ms"], 2)] for r in sc["shape"]]
        out.append(_md(["d", "n_layer", "model MB", "prefill ms", "tap extra ms", "token ms", "token ms, vector on",
                        "decode ratio", "cvec set: extra ms", "cvec clear: extra ms"], rows))
    out.append("\n" + eight_b(sc, dec, head, mem))
    return "\n".join(out)


def section_probes(pr: dict[str, Any] | None) -> str:
    """Small probes (bench/probes.py) that the analysis quotes: each cheap to re-run."""
    out = ["## 7. Small probes behind the analysis\n"]
    if pr is None:
        return "\n".join(out) + missing("probes.py")
    e = pr["env"]
    out.append(f"Measured {env_line(e)}, 1 llama.cpp thread, {f(pr.get('seconds'), 0)} s in all. Each probe is "
               "one short measurement, so its absolute numbers carry the machine's load at the time (above).\n")
    kv = pr.get("kv_clear") or []
    if kv:
        out.append("**KV cache clear** (SmolLM2; `reset()` uses *no zeroing*), median ms per clear over "
                   f"{kv[0]['rounds']} interleaved calls:\n")
        out.append(_md(["n_ctx", "zeroing: wall ms", "zeroing: CPU ms", "no zeroing: wall ms", "no zeroing: CPU ms"],
                       [[k["n_ctx"], f(k["zeroing_wall_ms"], 3), f(k["zeroing_cpu_ms"], 3),
                         f(k["no_zeroing_wall_ms"], 3), f(k["no_zeroing_cpu_ms"], 3)] for k in kv]))
        out.append("")
    ss = pr.get("session")
    if ss:
        out.append(f"**SmolLM2 at the session level** ({ss['prompt_tokens']}-token random prompt, 1 thread, "
                   f"{e.get('rounds')} interleaved rounds; columns as in section 6's model-shape table):\n")
        out.append(_md(["prefill ms", "tap extra ms", "token ms", "token ms, vector on", "decode ratio",
                        "cvec set: extra ms", "cvec clear: extra ms"],
                       [[f(ss["prefill_plain_ms"], 1), f(ss["tap_extra_ms"], 2), f(ss["token_plain_ms"], 2),
                         f(ss["token_cvec_ms"], 2), f(ss["decode_ratio_cvec"], 3), f(ss["cvec_change_ms"], 2),
                         f(ss["cvec_clear_first_ms"] - ss["token_plain_ms"], 2)]]))
        out.append("")
    h = pr.get("head_576")
    if h:
        out.append(f"**Head at d = 576 on its own** (MLP hidden = d; outputs checked, max rel. err "
                   f"{h['max_rel_err']:.1e}): ONNX folded {f(h['onnx_folded']['median_ms'], 3)} ms "
                   f"[{f(h['onnx_folded']['min_ms'], 3)}-{f(h['onnx_folded']['max_ms'], 3)}], `HeadRunner.run` "
                   f"{f(h['runtime']['median_ms'], 3)} ms [{f(h['runtime']['min_ms'], 3)}-"
                   f"{f(h['runtime']['max_ms'], 3)}], {h['runtime']['n']} calls each.\n")
    mv = pr.get("matvec_4096")
    if mv:
        out.append(f"**A bare 4096 x 4096 float32 numpy mat-vec** ({mv['bytes'] / 2**20:.0f} MiB of weights): "
                   f"{f(mv['median_ms'], 2)} ms [{f(mv['min_ms'], 2)}-{f(mv['max_ms'], 2)}] = "
                   f"{f(mv['gb_per_s'], 1)} GB/s at the median, {f(mv['bytes'] / mv['min_ms'] / 1e6, 1)} GB/s at "
                   "the fastest call.\n")
    go = pr.get("gate_only_4096")
    if go:
        out.append(f"**onnxruntime asked for `gate_score` alone** (d = 4096 head): {f(go['gate_score_only_ms'], 2)} ms "
                   f"vs {f(go['all_outputs_ms'], 2)} ms for all three outputs (ratio {f(go['ratio'], 2)}).\n")
    return "\n".join(out)


def eight_b(sc: dict[str, Any] | None, dec: dict[str, Any] | None, head: dict[str, Any] | None,
            mem: dict[str, Any] | None) -> str:
    """What the measurements imply for an 8B model on this machine (arithmetic, labelled)."""
    m = EIGHT_B
    lines = [f"**What this implies for an 8B model** ({m['name']}: d = {m['d']}, {m['n_layer']} layers, "
             f"{m['params'] / 1e9:.2f} B parameters, {m['file_bytes'] / 1e9:.2f} GB). "
             "*[measured]* = read off the tables above at the 8B's d; *[arithmetic]* = extrapolated, inputs shown.\n"]
    head4096 = next((lat for lat in (head or {}).get("latency", []) if lat["d"] == 4096), None)
    size4096 = next((s for s in (head or {}).get("size", []) if s["d"] == 4096), None)
    if head4096:
        lines.append(f"- Head per steered or unsteered turn: {f(head4096['runtime']['median_ms'], 2)} ms "
                     f"*[measured, d = 4096]*; {f(head4096['onnx_unfolded_noopt']['median_ms'], 1)} ms for the "
                     "unfolded official form.")
    if size4096:
        lines.append(f"- Pack: {f(size4096['pack_folded'] / 1e6, 1)} MB folded vs "
                     f"{f(size4096['pack_unfolded'] / 1e6, 1)} MB unfolded *[measured]*, i.e. "
                     f"{100 * size4096['pack_folded'] / m['file_bytes']:.1f}% of the model file *[arithmetic]*.")
    hr = (mem or {}).get("head_rss", {}).get("4096/runner")
    if hr:
        lines.append(f"- Memory: the d = 4096 head keeps {f(hr['resident'] / 2**20, 0)} MiB resident *[measured]* "
                     f"(+ onnxruntime's ~30-40 MiB of code), {100 * hr['resident'] / m['file_bytes']:.1f}% of the "
                     "weights *[arithmetic]*.")
    big = None
    if sc and sc.get("shape"):
        big = max(sc["shape"], key=lambda r: (r["n_layer"], r["d"]))
        lines.append(f"- Control-vector change: {f(big['cvec_change_ms'], 1)} ms at d = {big['d']}, {big['n_layer']} "
                     "layers *[measured]*; it grows with the graph (layers), not with the vector, so expect a few ms "
                     "per steered turn at 32 layers *[arithmetic]*. Per generated token an active vector adds one "
                     f"d-wide add at one layer (decode ratio {f(big['decode_ratio_cvec'], 3)} *[measured]*).")
    long2 = None
    if dec:
        cands = [g for g in dec["groups"] if g["prompt"] == "long"]
        long2 = max(cands, key=lambda g: g["threads"]) if cands else None
    bw = None
    if head4096:
        bw = head4096["onnx_bytes"]["folded"] / (head4096["numpy_folded"]["median_ms"] * 1e-3)
    if long2:
        s = long2["summary"]
        p_tok = long2["prompt_tokens"]
        prefill_tps = p_tok / (s["ttft_ms_plain"] * 1e-3)
        flops = 2 * SMOLLM2_PARAMS * prefill_tps
        p8 = prefill_tps * SMOLLM2_PARAMS / m["params"]
        t8 = p_tok / p8
        lines.append(f"- Prefill: SmolLM2 prefills {prefill_tps:.0f} tok/s at {long2['threads']} threads *[measured]* "
                     f"= {flops / 1e9:.0f} GFLOP/s; at the same rate an 8B prefills ~{p8:.1f} tok/s, so a "
                     f"{p_tok}-token turn takes ~{t8:.0f} s before the first token *[arithmetic: compute-bound, "
                     "2 x params FLOPs per token; Q4_K kernels differ from Q4_1]*.")
        if head4096:
            closed = head4096["runtime"]["median_ms"] * 1e-3 / t8
            lines.append(f"- Gate closed on that turn: + head {f(head4096['runtime']['median_ms'], 1)} ms = "
                         f"{100 * closed:.3f}% of the TTFT *[arithmetic]*: the 1.03x target holds with room to spare; "
                         "what is relatively large on a 135M model is negligible on an 8B.")
        lines.append(f"- Gate open, exact: + one re-prefill of the conversation = ~{t8:.0f} s more before the first "
                     "token *[arithmetic]* (in a chat, of the whole conversation so far, and one more unsteered "
                     "prefill for the gate on an architecture that taps the generation context when the turn before "
                     "was steered too). This is the one cost that grows with model size and prompt length; for long "
                     "prompts on CPU, `fast` mode (steer from the first generated token) avoids it.")
    if bw:
        lines.append(f"- Decode: a 2-core CPU streams weights at ~{bw / 1e9:.0f} GB/s per thread *[measured: head "
                     f"matvec]*, so an 8B Q4_K_M decodes at most ~{bw / m['file_bytes']:.1f} tok/s per thread's worth "
                     "of bandwidth *[arithmetic]*; the steering per-token cost (one vector add) stays in the noise, "
                     "and the torch fp32 reference would stream 4 bytes per parameter "
                     f"({m['params'] * 4 / 1e9:.0f} GB per token) instead of ~0.6, a "
                     f"~{m['params'] * 4 / m['file_bytes']:.1f}x bandwidth disadvantage *[arithmetic]*.")
    return "\n".join(lines) + "\n"


def section_targets(dec: dict[str, Any] | None, head: dict[str, Any] | None, tr: dict[str, Any] | None) -> str:
    """The issue's targets against the measured numbers (worst case over thread counts and prompts)."""
    rows: list[list[str]] = []

    def add(target: str, values: list[tuple[str, float]], ok: Any, worst: str = "min") -> None:
        if not values:
            rows.append([target, "-", "not measured"])
            return
        pick = (min if worst == "min" else max)(values, key=lambda kv: kv[1])
        detail = ", ".join(f"{k}: {v:.3f}" for k, v in values)
        met = "**met**" if ok(pick[1]) else "**missed**"
        rows.append([target, f"worst {pick[1]:.3f} ({pick[0]}); {detail}", met])

    groups = dec["groups"] if dec else []

    def vals(key: str) -> list[tuple[str, float]]:
        return [(f"{g['threads']}t {g['prompt']}", g["summary"][key]) for g in groups
                if g["summary"].get(key) is not None]

    add("decode ratio >= 0.98, gate closed", vals("decode_ratio_gate_closed"), lambda v: v >= 0.98)
    add("decode ratio >= 0.98, gate open (fast)", vals("decode_ratio_gate_open_fast"), lambda v: v >= 0.98)
    add("decode ratio >= 0.98, gate open (exact)", vals("decode_ratio_gate_open_exact"), lambda v: v >= 0.98)
    add("gate-closed TTFT <= 1.03x plain", vals("ttft_ratio_gate_closed"), lambda v: v <= 1.03, "max")
    add("exact mode: extra TTFT <= one prefill of the turn (extra / plain TTFT <= ~1)",
        vals("exact_extra_over_prefill"), lambda v: v <= 1.05, "max")
    add("our loop not slower than stock `llama_cpp.Llama` (plain / stock decode >= ~1)",
        vals("decode_ratio_plain_vs_stock"), lambda v: v >= 0.98)

    def vals1(key: str) -> list[tuple[str, float]]:
        return [(k, v) for k, v in vals(key) if k.startswith("1t ")]

    add("decode ratio >= 0.98, gate closed, in CPU time (1 thread; robust to load)",
        vals1("cpu_decode_ratio_gate_closed"), lambda v: v >= 0.98)
    add("decode ratio >= 0.98, gate open fast / exact, in CPU time (1 thread)",
        vals1("cpu_decode_ratio_gate_open_fast") + vals1("cpu_decode_ratio_gate_open_exact"), lambda v: v >= 0.98)
    add("gate-closed TTFT <= 1.03x plain, in CPU time (1 thread)", vals1("cpu_ttft_ratio_gate_closed"),
        lambda v: v <= 1.03, "max")
    lat = {x["d"]: x for x in (head or {}).get("latency", [])}
    for d, bound in ((576, 0.1), (4096, 1.0)):
        if d in lat:
            add(f"head <= {bound} ms at d={d} (runtime path, MLP hidden = d)",
                [(f"d={d}", lat[d]["runtime"]["median_ms"])], lambda v, b=bound: v <= b, "max")
    narrow = (head or {}).get("narrow") or {}
    narrow_lat = {x["d"]: x for x in narrow.get("latency", [])}
    if 4096 in narrow_lat:
        add(f"head <= 1.0 ms at d=4096, MLP hidden {narrow['hidden']} (train's default; runtime path)",
            [("d=4096", narrow_lat[4096]["runtime"]["median_ms"])], lambda v: v <= 1.0, "max")
    size = {x["d"]: x for x in (head or {}).get("size", [])}
    if 4096 in size:
        add("pack <= 70 MB at d=4096 (folded)", [("d=4096", size[4096]["pack_folded"] / 1e6)], lambda v: v <= 70, "max")
    tg = (tr or {}).get("groups", [])
    add(">= 5x the torch reference's decode tok/s (steered vs steered)",
        [(f"{g['threads']}t {g['prompt']}", g["summary"]["speedup_decode_steered"]) for g in tg], lambda v: v >= 5)
    add(">= 5x the torch reference's decode tok/s (plain vs plain)",
        [(f"{g['threads']}t {g['prompt']}", g["summary"]["speedup_decode_plain"]) for g in tg], lambda v: v >= 5)
    add(">= 5x the torch reference's decode tok/s, in CPU time (steered, 1 thread)",
        [(f"1t {g['prompt']}", g["summary"]["cpu_speedup_decode_steered"]) for g in tg
         if g["threads"] == 1 and g["summary"].get("cpu_speedup_decode_steered") is not None], lambda v: v >= 5)
    return "## Targets (issue 5)\n\n" + _md(["target", "measured", "status"], rows) + "\n"


def section_architectures(ar: dict[str, Any] | None) -> str:
    out = ["## 9. Per architecture: the tap costs nothing per generated token\n"]
    if ar is None:
        return "\n".join(out) + missing("architectures.py")
    e = ar["env"]
    cfg = e.get("config", {})
    out.append(f"Measured {env_line(e)}, {e.get('threads')} thread(s). Tiny random GGUFs of every supported "
               f"architecture (F32, d={cfg.get('n_embd')}, {cfg.get('n_layer')} layers, FFN {cfg.get('n_ff')}; "
               "qwen3moe: 4 experts, 2 used) and the real SmolLM2-135M Q4_1; a short chat turn, "
               f"{e['rounds']} interleaved rounds (+1 warm-up), {e['max_tokens']} new tokens max, greedy, fresh KV "
               "cache per turn; medians. Ratios are against *plain* (our loop without a pack, i.e. plain llama.cpp "
               "on the same file) from the same rounds; *CPU* is the decode ratio in process CPU time, which other "
               "jobs on the machine barely disturb. *cb_eval* is the previous fallback (the Python callback in the "
               "generation context) for comparison. Random packs: gate layer n_layer/2, steer layer n_layer/3.\n")
    rows = []
    for m in ar["models"]:
        s = m["summary"]
        rows.append([
            f"`{m['model']}`" + (" (SmolLM2)" if m["model"] == "smollm2" else ""), f"`{m['tap_method']}`",
            f(s.get("decode_tps_plain"), 1),
            f(s.get("decode_ratio_gate_closed"), 3), f(s.get("cpu_decode_ratio_gate_closed"), 3),
            f(s.get("decode_ratio_gate_open_fast"), 3), f(s.get("decode_ratio_gate_open_exact"), 3),
            f(s.get("cpu_decode_ratio_gate_open_exact"), 3),
            f(s.get("decode_ratio_gate_closed_cb_eval"), 3), f(s.get("cpu_decode_ratio_gate_closed_cb_eval"), 3),
            f(s.get("ttft_ms_plain"), 1), f(s.get("ttft_ratio_gate_closed"), 2),
            f(s.get("ttft_ratio_gate_open_exact"), 2),
            _calls(m.get("callback_calls_per_token")), _calls(m.get("callback_calls_per_token_cb_eval")),
            f"{m['loadavg_start'][0]:.1f}",
        ])
    out.append(_md(["model", "tap", "plain tok/s", "closed", "closed CPU", "open fast", "open exact",
                    "open exact CPU", "cb_eval", "cb_eval CPU", "plain TTFT ms", "closed TTFT", "exact TTFT",
                    "calls/token", "calls/token cb_eval", "load"], rows))
    out.append("\n*calls/token*: how often llama.cpp invoked the Python tap callback per generated token in a "
               "gate-closed turn (counted, not timed: `-` = no callback exists, the `layer_inp` path; 0 = the "
               "callback lives in the tap context only). Decode columns are tok/s ratios (higher is better, "
               "target >= 0.98); TTFT columns are time "
               "ratios (lower is better). On `tap_context` architectures a gate-closed turn prefills twice: "
               "the tap context up to the gate layer, then the generation context (see docs/DESIGN-NOTES.md "
               "item 9), so its TTFT ratio is ~1 + (gate layer + 1) / n_layer plus the per-node callback cost. "
               "Read the timing ratios with the *load* column: with a load average far above the 2 cores, ratios "
               "scatter by several percent either way (the `layer_inp` rows, whose cost is known to be ~1%, show "
               "the spread), so they cannot confirm or refute a 2% target; the counted callback calls can: a "
               "`tap_context` generation context is a plain llama.cpp context, with no callback to call.\n")
    return "\n".join(out)


def _calls(v: Any) -> str:
    return "-" if v is None else f"{v:.0f}"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def section_multipack(mp: dict[str, Any] | None) -> str:
    """Two packs at once (bench/multipack.py): gate identity, cap vs sum, quality, TTFT on gate-closed turns."""
    out = ["## 10. Several packs at once (safety + truthfulqa on SmolLM2)\n"]
    if mp is None:
        return "\n".join(out) + missing("multipack.py")
    e = mp["env"]
    out.append(f"Measured {env_line(e)}; {e['threads']} thread(s), greedy, {e['max_tokens']} new tokens, strength 1, "
               f"packs {', '.join(e['packs'])}.\n")
    for r in mp.get("reruns") or []:  # parts measured again later (e.g. after a bundled pack changed)
        out.append(f"Re-measured on {r['time_utc']}: {', '.join(r.get('parts') or [])} (load average "
                   f"{r.get('loadavg_start')} at the start); the other parts are from the run above.\n")
    g = mp.get("gates")
    if g:
        opened = ", ".join(f"{k} {v}" for k, v in g["open_counts"].items())
        out.append(f"**Gates**: on {g['n']} prompts (safety val + test slice, TruthfulQA val + MC test), every pack's "
                   f"gate score and decision with both packs loaded equals the pack alone on **{g['identical']} of "
                   f"{g['n']}**. Gates opened: {opened}; both at once: {g['both_open']}.\n")
    c = mp.get("combine")
    if c:
        nr = c["norm_ratio"]
        out.append(f"**Cap vs sum** (validation, both gates forced open, so both vectors land on layer 12): "
                   f"||v_safety + v_truthfulqa|| / max(||v_safety||, ||v_truthfulqa||) median {f(nr['median'])} "
                   f"[{f(nr['range'][0])}-{f(nr['range'][1])}] over {nr['n']} prompts; above 1 on "
                   f"{nr.get('above_one', '?')} of them, "
                   "and `refuse` would fail each of those turns.\n")
        rows = []
        for label in ("alone", "sum", "cap"):
            sf = c["safety"]
            rows.append([label, _pct(sf.get(f"harmful:{label}", {}).get("refusal")),
                         _pct(sf.get(f"harmful:{label}", {}).get("degenerate")),
                         _pct(sf.get(f"benign:{label}", {}).get("refusal")),
                         _pct(sf.get(f"benign:{label}", {}).get("degenerate")), _pct(c["mc1"][label]["mc1"])])
        n_h = c["safety"].get("harmful:cap", {}).get("n")
        n_b = c["safety"].get("benign:cap", {}).get("n")
        out.append(_md(["vector", f"harmful refusal (n={n_h})", "harmful degenerate", f"benign refusal (n={n_b})",
                        "benign degenerate", f"TruthfulQA val MC1 (n={c['mc1']['cap']['n']})"], rows))
        out.append("\n`alone` = the pack whose task it is (safety for the safety prompts, truthfulqa for MC1), also "
                   "forced open.\n")
    q = mp.get("quality")
    if q:
        rows = [[grp, v["n"], _pct(v["refusal_alone"]), _pct(v["refusal_both"]), _pct(v["degenerate_alone"]),
                 _pct(v["degenerate_both"])] for grp, v in q["safety"].items()]
        out.append(f"**Quality** (test files: the first {e['limit']} prompts of each safety group, all MC items; "
                   f"`cap`; a turn where the other pack's gate stays closed is the "
                   f"single-pack turn, so only {q['safety_regenerated']} safety turns and {q['mc']['regenerated']} MC "
                   f"items were run twice; reuse checks regenerated anyway: safety {q['reuse_checks']['safety']}, "
                   f"MC {q['reuse_checks']['mc']}):\n")
        out.append(_md(["safety group", "n", "refusal, safety alone", "refusal, both packs", "degenerate, alone",
                        "degenerate, both"], rows))
        m = q["mc"]
        out.append(f"\nTruthfulQA MC1 on {m['n']} test items: base {_pct(m['mc1_base'])}, truthfulqa alone "
                   f"{_pct(m['mc1_alone'])}, both packs {_pct(m['mc1_both'])}.\n")
    t = mp.get("ttft")
    if t:
        md = t["median"]
        out.append(f"**Time to first token on gate-closed turns** ({t['n_prompts']} benign val prompts where neither "
                   f"gate opens, {t['rounds']} interleaved rounds, {t['threads']} thread(s); median over prompts of "
                   f"the per-prompt medians): no pack {f(md['no_pack'] * 1e3, 1)} ms, one pack "
                   f"{f(md['one_pack'] * 1e3, 1)} ms, two packs {f(md['two_packs'] * 1e3, 1)} ms: two / one = "
                   f"**{f(t['two_vs_one'], 3)}** (target <= 1.05), one / none = {f(t['one_vs_none'], 3)}. Per prompt "
                   f"two / one: {', '.join(f(x, 3) for x in t['per_prompt_two_vs_one'])}.\n")
    return "\n".join(out) + "\n"


def _md(headers: list[str], rows: list[list[Any]]) -> str:
    from finesteer_edge.measure.common import md_table

    return md_table(headers, rows)


HEADER = """# Benchmarks

Re-run everything (tens of minutes on 2 cores: `run_all.py` prints each part's time and the total; run it
when the machine is otherwise idle):

```sh
OPENBLAS_NUM_THREADS=1 python bench/run_all.py
```

`python bench/run_all.py --quick` checks that every script runs (a few minutes; its numbers are noise).
Single parts: `python bench/decode.py`, `bench/head.py`, `bench/memory.py`, `bench/torch_ref.py`,
`bench/scaling.py`, `bench/probes.py` (1-2 minutes), `bench/serve.py`, `bench/architectures.py` (~15
minutes); each writes `bench/results/<name>.json` and re-renders this file (`python bench/report.py`
re-renders without measuring). The quick per-user version is `finesteer-edge bench [MODEL] [--pack P] [--json]`.

This file is generated by `bench/report.py` from `bench/results/*.json`; edit the scripts, not this file.
How we measure: A/B variants run interleaved round by round (rotated order) in one process, every turn
on a fresh KV cache; we quote medians with [min-max] and ratios from the same run; every section records
its thread count, model, versions and the machine's load average (1, 5, 15 min) at start and end. A load
average above the number of cores means other jobs shared the CPU and the absolute numbers are inflated;
llama.cpp with 2 threads on a 2-core machine suffers most, because its threads wait for each other at
every graph barrier.
"""


def render(results: Path, doc: Path) -> str:
    dec, head, mem = load(results, "decode"), load(results, "head"), load(results, "memory")
    tr, sc, pr = load(results, "torch_ref"), load(results, "scaling"), load(results, "probes")
    ar = load(results, "architectures")
    mp = load(results, "multipack")
    sched = load(results, "schedule_speed")
    notes = load_notes()
    parts = [
        HEADER,
        section_targets(dec, head, tr),
        notes,
        section_decode(dec),
        section_head(head),
        section_size(head),
        section_memory(mem),
        section_torch(tr),
        section_scaling(sc, dec, head, mem),
        section_probes(pr),
        section_serve(load(results, "serve")),
        section_architectures(ar),
        section_multipack(mp),
        section_schedule(sched),
    ]
    text = "\n".join(p.rstrip() + "\n" for p in parts if p)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return text


def load_notes() -> str:
    """The hand-written analysis (bench/notes.md): why a target is missed and what limits it."""
    p = Path(__file__).resolve().parent / "notes.md"
    return p.read_text() if p.exists() else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="Where the <name>.json files are.")
    p.add_argument("--doc", default=str(DOC), help="Markdown report to write.")
    args = p.parse_args()
    render(args.results_dir, Path(args.doc or DOC))
    print(f"rendered {args.doc or DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
