"""``generate`` and ``chat``: run a model with its steering pack."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from finesteer_edge.errors import FinesteerError
from finesteer_edge.model_info import read_model_info
from finesteer_edge.resolve import default_pack_for, resolve_model, resolve_pack
from finesteer_edge.result import GenerationResult
from finesteer_edge.settings import CLI_PENALTIES
from finesteer_edge.vocab import CONTEXT_POLICIES, MODES, VECTOR_SOURCES, choices

MODEL_ARG = typer.Argument(None, help="GGUF path or known model name (default: smollm2-135m-instruct).")
PACK_OPT = typer.Option(
    None, "--pack", "-p",
    help="Pack directory or bundled pack name (default: the model's bundled pack). Repeat it to load several "
         "packs: each is gated on its own, the open ones' vectors add.",
)
NO_PACK_OPT = typer.Option(False, "--no-pack", help="Plain llama.cpp generation, no steering.")
MODE_OPT = typer.Option(None, "--mode", help="exact (re-prefill steered turns) or fast; default: the pack's.")
THREADS_OPT = typer.Option(None, "--threads", "-t", help="llama.cpp threads (default: all usable cores).")
CTX_OPT = typer.Option(4096, "--n-ctx", help="Context size in tokens.")
STRENGTH_OPT = typer.Option(1.0, "--strength", help="Multiply the pack's steering vector.")
VECTOR_OPT = typer.Option(
    None, "--vector",
    help="head (the pack's per-prompt vector), mean (its static mean vector, still gated: CAST-style) or "
         "projected (the mean's direction at the head's per-prompt length) or head_direction (the head's "
         "per-prompt direction at the mean's length). Default: the pack's own.",
)
THRESHOLD_OPT = typer.Option(
    None, "--gate-threshold", min=0.0,
    help="Steer iff the gate score >= this, for every pack (default: each pack's own tau). Higher: fewer "
         "false positives and fewer hits (the bundled safety pack's held-out rates per threshold: "
         "docs/gate/GATE_CURVE.md).",
)
TEMPLATE_OPT = typer.Option(
    None, "--chat-template",
    help="Prompt format: chatml, llama3, gemma, phi3, plain, or a Jinja file. Default: the model's own "
         "(a model without one falls back to plain, with a warning).",
)
REPEAT_OPT = typer.Option(CLI_PENALTIES.repeat_penalty, "--repeat-penalty", help="llama.cpp repeat penalty "
                          "(1.0 = off), applied to steered, gate-closed and --no-pack turns alike, greedy or sampled.")
REPEAT_N_OPT = typer.Option(CLI_PENALTIES.repeat_last_n, "--repeat-last-n", min=0,
                            help="Tokens the repeat penalty looks back over.")
DRY_OPT = typer.Option(CLI_PENALTIES.dry_multiplier, "--dry-multiplier", min=0.0, help="llama.cpp DRY repetition "
                       "penalty (0 = off). With --repeat-penalty 1 --dry-multiplier 0 the sampler is plain greedy / "
                       "top-k/top-p/min-p.")
SCHEDULE_OPT = typer.Option(None, "--schedule", help="Steering schedule over the turn: all, K (on for the "
                            "prompt and K tokens), K:linear or K:exp; default: the pack's.")
ALLOW_OPT = typer.Option(
    False, "--allow-unsteered",
    help="If the pack cannot be applied, continue WITHOUT steering (loud). Default: stop with an error.",
)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
    app.command("chat")(chat_cmd)


def open_llm(model: str | None, packs: list[str] | None, no_pack: bool, *, mode: str | None, threads: int | None,
             n_ctx: int, strength: float, allow_unsteered: bool, quiet: bool = False,
             context_policy: str = "error", vector: str | None = None,
             chat_template: str | None = None, threshold: float | None = None,
             schedule: str | None = None):  # type: ignore[no-untyped-def]
    """The SteeredLlama the options describe, the model path and the pack paths (empty: unsteered)."""
    from finesteer_edge.schedule import Schedule, ScheduleError
    from finesteer_edge.steered import SteeredLlama

    if packs and no_pack:
        raise typer.BadParameter("--pack and --no-pack exclude each other")
    for flag, value, allowed in (("--mode", mode, MODES), ("--context-policy", context_policy, CONTEXT_POLICIES),
                                 ("--vector", vector, VECTOR_SOURCES)):
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{flag} must be {choices(allowed)}, not {value!r}")
    try:
        sched = Schedule.parse(schedule) if schedule else None
    except ScheduleError as exc:
        raise typer.BadParameter(f"--schedule: {exc}") from None
    model_path = resolve_model(model)
    pack_paths: list[Path] = []
    if packs:
        pack_paths = [resolve_pack(p) for p in packs]
    elif not no_pack:
        found = default_pack_for(read_model_info(model_path))
        pack_paths = [found] if found is not None else []
        if not pack_paths and not quiet:
            print(f"note: no bundled pack for {model_path.name}; generating unsteered (--pack to steer)",
                  file=sys.stderr)
    return SteeredLlama(model_path, packs=pack_paths, mode=mode, n_threads=threads, n_ctx=n_ctx, strength=strength,
                        allow_unsteered=allow_unsteered, context_policy=context_policy,
                        vector_source=vector, threshold=threshold, chat_template=chat_template,
                        schedule=sched), model_path, pack_paths


def generate_cmd(
    model: str = MODEL_ARG,
    prompt: str = typer.Option(..., "--prompt", help="The user message."),
    pack: list[str] = PACK_OPT,
    no_pack: bool = NO_PACK_OPT,
    mode: str = MODE_OPT,
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", min=0, help="Generate at most this many tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    seed: int = typer.Option(None, "--seed", help="Sampling seed (temperature > 0)."),
    stop: list[str] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    system: str = typer.Option(None, "--system", help="A system message before the prompt."),
    threads: int = THREADS_OPT,
    n_ctx: int = CTX_OPT,
    strength: float = STRENGTH_OPT,
    vector: str = VECTOR_OPT,
    gate_threshold: float = THRESHOLD_OPT,
    allow_unsteered: bool = ALLOW_OPT,
    chat_template: str = TEMPLATE_OPT,
    repeat_penalty: float = REPEAT_OPT,
    repeat_last_n: int = REPEAT_N_OPT,
    dry_multiplier: float = DRY_OPT,
    schedule: str = SCHEDULE_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the result."),
    explain: bool = typer.Option(False, "--explain", help="After the answer, show every pack's gate decision."),
) -> None:
    """Answer one prompt; each pack's gate decides whether it steers this turn."""
    pen = _penalties(repeat_penalty, repeat_last_n, dry_multiplier)
    llm, model_path, _ = open_llm(model, pack, no_pack, mode=mode, threads=threads, n_ctx=n_ctx,
                                  strength=strength, allow_unsteered=allow_unsteered, quiet=as_json,
                                  vector=vector, chat_template=chat_template, schedule=schedule,
                                  threshold=gate_threshold)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    kwargs = dict(max_tokens=max_tokens, temperature=temperature, seed=seed, stop=stop or (), penalties=pen)
    if as_json:
        result = llm.generate(messages, **kwargs)
    else:
        result = None
        for item in llm.chat(messages, stream=True, **kwargs):  # type: ignore[union-attr]
            if isinstance(item, GenerationResult):
                result = item
            else:
                sys.stdout.write(item)
                sys.stdout.flush()
        sys.stdout.write("\n")
    assert result is not None
    if as_json:
        d = result.to_dict()
        used = [str(p.path) for p in llm.packs]
        d.update(model=str(model_path), pack=used[0] if used else None, pack_paths=used,
                 threads=llm.n_threads, unsteered_reason=llm.unsteered_reason,
                 chat_template=llm.chat_template.name)
        typer.echo(json.dumps(d))
    if explain:
        print(_explain_line(1, result), file=sys.stderr)
    llm.close()


