"""Wall time of ``finesteer-edge make-pack`` on SmolLM2 at the default budget, and pip install -> verified pack.

Runs the real command once in a subprocess (as a user would; ``--json`` summary), with the thread count
given, and records what else the machine was doing (load average and the busiest other processes at the
start and the end): on a shared machine the wall time is an upper bound of what an idle one needs. The
install time is not measured here (it compiles llama.cpp once); it is passed in as an observation with
its date, and the sum is what README quotes. Writes ``bench/results/make_pack.json``.

    nice -n 5 python bench/make_pack_time.py --threads 2 --log /work/notes/makepack-smollm2.log
    python bench/make_pack_time.py --threads 2 --results bench/results/make_pack_auto.json        # 2026-12-06

A 0.5B model's time, without fetching one (bench/shaped_model.py: its exact shape, random weights)::

    python bench/shaped_model.py qwen2.5-0.5b --out /tmp/qwen05-shape.Q8_0.gguf --quant Q8_0
    python bench/make_pack_time.py --model /tmp/qwen05-shape.Q8_0.gguf --threads 2 \
        --out /tmp/finesteer-make-pack-bench/qwen05.fsp --results bench/results/make_pack_qwen05_shape.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]


def busiest(n: int = 8) -> list[str]:
    """The n processes using most CPU (ps), this script's own excluded."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,ni,pcpu,etime,args", "--sort=-pcpu"], capture_output=True,
                             text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    me = str(os.getpid())
    return [" ".join(line.split()[:4] + [" ".join(line.split()[4:])[:160]]) for line in out[1:]
            if line.split() and line.split()[0] != me][:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--task", default="safety")
    p.add_argument("--budget", default=None, help="make-pack --budget (default: the command's default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("/tmp/finesteer-make-pack-bench/pack"))
    p.add_argument("--log", type=Path, default=None, help="Copy the command's stderr (progress) here.")
    p.add_argument("--install-minutes", type=float, default=15.0,
                   help="Observed `pip install -e .[all]` time (compiles llama-cpp-python)")
    p.add_argument("--install-note", default="pip install -e \".[all]\" (llama-cpp-python 0.3.36 + deps), "
                   "00:57 -> 01:12 UTC on 2026-12-02 on this 2-core machine: a one-off observation")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "make_pack.json")
    a = p.parse_args()
    if a.out.exists() or a.out.with_name(a.out.name + ".work").exists():
        sys.exit(f"{a.out} (or its .work) exists: a timing must start from nothing; remove it first")
    cmd = [sys.executable, "-c", "from finesteer_edge.cli.app import main; main()", "make-pack", a.model,
           "--task", a.task, "--threads", str(a.threads), "--out", str(a.out), "--json"]
    if a.budget:
        cmd += ["--budget", a.budget]
    start = {"loadavg": list(os.getloadavg()), "busiest": busiest(), "utc": time.strftime("%H:%M:%SZ", time.gmtime())}
    t0 = time.perf_counter()
    log = a.log.open("w", encoding="utf-8") if a.log else subprocess.DEVNULL
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    wall = time.perf_counter() - t0
    end = {"loadavg": list(os.getloadavg()), "busiest": busiest(), "utc": time.strftime("%H:%M:%SZ", time.gmtime())}
    if r.returncode != 0:
        sys.exit(f"make-pack failed with exit code {r.returncode} (see {a.log})")
    summary = json.loads(r.stdout)
    res = {
        "command": " ".join(["finesteer-edge", *cmd[3:]]),
        "threads": a.threads, "nice": os.nice(0), "cpu_count": os.cpu_count(),
        "make_pack_seconds_wall": round(wall, 1),
        "stages": summary["stages"], "budget": summary["budget"], "extract": summary.get("extract"),
        "results": summary["results"],
        "install_minutes_observed": a.install_minutes, "install_note": a.install_note,
        "install_to_verified_pack_minutes": round(a.install_minutes + wall / 60, 1),
        "machine_start": start, "machine_end": end,
        "note": "wall time on a 2-core machine shared with other jobs (see machine_*): an upper bound",
    }
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(f"make-pack {wall / 60:.1f} min ({a.threads} threads); pip install {a.install_minutes:g} min observed; "
          f"total {res['install_to_verified_pack_minutes']} min -> {a.results}")


if __name__ == "__main__":
    main()
