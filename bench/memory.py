"""Resident memory (RSS) of a steered session vs a plain one (and stock llama-cpp-python), on SmolLM2.

Each variant runs in its own fresh process (RSS is per process and only grows): import, load, one greedy
64-token turn on the short prompt, and we read VmRSS (now) and VmHWM (peak) from /proc at each stage. The
steered session holds a gate-open random pack (exact mode); its extra memory is onnxruntime, the head's
weights and the tap buffers. Repeated, interleaved; medians. A second part loads a synthetic folded
head at d = 576 and 4096 alone, to measure what the head itself keeps resident (for the 8B arithmetic).

    python bench/memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
from _util import base_parser, save, smollm2

from finesteer_edge.measure.common import environment, interleaved, loadavg, median, text_table

VARIANTS = ("plain", "steered", "stock")
N_CTX = 2048


def worker(variant: str, model: str, pack: str) -> None:
    """Runs in the child process: print one JSON line with RSS at each stage."""
    from finesteer_edge.measure.common import rss_bytes
    from finesteer_edge.measure.prompts import SHORT_PROMPT

    stages = {"start": rss_bytes()}
    import llama_cpp  # noqa: F401

    from finesteer_edge.steered import SteeredLlama

    stages["imported"] = rss_bytes()
    messages = [{"role": "user", "content": SHORT_PROMPT}]
    if variant == "stock":
        from finesteer_edge.measure.turns import open_stock_llama, stock_turn

        with SteeredLlama(model, None, n_threads=2, n_ctx=512) as tok_llm:
            tokens = tok_llm.prompt_tokens(messages)
        llm = open_stock_llama(model, n_threads=2, n_ctx=N_CTX)
        stages["loaded"] = rss_bytes()
        stock_turn(llm, tokens, 64)
    else:
        llm = SteeredLlama(model, pack if variant == "steered" else None, n_threads=2, n_ctx=N_CTX)
        stages["loaded"] = rss_bytes()
        r = llm.generate(messages, max_tokens=64)
        assert r.steered == (variant == "steered")
    stages["after_turn"] = rss_bytes()
    print(json.dumps(stages))


def head_worker(path: str, d: int, how: str) -> None:
    """Child process: RSS before/after a folded head read from ``path`` is loaded (file bytes dropped).

    ``how``: ``runner`` = :class:`HeadRunner` as the runtime loads it (static check + onnxruntime), ``ort`` =
    a bare onnxruntime session with the same options (what onnxruntime itself keeps).
    """
    import gc

    import onnxruntime  # noqa: F401

    from finesteer_edge.measure.common import rss_bytes
    from finesteer_edge.measure.head import ort_session
    from finesteer_edge.pack.head import HeadRunner

    before = rss_bytes()["rss"]
    data = Path(path).read_bytes()
    head = HeadRunner(data, d, 8) if how == "runner" else ort_session(data)
    del data
    gc.collect()
    after = rss_bytes()["rss"]
    assert head is not None
    print(json.dumps({"before": before, "after": after, "head_bytes": Path(path).stat().st_size}))


def head_rss(dims: tuple[int, ...]) -> dict[str, dict[str, int]]:
    from finesteer_edge.converters.onnx_head import build_head_onnx
    from finesteer_edge.measure.head import random_unfolded_head

    out = {}
    with tempfile.TemporaryDirectory(prefix="fse-bench-headmem-") as tmp:
        for d in dims:
            path = Path(tmp) / f"head{d}.onnx"
            path.write_bytes(build_head_onnx(random_unfolded_head(d).fold()))
            for how in ("runner", "ort"):
                proc = subprocess.run([sys.executable, __file__, "--head-worker", str(path), str(d), how],
                                      capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                out[f"{d}/{how}"] = {**r, "d": d, "how": how, "resident": r["after"] - r["before"]}
    return out


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", nargs=3, metavar=("VARIANT", "MODEL", "PACK"), help=argparse_suppress())
    p.add_argument("--head-worker", nargs=3, metavar=("PATH", "D", "HOW"), help=argparse_suppress())
    args = p.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if args.head_worker:
        head_worker(args.head_worker[0], int(args.head_worker[1]), args.head_worker[2])
        return
    if args.quick:
        args.rounds = 1
    model = smollm2()
    from finesteer_edge.measure.quick import plan_packs

    with tempfile.TemporaryDirectory(prefix="fse-bench-mem-") as tmp:
        plan = plan_packs(model, None, Path(tmp))

        def run(variant: str) -> dict:  # type: ignore[type-arg]
            env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, __file__, "--worker", variant, str(model), str(plan.open)],
                                  capture_output=True, text=True, env=env, check=True)
            return json.loads(proc.stdout.strip().splitlines()[-1])

        samples = interleaved({v: (lambda v=v: run(v)) for v in VARIANTS}, args.rounds, warmup=0)
    out = {"env": environment(model=str(model), n_ctx=N_CTX, rounds=args.rounds), "variants": {}}
    for v, runs in samples.items():
        out["variants"][v] = {
            stage: {k: median([r[stage][k] for r in runs]) for k in ("rss", "peak_rss")} for stage in runs[0]
        }
    rows = [[v, *(f"{out['variants'][v][s]['rss'] / 2**20:.1f}" for s in ("imported", "loaded", "after_turn")),
             f"{out['variants'][v]['after_turn']['peak_rss'] / 2**20:.1f}"] for v in VARIANTS]
    print(text_table(["variant", "imported MiB", "loaded MiB", "after turn MiB", "peak MiB"], rows))
    out["head_rss"] = head_rss((576, 4096))
    for r in out["head_rss"].values():
        mib = r["head_bytes"] / 2**20, r["resident"] / 2**20
        print(f"head d={r['d']} ({r['how']}): {mib[0]:.1f} MiB file, {mib[1]:.1f} MiB resident")
    out["env"]["loadavg_end"] = loadavg()
    save("memory", out, args)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