def _penalties(repeat_penalty: float, repeat_last_n: int, dry_multiplier: float):  # type: ignore[no-untyped-def]
    from finesteer_edge.settings import Penalties

    try:
        return Penalties(repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, dry_multiplier=dry_multiplier)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _explain_line(turn: int, r: GenerationResult) -> str:
    """One line per turn; with several packs, then one indented line per pack."""
    if r.gate_score is None:
        return f"turn {turn}: no pack (unsteered)"
    verdict = "STEERED" if r.steered else "not steered"
    timing = f"{r.tokens} tokens in {r.seconds:.2f}s"
    if len(r.packs) <= 1:
        weights = ", ".join(f"{w:.2f}" for w in (r.expert_weights or []))
        return (f"turn {turn}: {verdict}  gate score {r.gate_score:.4f} vs threshold {r.threshold:.4f}  "
                f"mode {r.mode}  experts [{weights}]  {timing}")
    n_open = sum(p.steered for p in r.packs)
    lines = [f"turn {turn}: {verdict} ({n_open} of {len(r.packs)} packs)  mode {r.mode}  {timing}"]
    for p in r.packs:
        weights = ", ".join(f"{w:.2f}" for w in p.expert_weights)
        lines.append(f"  {p.name}: {'STEERED' if p.steered else 'not steered'}  gate score {p.gate_score:.4f} "
                     f"vs threshold {p.threshold:.4f}  experts [{weights}]  strength {p.strength:g}")
    return "\n".join(lines)


