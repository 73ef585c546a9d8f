"""Small probes behind statements in docs/BENCHMARKS.md's analysis, cheap enough to re-run (1-2 minutes in all).

- ``kv_clear``: what ``LlamaSession.reset()`` saves by clearing the KV cache without zeroing it
  (``llama_memory_clear(mem, data=False)``) instead of zeroing it (``data=True``), SmolLM2 at n_ctx 4096 and
  8192, wall and CPU time (the zeroing is a memset of the whole cache, so its cost grows with n_ctx);
- ``session``: SmolLM2 at the session level, 1 thread: prefill with and without the layer taps, per-token
  decode with and without a control vector, and the first decode after setting / clearing one (the same
  measurement as ``bench/scaling.py``'s model-shape table, on the real model);
- ``head_576``: the SmolLM2-sized head (d = 576, MLP hidden = d) once more, on its own (section 2 times it
  interleaved with six other variants);
- ``matvec_4096``: one bare 4096 x 4096 float32 numpy mat-vec, the memory-bandwidth floor of the d = 4096 head;
- ``gate_only_4096``: onnxruntime asked for ``gate_score`` alone vs all three outputs of the d = 4096 head
  (does it prune the graph to the requested output?).

    python bench/probes.py
    python bench/probes.py --quick
"""

from __future__ import annotations

import sys
import time
from typing import Any

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
import numpy as np
from _util import base_parser, save, smollm2

from finesteer_edge.measure.common import environment, interleaved, loadavg, median, spread, text_table


def kv_clear(model: Any, n_ctx: int, rounds: int) -> dict[str, Any]:
    """Median wall and CPU ms of one KV clear with and without zeroing, interleaved call by call."""
    import llama_cpp

    from finesteer_edge.llama.session import ContextSettings, LlamaSession

    s = LlamaSession(model, ContextSettings(n_ctx=n_ctx, n_threads=1))
    try:
        s.decode(s.tokenize("Hello there, the world."))

        def clear(zero: bool) -> tuple[float, float]:
            t, c = time.perf_counter(), time.process_time()
            llama_cpp.llama_memory_clear(s._mem, zero)
            return (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3

        samples = interleaved({"zeroing": lambda: clear(True), "no_zeroing": lambda: clear(False)}, rounds, warmup=2)
    finally:
        s.close()
    out: dict[str, Any] = {"n_ctx": n_ctx, "rounds": rounds}
    for name, xs in samples.items():
        out[f"{name}_wall_ms"] = median([w for w, _ in xs])
        out[f"{name}_cpu_ms"] = median([c for _, c in xs])
    return out


def head_576(rounds: int, budget_s: float) -> dict[str, Any]:
    from finesteer_edge.measure.head import head_latency

    r = head_latency(576, rounds=rounds, budget_s=budget_s, variants=("onnx_folded", "runtime"))
    return {"d": 576, **{v: r[v] for v in ("onnx_folded", "runtime")}, "max_rel_err": r["max_rel_err"]}


def matvec_4096(iters: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 4096)).astype(np.float32)
    x = rng.standard_normal(4096).astype(np.float32)
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        x @ w
        ts.append(time.perf_counter() - t)
    lo, hi = spread(ts)
    ms = median(ts) * 1e3
    return {"median_ms": ms, "min_ms": lo * 1e3, "max_ms": hi * 1e3, "bytes": w.nbytes, "gb_per_s": w.nbytes / ms / 1e6}


def gate_only_4096(iters: int) -> dict[str, Any]:
    from finesteer_edge.converters.onnx_head import build_head_onnx
    from finesteer_edge.measure.head import ort_session, random_unfolded_head

    s = ort_session(build_head_onnx(random_unfolded_head(4096).fold()))
    rng = np.random.default_rng(1)
    feeds = {"h_gate": rng.standard_normal((1, 4096)).astype(np.float32),
             "h_steer": rng.standard_normal((1, 4096)).astype(np.float32)}

    def run(outputs: list[str]) -> float:
        t = time.perf_counter()
        s.run(outputs, feeds)
        return (time.perf_counter() - t) * 1e3

    samples = interleaved({"gate_score_only": lambda: run(["gate_score"]),
                           "all_outputs": lambda: run(["gate_score", "vector", "expert_weights"])}, iters, warmup=3)
    out = {f"{k}_ms": median(v) for k, v in samples.items()}
    out["ratio"] = out["gate_score_only_ms"] / out["all_outputs_ms"]
    return out


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8, help="Interleaved rounds of the SmolLM2 session probe.")
    args = p.parse_args()
    kv_rounds, head_rounds, iters = 40, 300, 100
    if args.quick:
        args.rounds, kv_rounds, head_rounds, iters = 1, 5, 20, 10
    from scaling import measure_shape

    from finesteer_edge.model_info import read_model_info

    model = smollm2()
    info = read_model_info(model)
    out: dict[str, Any] = {"env": environment(model=str(model), threads=1, rounds=args.rounds)}
    t0 = time.time()
    out["kv_clear"] = [kv_clear(model, n, kv_rounds) for n in (4096, 8192)]
    out["session"] = measure_shape(model, info.n_embd, info.n_layer, threads=1, rounds=args.rounds, prompt_len=64,
                                   decode_tokens=32)
    out["head_576"] = head_576(head_rounds, 10.0)
    out["matvec_4096"] = matvec_4096(iters)
    out["gate_only_4096"] = gate_only_4096(iters)
    out["seconds"] = time.time() - t0
    out["env"]["loadavg_end"] = loadavg()
    rows = [[k["n_ctx"], f"{k['zeroing_cpu_ms']:.3f}", f"{k['no_zeroing_cpu_ms']:.3f}"] for k in out["kv_clear"]]
    print(text_table(["n_ctx", "zeroing CPU ms", "no zeroing CPU ms"], rows))
    print(f"probes took {out['seconds']:.0f} s", file=sys.stderr)
    save("probes", out, args)


if __name__ == "__main__":
    main()
