"""Plumbing shared by the bench/ scripts: paths, argument defaults, saving results, re-rendering the report.

Each script measures one thing, saves ``bench/results/<name>.json`` and re-renders ``docs/BENCHMARKS.md``
from every results file present, so running one script updates its section and leaves the others as they
were. ``run_all.py`` runs them all, each in a fresh process (torch must not share a process with the
llama.cpp timings it is compared against, except where the comparison is the point).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import report
from report import DOC, REPO, RESULTS

__all__ = ["DOC", "REPO", "RESULTS", "base_parser", "save", "smollm2"]

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would fight ggml's for 2 cores


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="Few rounds and tokens: check the script runs (noisy).")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="Where <name>.json goes.")
    p.add_argument("--doc", default=str(DOC), help="Markdown report to re-render ('' to skip).")
    return p


def smollm2() -> Path:
    """The default model (SmolLM2-135M-Instruct Q4_1), pulled into the cache on first use."""
    from finesteer_edge.pull import pull

    return pull("smollm2-135m-instruct", show_progress=False)


def save(name: str, data: dict[str, Any], args: argparse.Namespace) -> Path:
    """Write results JSON, then re-render the report from all results present."""
    from finesteer_edge.measure.quick import jsonable

    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{name}.json"
    path.write_text(json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    if args.doc:
        report.render(args.results_dir, Path(args.doc))
        print(f"rendered {args.doc}", file=sys.stderr)
    return path
