"""Run every benchmark (each in a fresh process) and render docs/BENCHMARKS.md.

    OPENBLAS_NUM_THREADS=1 python bench/run_all.py           # full run: tens of minutes (times printed)
    python bench/run_all.py --quick                          # check everything runs (numbers are noise)
    python bench/run_all.py --only decode head               # a subset

Fresh processes keep the parts from influencing each other (torch's thread pools, onnxruntime's arenas,
page-cache state). The order is fixed so that two runs on a quiet machine do the same work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import _util
import report

SCRIPTS = ("head", "memory", "decode", "scaling", "torch_ref", "probes", "serve", "architectures",
           "multipack", "schedule_speed")


def main() -> None:
    p = _util.base_parser(__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    args = p.parse_args()
    here = Path(__file__).resolve().parent
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    t0 = time.time()
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    for name in [s for s in SCRIPTS if s in args.only]:
        cmd = [sys.executable, str(here / f"{name}.py"), "--results-dir", str(args.results_dir), "--doc", ""]
        if args.quick:
            cmd.append("--quick")
        t = time.time()
        print(f"\n=== {name} ===", file=sys.stderr, flush=True)
        subprocess.run(cmd, env=env, check=True)
        print(f"=== {name}: {time.time() - t:.0f} s, load average {os.getloadavg()}", file=sys.stderr, flush=True)
    if args.doc:
        report.render(args.results_dir, Path(args.doc))
        print(f"\nrendered {args.doc} in {time.time() - t0:.0f} s total", file=sys.stderr)


if __name__ == "__main__":
    main()
