"""How steering costs grow with prompt length (SmolLM2) and with d and n_layer (synthetic llama models).

Part 1, prompt length: TTFT of plain / gate closed / gate open (fast, exact) on SmolLM2 for prompts of
~64, 256, 512 and 1024 tokens (few new tokens: this is about the prefill). Exact mode should add one
prefill of the turn's tokens; gate closed should add a constant (tap read-out + head).

Part 2, a chat's second turn (KV cache of the first kept): a gate-closed turn prefills only its new tokens; an
exact-mode steered turn prefills the whole conversation again with the vector (DESIGN-NOTES item 20), so it is set
against a fresh prefill of the whole conversation (``plain_fresh``).

Part 3, model shape: on random llama models (Q8_0) with d in {256, 1024} and n_layer in {8, 32}, at the
session level: prefill with and without the hidden-state tap, decode per token with and without an active
control vector, and the one-off cost of changing the control vector (llama.cpp re-reserves its scheduler
on the next decode). These are the per-turn and per-token costs steering adds, apart from the head (see
bench/head.py) and exact mode's re-prefill (part 1).

    python bench/scaling.py
    python bench/scaling.py --parts multi_turn     # one part again; the others are kept from the results file
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
import numpy as np
from _util import base_parser, save, smollm2

from finesteer_edge.measure.common import environment, interleaved, loadavg, median, text_table
from finesteer_edge.measure.prompts import LONG_PROMPT

PARTS = ("prompt_length", "multi_turn", "shape")
LENGTHS = (64, 256, 512, 1024)
SHAPES = ((256, 8), (256, 32), (1024, 8), (1024, 32))


def prompt_of_length(llm: Any, target: int) -> list[dict[str, str]]:
    """A user message whose templated prompt has ~``target`` tokens (text: the long prompt's words, repeated)."""
    words = (LONG_PROMPT.split() * 8)

    def n_tokens(k: int) -> int:
        return len(llm.prompt_tokens([{"role": "user", "content": " ".join(words[:k])}]))

    lo, hi = 1, len(words)
    while lo < hi:  # smallest k with n_tokens(k) >= target
        mid = (lo + hi) // 2
        if n_tokens(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    return [{"role": "user", "content": " ".join(words[:lo])}]


def part_prompt_length(model: Path, threads: int, rounds: int, lengths: tuple[int, ...]) -> list[dict[str, Any]]:
    from finesteer_edge.measure.quick import plan_packs, run_variants, summarize

    groups = []
    with tempfile.TemporaryDirectory(prefix="fse-bench-scale-") as tmp:
        plan = plan_packs(model, None, Path(tmp))
        from finesteer_edge.steered import SteeredLlama

        with SteeredLlama(model, None, n_threads=threads, n_ctx=2048) as tok:
            prompts = {n: prompt_of_length(tok, n) for n in lengths}
        for n, messages in prompts.items():
            load0 = loadavg()
            samples, side = run_variants(model, plan, messages, threads=threads, n_ctx=2048, max_tokens=4,
                                         rounds=rounds, warmup=1,
                                         variants=("plain", "gate_closed", "gate_open_fast", "gate_open_exact"))
            s = summarize(samples)
            s["closed_extra_ms"] = s["ttft_ms_gate_closed"] - s["ttft_ms_plain"]
            groups.append({"target_tokens": n, "prompt_tokens": side["prompt_tokens"], "threads": threads,
                           "summary": s, "loadavg_start": load0, "loadavg_end": loadavg()})
            print(f"{side['prompt_tokens']} tokens: plain {s['ttft_ms_plain']:.1f} ms, closed "
                  f"{s['ttft_ms_gate_closed']:.1f}, fast {s['ttft_ms_gate_open_fast']:.1f}, exact "
                  f"{s['ttft_ms_gate_open_exact']:.1f} (extra {s['exact_extra_over_prefill']:.2f} x prefill)",
                  file=sys.stderr)
    return groups


FOLLOW_UP = "Now summarise that chapter in two sentences."
FIXED_REPLY = ("Thirty years from now, Karsund has become a small centre for marine research. The old warehouses "
               "hold laboratories, the quotas are still in force, and the light on the skerry still turns every night.")


def part_multi_turn(model: Path, threads: int, rounds: int) -> dict[str, Any]:
    """Second turn of a chat (KV cache kept): what a gate-closed and a steered turn cost on a cached history.

    Turn 1 is the long prompt; turn 2 appends a fixed assistant reply and a short follow-up, so every
    variant has the same cached history. Plain, gate-closed and fast turns prefill only the new tokens;
    exact mode prefills the whole conversation with the vector, which ``plain_fresh`` (the same conversation
    in one fresh plain turn) prices. ``gate_open_exact`` was steered on turn 1 too, so on an architecture whose
    gate taps the generation context (llama: ``layer_inp``) turn 2 first prefills the conversation unsteered for
    its gate, since no turn reads KV cache a vector computed; ``gate_open_exact_after_closed`` follows a
    gate-closed turn 1, the common case of a harmful request in a benign chat.
    """
    from finesteer_edge.measure.quick import close_variant, open_variant, plan_packs

    names = ("plain", "gate_closed", "gate_open_fast", "gate_open_exact")
    u1 = {"role": "user", "content": LONG_PROMPT}
    convo = [u1, {"role": "assistant", "content": FIXED_REPLY}, {"role": "user", "content": FOLLOW_UP}]
    with tempfile.TemporaryDirectory(prefix="fse-bench-chat-") as tmp:
        plan = plan_packs(model, None, Path(tmp))
        objs = {n: open_variant(n, model, plan, threads=threads, n_ctx=2048) for n in names}
        try:
            def second_turn(llm: Any) -> Any:
                llm.reset()
                llm.chat([u1], stream=False, max_tokens=4)
                return llm.chat(convo, stream=False, max_tokens=4)

            def after_closed_turn(llm: Any) -> Any:
                llm.reset()
                llm.set_steering(gate="never")
                llm.chat([u1], stream=False, max_tokens=4)
                llm.set_steering(gate=plan.gate_open)
                return llm.chat(convo, stream=False, max_tokens=4)

            runners = {n: (lambda o=o: second_turn(o)) for n, o in objs.items()}
            runners["gate_open_exact_after_closed"] = lambda: after_closed_turn(objs["gate_open_exact"])
            runners["plain_fresh"] = lambda: objs["plain"].generate(convo, max_tokens=4)
            samples = interleaved(runners, rounds, warmup=1)
        finally:
            for o in objs.values():
                close_variant(o)
    r0 = samples["plain"][0]
    out: dict[str, Any] = {"threads": threads, "history_tokens": r0.cached_tokens,
                           "new_tokens": r0.prompt_tokens - r0.cached_tokens, "prompt_tokens": r0.prompt_tokens}
    for n, rs in samples.items():
        # the cached prefix can differ by a token or two: turn 1's generated tokens may match the fixed reply
        out[f"new_tokens_{n}"] = median([r.prompt_tokens - r.cached_tokens for r in rs])
        out[f"ttft_ms_{n}"] = median([r.ttft_seconds * 1e3 for r in rs])
    out["exact_extra_ms"] = out["ttft_ms_gate_open_exact"] - out["ttft_ms_gate_closed"]
    out["exact_extra_over_prefill"] = out["exact_extra_ms"] / out["ttft_ms_plain"]
    out["exact_over_fresh"] = out["ttft_ms_gate_open_exact"] / out["ttft_ms_plain_fresh"]
    out["exact_after_closed_over_fresh"] = out["ttft_ms_gate_open_exact_after_closed"] / out["ttft_ms_plain_fresh"]
    print(f"second turn: {out['new_tokens']} new tokens on {out['history_tokens']} cached; plain "
          f"{out['ttft_ms_plain']:.1f} ms, closed {out['ttft_ms_gate_closed']:.1f}, exact "
          f"{out['ttft_ms_gate_open_exact']:.1f} ({out['exact_over_fresh']:.2f} x a fresh prefill of the "
          f"conversation, {out['ttft_ms_plain_fresh']:.1f} ms)", file=sys.stderr)
    return out


def synthetic_model(tmp: Path, d: int, n_layer: int) -> Path:
    """A random llama GGUF of the given shape, quantised to Q8_0 (the F32 original is deleted)."""
    import llama_cpp

    from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_llama

    f32 = write_tiny_llama(tmp / f"d{d}-l{n_layer}-f32.gguf",
                           TinyConfig(n_layer=n_layer, n_embd=d, n_head=d // 64, n_head_kv=d // 128, n_ff=2 * d))
    out = tmp / f"d{d}-l{n_layer}-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), params)
    f32.unlink()
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
    return out


def measure_shape(path: Path, d: int, n_layer: int, *, threads: int, rounds: int, prompt_len: int = 256,
                  decode_tokens: int = 32, seed: int = 0) -> dict[str, Any]:
    """Session-level costs on one model: tap in prefill, control vector per token and per change."""
    from finesteer_edge.llama.session import ContextSettings, LlamaSession

    rng = np.random.default_rng(seed)
    settings = ContextSettings(n_ctx=1024, n_threads=threads)
    layers = (n_layer // 2, max(1, n_layer // 3))
    plain = LlamaSession(path, settings)
    tapped = LlamaSession(path, settings, tap_layers=layers)
    prompt = [int(t) for t in rng.integers(3, plain.n_vocab, prompt_len)]
    vec = (rng.standard_normal(d) * 0.5).astype(np.float32)
    buf, lo, hi = tapped.control_buffer({layers[1]: vec})

    def prefill(s: LlamaSession, capture: bool) -> float:
        s.reset()
        t = time.perf_counter()
        s.decode(prompt, capture=capture)
        return time.perf_counter() - t

    def step(s: LlamaSession, tok: int) -> float:
        t = time.perf_counter()
        s.decode([tok])
        return time.perf_counter() - t

    def decode_run(s: LlamaSession, with_cvec: bool) -> dict[str, float]:
        s.clear_control()
        s.reset()
        s.decode(prompt)
        step(s, 5)  # settle after the prefill's graph
        first = clear = 0.0
        if with_cvec:
            s.set_control(buf, lo, hi)
            first = step(s, 6)  # first decode after a change: llama.cpp re-reserves its scheduler
        steady = [step(s, 7 + i % 200) for i in range(decode_tokens)]
        if with_cvec:
            s.clear_control()
            clear = step(s, 8)
        return {"first_ms": first * 1e3, "steady_ms": median(steady) * 1e3, "clear_ms": clear * 1e3}

    try:
        samples = interleaved({
            "prefill_plain": lambda: prefill(plain, False),
            "prefill_tap": lambda: prefill(tapped, True),
            "decode_plain": lambda: decode_run(plain, False),
            "decode_cvec": lambda: decode_run(tapped, True),
        }, rounds, warmup=1)
    finally:
        plain.close()
        tapped.close()
    r: dict[str, Any] = {
        "d": d, "n_layer": n_layer, "prompt_tokens": prompt_len, "threads": threads,
        "model_bytes": path.stat().st_size,
        "prefill_plain_ms": median(samples["prefill_plain"]) * 1e3,
        "prefill_tap_ms": median(samples["prefill_tap"]) * 1e3,
        "token_plain_ms": median([x["steady_ms"] for x in samples["decode_plain"]]),
        "token_cvec_ms": median([x["steady_ms"] for x in samples["decode_cvec"]]),
        "cvec_set_first_ms": median([x["first_ms"] for x in samples["decode_cvec"]]),
        "cvec_clear_first_ms": median([x["clear_ms"] for x in samples["decode_cvec"]]),
        "loadavg": loadavg(),
    }
    r["tap_extra_ms"] = r["prefill_tap_ms"] - r["prefill_plain_ms"]
    r["cvec_change_ms"] = r["cvec_set_first_ms"] - r["token_cvec_ms"]
    r["decode_ratio_cvec"] = r["token_plain_ms"] / r["token_cvec_ms"]
    return r


def part_shape(threads: int, rounds: int, shapes: tuple[tuple[int, int], ...]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fse-bench-shape-") as tmp:
        for d, n_layer in shapes:
            path = synthetic_model(Path(tmp), d, n_layer)
            r = measure_shape(path, d, n_layer, threads=threads, rounds=rounds)
            path.unlink()
            rows.append(r)
            print(f"d={d} n_layer={n_layer}: prefill {r['prefill_plain_ms']:.1f} ms (+tap {r['tap_extra_ms']:.2f}), "
                  f"token {r['token_plain_ms']:.2f} ms (cvec on {r['token_cvec_ms']:.2f}), "
                  f"cvec change {r['cvec_change_ms']:.2f} ms", file=sys.stderr)
    return rows


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"Parts to run ({', '.join(PARTS)}); the others are kept from the last results file.")
    args = p.parse_args()
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not parts or set(parts) - set(PARTS):
        p.error(f"--parts takes a comma-separated subset of {', '.join(PARTS)}")
    shapes = SHAPES
    if args.quick:
        args.rounds, args.lengths, shapes = 1, [64, 256], ((256, 8), (256, 32))
    model = smollm2()
    env = environment(model=str(model), threads=args.threads, rounds=args.rounds)
    last = args.results_dir / "scaling.json"
    out: dict[str, Any]
    if set(parts) != set(PARTS):
        if not last.exists():
            p.error(f"--parts {args.parts}: {last} holds no earlier run to keep the other parts from")
        out = json.loads(last.read_text())
        out.setdefault("reruns", {}).update({part: env for part in parts})
    else:
        out = {"env": env}
    if "prompt_length" in parts:
        out["prompt_length"] = part_prompt_length(model, args.threads, args.rounds, tuple(args.lengths))
    if "multi_turn" in parts:
        out["multi_turn"] = part_multi_turn(model, args.threads, args.rounds)
    if "shape" in parts:
        out["shape"] = part_shape(args.threads, args.rounds, shapes)
    rows = [[g["prompt_tokens"], f"{g['summary']['ttft_ms_plain']:.1f}", f"{g['summary']['closed_extra_ms']:+.2f}",
             f"{g['summary']['exact_extra_ms']:.1f}", f"{g['summary']['exact_extra_over_prefill']:.2f}"]
            for g in out["prompt_length"]]
    print(text_table(["prompt tokens", "plain TTFT ms", "closed extra ms", "exact extra ms", "x prefill"], rows))
    env["loadavg_end"] = loadavg()  # the same record in out["env"] or out["reruns"]
    save("scaling", out, args)


if __name__ == "__main__":
    main()
