"""``finesteer-edge serve`` against llama-cpp-python's own server (``python -m llama_cpp.server``) on SmolLM2.

Three servers run side by side on 127.0.0.1, each idle while another is measured: llama_cpp.server (its
defaults, except threads, n_ctx, flash attention + ``logits_all`` set like our contexts, and
``interrupt_requests`` off so a second client queues instead of cutting the first one off), ``serve``
with 1 slot (same threads) and ``serve`` with 2 slots (1 thread each: the same 2 cores). Requests are
streamed with the official ``openai`` client, greedy, a bounded number of tokens, every prompt distinct from its
first message on (no server may answer from a cached prompt prefix) and rounds interleaved (rotated
order); we quote medians.

* 1 client: time to first token (first content chunk) and decode tokens/s of one request
  ((chunks - 1) / (last chunk - first chunk); both servers send one token per chunk).
* 2 clients at once: aggregate tokens/s (all chunks / wall time of the pair) and the pair's TTFT.

Variants of ``serve``: ``"steering": null`` (unsteered), the bundled safety pack with its gate (these
benign prompts: gate closed, so this is the gate's cost), and ``gate: always`` (every request steered).

    python bench/serve.py            # ~5 minutes on 2 cores
    python bench/serve.py --threads 1   # when other jobs share the cores (2 spinning threads stall)
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
from _util import base_parser, save, smollm2

from finesteer_edge.measure.common import environment, interleaved, loadavg, median, ratio, spread, text_table
from finesteer_edge.measure.prompts import SHORT_PROMPT
from finesteer_edge.testing.servers import finesteer_serve_cmd, free_port, running

N_CTX = 1024
NULL = object()
_ids = itertools.count()


def one(base_url: str, max_tokens: int, steering: object = NULL) -> dict[str, Any]:
    """One streamed chat request: TTFT, decode rate, chunk count, and whether it was steered."""
    import openai

    c = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=300)
    extra = {} if steering is NULL else {"extra_body": {"steering": steering}}
    # The request number comes first (a system message), so no server can reuse a cached prompt prefix:
    # llama_cpp.server keeps the longest common prefix of the previous prompt, ours starts every request
    # on a fresh KV cache (see docs/SERVE.md).
    messages = [{"role": "system", "content": f"Request {next(_ids)}."}, {"role": "user", "content": SHORT_PROMPT}]
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    steered = None
    for ch in c.chat.completions.create(model="m", messages=messages, stream=True,
                                        max_tokens=max_tokens, temperature=0, **extra):
        if ch.choices and ch.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            chunks += 1
        st = (ch.model_extra or {}).get("steering")
        if st is not None:
            steered = st["steered"]
    if first is None or last is None:
        raise RuntimeError(f"{base_url}: the stream ended without a token")
    return {"ttft_s": first - t0, "tps": (chunks - 1) / (last - first) if last > first else float("nan"),
            "tokens": chunks, "wall_s": last - t0, "steered": steered}


def pair(base_url: str, max_tokens: int, steering: object = NULL) -> dict[str, Any]:
    """Two requests started together: aggregate tokens/s over the pair's wall time."""
    out: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(one(base_url, max_tokens, steering))
        except BaseException as exc:  # re-raised below: a failed request must fail the benchmark
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"agg_tps": sum(r["tokens"] for r in out) / wall, "ttft_s": median([r["ttft_s"] for r in out]),
            "tokens": sum(r["tokens"] for r in out), "steered": [r["steered"] for r in out]}