def chat_cmd(
    model: str = MODEL_ARG,
    pack: list[str] = PACK_OPT,
    no_pack: bool = NO_PACK_OPT,
    mode: str = MODE_OPT,
    explain: bool = typer.Option(False, "--explain", help="After every turn, show the gate decision."),
    system: str = typer.Option(None, "--system", help="System message for the conversation."),
    max_tokens: int = typer.Option(512, "--max-tokens", "-n", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    seed: int = typer.Option(None, "--seed"),
    threads: int = THREADS_OPT,
    n_ctx: int = CTX_OPT,
    strength: float = STRENGTH_OPT,
    vector: str = VECTOR_OPT,
    gate_threshold: float = THRESHOLD_OPT,
    allow_unsteered: bool = ALLOW_OPT,
    chat_template: str = TEMPLATE_OPT,
    repeat_penalty: float = REPEAT_OPT,
    repeat_last_n: int = REPEAT_N_OPT,
    dry_multiplier: float = DRY_OPT,
    schedule: str = SCHEDULE_OPT,
    context_policy: str = typer.Option(
        "error", "--context-policy",
        help="When the conversation outgrows --n-ctx: error (report it; /reset to go on) or drop_oldest "
             "(forget the oldest exchanges, keep the system message).",
    ),
) -> None:
    """Interactive chat. Commands: /reset (new conversation), /explain (gate decisions so far), /quit."""
    pen = _penalties(repeat_penalty, repeat_last_n, dry_multiplier)
    llm, model_path, _ = open_llm(model, pack, no_pack, mode=mode, threads=threads, n_ctx=n_ctx,
                                  strength=strength, allow_unsteered=allow_unsteered,
                                  context_policy=context_policy, vector=vector, chat_template=chat_template,
                                  schedule=schedule, threshold=gate_threshold)
    interactive = sys.stdin.isatty()
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    history: list[GenerationResult] = []
    names = [p.path.name for p in llm.packs]
    pack_note = (f"pack {names[0]}" if len(names) == 1 else f"packs {', '.join(names)}") if names else "no pack"
    print(f"finesteer-edge chat: {model_path.name}, {pack_note}, mode {llm.mode}. "
          "/reset, /explain, /quit", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            llm.reset()
            messages = list(base)
            history.clear()
            print("(conversation reset)", file=sys.stderr)
            continue
        if text == "/explain":
            if not history:
                print("(no turns yet)")
            for i, r in enumerate(history, 1):
                print(_explain_line(i, r))
            continue
        if text.startswith("/"):
            print(f"unknown command {text}; commands: /reset, /explain, /quit", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": line})
        sys.stdout.write("assistant> " if interactive else "")
        result = None
        try:
            for item in llm.chat(messages, stream=True, max_tokens=max_tokens,  # type: ignore[union-attr]
                                 temperature=temperature, seed=seed, penalties=pen):
                if isinstance(item, GenerationResult):
                    result = item
                else:
                    sys.stdout.write(item)
                    sys.stdout.flush()
        except FinesteerError as exc:
            messages.pop()
            print(f"\nerror: {exc}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        assert result is not None
        if result.dropped_turns:
            from finesteer_edge.steered import drop_oldest_turns

            messages = drop_oldest_turns(messages, result.dropped_turns)
            print(f"(context full: forgot the {result.dropped_turns} oldest exchange(s))", file=sys.stderr)
        messages.append({"role": "assistant", "content": result.text})
        history.append(result)
        if explain:
            print(_explain_line(len(history), result))
    llm.close()
