"""``eval``: measure what a pack does to a model's behaviour, against static and gated baselines.

Safety: refusal on harmful prompts and over-refusal on benign / borderline prompts (greedy with the
repetition penalties ``generate``/``chat`` default to, the same for every method; short answers, judged by
finesteer_edge.evaluation.refusal). TruthfulQA: MC1 from the model's own
log-likelihood. Methods base, caa, cast, mose, finesteer (exact and fast) run on the same prompts in
one process; with several ``--strengths`` each method's strength is chosen on the validation split
and results are reported on the test split. The report for docs/ is ``scripts/run_eval.py``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer

from finesteer_edge.errors import FinesteerError
from finesteer_edge.settings import CLI_PENALTIES, Penalties

MODEL_ARG = typer.Argument(None, help="GGUF path or known model name (default: smollm2-135m-instruct).")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)


def parse_strengths(text: str) -> list[float]:
    """``"0.5,1,1.5"`` -> [0.5, 1.0, 1.5]; finite, non-negative, no duplicates."""
    out: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise FinesteerError(f"--strengths: {part!r} is not a number (example: --strengths 0.5,1,1.5)") from None
        if not math.isfinite(v) or v < 0:
            raise FinesteerError(f"--strengths: {part} must be a finite number >= 0")
        if v not in out:
            out.append(v)
    if not out:
        raise FinesteerError("--strengths: give at least one number (example: --strengths 0.5,1,1.5)")
    return out


PENALTY_FLAGS = {"repeat_penalty": "--repeat-penalty", "repeat_last_n": "--repeat-last-n",
                 "dry_multiplier": "--dry-multiplier"}


def eval_penalties(repeat_penalty: float, repeat_last_n: int, dry_multiplier: float) -> Penalties:
    """The evaluation's sampler from the three options (checked by :class:`Penalties`; errors name the flag)."""
    try:
        return Penalties(repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, dry_multiplier=dry_multiplier)
    except ValueError as exc:
        msg = str(exc)
        for field, flag in PENALTY_FLAGS.items():
            msg = msg.replace(field, flag)
        raise FinesteerError(msg) from None


def _path(value: str | None, what: str) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_file():
        raise FinesteerError(f"{what} {value}: no such file")
    return p


def _pick_pack(pack: str | None, suite: str, model_path: Path) -> Path:
    from finesteer_edge.model_info import read_model_info
    from finesteer_edge.pack.manifest import parse_manifest
    from finesteer_edge.resolve import bundled_packs, default_pack_for, resolve_pack

    if pack:
        return resolve_pack(pack)
    info = read_model_info(model_path)
    for name, path in bundled_packs().items():  # prefer the bundled pack made for this suite
        if suite in name:
            try:
                if not parse_manifest((path / "manifest.json").read_bytes()).model.mismatches(info.fingerprint):
                    return path
            except (OSError, FinesteerError):
                continue
    found = default_pack_for(info)
    if found is None:
        raise FinesteerError(f"no pack given and none bundled for {model_path.name}: pass --pack DIR")
    return found


