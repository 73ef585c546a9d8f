"""``serve``: the OpenAI-compatible local server (needs the ``serve`` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from finesteer_edge.errors import FinesteerError
from finesteer_edge.model_info import read_model_info
from finesteer_edge.resolve import default_pack_for, resolve_model, resolve_pack
from finesteer_edge.vocab import GATE_POLICIES, MODES, VECTOR_SOURCES, choices

from .run_cmds import (
    ALLOW_OPT,
    CTX_OPT,
    MODE_OPT,
    MODEL_ARG,
    NO_PACK_OPT,
    STRENGTH_OPT,
    TEMPLATE_OPT,
    THREADS_OPT,
    THRESHOLD_OPT,
    VECTOR_OPT,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


def serve_cmd(
    model: str = MODEL_ARG,
    pack: list[str] = typer.Option(
        None, "--pack", "-p",
        help="Pack directory or bundled pack name (repeatable; every pack is loaded into each slot's one context, "
             "and requests that do not name packs get all of them). Default: the model's bundled pack.",
    ),
    no_pack: bool = NO_PACK_OPT,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535),
    parallel: int = typer.Option(1, "--parallel", "-np", min=1, max=64,
                                 help="Slots: concurrent requests, each its own llama.cpp context on one model."),
    api_key: str = typer.Option(None, "--api-key", envvar="FINESTEER_API_KEY",
                                help="Require 'Authorization: Bearer KEY' on /v1/* (env FINESTEER_API_KEY)."),
    threads: int = THREADS_OPT,
    n_ctx: int = CTX_OPT,
    strength: float = STRENGTH_OPT,
    mode: str = MODE_OPT,
    gate: str = typer.Option("pack", "--gate",
                             help=f"Default gate: {choices(GATE_POLICIES)} (pack: the pack's threshold decides)."),
    vector: str = VECTOR_OPT,
    gate_threshold: float = THRESHOLD_OPT,
    allow_unsteered: bool = ALLOW_OPT,
    max_queue: int = typer.Option(16, "--max-queue", min=0, help="Requests that may wait for a slot; more get 503."),
    queue_timeout: float = typer.Option(60.0, "--queue-timeout", min=0.0,
                                        help="Seconds a request waits for a slot before a 503."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024, help="Larger request bodies get 413."),
    model_alias: str = typer.Option(None, "--model-alias", help="Model id in /v1/models (default: the file stem)."),
    chat_template: str = TEMPLATE_OPT,
) -> None:
    """OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models, /health), steered per request."""
    try:
        import uvicorn

        from finesteer_edge.serve.app import create_app
        from finesteer_edge.serve.engine import ServeConfig, build_engine
    except ImportError as exc:
        raise FinesteerError(f"serve needs the serve extra ({exc.name} is missing): "
                             "pip install 'finesteer-edge[serve]'") from exc
    if pack and no_pack:
        raise typer.BadParameter("--pack and --no-pack exclude each other")
    for flag, value, allowed in (("--mode", mode, MODES), ("--gate", gate, GATE_POLICIES),
                                 ("--vector", vector, VECTOR_SOURCES)):
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{flag} must be {choices(allowed)}, not {value!r}")
    from finesteer_edge.serve.steering import MAX_STRENGTH

    if not abs(strength) <= MAX_STRENGTH:
        raise typer.BadParameter(f"--strength must be in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}]")
    model_path = resolve_model(model)
    pack_paths: list[Path] = [resolve_pack(p) for p in pack or []]
    if not pack_paths and not no_pack:
        found = default_pack_for(read_model_info(model_path))
        if found is None:
            print(f"note: no bundled pack for {model_path.name}; serving unsteered (--pack to steer)", file=sys.stderr)
        else:
            pack_paths = [found]
    if host not in LOOPBACK and api_key is None:
        print(f"warning: binding {host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    cfg = ServeConfig(model_path=model_path, pack_paths=pack_paths, model_id=model_alias, parallel=parallel,
                      n_ctx=n_ctx, n_threads=threads, strength=strength, mode=mode, gate=gate, vector=vector,
                      threshold=gate_threshold, allow_unsteered=allow_unsteered, max_queue=max_queue,
                      queue_timeout=queue_timeout, max_body_bytes=max_body_bytes, api_key=api_key,
                      chat_template=chat_template)
    engine = build_engine(cfg)  # loads and verifies every pack: a PackError ends here with exit code 2
    try:
        packs = ", ".join(engine.packs) or "none"
        threads_used = engine.pool.slots[0].llm.n_threads
        template = engine.pool.slots[0].llm.chat_template.name
        print(f"finesteer-edge serve: {engine.model_id} on http://{host}:{port}/v1  slots {parallel}  "
              f"threads {threads_used}/slot  packs: {packs}  chat template: {template}", file=sys.stderr)
        for name, why in engine.failed.items():
            print(f"STEERING DISABLED: pack {name} is not served: {why}", file=sys.stderr)
        config = uvicorn.Config(create_app(engine), host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        uvicorn.Server(config).run()
    finally:
        engine.close()
