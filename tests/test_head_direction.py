"""The ``head_direction`` vector source (issue 11, DESIGN-NOTES item 19): the head's direction at the length of
the pack's mean vector, on the real tiny llama through llama.cpp, from the API, the CLI and a pack's own
manifest (format version 5)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import SteeredLlama, SteeringSettings
from finesteer_edge.decide import head_direction_at_mean_length
from finesteer_edge.errors import PackError, PackFormatError
from finesteer_edge.pack.pack import SteeringPack
from finesteer_edge.testing.packs import make_random_pack

from .conftest import run_cli

KW = dict(n_ctx=256, n_threads=1)
PROMPTS = ("Tell me a story about the sea.", "hi", "How do I bake bread?")


@pytest.fixture(scope="module")
def pack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tiny_model, tmp_path_factory.mktemp("head_direction") / "p", tau=-1.0,
                            vector_norm=60.0)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_head_direction_is_the_heads_direction_at_the_means_length(tiny_model: Path, pack: Path) -> None:
    llm = SteeredLlama(tiny_model, pack, **KW)
    p = llm.packs[0]
    layer = p.manifest.steer_layer
    mean = p.control.directions[layer].astype(np.float64)
    norms = []
    for text in PROMPTS:
        head = llm.decide_prompt(text, steering=SteeringSettings(vector_source="head", strength=1.5))[0]
        hd = llm.decide_prompt(text, steering=SteeringSettings(vector_source="head_direction", strength=1.5))[0]
        assert set(hd.vectors) == {layer} and hd.gate_score == head.gate_score
        v, h = hd.vectors[layer], head.vectors[layer]
        assert _cos(v, h) == pytest.approx(1.0, abs=1e-5)  # the head's direction ...
        assert np.linalg.norm(v) == pytest.approx(1.5 * np.linalg.norm(mean), rel=1e-5)  # ... at the mean's length
        assert _cos(v, mean) < 0.999  # not the mean's direction (the random head departs from it)
        norms.append(float(np.linalg.norm(h)))
    assert max(norms) - min(norms) > 1e-3  # the head's own lengths differ per prompt; head_direction's do not
    llm.close()


def test_a_zero_head_vector_steers_with_the_mean_and_a_non_finite_one_is_refused(pack: Path) -> None:
    p = SteeringPack.load(pack)
    mean = p.control.directions[p.manifest.steer_layer]
    np.testing.assert_allclose(head_direction_at_mean_length(p, np.zeros_like(mean)), mean, rtol=1e-6)
    np.testing.assert_allclose(head_direction_at_mean_length(p, -3 * mean), -mean, rtol=1e-5, atol=1e-6)
    bad = mean.copy()
    bad[0] = np.inf
    with pytest.raises(PackError, match="not finite"):
        head_direction_at_mean_length(p, bad)


def test_head_direction_generates_its_own_text_and_turns_are_reproducible(tiny_model: Path, pack: Path) -> None:
    llm = SteeredLlama(tiny_model, pack, **KW)
    text = PROMPTS[0]
    got = {src: llm.generate(text, max_tokens=12, steering=SteeringSettings(vector_source=src)).token_ids
           for src in ("head", "mean", "head_direction")}
    again = llm.generate(text, max_tokens=12, steering=SteeringSettings(vector_source="head_direction"))
    assert again.steered and again.token_ids == got["head_direction"]
    assert got["head_direction"] != got["head"] and got["head_direction"] != got["mean"]
    llm.close()


def test_head_direction_fails_closed_without_a_mean_at_the_steer_layer(tiny_model: Path, tmp_path: Path) -> None:
    """Without control.gguf's row at the steer layer there is no length to give the head's direction: an error,
    not an unsteered turn."""
    from finesteer_edge.pack.control_vector import write_control_vector
    from finesteer_edge.pack.manifest import CONTROL

    p = make_random_pack(tiny_model, tmp_path / "p", tau=-1.0, vector_norm=60.0)
    m = json.loads((p / "manifest.json").read_text())
    layer = m["layers"]["steer"]
    cv = SteeringPack.load(p).control
    write_control_vector(p / CONTROL, {layer + 1: cv.directions[layer]}, model_hint="llama",
                         n_layer=m["model"]["n_layer"])
    data = (p / CONTROL).read_bytes()
    m["vector_source"] = "control"
    m["files"][CONTROL] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (p / "manifest.json").write_text(json.dumps(m))
    llm = SteeredLlama(tiny_model, p, **KW)
    with pytest.raises(PackError, match="no direction.*head_direction"):
        llm.generate("hi", max_tokens=4, steering=SteeringSettings(vector_source="head_direction"))
    llm.close()


def test_cli_generate_takes_vector_head_direction(tiny_model: Path, pack: Path) -> None:
    r = run_cli("generate", str(tiny_model), "--pack", str(pack), "--vector", "head_direction", "-n", "6",
                "--threads", "1", "--json", "--prompt", PROMPTS[0])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steered"]


def test_set_defaults_head_direction_writes_version_5_and_steers_so_by_default(tiny_model: Path, pack: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    r = run_cli("set-defaults", str(pack), "--out", str(out), "--vector", "head_direction", "--note", "chosen on val")
    assert r.returncode == 0, r.stderr
    assert "format version 5" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["format_version"] == 5 and m["vector_source"] == "head_direction"
    assert json.loads(run_cli("inspect", str(out), "--json").stdout)["vector_source"] == "head_direction"
    tuned = SteeredLlama(tiny_model, out, **KW)
    plain = SteeredLlama(tiny_model, pack, vector_source="head_direction", **KW)
    assert tuned.vector_source == "head_direction"
    layer = m["layers"]["steer"]
    np.testing.assert_array_equal(tuned.decide_prompt(PROMPTS[0])[0].vectors[layer],
                                  plain.decide_prompt(PROMPTS[0])[0].vectors[layer])
    assert tuned.generate(PROMPTS[0], max_tokens=10).token_ids == plain.generate(PROMPTS[0], max_tokens=10).token_ids
    tuned.close()
    plain.close()


@pytest.mark.parametrize("version", [3, 4])
def test_a_manifest_saying_head_direction_below_version_5_is_refused(pack: Path, tmp_path: Path,
                                                                     version: int) -> None:
    """A reader of version 4 would not know the source; a file claiming an older version is malformed."""
    bad = tmp_path / "bad"
    shutil.copytree(pack, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m.update(vector_source="head_direction", format_version=version)
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackFormatError, match="needs format_version 5"):
        SteeringPack.load(bad)


@pytest.mark.parametrize("arch", ["qwen2"])
def test_head_direction_on_another_architecture_in_a_conversation(arch: str, tmp_path: Path) -> None:
    """The source is the same arithmetic on a tiny model of another architecture, with a system prompt and an
    earlier exchange before the request: the head's direction, the mean's length, and a steered turn."""
    from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_model

    model = write_tiny_model(tmp_path / f"{arch}.gguf", arch, TinyConfig(n_embd=128, n_head=4, n_head_kv=2, n_ff=256))
    p = make_random_pack(model, tmp_path / "p", tau=-1.0, vector_norm=60.0)
    chat = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Hi! What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": PROMPTS[2]}]
    llm = SteeredLlama(model, p, n_ctx=512, n_threads=1, chat_template="chatml")
    layer = llm.packs[0].manifest.steer_layer
    mean = llm.packs[0].control.directions[layer]
    head = llm.decide_prompt(chat, steering=SteeringSettings(vector_source="head"))[0].vectors[layer]
    hd = llm.decide_prompt(chat, steering=SteeringSettings(vector_source="head_direction"))[0].vectors[layer]
    assert _cos(hd, head) == pytest.approx(1.0, abs=1e-5)
    assert np.linalg.norm(hd) == pytest.approx(np.linalg.norm(mean), rel=1e-5)
    out = llm.generate(chat, max_tokens=8, steering=SteeringSettings(vector_source="head_direction"))
    assert out.steered and out.tokens > 0
    llm.close()
