"""The ``projected`` vector source (issue 11): the pack's mean direction at the length of the head's vector
along it, on the real tiny llama through llama.cpp, from the API, the CLI and a pack's own manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import SteeredLlama, SteeringSettings
from finesteer_edge.decide import project_on_mean
from finesteer_edge.errors import PackError
from finesteer_edge.pack.pack import SteeringPack
from finesteer_edge.testing.packs import make_random_pack

from .conftest import run_cli

KW = dict(n_ctx=256, n_threads=1)
PROMPTS = ("Tell me a story about the sea.", "hi", "How do I bake bread?")


@pytest.fixture(scope="module")
def pack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tiny_model, tmp_path_factory.mktemp("projected") / "p", tau=-1.0, vector_norm=60.0)


def test_projected_is_the_heads_length_along_the_mean_direction(tiny_model: Path, pack: Path) -> None:
    llm = SteeredLlama(tiny_model, pack, **KW)
    p = llm.packs[0]
    layer = p.manifest.steer_layer
    mean = p.control.directions[layer].astype(np.float64)
    for text in PROMPTS:
        head = llm.decide_prompt(text, steering=SteeringSettings(vector_source="head", strength=1.5))[0]
        proj = llm.decide_prompt(text, steering=SteeringSettings(vector_source="projected", strength=1.5))[0]
        assert set(proj.vectors) == {layer} and proj.gate_score == head.gate_score
        h = head.vectors[layer].astype(np.float64)
        want = mean * max(float(h @ mean) / float(mean @ mean), 0.0)  # strength is inside h already
        np.testing.assert_allclose(proj.vectors[layer], want, rtol=1e-5, atol=1e-5)
        # a direction of the mean's, not the head's own (the random head departs from the mean)
        cos = float(proj.vectors[layer] @ mean) / np.linalg.norm(proj.vectors[layer]) / np.linalg.norm(mean)
        assert cos == pytest.approx(1.0, abs=1e-5)
        assert np.linalg.norm(proj.vectors[layer] - head.vectors[layer]) > 1e-3
    llm.close()


def test_a_head_pointing_away_from_the_mean_steers_with_nothing(pack: Path) -> None:
    p = SteeringPack.load(pack)
    mean = p.control.directions[p.manifest.steer_layer]
    assert np.all(project_on_mean(p, -mean) == 0.0)
    np.testing.assert_allclose(project_on_mean(p, 2 * mean), 2 * mean, rtol=1e-6)


def test_projected_generates_its_own_text_and_turns_are_reproducible(tiny_model: Path, pack: Path) -> None:
    """The head's vector and its projection steer to different answers; the same source twice, the same answer."""
    llm = SteeredLlama(tiny_model, pack, **KW)
    for text in PROMPTS[:2]:
        got = {src: llm.generate(text, max_tokens=12, steering=SteeringSettings(vector_source=src)).token_ids
               for src in ("head", "projected")}
        again = llm.generate(text, max_tokens=12, steering=SteeringSettings(vector_source="projected"))
        assert again.steered and again.token_ids == got["projected"]
        assert got["projected"] != got["head"]
    llm.close()


def test_a_pack_whose_manifest_says_projected_steers_projected_by_default(tiny_model: Path, pack: Path,
                                                                       tmp_path: Path) -> None:
    import shutil

    own = tmp_path / "own"
    shutil.copytree(pack, own)
    m = json.loads((own / "manifest.json").read_text())
    m["vector_source"] = "projected"
    m["format_version"] = 3
    (own / "manifest.json").write_text(json.dumps(m))
    a = SteeredLlama(tiny_model, own, **KW)
    b = SteeredLlama(tiny_model, pack, vector_source="projected", **KW)
    assert a.vector_source == "projected"
    assert a.generate(PROMPTS[0], max_tokens=10).token_ids == b.generate(PROMPTS[0], max_tokens=10).token_ids
    a.close()
    b.close()


def test_projected_fails_closed_when_the_pack_has_no_mean_at_the_steer_layer(tiny_model: Path,
                                                                           tmp_path: Path) -> None:
    """A static pack whose control vector sits on other layers has no direction to project on: an error, not
    an unsteered turn."""
    from finesteer_edge.pack.control_vector import write_control_vector
    from finesteer_edge.pack.manifest import CONTROL

    p = make_random_pack(tiny_model, tmp_path / "p", tau=-1.0, vector_norm=60.0)
    m = json.loads((p / "manifest.json").read_text())
    layer = m["layers"]["steer"]
    other = layer + 1
    cv = SteeringPack.load(p).control
    write_control_vector(p / CONTROL, {other: cv.directions[layer]}, model_hint="llama",
                         n_layer=m["model"]["n_layer"])
    import hashlib

    m["vector_source"] = "control"
    data = (p / CONTROL).read_bytes()
    m["files"][CONTROL] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (p / "manifest.json").write_text(json.dumps(m))
    llm = SteeredLlama(tiny_model, p, **KW)
    assert llm.generate("hi", max_tokens=4).steered  # its own source (mean) works
    with pytest.raises(PackError, match="no direction"):
        llm.generate("hi", max_tokens=4, steering=SteeringSettings(vector_source="projected"))
    llm.close()


