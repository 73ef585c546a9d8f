"""Write docs/RESULTS.md, docs/results.json and the docs/*.png plots: the offline evaluation of issue 4.

Runs, in this order and with fixed settings (greedy decoding with the repetition penalties ``finesteer-edge
generate``/``chat`` default to, the same for every method; fixed data files, fixed shuffle seed):
the safety suite with the safety pack, the TruthfulQA suite with the TruthfulQA pack (each: base, CAA,
CAST-style, MoSE, FineSteer exact + fast; strengths swept on validation, reported on test), then the
fidelity check of each pack against a torch reference (needs torch + transformers; ``--no-fidelity``
skips it). RESULTS.md is rendered from results.json after it was written, and the targets of the
issue are computed from the numbers.

    python scripts/run_eval.py                      # the full report into docs/ (packs: the bundled ones)
    python scripts/run_eval.py --limit 8 --out /tmp/r --random-packs   # mechanics check in ~a minute
    python scripts/run_eval.py --render-only        # re-render docs/RESULTS.md from docs/results.json
    python scripts/run_eval.py --repeat-penalty 1 --dry-multiplier 0   # plain greedy (the report before issue 11)

With ``--random-packs`` the packs are random ones made for the model (marked as such in the report);
that only tests the machinery, e.g. on the tiny test model.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would fight ggml's for 2 cores

REPO = Path(__file__).resolve().parents[1]
PACKS = REPO / "finesteer_edge" / "packs"
ANALYSIS = Path(__file__).resolve().parent / "eval_notes.md"
"""Hand-written reading of the numbers, placed after the targets in RESULTS.md (tables stay generated)."""
DEFAULT_PACKS = {"safety": PACKS / "smollm2-135m-instruct-safety",
                 "truthfulqa": PACKS / "smollm2-135m-instruct-truthfulqa"}


def _analysis() -> str | None:
    return ANALYSIS.read_text(encoding="utf-8") if ANALYSIS.is_file() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from finesteer_edge.settings import CLI_PENALTIES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: SmolLM2-135M-Instruct Q4_1).")
    p.add_argument("--safety-pack", type=Path, default=DEFAULT_PACKS["safety"])
    p.add_argument("--truthfulqa-pack", type=Path, default=DEFAULT_PACKS["truthfulqa"])
    p.add_argument("--suites", nargs="+", default=["safety", "truthfulqa"], choices=["safety", "truthfulqa"])
    p.add_argument("--data", type=Path, default=None,
                   help="Curated data folder (default: the data shipped with the package).")
    p.add_argument("--out", type=Path, default=REPO / "docs", help="Where RESULTS.md, results.json, PNGs go.")
    p.add_argument("--generations", type=Path, default=None, help="Also write generations_<suite>.jsonl here.")
    p.add_argument("--limit", type=int, default=None, help="First N rows of every file (not a full run).")
    p.add_argument("--strengths", default="0.5,1,1.5,2",
                   help="Swept on validation (wider than the CLI default: gated methods may do best above 1.5).")
    p.add_argument("--workers", type=int, default=2, help="Worker processes (each its own model).")
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads per worker.")
    p.add_argument("--max-tokens", type=int, default=64,
                   help="New tokens per answer (64: whether a turn ended within 64 tokens is measured).")
    p.add_argument("--repeat-penalty", type=float, default=CLI_PENALTIES.repeat_penalty,
                   help="safety: llama.cpp repeat penalty of every answer, every method alike (1 = off; default: "
                        "the CLI's generate/chat default).")
    p.add_argument("--repeat-last-n", type=int, default=CLI_PENALTIES.repeat_last_n,
                   help="safety: tokens the repeat penalty looks back over.")
    p.add_argument("--dry-multiplier", type=float, default=CLI_PENALTIES.dry_multiplier,
                   help="safety: llama.cpp DRY multiplier (0 = off; default: the CLI's). "
                        "--repeat-penalty 1 --dry-multiplier 0 is plain greedy.")
    p.add_argument("--no-fidelity", action="store_true", help="Skip the torch reference comparison.")
    p.add_argument("--random-packs", action="store_true",
                   help="Use random packs instead of the real ones (machinery check; marked in the report).")
    p.add_argument("--render-only", action="store_true", help="Re-render RESULTS.md from OUT/results.json.")
    return p.parse_args(argv)


def _pack_for(suite: str, path: Path, model: Path, args: argparse.Namespace, tmp: Path) -> Path:
    if not args.random_packs:
        if (path / "manifest.json").is_file():
            return path
        sys.exit(f"error: pack {path} not found (pass --{suite}-pack DIR, or --random-packs for a machinery check)")
    from finesteer_edge.model_info import read_model_info
    from finesteer_edge.testing.packs import make_random_pack

    info = read_model_info(model)
    gate_layer, steer_layer = (15, 12) if info.n_layer >= 17 else (1, 2)
    print(f"note: using a RANDOM {suite} pack (--random-packs: machinery only)", file=sys.stderr)
    kw = dict(gate_layer=gate_layer, steer_layer=steer_layer, vector_norm=40.0, seed=1)
    probe = make_random_pack(model, tmp / f"probe-{suite}", tau=0.0, **kw)
    # tau = the median gate score of a few validation prompts, so both gate paths are exercised
    return make_random_pack(model, tmp / f"random-{suite}", tau=_median_score(model, probe, args), **kw)


def _median_score(model: Path, pack: Path, args: argparse.Namespace) -> float:
    import statistics

    from finesteer_edge.evaluation.datasets import default_data_dir, load_prompts, suite_dir
    from finesteer_edge.evaluation.runner import gate_scores
    from finesteer_edge.steered import SteeredLlama

    folder = suite_dir(args.data or default_data_dir(), "safety")
    assert folder is not None
    prompts = [p for g in ("harmful", "benign") for p in load_prompts(folder / f"{g}_val.jsonl", g, "val", limit=10)]
    llm = SteeredLlama(model, pack, n_threads=args.threads, n_ctx=1024)
    try:
        return float(statistics.median(gate_scores(llm, prompts, progress=False)))
    finally:
        llm.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from finesteer_edge.evaluation.datasets import default_data_dir, safety_paths, suite_dir
    from finesteer_edge.evaluation.plots import suite_plots
    from finesteer_edge.evaluation.report import write_report
    from finesteer_edge.evaluation.runner import expand_methods
    from finesteer_edge.evaluation.suite import SuiteConfig, run_suite
    from finesteer_edge.pull import pull
    from finesteer_edge.settings import Penalties

    out: Path = args.out
    if args.render_only:
        report = json.loads((out / "results.json").read_text(encoding="utf-8"))
        paths = write_report(report, out, analysis=_analysis())
        print(f"rendered {paths['markdown']}", file=sys.stderr)
        return 0
    try:
        penalties = Penalties(repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                              dry_multiplier=args.dry_multiplier)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    t0 = time.perf_counter()
    command = "python scripts/run_eval.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    model = args.model or pull("smollm2-135m-instruct", show_progress=False)
    root = args.data or default_data_dir()
    if root is None:
        sys.exit("error: no data folder: pass --data DIR or set FINESTEER_EDGE_DATA")
    strengths = [float(x) for x in args.strengths.split(",") if x.strip()]
    report: dict = {"command": command, "threads": args.threads, "workers": args.workers, "suites": {}, "plots": {}}
    packs = {"safety": args.safety_pack, "truthfulqa": args.truthfulqa_pack}
    used_packs: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="fse-eval-") as tmpdir:
        tmp = Path(tmpdir)
        safety_dir, tqa_dir = suite_dir(root, "safety"), suite_dir(root, "truthfulqa")
        test_safety, val_safety = safety_paths(safety_dir, "test"), safety_paths(safety_dir, "val")
        for suite in args.suites:
            pack = _pack_for(suite, packs[suite], model, args, tmp)
            used_packs[suite] = pack
            if suite == "safety":
                test, val = dict(test_safety), dict(val_safety)
            else:
                assert tqa_dir is not None
                test = {"mc": tqa_dir / "mc_test.jsonl", "benign": test_safety["benign"],
                        "borderline": test_safety["borderline"]}
                val = {"mc": tqa_dir / "val.jsonl"}
            cfg = SuiteConfig(suite=suite, model=model, pack=pack, test=test, val=val,
                              methods=expand_methods(None), strengths=strengths, max_tokens=args.max_tokens,
                              limit=args.limit, threads=args.threads, workers=args.workers, progress=True,
                              command=command, penalties=penalties)
            gen_path = args.generations / f"generations_{suite}.jsonl" if args.generations else None
            print(f"[{suite}] running with pack {pack}", file=sys.stderr)
            res = run_suite(cfg, generations_path=gen_path)
            report["suites"][suite] = res
            report["plots"].update({f"{suite}_{k}": v for k, v in suite_plots(res, out).items()})
            print(f"[{suite}] done in {res['timing']['seconds_wall']:.0f} s", file=sys.stderr)
        if not args.no_fidelity:
            report["fidelity"] = _fidelity(model, used_packs, report, args)
    first = next(iter(report["suites"].values()))
    report["model"] = first["model"]
    report["environment"] = first["environment"]
    report["wall_seconds"] = time.perf_counter() - t0
    _keep_other_runs(report, out / "results.json")
    paths = write_report(report, out, analysis=_analysis())
    print(f"wrote {paths['json']} and {paths['markdown']}", file=sys.stderr)
    return 0


def _keep_other_runs(report: dict, previous: Path) -> None:
    """Carry over what other commands merged into the results file (the context suite's runs, the gate probe
    ceiling, ...): this script rewrites the file, and a run of it must not erase measurements it does not make."""
    if not previous.is_file():
        return
    old = json.loads(previous.read_text(encoding="utf-8"))
    for key, value in old.items():
        if key not in report and key != "targets":  # targets are recomputed from the numbers
            report[key] = value


def _fidelity(model: Path, packs: dict[str, Path], report: dict, args: argparse.Namespace) -> dict:
    """Runtime vs torch reference for every pack, on that suite's test prompts (the rows actually evaluated)."""
    try:
        from finesteer_edge.evaluation.fidelity import load_reference, run_fidelity
        from finesteer_edge.steered import SteeredLlama

        reference = load_reference(model, args.threads)
    except ImportError as exc:
        print(f"note: fidelity skipped ({exc}); install torch and transformers", file=sys.stderr)
        return {}
    from finesteer_edge.data import read_jsonl

    out = {}
    for suite, pack in packs.items():
        data = report["suites"][suite]["data"]
        keys = ("harmful_test", "benign_test", "borderline_test") if suite == "safety" else ("mc_test",)
        field = "prompt" if suite == "safety" else "question"
        prompts = [str(r[field]) for k in keys if k in data
                   for r in read_jsonl(data[k]["path"])[: data[k]["n_used"]]]
        from finesteer_edge.evaluation.suite import pack_identity

        llm = SteeredLlama(model, pack, n_threads=args.threads, n_ctx=2048)
        try:
            out[suite] = run_fidelity(llm, prompts, reference=reference, label=f"fidelity {suite}")
        finally:
            llm.close()
        out[suite]["pack_manifest_sha256"] = pack_identity(pack)["manifest_sha256"]
    return out


if __name__ == "__main__":
    sys.exit(main())
