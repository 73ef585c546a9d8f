"""extract -> train -> convert -> verify -> generate on the real SmolLM2 with a slice of the packaged data (slow),
and the packs bundled for SmolLM2: they load, fit the model, pass the self-test and gate as trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import SteeredLlama, SteeringPack
from finesteer_edge.resolve import bundled_packs
from finesteer_edge.train.activations import load_activations

from .conftest import run_cli

pytestmark = pytest.mark.slow


def _jsonl(path: Path, n: int) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()[:n]]


def test_pipeline_on_smollm2_slice(smollm2: Path, shared_data: Path, tmp_path: Path) -> None:
    acts, ckpt, pack = tmp_path / "acts.safetensors", tmp_path / "ckpt", tmp_path / "pack"
    r = run_cli("extract", str(smollm2), "--task", "safety", "--data", str(shared_data / "safety"), "--out", str(acts),
                "--limit", "12", "--own-tokens", "8", "--steer-layer", "12", "--gate-layers", "12,15",
                "--threads", "2", "--n-ctx", "512", timeout=1200)
    assert r.returncode == 0, r.stderr
    a = load_activations(acts)
    assert a.steer_layer == 12 and a.meta["model"]["n_embd"] == 576 and a.meta["model"]["n_layer"] == 30
    assert sorted(a.layers) == [12, 15]
    r = run_cli("train", str(acts), "--out", str(ckpt), "--epochs", "20", "--threads", "2")
    assert r.returncode == 0, r.stderr
    r = run_cli("convert", str(ckpt), "--out", str(pack), "--model", str(smollm2))
    assert r.returncode == 0, r.stderr
    r = run_cli("verify", str(pack), "--model", str(smollm2), "--json")
    assert r.returncode == 0, r.stderr

    # The gate separates what it was trained on: harmful training prompts score above benign ones.
    llm = SteeredLlama(smollm2, pack=pack, n_threads=2, n_ctx=512)
    harmful = _jsonl(shared_data / "safety" / "harmful_train.jsonl", 6)
    benign = _jsonl(shared_data / "safety" / "benign_train.jsonl", 6)
    score = {name: [llm.generate(p, max_tokens=1).gate_score for p in ps]
             for name, ps in (("harmful", harmful), ("benign", benign))}
    assert np.mean(score["harmful"]) > np.mean(score["benign"]), score


@pytest.mark.parametrize("name", ["smollm2-135m-instruct-safety", "smollm2-135m-instruct-truthfulqa"])
def test_bundled_pack_fits_smollm2(name: str, smollm2: Path) -> None:
    packs = bundled_packs()
    assert name in packs, f"bundled packs: {sorted(packs)}"
    pack = SteeringPack.load(packs[name])
    assert pack.manifest.model.n_embd == 576 and pack.manifest.model.n_layer == 30
    r = run_cli("verify", str(packs[name]), "--model", str(smollm2), "--json")
    assert r.returncode == 0, r.stderr


def test_default_pack_is_safety_and_gates(smollm2: Path, shared_data: Path) -> None:
    """With no --pack, SmolLM2 gets the bundled safety pack; its gate opens on held-out harmful prompts
    far more often than on held-out benign ones (validation prompts, never seen in training)."""
    r = run_cli("generate", "--prompt", "Hello!", "-n", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert "safety" in json.loads(r.stdout)["pack"]
    llm = SteeredLlama(smollm2, pack=bundled_packs()["smollm2-135m-instruct-safety"], n_threads=2, n_ctx=1024)
    opened = {name: np.mean([llm.generate(p, max_tokens=1).steered for p in _jsonl(
        shared_data / "safety" / f"{name}_val.jsonl", 12)]) for name in ("harmful", "benign")}
    assert opened["harmful"] >= 0.8 and opened["benign"] <= 0.1, opened