def test_cli_takes_vector_projected(tiny_model: Path, pack: Path) -> None:
    r = run_cli("generate", str(tiny_model), "--pack", str(pack), "--vector", "projected", "-n", "6",
                "--threads", "1", "--json", "--prompt", "Tell me a story about the sea.")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steered"]
    bad = run_cli("generate", str(tiny_model), "--pack", str(pack), "--vector", "sideways", "-n", "2",
                  "--threads", "1", "--prompt", "hi")
    assert bad.returncode != 0 and "projected" in bad.stderr


# --- a pack's own defaults (set-defaults, manifest format version 3) ---


def test_set_defaults_records_vector_strength_and_schedule(tiny_model: Path, pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    r = run_cli("set-defaults", str(pack), "--out", str(out), "--vector", "projected", "--strength", "2",
                "--schedule", "4:linear", "--note", "chosen on val")
    assert r.returncode == 0, r.stderr
    assert "format version 3" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    old = json.loads((pack / "manifest.json").read_text())
    assert m["format_version"] == 3 and m["vector_source"] == "projected" and m["strength"] == 2.0
    assert m["schedule"]["tokens"] == 4 and m["files"] == old["files"]  # the pack's files are untouched
    rec = m["provenance"]["defaults"][-1]
    assert rec["before"] == {"vector_source": "head", "strength": 1.0, "schedule": None}
    assert rec["note"] == "chosen on val" and rec["set"]["vector_source"] == "projected"
    assert "strength    2" in run_cli("inspect", str(out)).stdout
    assert json.loads(run_cli("inspect", str(out), "--json").stdout)["strength"] == 2.0
    # the pack's strength multiplies the turn's: tuned at 1 == the original at 2, projected, same schedule
    tuned = SteeredLlama(tiny_model, out, **KW)
    plain = SteeredLlama(tiny_model, pack, vector_source="projected", strength=2.0, **KW)
    plain.schedule = tuned.schedule
    a, b = tuned.decide_prompt(PROMPTS[0])[0], plain.decide_prompt(PROMPTS[0])[0]
    layer = json.loads((pack / "manifest.json").read_text())["layers"]["steer"]
    np.testing.assert_array_equal(a.vectors[layer], b.vectors[layer])
    assert tuned.generate(PROMPTS[0], max_tokens=10).token_ids == plain.generate(PROMPTS[0], max_tokens=10).token_ids
    tuned.close()
    plain.close()


def test_set_defaults_refuses_what_it_cannot_record(pack: Path, tmp_path: Path) -> None:
    for args, says in ((("--vector", "sideways"), "--vector"), (("--strength", "0"), "--strength"),
                       (("--strength", "nan"), "--strength"), ((), "nothing to set"),
                       (("--schedule", "never"), "--schedule")):
        r = run_cli("set-defaults", str(pack), "--out", str(tmp_path / "x"), *args)
        assert r.returncode != 0 and says in r.stderr, (args, r.stderr)
        assert not (tmp_path / "x").exists()
    r = run_cli("set-defaults", str(pack), "--out", str(pack), "--strength", "1.5")
    assert r.returncode != 0 and "--overwrite" in r.stderr


@pytest.mark.parametrize("edit, says", [
    ({"strength": 1.1}, "needs format_version 3"),  # a version-2 reader would drop it: refused instead
    ({"vector_source": "projected"}, "needs format_version 3"),
    ({"strength": 0, "format_version": 3}, "strength must be in"),
    ({"strength": -1.0, "format_version": 3}, "strength must be in"),
    ({"strength": 1e9, "format_version": 3}, "strength must be in"),
    ({"strength": True, "format_version": 3}, "wrong type"),
    ({"strength": "1", "format_version": 3}, "wrong type"),
])
def test_manifest_strength_and_projected_are_checked(pack: Path, tmp_path: Path, edit: dict, says: str) -> None:
    import shutil

    from finesteer_edge.errors import PackFormatError

    bad = tmp_path / "bad"
    shutil.copytree(pack, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m.update(edit)
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackFormatError, match=says):
        SteeringPack.load(bad)


def test_a_manifest_without_defaults_is_written_as_before(pack: Path) -> None:
    """Packs that set nothing new keep their format version and bytes (old runtimes still read them)."""
    from finesteer_edge.pack.manifest import parse_manifest

    raw = (pack / "manifest.json").read_bytes()
    m = parse_manifest(raw)
    assert m.strength == 1.0 and m.written_version == json.loads(raw)["format_version"]
    assert "strength" not in json.loads(m.to_json())


def test_a_turn_reports_the_strength_its_pack_steered_with(tiny_model: Path, pack: Path, tmp_path: Path) -> None:
    """PackOutcome.strength is the whole multiplier: the turn's, the PackSpec's and the pack's own."""
    from finesteer_edge.converters.pack_defaults import set_pack_defaults
    from finesteer_edge.multipack import PackSpec

    tuned = set_pack_defaults(pack, tmp_path / "t", strength=1.5)
    llm = SteeredLlama(tiny_model, PackSpec(tuned, 2.0), strength=0.5, **KW)
    r = llm.generate("hi", max_tokens=2)
    assert r.packs[0].strength == pytest.approx(1.5) and r.strength == 0.5
    llm.close()

