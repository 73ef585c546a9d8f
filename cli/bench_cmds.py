"""``bench``: measure what steering costs on a user's own model and pack (quick; the full suite is ``bench/``)."""

from __future__ import annotations

import json
import sys

import typer

MODEL_ARG = typer.Argument(None, help="GGUF path or known model name (default: smollm2-135m-instruct).")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)


def bench_cmd(
    model: str = MODEL_ARG,
    pack: str = typer.Option(
        None, "--pack", "-p",
        help="Pack directory or bundled pack name (default: the model's bundled pack, else a random pack).",
    ),
    threads: int = typer.Option(None, "--threads", "-t", min=1, help="llama.cpp threads (default: usable cores)."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", min=2, help="New tokens per turn."),
    repeats: int = typer.Option(5, "--repeats", "-r", min=1, help="Timed rounds (medians over them)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed rounds first."),
    prompt: str = typer.Option(None, "--prompt", help="The user message (default: a short story request)."),
    n_ctx: int = typer.Option(1024, "--n-ctx", min=64, help="Context size of every variant."),
    head_iters: int = typer.Option(200, "--head-iters", min=1, help="Calls of the head to time."),
    no_stock: bool = typer.Option(False, "--no-stock", help="Skip llama-cpp-python's stock Llama loop."),
    sequential: bool = typer.Option(
        False, "--sequential",
        help="Load one variant at a time instead of interleaving (less memory, less robust to load changes). "
             "Chosen automatically when five copies of the model would not fit in memory.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Decode speed and time to first token: plain vs gate closed vs gate open (fast, exact); head latency, pack size.

    Every variant answers the same prompt greedily on a fresh KV cache; rounds are interleaved and reported as
    medians, ratios are against "plain" (our loop without a pack). Timings depend on machine load: the load
    average is printed with the results.
    """
    from finesteer_edge.measure.prompts import SHORT_PROMPT
    from finesteer_edge.measure.quick import format_report, jsonable, run_quick_bench
    from finesteer_edge.model_info import read_model_info
    from finesteer_edge.resolve import default_pack_for, resolve_model, resolve_pack

    model_path = resolve_model(model, show_progress=not as_json)
    pack_path = resolve_pack(pack) if pack else default_pack_for(read_model_info(model_path))
    if not as_json:
        print(f"benchmarking {model_path.name} ({repeats} rounds of {5 - no_stock} variants)...", file=sys.stderr)
    result = run_quick_bench(
        model_path, pack_path, threads=threads, max_tokens=max_tokens, repeats=repeats, warmup=warmup,
        n_ctx=n_ctx, prompt=prompt or SHORT_PROMPT, head_iters=head_iters, stock=not no_stock,
        interleave=False if sequential else None,
    )
    if as_json:
        typer.echo(json.dumps(jsonable(result), allow_nan=False))
    else:
        typer.echo(format_report(result))
