"""Shared fixtures: the tiny llama GGUF (written per run) and the real SmolLM2 GGUF (pulled once)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from finesteer_edge.evaluation.datasets import PACKAGED_DATA  # noqa: E402
from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_llama  # noqa: E402

SHARED_DATA = PACKAGED_DATA
"""The curated data, shipped in the package (a copy of the team's shared/data, checked by SHA256SUMS)."""
THREADS = 2


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_model_other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same family, different width: packs for it must not load on ``tiny_model``."""
    cfg = TinyConfig(n_embd=128, n_head=2, n_head_kv=1, n_ff=256, seed=1)
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_other") / "tiny128.gguf", cfg)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1, pulled into the user's cache once (a no-op when present)."""
    from finesteer_edge.pull import pull

    return pull("smollm2-135m-instruct", show_progress=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    # Shipped with the package: a missing folder is a broken checkout or wheel, a failure, never a skip.
    assert SHARED_DATA.is_dir(), f"curated data not found at {SHARED_DATA}"
    return SHARED_DATA


def load_script(relpath: str) -> types.ModuleType:
    """A script of the repository (e.g. ``scripts/fuzz_packs.py``) imported as a module, to call its functions."""
    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look their module up there
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from finesteer_edge.cli.app import main; main()", *args],
        capture_output=True, text=True, env=full_env, input=input, timeout=timeout,
    )
