"""``inspect`` and ``verify``: look into a pack and prove it works with a model."""

from __future__ import annotations

import json

import typer

from finesteer_edge.pack.pack import SteeringPack
from finesteer_edge.resolve import resolve_model, resolve_pack


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
    app.command("verify")(verify_cmd)


def inspect_cmd(
    pack: str = typer.Argument(..., help="Pack directory or bundled pack name."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a pack's layers, alpha, tau, experts, sizes and model fingerprint (checksums are verified)."""
    p = SteeringPack.load(resolve_pack(pack))
    info = p.describe()
    info["provenance"] = p.manifest.provenance
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    m = p.manifest
    lines = [
        f"pack        {m.name or p.path.name}  ({p.path})",
        f"method      {m.method}  (gate: {m.gate_kind}, vector: {m.vector_source}, default mode: {m.mode})",
        f"model       {m.model_name or '?'}: {m.model.architecture}, {m.model.n_layer} layers, "
        f"n_embd {m.model.n_embd}, vocab {m.model.n_vocab}",
        f"tokenizer   sha256 {m.model.tokenizer_sha256[:16]}...",
        f"layers      gate {m.gate_layer}, steer {m.steer_layer}  (layer N = output of block N)",
        f"alpha       {m.alpha:g}",
        f"tau         {m.tau:g}  (steer iff gate score >= tau)",
        f"experts     K = {m.n_experts}, basis rank k = {m.basis_rank}",
        f"control     direction layers {sorted(p.control.directions)}",
        f"schedule    {_schedule_text(m.schedule)}",
        f"spread      {f'layers {m.spread.first}..{m.spread.last} (vector split evenly)' if m.spread else 'none'}",
    ]
    for name, entry in sorted(m.files.items()):
        lines.append(f"{name:<11} {entry.bytes:>10,} bytes  sha256 {entry.sha256[:16]}...")
    lines.append(f"total       {sum(e.bytes for e in m.files.values()):>10,} bytes")
    if m.description:
        lines.append(f"about       {m.description}")
    typer.echo("\n".join(lines))


def _schedule_text(s) -> str:  # type: ignore[no-untyped-def]
    if s is None or s.always_on:
        return "whole turn (prompt and every generated token)"
    rest = "" if s.decay == "none" else f", {s.decay} decay in {s.steps} levels"
    return (f"{'prompt + ' if s.prompt else ''}first {s.tokens} generated tokens{rest}, then "
            f"{'off' if s.floor == 0 else f'x{s.floor:g}'}")


def verify_cmd(
    pack: str = typer.Argument(..., help="Pack directory or bundled pack name."),
    model: str = typer.Option(None, "--model", "-m", help="GGUF path or known model name (default model if omitted)."),
    threads: int = typer.Option(None, "--threads", "-t", help="llama.cpp threads."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Verify checksums, the model fingerprint and the llama.cpp self-test (tap + control vector)."""
    from finesteer_edge.steered import SteeredLlama

    model_path = resolve_model(model)
    p = SteeringPack.load(resolve_pack(pack))
    llm = SteeredLlama(model_path, p, n_threads=threads, n_ctx=512)
    report = {"ok": True, "pack": str(p.path), "model": str(model_path), "checksums": "ok", "fingerprint": "ok",
              "selftest": llm.selftest.to_dict() if llm.selftest else None}
    llm.close()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    st = llm.selftest
    assert st is not None
    typer.echo(
        f"ok: {p.path.name} fits {model_path.name}\n"
        f"  checksums    ok ({', '.join(sorted(p.manifest.files))})\n"
        f"  fingerprint  ok ({p.manifest.model.architecture}, {p.manifest.model.n_layer} layers, "
        f"n_embd {p.manifest.model.n_embd})\n"
        f"  self-test    ok: tap '{st.tap_method}' reads layer {st.steer_layer} as +v within {st.max_tap_error:.2g}; "
        f"'{st.cvec_api}' changes logits by up to {st.logit_change:.3g} and clears bit-exactly"
    )