def summarise(samples: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    s: dict[str, Any] = {"samples": samples}
    for k in keys:
        xs = [x[k] for x in samples]
        s[k] = median(xs)
        s[k + "_range"] = spread(xs)
    return s


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads (1-slot servers; 2 slots: half each).")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.max_tokens = 2, 16
    model = smollm2()
    t, t2 = args.threads, max(1, args.threads // 2)
    logs = Path(tempfile.mkdtemp(prefix="finesteer-serve-bench-"))  # server logs, if one fails to start
    ports = [free_port() for _ in range(3)]
    base = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--n_ctx", str(N_CTX), "--port"]
    cmds = {
        "llama_cpp.server": base + [str(ports[0]), "--n_threads", str(t), "--n_threads_batch", str(t),
                                    "--flash_attn", "true", "--logits_all", "false",
                                    # its default cuts a running stream off when the next request arrives
                                    "--interrupt_requests", "false"],
        "serve1": finesteer_serve_cmd(str(model), "--port", str(ports[1]), "--threads", str(t), "--n-ctx", str(N_CTX)),
        "serve2": finesteer_serve_cmd(str(model), "--port", str(ports[2]), "--threads", str(t2), "--n-ctx", str(N_CTX),
                                      "--parallel", "2"),
    }
    env = environment(threads=t, threads_per_slot_2=t2, rounds=args.rounds, max_tokens=args.max_tokens,
                      n_ctx=N_CTX, model=str(model), commands={k: " ".join(v[1:]) for k, v in cmds.items()})
    with running(cmds["llama_cpp.server"], ports[0], logs / "llama_cpp.log", ready_path="/v1/models") as lc, \
            running(cmds["serve1"], ports[1], logs / "serve1.log") as s1, \
            running(cmds["serve2"], ports[2], logs / "serve2.log") as s2:
        n = args.max_tokens
        single = interleaved({
            "llama_cpp.server": lambda: one(lc.base_url, n),
            "serve unsteered": lambda: one(s1.base_url, n, None),
            "serve gated (closed)": lambda: one(s1.base_url, n),
            "serve steered": lambda: one(s1.base_url, n, {"gate": "always"}),
        }, args.rounds)
        double = interleaved({
            "llama_cpp.server": lambda: pair(lc.base_url, n),
            "serve 1 slot unsteered": lambda: pair(s1.base_url, n, None),
            "serve 2 slots unsteered": lambda: pair(s2.base_url, n, None),
            "serve 2 slots steered": lambda: pair(s2.base_url, n, {"gate": "always"}),
        }, args.rounds)
    env["loadavg_end"] = loadavg()
    res: dict[str, Any] = {
        "env": env,
        "single": {k: summarise(v, ("ttft_s", "tps", "tokens")) for k, v in single.items()},
        "pair": {k: summarise(v, ("agg_tps", "ttft_s", "tokens")) for k, v in double.items()},
    }
    sg, pr = res["single"], res["pair"]
    res["ratios"] = {
        "tps_unsteered_vs_llama_cpp": ratio(sg["serve unsteered"]["tps"], sg["llama_cpp.server"]["tps"]),
        "tps_steered_vs_unsteered": ratio(sg["serve steered"]["tps"], sg["serve unsteered"]["tps"]),
        "tps_gated_vs_unsteered": ratio(sg["serve gated (closed)"]["tps"], sg["serve unsteered"]["tps"]),
        "ttft_unsteered_vs_llama_cpp": ratio(sg["serve unsteered"]["ttft_s"], sg["llama_cpp.server"]["ttft_s"]),
        "ttft_steered_vs_unsteered": ratio(sg["serve steered"]["ttft_s"], sg["serve unsteered"]["ttft_s"]),
        "agg_tps_2slots_vs_llama_cpp": ratio(pr["serve 2 slots unsteered"]["agg_tps"],
                                             pr["llama_cpp.server"]["agg_tps"]),
        "agg_tps_1slot_vs_llama_cpp": ratio(pr["serve 1 slot unsteered"]["agg_tps"],
                                            pr["llama_cpp.server"]["agg_tps"]),
        "agg_tps_2slots_steered_vs_unsteered": ratio(pr["serve 2 slots steered"]["agg_tps"],
                                                     pr["serve 2 slots unsteered"]["agg_tps"]),
    }
    rows = [[k, f"{v['ttft_s'] * 1000:.1f}", f"{v['tps']:.1f}", f"{v['tokens']:.0f}"] for k, v in sg.items()]
    print(text_table(["1 client", "TTFT ms", "decode tok/s", "tokens"], rows))
    rows = [[k, f"{v['agg_tps']:.1f}", f"{v['ttft_s'] * 1000:.1f}"] for k, v in pr.items()]
    print(text_table(["2 clients", "aggregate tok/s", "TTFT ms"], rows))
    print("\n".join(f"{k}: {v:.3f}" for k, v in res["ratios"].items()))
    save("serve", res, args)


if __name__ == "__main__":
    main()
