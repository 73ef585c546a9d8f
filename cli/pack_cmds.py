"""``inspect``, ``verify`` and ``set-defaults``: look into a pack, prove it works with a model, record how it steers."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from finesteer_edge.pack.pack import SteeringPack
from finesteer_edge.resolve import resolve_model, resolve_pack


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
    app.command("verify")(verify_cmd)
    app.command("set-defaults")(set_defaults_cmd)


def inspect_cmd(
    pack: list[str] = typer.Argument(..., help="Pack directory or bundled pack name (several: inspect the set)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a pack's layers, alpha, tau, experts, sizes and model fingerprint (checksums are verified).

    With several packs: each one, then the set as it would run together (tapped and steered layers)."""
    if len(pack) > 1:
        _inspect_set([SteeringPack.load(resolve_pack(x)) for x in pack], as_json)
        return
    p = SteeringPack.load(resolve_pack(pack[0]))
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
        f"inputs      gate reads {m.gate_feature} at {m.gate_layer}, head reads {m.head_feature} at {m.head_layer}  "
        "(last = the last prompt token; user_mean / user_end = the last user message)",
        f"alpha       {m.alpha:g}",
        f"strength    {m.strength:g}  (the pack's own; --strength multiplies it)",
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


def _inspect_set(packs: list[SteeringPack], as_json: bool) -> None:
    from finesteer_edge.multipack import describe_set

    combined = describe_set(packs)
    if as_json:
        typer.echo(json.dumps({"packs": [{**p.describe(), "provenance": p.manifest.provenance} for p in packs],
                               "combined": combined}, indent=2))
        return
    lines = []
    for p in packs:
        m = p.manifest
        lines.append(f"pack        {m.name or p.path.name}  ({p.path}): gate layer {m.gate_layer} ({m.gate_kind}, "
                     f"tau {m.tau:g}), steer layer {m.steer_layer}, vector {m.vector_source}, K = {m.n_experts}")
    m0 = packs[0].manifest
    lines.append(f"model       {m0.model_name or '?'}: {m0.model.architecture}, {m0.model.n_layer} layers, "
                 f"n_embd {m0.model.n_embd} (every pack fits it)")
    lines.append(f"prefill     one, tapping layers {combined['tap_layers']}; one head run per pack")
    steer = combined["steer_layers"]
    assert isinstance(steer, dict)
    for layer, names in steer.items():
        how = "their open vectors add (capped at the largest single norm)" if len(names) > 1 else "alone"
        lines.append(f"layer {layer:<5} steered by {', '.join(names)}: {how}")
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
    from finesteer_edge.verify import verify_pack

    model_path = resolve_model(model)
    report = verify_pack(resolve_pack(pack), model_path, n_threads=threads)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    lines = [f"ok: {Path(report.pack_path).name} fits {model_path.name}"]
    lines += [f"  {c.name:<12} ok ({c.detail})" if c.name != "selftest" else f"  {'self-test':<12} ok: {c.detail}"
              for c in report.checks]
    typer.echo("\n".join(lines))


def set_defaults_cmd(
    pack: str = typer.Argument(..., help="Pack directory or bundled pack name."),
    out: Path = typer.Option(..., "--out", help="Pack directory to write (the same as PACK with --overwrite)."),
    vector: str = typer.Option(None, "--vector",
                               help="Default vector source: head, mean, projected or head_direction."),
    strength: float = typer.Option(None, "--strength", help="The pack's own strength (> 0; turns multiply it)."),
    schedule: str = typer.Option(None, "--schedule", help="Default schedule: all, K, K:linear or K:exp."),
    note: str = typer.Option("", "--note", help="How the values were chosen (kept in the manifest's provenance)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Record how a pack steers by default (vector source, strength, schedule), chosen by measurement.

    Only manifest.json changes; the rewritten pack must load before it replaces anything, and the values it
    replaced are kept in provenance.defaults."""
    from finesteer_edge.converters.pack_defaults import set_pack_defaults
    from finesteer_edge.pack.manifest import MAX_PACK_STRENGTH
    from finesteer_edge.schedule import Schedule, ScheduleError
    from finesteer_edge.vocab import VECTOR_SOURCES, choices, vector_source_from_manifest

    if vector is not None and vector not in VECTOR_SOURCES:
        raise typer.BadParameter(f"--vector must be {choices(VECTOR_SOURCES)}, not {vector!r}")
    if strength is not None and not 0.0 < strength <= MAX_PACK_STRENGTH:
        raise typer.BadParameter(f"--strength must be in (0, {MAX_PACK_STRENGTH:g}], not {strength:g}")
    try:
        sched = Schedule.parse(schedule) if schedule else None
    except ScheduleError as exc:
        raise typer.BadParameter(f"--schedule: {exc}") from None
    if vector is None and strength is None and sched is None:
        raise typer.BadParameter("nothing to set: give --vector, --strength or --schedule")
    src = resolve_pack(pack)
    if out.exists() and not overwrite:
        raise typer.BadParameter(f"{out} exists; pass --overwrite to replace it")
    set_pack_defaults(src, out, vector_source=vector, strength=strength, schedule=sched,  # type: ignore[arg-type]
                      note=note, overwrite=overwrite)
    m = SteeringPack.load(out).manifest
    source = vector_source_from_manifest(m.vector_source)  # type: ignore[arg-type]
    typer.echo(f"wrote {out}: vector {source}, strength {m.strength:g}, schedule {_schedule_text(m.schedule)} "
               f"(format version {m.written_version})")