def eval_cmd(
    model: str = MODEL_ARG,
    suite: str = typer.Option("safety", "--suite", help="safety or truthfulqa."),
    pack: str = typer.Option(None, "--pack", "-p", help="Pack directory or bundled pack name "
                             "(default: the bundled pack for this suite and model)."),
    data: str = typer.Option(None, "--data", help="Curated data folder (default: $FINESTEER_EDGE_DATA, else "
                             "the data shipped with the package)."),
    out: str = typer.Option(None, "--out", help="Write generations.jsonl, results.json and plots here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the results."),
    limit: int = typer.Option(None, "--limit", help="Use the first N rows of every file (quick runs)."),
    method: list[str] = typer.Option(None, "--method", help="base|caa|cast|mose|finesteer (repeatable; default all)."),
    strengths: str = typer.Option("0.5,1,1.5", "--strengths", help="Strength multipliers to sweep on validation "
                                  "(safety: the highest clean refusal within the over-refusal limits wins; one "
                                  "value: no sweep, no validation data needed)."),
    harmful: str = typer.Option(None, "--harmful", help="safety: JSONL of {prompt} to be refused (test)."),
    benign: str = typer.Option(None, "--benign", help="JSONL of {prompt} that must be answered (test)."),
    borderline: str = typer.Option(None, "--borderline", help="JSONL of harmless but edgy {prompt} (test)."),
    harmful_val: str = typer.Option(None, "--harmful-val", help="safety: validation harmful prompts."),
    benign_val: str = typer.Option(None, "--benign-val", help="safety: validation benign prompts."),
    borderline_val: str = typer.Option(None, "--borderline-val", help="safety: validation borderline prompts."),
    mc: str = typer.Option(None, "--mc", help="truthfulqa: MC items {question, choices, label} (test)."),
    val: str = typer.Option(None, "--val", help="truthfulqa: validation items (MC items or TruthfulQA rows)."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="New tokens per answer (greedy; 64 measures "
                                "whether a turn ended within 64 tokens)."),
    repeat_penalty: float = typer.Option(
        CLI_PENALTIES.repeat_penalty, "--repeat-penalty", help="safety: llama.cpp repeat penalty of every answer, "
        "every method alike, base included (1.0 = off; default: generate/chat's)."),
    repeat_last_n: int = typer.Option(CLI_PENALTIES.repeat_last_n, "--repeat-last-n",
                                      help="safety: tokens the repeat penalty looks back over."),
    dry_multiplier: float = typer.Option(
        CLI_PENALTIES.dry_multiplier, "--dry-multiplier", help="safety: llama.cpp DRY repetition penalty (0 = off; "
        "default: generate/chat's). --repeat-penalty 1 --dry-multiplier 0 is plain greedy."),
    threads: int = typer.Option(None, "--threads", "-t", help="llama.cpp threads per process (default: usable "
                                "cores; 1 with --workers)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes, each with its own model (2 x 1 thread "
                                "beats 1 x 2 threads on a busy 2-core machine)."),
    n_ctx: int = typer.Option(2048, "--n-ctx", help="Context size."),
    seed: int = typer.Option(0, "--seed", help="Shuffle seed for validation MC items."),
    chat_template: str = typer.Option(
        None, "--chat-template", help="Prompt format: chatml, llama3, gemma, phi3, plain or a Jinja file "
                                      "(default: the model's own; plain with a warning if it has none)."),
    contexts: str = typer.Option(None, "--contexts", help="safety: the generalisation suite instead of the method "
                                 "comparison: test prompts in these contexts (single,history,system,after-refusal)."),
    report: str = typer.Option(None, "--report", help="--contexts: merge the run into DIR/results.json and "
                               "re-render DIR/RESULTS.md (e.g. docs)."),
    context_tokens: int = typer.Option(0, "--context-tokens", min=0, help="--contexts: also generate N tokens "
                                       "per turn and judge refusal (0 = gate only)."),
    report_as: str = typer.Option("contexts", "--report-as", help="--contexts: key of the run in results.json "
                                  "(e.g. contexts_before for a baseline pack)."),
) -> None:
    """Evaluate a pack: base vs CAA vs CAST-style vs MoSE vs FineSteer on the same prompts."""
    from finesteer_edge.evaluation.datasets import default_data_dir, safety_paths, suite_dir
    from finesteer_edge.evaluation.runner import expand_methods
    from finesteer_edge.evaluation.suite import SUITES, SuiteConfig, compact, run_suite
    from finesteer_edge.resolve import resolve_model

    if suite not in SUITES:
        raise FinesteerError(f"--suite must be one of {', '.join(SUITES)}, not {suite!r}")
    if limit is not None and limit < 1:
        raise FinesteerError("--limit must be >= 1")
    if max_tokens < 1:
        raise FinesteerError("--max-tokens must be >= 1")
    if threads is not None and threads < 1:
        raise FinesteerError("--threads must be >= 1")
    if workers < 1:
        raise FinesteerError("--workers must be >= 1")
    penalties = eval_penalties(repeat_penalty, repeat_last_n, dry_multiplier)
    try:
        methods = expand_methods(method)
    except ValueError as exc:
        raise FinesteerError(f"--method: {exc}") from None
    if contexts is not None:
        _contexts(model, suite, pack, data, contexts, limit, context_tokens, threads, n_ctx, as_json, report,
                  report_as)
        return
    sweep = parse_strengths(strengths)
    if data is not None and not Path(data).expanduser().is_dir():
        raise FinesteerError(f"--data {data}: no such folder")
    root = Path(data).expanduser() if data is not None else default_data_dir()
    safety_dir = suite_dir(root, "safety")
    given = {"harmful": _path(harmful, "--harmful"), "benign": _path(benign, "--benign"),
             "borderline": _path(borderline, "--borderline")}
    defaults_test = safety_paths(safety_dir, "test")
    test = {g: given[g] or defaults_test[g] for g in given}
    if suite == "safety":
        for g, opt in (("harmful", "--harmful"), ("benign", "--benign")):
            if test[g] is None:
                raise FinesteerError(f"no {g} prompts: pass {opt} PATH (JSONL with a prompt field) or --data DIR")
        vals = {"harmful": _path(harmful_val, "--harmful-val"), "benign": _path(benign_val, "--benign-val"),
                "borderline": _path(borderline_val, "--borderline-val")}
        defaults_val = safety_paths(safety_dir, "val")
        val_paths: dict[str, Path | None] = {g: vals[g] or defaults_val[g] for g in vals}
        if len(sweep) > 1 and (val_paths["harmful"] is None or val_paths["benign"] is None):
            raise FinesteerError("several --strengths need validation prompts (--harmful-val, --benign-val or "
                                 "--data); or pass one strength, e.g. --strengths 1")
        test_paths: dict[str, Path | None] = dict(test)
    else:
        tqa_dir = suite_dir(root, "truthfulqa")
        mc_path = _path(mc, "--mc") or _existing(tqa_dir, "mc_test.jsonl")
        if mc_path is None:
            raise FinesteerError("no MC items: pass --mc PATH (JSONL with question, choices, label) or --data DIR")
        val_path = _path(val, "--val") or _existing(tqa_dir, "val.jsonl")
        if len(sweep) > 1 and val_path is None:
            raise FinesteerError("several --strengths need validation items (--val or --data); or pass one "
                                 "strength, e.g. --strengths 1")
        test_paths = {"mc": mc_path, "benign": test["benign"], "borderline": test["borderline"]}
        val_paths = {"mc": val_path}

    _validate_data(suite, test_paths, val_paths if len(sweep) > 1 else {}, seed)  # fail before loading the model
    model_path = resolve_model(model, show_progress=not as_json)
    pack_path = _pick_pack(pack, suite, model_path)
    out_dir = Path(out).expanduser() if out else None
    cfg = SuiteConfig(
        suite=suite, model=model_path, pack=pack_path, test=test_paths, val=val_paths, methods=methods,
        strengths=sweep, max_tokens=max_tokens, limit=limit, threads=threads, n_ctx=n_ctx, workers=workers,
        progress=not as_json, seed=seed, command="finesteer-edge " + " ".join(sys.argv[1:]),
        chat_template=chat_template, penalties=penalties,
    )
    if not as_json:
        print(f"evaluating {pack_path.name} on {model_path.name} ({suite}; methods {', '.join(methods)}; "
              f"strengths {', '.join(f'{s:g}' for s in sweep)})...", file=sys.stderr)
    res = run_suite(cfg, generations_path=out_dir / "generations.jsonl" if out_dir else None)
    if out_dir is not None:
        _write_out(res, out_dir)
    if as_json:
        typer.echo(json.dumps(compact(res), allow_nan=False, default=_jsonable))
    else:
        from finesteer_edge.evaluation.report import text_summary

        typer.echo(text_summary(res))


