"""``extract``, ``train`` and ``convert``: produce steering packs (needs the ``train``/``convert`` extras)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import typer

from finesteer_edge.errors import FinesteerError
from finesteer_edge.resolve import resolve_model
from finesteer_edge.vocab import (
    GATE_CANDIDATE_KINDS,
    GATE_FEATURES,
    HEAD_FEATURES,
    MODES,
    TRAINED_GATE_KINDS,
    choices,
)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_cmd)
    app.command("train")(train_cmd)
    app.command("convert")(convert_cmd)
    app.command("make-pack")(make_pack_cmd)
    app.command("regate")(regate_cmd)


def _need_extra(module: str, extra: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise FinesteerError(
            f"this command needs the '{extra}' extra ({module} is not installed): "
            f"pip install 'finesteer-edge[{extra}]'"
        ) from None


def _layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated layer numbers, got {text!r}") from None


def extract_cmd(
    model: str = typer.Argument(None, help="GGUF path or known model name (default model if omitted)."),
    task: str = typer.Option(..., "--task", help="safety, truthfulqa or pairs."),
    data: Path = typer.Option(..., "--data", help="Data folder (safety/truthfulqa layout) or pairs JSONL file/folder."),
    out: Path = typer.Option(..., "--out", help="Activations file to write (.safetensors)."),
    steer_layer: int = typer.Option(None, "--steer-layer", help="Layer N to steer (default ~3/8 of the depth)."),
    gate_layer: int = typer.Option(None, "--gate-layer", help="Default gate layer (default mid-depth)."),
    gate_layers: str = typer.Option(None, "--gate-layers", help="Candidate gate layers, comma-separated."),
    negatives: list[Path] = typer.Option(None, "--negatives", help="JSONL of general prompts (not to steer)."),
    pairs_per_question: int = typer.Option(1, "--pairs-per-question", min=1, help="truthfulqa: answer pairs used."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most N prompts per group and split (quick runs)."),
    own_tokens: int = typer.Option(48, "--own-tokens", min=1, help="Length of the model's own (undesired) answer."),
    end_of_turn: bool = typer.Option(False, "--end-of-turn", help="Teacher-force each desired response followed "
                                     "by the model's end-of-turn token (a shift towards 'refuse and stop')."),
    threads: int = typer.Option(None, "--threads", "-t"),
    n_ctx: int = typer.Option(2048, "--n-ctx"),
    chat_template: str = typer.Option(
        None, "--chat-template", help="Prompt format: chatml, llama3, gemma, phi3, plain or a Jinja file "
                                      "(default: the model's own; plain with a warning if it has none)."),
    gate_only: bool = typer.Option(False, "--gate-only", help="Gate rows only (prefill, no targets): every "
                                   "train/val prompt of a safety folder in several conversation shapes."),
    shapes: str = typer.Option("single,history,system,after_refusal", "--shapes",
                               help="Conversation shapes, comma-separated (with --shaped-fraction)."),
    shaped_fraction: float = typer.Option(
        None, "--shaped-fraction", min=0.0, max=1.0,
        help="Share of prompts also rendered in each non-single shape (default: 1 with --gate-only, else 0). "
             "Without --gate-only these are prefill-only rows that train gives their prompt's target shift."),
    families_per_topic: int = typer.Option(None, "--families-per-topic", min=1,
                                           help="--gate-only: phrasing families kept per topic pair."),
    skip_single: str = typer.Option("", "--skip-single", help="--gate-only: sources (comma-separated) whose "
                                    "first-turn rows another activations file holds."),
    sources: str = typer.Option("", "--sources", help="--gate-only: only these sources (comma-separated)."),
    realistic_data: bool = typer.Option(
        False, "--realistic-data", help="safety: also learn each realistic-use request's own target shift (topic "
        "pairs in every phrasing family, AIRT seeds; benign twins, hard negatives, everyday prompts as negatives)."),
) -> None:
    """Record hidden states and target shifts of the GGUF model on training data (never reads *test* files)."""
    _need_extra("safetensors", "train")
    from finesteer_edge.train.extract import ExtractConfig, extract

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    cfg = ExtractConfig(
        task=task, data=data, out=out, gate_layer=gate_layer, steer_layer=steer_layer,
        gate_layers=_layers(gate_layers), negatives=list(negatives or []), pairs_per_question=pairs_per_question,
        limit=limit, own_tokens=own_tokens, n_ctx=n_ctx, threads=threads, chat_template=chat_template,
        end_of_turn=end_of_turn,
        gate_only=gate_only,
        shapes=tuple(x.strip() for x in shapes.split(",") if x.strip()), shaped_fraction=shaped_fraction,
        families_per_topic=families_per_topic,
        skip_single=tuple(x.strip() for x in skip_single.split(",") if x.strip()),
        sources=tuple(x.strip() for x in sources.split(",") if x.strip()), realistic=realistic_data,
    )  # before the model: a contradictory command fails at once
    path = extract(resolve_model(model), cfg)
    from finesteer_edge.train.activations import load_activations

    acts = load_activations(path)
    n_t, n_n = int((acts.label == 1).sum()), int((acts.label == 0).sum())
    typer.echo(f"wrote {path}: {n_t} targets, {n_n} negatives, steer layer {acts.steer_layer}, "
               f"candidate gate layers {sorted(acts.layers)} ({acts.meta['seconds']} s)")


def train_cmd(
    acts: Path = typer.Argument(..., help="Activations file from `extract`."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    alpha: float = typer.Option(1.0, "--alpha", help="Steering strength baked into the checkpoint."),
    gate: str = typer.Option("auto", "--gate", help="scs (published), scs_logistic, or auto (choose on validation)."),
    gate_layer: int = typer.Option(None, "--gate-layer", help="Force the gate layer (default: choose on validation)."),
    seed: int = typer.Option(0, "--seed"),
    negative_weight: float = typer.Option(
        1.0, "--negative-weight", min=0.0,
        help="Weight of negatives (zero target) in MoSE training; 0 = targets only, as published.",
    ),
    epochs: int = typer.Option(100, "--epochs", min=1),
    mlp_hidden: int = typer.Option(
        None, "--mlp-hidden", min=1, help="Hidden width of MoSE's mixing MLP (default: min(d, 1024)).",
    ),
    threads: int = typer.Option(2, "--threads", "-t", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the training report as JSON."),
    gate_acts: list[Path] = typer.Option(None, "--gate-acts", help="Extra gate-only activations (extract "
                                         "--gate-only): the gate is fitted on their rows plus the main file's."),
    gate_select: str = typer.Option("val", "--gate-select", help="val (validation split) or loso "
                                    "(leave-one-source-out over sources and conversation shapes)."),
    head_acts: list[Path] = typer.Option(None, "--head-acts", help="Gate-only activations (extract --gate-only) whose "
                                         "rows also train the head: harmful ones towards the mean shift, the rest "
                                         "towards zero (sources the main file holds are skipped)."),
    head_exclude: str = typer.Option("", "--head-exclude", help="Sources (comma-separated; 'tpl:' = every "
                                     "source starting so) the head does not learn from, in --head-acts and in the "
                                     "main file: a leave-sources-out check."),
    head_feature: str = typer.Option("last", "--head-feature", help=f"What the MoSE head reads at the steer layer: "
                                     f"{choices(HEAD_FEATURES)} (the pooled ones need the steer layer among the "
                                     "extraction's --gate-layers)."),
) -> None:
    """Fit the SCS gate and the MoSE head (deterministic for a seed); writes the checkpoint and a report."""
    _need_extra("torch", "train")
    _need_extra("sklearn", "train")
    from finesteer_edge.train.trainer import TrainConfig, summarize, train

    if gate not in ("auto", *TRAINED_GATE_KINDS):
        raise typer.BadParameter(f"--gate must be {choices(('auto', *TRAINED_GATE_KINDS))}")
    if head_feature not in HEAD_FEATURES:
        raise typer.BadParameter(f"--head-feature must be {choices(HEAD_FEATURES)}")
    report = train(acts, out, TrainConfig(alpha=alpha, seed=seed, gate_kind=gate, gate_layer=gate_layer,
                                          epochs=epochs, threads=threads, negative_weight=negative_weight,
                                          hidden=mlp_hidden, gate_acts=list(gate_acts or []),
                                          gate_select=gate_select, head_feature=head_feature,
                                          head_acts=list(head_acts or []),
                                          head_exclude=[x.strip() for x in head_exclude.split(",") if x.strip()]))
    if as_json:
        typer.echo(json.dumps(report, default=float))
        return
    typer.echo(summarize(report))
    typer.echo(f"wrote {out} (report: {out / 'report.md'})")


def convert_cmd(
    ckpt: Path = typer.Argument(..., help="Checkpoint dir, official FineSteer .pth, or control-vector .gguf."),
    out: Path = typer.Option(..., "--out", help="Pack directory to write."),
    model: str = typer.Option(None, "--model", "-m", help="GGUF (or known name) whose fingerprint the pack gets."),
    alpha: float = typer.Option(None, "--alpha", help="Override the checkpoint's strength."),
    tau: float = typer.Option(None, "--tau", help="Override the gate threshold."),
    mode: str = typer.Option("exact", "--mode", help="Default runtime mode stored in the pack: exact or fast."),
    name: str = typer.Option("", "--name", help="Pack name (default: the directory name)."),
    description: str = typer.Option("", "--description"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing pack."),
    prototypes: Path = typer.Option(None, "--prototypes", help="Official .pth: prototype bank C (K x d) file."),
    basis: Path = typer.Option(None, "--basis", help="Official .pth: residual basis U (d x k) file."),
    activations: Path = typer.Option(None, "--activations", help="Activations to recompute C/U (official .pth)."),
    official_layer: int = typer.Option(None, "--official-layer", help="Official L: features at block L's input."),
    gate_checkpoint: Path = typer.Option(None, "--gate-checkpoint", help="Our checkpoint whose SCS gate to use."),
    strength: float = typer.Option(1.0, "--strength", help="Control-vector import: scale the vectors."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fold and export a checkpoint into a steering pack (head.onnx, control.gguf, manifest.json)."""
    _need_extra("onnx", "convert")
    from finesteer_edge.converters.convert import convert

    if mode not in MODES:
        raise typer.BadParameter(f"--mode must be {choices(MODES)}")
    if out.exists() and not overwrite:
        raise FinesteerError(f"{out} exists; pass --overwrite to replace it")
    model_path = resolve_model(model) if model else None
    report = convert(ckpt, out, model=model_path, alpha=alpha, tau=tau, mode=mode, name=name,
                     description=description, overwrite=overwrite, prototypes=prototypes, basis=basis,
                     activations=activations, official_layer=official_layer, gate_checkpoint=gate_checkpoint,
                     strength=strength)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    typer.echo(
        f"wrote {report.pack} ({report.method}): {report.pack_bytes:,} bytes; head.onnx {report.head_bytes:,} bytes\n"
        f"  head weights folded {report.folded_bytes:,} bytes vs unfolded {report.unfolded_bytes:,} bytes "
        f"({report.unfolded_bytes / max(report.folded_bytes, 1):.1f}x)\n"
        f"  layers {report.layers}; folded vs torch max rel. error {report.fold_max_rel_error:.1e}, "
        f"ONNX vs folded {report.onnx_max_rel_error:.1e}"
    )


