"""Steering-head latency (ONNX folded vs unfolded vs numpy) and pack size (folded vs unfolded) at d = 576, 2048, 4096.

Synthetic weights in the official layout: K = 8 experts, k = 10 basis vectors, router and MLP hidden width
= d (as the released FineSteer scripts use). Every variant's outputs are checked against the folded float64
reference before it is timed. Variants are interleaved call by call; medians per query (batch 1).

    python bench/head.py
    python bench/head.py --quick
"""

from __future__ import annotations

import sys
import time

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
from _util import base_parser, save

from finesteer_edge.measure.common import environment, loadavg, text_table
from finesteer_edge.measure.head import HEAD_VARIANTS, head_latency, pack_sizes
from finesteer_edge.train.mose import DEFAULT_MAX_HIDDEN as NARROW


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[576, 2048, 4096])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--budget", type=float, default=30.0, help="Seconds of timing per width at most.")
    p.add_argument("--narrow", type=int, default=NARROW,
                   help="Also measure widths above this with the MLP hidden width capped to it (train's default).")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.budget = 20, 3.0
    out = {"env": environment(rounds=args.rounds, n_experts=8, basis_rank=10, hidden="d"), "latency": [], "size": []}
    for d in args.dims:
        t0 = time.time()
        lat = head_latency(d, rounds=args.rounds, budget_s=args.budget)
        lat["d"] = d
        lat["loadavg"] = loadavg()
        lat["seconds"] = time.time() - t0
        out["latency"].append(lat)
        out["size"].append(pack_sizes(d))
        print(f"d={d}: " + "  ".join(f"{v} {lat[v]['median_ms']:.3f} ms" for v in HEAD_VARIANTS), file=sys.stderr)
    rows = [[s["d"], f"{s['pack_folded'] / 1e6:.2f}", f"{s['pack_unfolded'] / 1e6:.2f}",
             f"{s['pack_unfolded'] / s['pack_folded']:.2f}"] for s in out["size"]]
    print(text_table(["d", "folded MB", "unfolded MB", "x"], rows))
    out["narrow"] = {"hidden": args.narrow, "latency": [], "size": []}
    for d in [d for d in args.dims if d > args.narrow]:
        lat = head_latency(d, rounds=args.rounds, budget_s=args.budget, hidden=args.narrow,
                           variants=("onnx_folded", "numpy_folded", "runtime"))
        lat["d"], lat["loadavg"] = d, loadavg()
        out["narrow"]["latency"].append(lat)
        out["narrow"]["size"].append(pack_sizes(d, hidden=args.narrow))
        print(f"d={d}, hidden={args.narrow}: runtime {lat['runtime']['median_ms']:.3f} ms", file=sys.stderr)
    out["env"]["loadavg_end"] = loadavg()
    save("head", out, args)


if __name__ == "__main__":
    main()