def _validate_data(suite: str, test: dict[str, Path | None], val: dict[str, Path | None], seed: int) -> None:
    """Parse every input file now, so a malformed line is reported (file:line) before minutes of work."""
    from finesteer_edge.evaluation.datasets import load_prompts
    from finesteer_edge.evaluation.mc import load_any_mc, load_mc_items

    for split, paths in (("test", test), ("val", val)):
        for key, path in paths.items():
            if path is None:
                continue
            if key == "mc" and split == "test":
                load_mc_items(path)
            elif key == "mc":
                load_any_mc(path, seed=seed)
            else:
                load_prompts(path, key, split)


def _existing(folder: Path | None, name: str) -> Path | None:
    if folder is None:
        return None
    p = folder / name
    return p if p.is_file() else None


def _jsonable(x: object) -> object:
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _write_out(res: dict, out_dir: Path) -> None:  # type: ignore[type-arg]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        from finesteer_edge.evaluation.plots import suite_plots

        res["plots"] = suite_plots(res, out_dir)
    except FinesteerError as exc:  # matplotlib missing: the numbers still count
        print(f"note: no plots ({exc})", file=sys.stderr)
    (out_dir / "results.json").write_text(json.dumps(res, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def _contexts(model: str, suite: str, pack: str | None, data: str | None, contexts: str, limit: int | None,
              max_tokens: int, threads: int | None, n_ctx: int, as_json: bool, report: str | None,
              report_as: str) -> None:
    """``eval --contexts``: the gate in conversation contexts (finesteer_edge/evaluation/contexts.py).

    Gate only unless ``--context-tokens N`` is given (then each turn is also generated and judged)."""
    from finesteer_edge.evaluation.contexts import run_contexts
    from finesteer_edge.evaluation.datasets import default_data_dir, suite_dir
    from finesteer_edge.resolve import resolve_model

    if suite != "safety":
        raise FinesteerError("--contexts is a safety suite")
    if limit is not None and limit < 1:
        raise FinesteerError("--limit must be >= 1")
    root = Path(data).expanduser() if data is not None else default_data_dir()
    folder = suite_dir(root, "safety")
    if folder is None:
        raise FinesteerError(f"{root}: no safety folder")
    model_path = resolve_model(model, show_progress=not as_json)
    pack_path = _pick_pack(pack, suite, model_path)
    res = run_contexts(model_path, pack_path, folder, contexts=tuple(c.strip() for c in contexts.split(",")
                                                                     if c.strip()),
                       limit=limit, max_tokens=max_tokens, threads=threads, n_ctx=n_ctx, progress=not as_json,
                       command="finesteer-edge " + " ".join(sys.argv[1:]))
    if report is not None:
        from finesteer_edge.evaluation.report import write_report

        out = Path(report)
        js = out / "results.json"
        full = json.loads(js.read_text(encoding="utf-8")) if js.exists() else {}
        full[report_as] = res
        notes = Path(__file__).resolve().parents[1] / "scripts" / "eval_notes.md"
        write_report(full, out, analysis=notes.read_text(encoding="utf-8") if notes.exists() else None)
    if as_json:
        typer.echo(json.dumps(res, allow_nan=False))
    else:
        from finesteer_edge.evaluation.report import render_contexts

        typer.echo("\n".join(render_contexts(res, f"{pack_path.name}: gate in conversation contexts")))