def make_pack_cmd(
    model: str = typer.Argument(None, help="GGUF path or known model name (default model if omitted)."),
    task: str = typer.Option(..., "--task", help="safety or truthfulqa."),
    data: Path = typer.Option(None, "--data", help="Your own data folder (the task's layout, see docs/TRAINING.md); "
                              "default: the curated data shipped with the package."),
    out: Path = typer.Option(None, "--out", help="Pack directory to write (default ./MODEL-TASK-pack); work files go "
                             "to OUT.work/."),
    budget: str = typer.Option(None, "--budget", help="auto (default: the most rows, up to 100 per file, that fit "
                               "20 minutes, estimated on this model and machine), a time such as 45min (auto with "
                               "that target), quick (40 rows per file), default (100), full (all rows) or a number "
                               "of rows per file; safety: also the gate data's rows per source."),
    threads: int = typer.Option(None, "--threads", "-t", min=1, help="llama.cpp and torch threads."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip stages whose inputs are unchanged and go "
                                "on with an interrupted extraction (default), or start again."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT not made by make-pack."),
    epochs: int = typer.Option(100, "--epochs", min=1, help="MoSE training epochs (early stopping applies)."),
    seed: int = typer.Option(0, "--seed"),
    own_tokens: int = typer.Option(48, "--own-tokens", min=1, help="Length of the model's own (undesired) answer."),
    n_ctx: int = typer.Option(2048, "--n-ctx"),
    chat_template: str = typer.Option(None, "--chat-template", help="Chat template NAME or FILE (as in extract and "
                                      "eval; default: the model's own)."),
    eval_rows: int = typer.Option(None, "--eval-rows", min=1, help="Rows per test file in the short evaluation "
                                  "(default from the budget: 10 quick, 25 auto and default, 50 full)."),
    eval_tokens: int = typer.Option(32, "--eval-tokens", min=1, help="New tokens per evaluated answer (greedy)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Extract, train, convert, verify and evaluate: one command from a GGUF model to a verified pack."""
    _need_extra("torch", "train")
    _need_extra("sklearn", "train")
    _need_extra("onnx", "convert")
    from finesteer_edge.train.make_pack import MakePackConfig, format_summary, make_pack, parse_budget

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    b = parse_budget(budget)
    if eval_rows is not None:
        b = dataclasses.replace(b, eval_rows=eval_rows)
    model_path = resolve_model(model, show_progress=not as_json)
    if out is None:
        out = Path.cwd() / f"{model_path.stem.split('.')[0]}-{task}-pack"
    out = out.expanduser().absolute()
    try:
        summary = make_pack(MakePackConfig(
            model=model_path, task=task, out=out, data=data, budget=b, threads=threads,
            resume=resume, overwrite=overwrite, seed=seed, epochs=epochs, own_tokens=own_tokens, n_ctx=n_ctx,
            chat_template=chat_template, eval_max_tokens=eval_tokens, show_progress=True,
        ))
    except KeyboardInterrupt:
        print(f"make-pack stopped; run the same command again to resume (work files: {out}.work)", file=sys.stderr)
        raise
    if as_json:
        typer.echo(json.dumps(summary, default=str))
        return
    typer.echo(format_summary(summary))


def regate_cmd(
    pack: Path = typer.Argument(..., help="FineSteer pack whose MoSE head and control vector to keep."),
    gate_acts: list[Path] = typer.Option(..., "--gate-acts", help="Activations for the gate (repeatable; "
                                         "extract --gate-only files and/or a safety extraction)."),
    out: Path = typer.Option(..., "--out", help="Pack directory to write."),
    report: Path = typer.Option(None, "--report", help="Write the gate's report.md/report.json here."),
    gate_layers: str = typer.Option(None, "--gate-layers", help="Candidate layers (default: all extracted)."),
    kinds: str = typer.Option(",".join(GATE_CANDIDATE_KINDS), "--kinds", help="Candidate gate kinds."),
    features: str = typer.Option(None, "--gate-features", help="Candidate gate features, of "
                                 f"{', '.join(GATE_FEATURES)} (default: every one the files hold; the pooled ones "
                                 "come from extract --gate-only)."),
    name: str = typer.Option("", "--name", help="Pack name (default: the old pack's)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Replace a pack's gate by one chosen by leave-one-source-out on gate activations (MoSE unchanged)."""
    _need_extra("sklearn", "train")
    _need_extra("onnx", "convert")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from finesteer_edge.converters.regate import regate
    from finesteer_edge.data import file_sha256
    from finesteer_edge.train.activations import load_activations
    from finesteer_edge.train.gate_select import candidates, gate_data, runtime_features, select_gate
    from finesteer_edge.train.trainer import _loso_lines

    if out.exists() and not overwrite:
        raise FinesteerError(f"{out} exists; pass --overwrite to replace it")
    files = [load_activations(p) for p in gate_acts]
    if any(a.fingerprint != files[0].fingerprint for a in files):
        raise FinesteerError("the --gate-acts files come from different models")
    data = gate_data(files)
    layers = _layers(gate_layers) or data.layers
    feats = tuple(f.strip() for f in features.split(",") if f.strip()) if features else runtime_features(data)
    missing = sorted(set(feats) - set(data.features()))
    if missing:
        raise FinesteerError(f"gate features {missing} are not in every --gate-acts file; they hold "
                             f"{', '.join(data.features())}")
    gate, selection = select_gate(data, candidates(layers, tuple(k.strip() for k in kinds.split(",") if k.strip()),
                                                   feats), seed=seed)
    g = {"kind": gate.kind, "layer": gate.layer, "feature": gate.feature, "tau": gate.tau,
         "candidates": selection["candidates"],
         "val": gate.metrics, "selection": "leave-one-source-out",
         "gate_acts": [{"file": str(p), "sha256": file_sha256(p)} for p in gate_acts]}
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "report.json").write_text(json.dumps(g, indent=1, default=float))
        (report / "report.md").write_text("# Gate report (regate)\n\n" + f"Chosen: {gate.metrics['candidate']}, "
                                          f"tau {gate.tau:.4f}.\n\n" + "\n".join(_loso_lines(g)) + "\n")
    prov = {"selection": "leave-one-source-out", "candidate": gate.metrics["candidate"],
            "gate_acts": g["gate_acts"], "val": {k: gate.metrics[k] for k in ("recall", "fpr", "auroc")},
            "loso": {k: gate.metrics["loso"][k] for k in ("loso_recall", "loso_fpr", "loso_min_shape_recall",
                                                           "loso_max_shape_fpr")}}
    regate(pack, gate, out, name=name, overwrite=overwrite, gate_provenance=prov)
    typer.echo(f"gate: {gate.metrics['candidate']} tau {gate.tau:.4f}; LOSO recall "
               f"{gate.metrics['loso']['loso_recall']:.3f} FPR {gate.metrics['loso']['loso_fpr']:.3f}; "
               f"validation recall {gate.metrics['recall']:.3f} FPR {gate.metrics['fpr']:.3f}")
    typer.echo(f"wrote {out}")
