"""Several packs on one model (tiny GGUF): one prefill, a gate per pack, vectors summed per layer, capped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import PackSpec, SteeredLlama, SteeringPack
from finesteer_edge.errors import ModelMismatchError, PackError
from finesteer_edge.llama.session import ContextSettings, LlamaSession
from finesteer_edge.multipack import Decision, combine, describe_set
from finesteer_edge.schedule import Schedule
from finesteer_edge.testing.packs import make_random_pack

from .conftest import run_cli

KW = dict(n_ctx=512, n_threads=1)
PROMPTS = ["Tell me a story about the sea.", "What is the capital of France?", "hi", "Write a poem about rain."]
N = 12


@pytest.fixture(scope="module")
def packs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Open packs at layers 2 and 1 (different gate layers and seeds), and a pack whose gate never opens."""
    root = tmp_path_factory.mktemp("multi")
    return {
        "a": make_random_pack(tiny_model, root / "a", gate_layer=1, steer_layer=2, tau=-1.0, vector_norm=40.0),
        "b": make_random_pack(tiny_model, root / "b", gate_layer=0, steer_layer=1, tau=-1.0, vector_norm=40.0,
                              seed=1),
        "closed": make_random_pack(tiny_model, root / "c", gate_layer=2, steer_layer=2, tau=2.0, seed=2),
        "closed2": make_random_pack(tiny_model, root / "c2", gate_layer=0, steer_layer=1, tau=2.0, seed=3),
    }


def by_hand(model: Path, prompt_tokens: list[int], vectors: dict[int, np.ndarray], n: int) -> list[int]:
    """Exact mode by hand: prefill and decode with the given control vector on."""
    s = LlamaSession(model, ContextSettings(**KW))
    s.set_control(*s.control_buffer(vectors))
    s.decode(prompt_tokens)
    out = []
    with s.sampler() as smp:
        for _ in range(n):
            tok = s.sample(smp)
            if s.is_eog(tok):
                break
            out.append(tok)
            s.decode([tok])
    s.close()
    return out


def test_closed_gates_are_bit_identical_to_no_pack(tiny_model: Path, packs: dict) -> None:
    plain = SteeredLlama(tiny_model, **KW)
    llm = SteeredLlama(tiny_model, packs=[packs["closed"], packs["closed2"]], **KW)
    for p in PROMPTS:
        r = llm.generate(p, max_tokens=N)
        assert not r.steered and [o.steered for o in r.packs] == [False, False]
        assert r.token_ids == plain.generate(p, max_tokens=N).token_ids
    assert [o.name for o in r.packs] == ["random-test-pack"] * 2 and r.gate_score == r.packs[0].gate_score


def test_vectors_at_different_layers_coexist(tiny_model: Path, packs: dict) -> None:
    llm = SteeredLlama(tiny_model, packs=[packs["a"], packs["b"]], **KW)
    prompt = PROMPTS[0]
    tokens = llm.prompt_tokens([{"role": "user", "content": prompt}])
    s = LlamaSession(tiny_model, ContextSettings(**KW), tap_layers=(0, 1, 2))
    s.decode(tokens, capture=True)
    va = SteeringPack.load(packs["a"]).evaluate(s.hidden(1), s.hidden(2)).vector
    vb = SteeringPack.load(packs["b"]).evaluate(s.hidden(0), s.hidden(1)).vector
    s.close()
    got = llm.generate(prompt, max_tokens=N)
    assert got.steered and [o.steered for o in got.packs] == [True, True]
    assert got.token_ids == by_hand(tiny_model, tokens, {2: va, 1: vb}, N)
    assert got.token_ids != by_hand(tiny_model, tokens, {2: va}, N)  # pack b really contributes


def test_each_gate_decides_as_it_would_alone(tiny_model: Path, packs: dict) -> None:
    both = SteeredLlama(tiny_model, packs=[packs["a"], packs["closed"]], **KW)
    alone = [SteeredLlama(tiny_model, packs[k], **KW) for k in ("a", "closed")]
    for p in PROMPTS:
        r = both.generate(p, max_tokens=N)
        singles = [x.generate(p, max_tokens=N) for x in alone]
        assert [(o.gate_score, o.steered, o.expert_weights) for o in r.packs] == \
               [(x.gate_score, x.steered, x.expert_weights) for x in singles]
        assert r.token_ids == singles[0].token_ids  # only a opens: the turn is a's turn alone


def test_same_layer_adds_and_is_capped(tiny_model: Path, packs: dict) -> None:
    """Two copies of one pack at one layer: ``sum`` is the pack at strength 2, ``cap`` is the pack alone."""
    prompt = PROMPTS[1]
    one = SteeredLlama(tiny_model, packs["a"], **KW).generate(prompt, max_tokens=N)
    double = SteeredLlama(tiny_model, packs["a"], strength=2.0, **KW).generate(prompt, max_tokens=N)
    assert one.token_ids != double.token_ids
    twice = [packs["a"], packs["a"]]
    assert SteeredLlama(tiny_model, packs=twice, combine="sum", **KW).generate(
        prompt, max_tokens=N).token_ids == double.token_ids
    capped = SteeredLlama(tiny_model, packs=twice, **KW)
    assert capped.combine == "cap" and capped.generate(prompt, max_tokens=N).token_ids == one.token_ids
    refusing = SteeredLlama(tiny_model, packs=twice, combine="refuse", **KW)
    with pytest.raises(PackError, match="together shift layer 2"):
        refusing.generate(prompt, max_tokens=N)
    refusing.set_steering(gate="never")  # nothing open, nothing to refuse; the refused turn left nothing set
    plain = SteeredLlama(tiny_model, **KW).generate(prompt, max_tokens=N)
    assert refusing.generate(prompt, max_tokens=N).token_ids == plain.token_ids


def test_combine_rule() -> None:
    v = np.ones(4, dtype=np.float32)
    d = [Decision(0.5, True, {3: v}, np.ones(2)), Decision(0.5, True, {3: -0.5 * v, 5: v}, np.ones(2)),
         Decision(0.1, False, {3: 9 * v}, np.ones(2))]
    c = combine(d, ["x", "y", "z"])
    assert np.allclose(c.vectors[3], 0.5 * v) and not c.capped  # opposite directions: below the bound, kept
    assert set(c.vectors) == {3, 5}  # the closed pack adds nothing
    d[1] = Decision(0.5, True, {3: v}, np.ones(2))
    c = combine(d, ["x", "y", "z"])
    assert np.allclose(c.vectors[3], v) and c.capped == {3: pytest.approx(0.5)}
    assert np.allclose(combine(d, ["x", "y", "z"], "sum").vectors[3], 2 * v)
    with pytest.raises(ValueError, match="combine"):
        combine(d, ["x", "y", "z"], "max")  # type: ignore[arg-type]


def test_per_pack_strength_and_bad_sets(tiny_model: Path, tiny_model_other: Path, packs: dict, tmp_path: Path) -> None:
    prompt = PROMPTS[2]
    alone = SteeredLlama(tiny_model, packs["a"], strength=1.5, **KW).generate(prompt, max_tokens=N)
    llm = SteeredLlama(tiny_model, packs=[PackSpec(packs["a"], 1.5), PackSpec(packs["closed"], 0.25)], **KW)
    r = llm.generate(prompt, max_tokens=N)
    assert r.token_ids == alone.token_ids and [o.strength for o in r.packs] == [1.5, 0.25]
    llm.set_steering(strength=2.0)  # the instance's strength multiplies every pack's own
    assert [o.strength for o in llm.generate(prompt, max_tokens=1).packs] == [3.0, 0.5]
    with pytest.raises(ValueError, match="not both"):
        SteeredLlama(tiny_model, packs["a"], packs=[packs["b"]], **KW)
    with pytest.raises(ValueError, match="pack strength"):
        PackSpec(packs["a"], float("nan"))
    other = make_random_pack(tiny_model_other, tmp_path / "other")
    with pytest.raises(ModelMismatchError, match="does not fit"):
        SteeredLlama(tiny_model, packs=[packs["a"], other], **KW)
    with pytest.raises(ModelMismatchError, match="different models"):
        describe_set([SteeringPack.load(packs["a"]), SteeringPack.load(other)])


def test_cli_with_two_packs(tiny_model: Path, packs: dict) -> None:
    common = ("--pack", str(packs["a"]), "--pack", str(packs["closed"]), "--threads", "1", "--n-ctx", "512")
    proc = run_cli("generate", str(tiny_model), *common, "--prompt", "hello", "-n", "4", "--json", "--explain")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert [p["steered"] for p in d["packs"]] == [True, False] and len(d["pack_paths"]) == 2
    assert all({"gate_score", "threshold", "expert_weights", "strength"} <= set(p) for p in d["packs"])
    assert "STEERED (1 of 2 packs)" in proc.stderr and "not steered  gate score" in proc.stderr
    ins = run_cli("inspect", str(packs["a"]), str(packs["b"]), str(packs["closed"]), "--json")
    assert ins.returncode == 0, ins.stderr
    c = json.loads(ins.stdout)["combined"]
    assert c["tap_layers"] == [0, 1, 2] and c["shared_layers"] == [2] and len(c["steer_layers"]["2"]) == 2
    text = run_cli("inspect", str(packs["a"]), str(packs["b"]))
    assert "tapping layers [0, 1, 2]" in text.stdout and "layer 1" in text.stdout


def test_two_packs_on_a_tap_context_architecture(tmp_path: Path) -> None:
    """qwen2 reads hidden states through the second, tap-only context: gates still decide as alone.

    Loading two packs runs the self-test twice on one session; that used to fail on tap_context sessions
    (the second run's unsteered probe reused the tap context's cache, see LlamaSession.reset).
    """
    from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_model

    model = write_tiny_model(tmp_path / "qwen2.gguf", "qwen2", TinyConfig(n_embd=128, n_head=4, n_head_kv=2, n_ff=256))
    a = make_random_pack(model, tmp_path / "a", gate_layer=1, steer_layer=2, tau=-1.0, vector_norm=40.0)
    c = make_random_pack(model, tmp_path / "c", gate_layer=0, steer_layer=1, tau=2.0, seed=2)
    both = SteeredLlama(model, packs=[a, c], **KW)
    alone = [SteeredLlama(model, p, **KW) for p in (a, c)]
    plain = SteeredLlama(model, **KW)
    for p in PROMPTS[:2]:
        r = both.generate(p, max_tokens=6)
        singles = [x.generate(p, max_tokens=6) for x in alone]
        assert [(o.gate_score, o.steered) for o in r.packs] == [(x.gate_score, x.steered) for x in singles]
        assert r.token_ids == singles[0].token_ids
        assert singles[1].token_ids == plain.generate(p, max_tokens=6).token_ids


@pytest.fixture(scope="module")
def named(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two open packs with distinct manifest names (``enabled`` refers to packs by name)."""
    root = tmp_path_factory.mktemp("named")
    return {"x": make_random_pack(tiny_model, root / "x", gate_layer=1, steer_layer=2, tau=-1.0, vector_norm=40.0,
                                  name="x"),
            "y": make_random_pack(tiny_model, root / "y", gate_layer=0, steer_layer=2, tau=-1.0, vector_norm=40.0,
                                  seed=1, name="y")}


def test_enabled_serves_a_subset_per_turn_without_changing_the_instance(tiny_model: Path, named: dict) -> None:
    from dataclasses import replace

    both = SteeredLlama(tiny_model, packs=[named["x"], named["y"]], **KW)
    assert both.pack_names == ["x", "y"]
    only_x = SteeredLlama(tiny_model, named["x"], **KW)
    plain = SteeredLlama(tiny_model, **KW)
    before = both.steering
    for p in PROMPTS[:2]:
        full = both.generate(p, max_tokens=N)
        sub = both.generate(p, max_tokens=N, steering=replace(before, enabled=("x",)))
        assert sub.token_ids == only_x.generate(p, max_tokens=N).token_ids
        assert full.token_ids != sub.token_ids  # y really was on in the full turn, really off in the subset
        assert [(o.name, o.enabled, o.steered) for o in sub.packs] == [("x", True, True), ("y", False, False)]
        assert [o.gate_score for o in sub.packs] == [o.gate_score for o in full.packs]
        both.reset()  # chat reuses the KV cache, which holds the steered turn above
        none = both.chat([{"role": "user", "content": p}], stream=False, max_tokens=N,
                         steering=replace(before, enabled=()))
        assert not none.steered and none.token_ids == plain.generate(p, max_tokens=N).token_ids
    assert both.steering == before  # per-turn settings leave the instance's own alone
    streamed = list(both.chat([{"role": "user", "content": "hi"}], max_tokens=N,
                              steering=replace(before, enabled=["y"])))
    assert [o.enabled for o in streamed[-1].packs] == [False, True]


def test_enabled_refuses_unknown_pack_names(tiny_model: Path, named: dict) -> None:
    from finesteer_edge import SteeringSettings

    llm = SteeredLlama(tiny_model, packs=[named["x"]], **KW)
    with pytest.raises(ValueError, match="'nope'.*loaded: x"):
        llm.generate("hi", max_tokens=2, steering=SteeringSettings(enabled=("nope",)))
    with pytest.raises(ValueError, match="nope"):
        llm.set_steering(enabled=("nope",))
    with pytest.raises(TypeError):
        SteeringSettings(enabled=(1,))  # type: ignore[arg-type]
    assert SteeringSettings(enabled="x").enabled == ("x",)


def test_a_left_out_pack_does_not_shape_the_turn_with_its_schedule(tiny_model: Path, named: dict,
                                                                   tmp_path: Path) -> None:
    """The turn's schedule comes from the enabled packs: the first pack's short schedule must not cut the
    vector of the second when only the second is enabled."""
    from dataclasses import replace

    s = make_random_pack(tiny_model, tmp_path / "s", gate_layer=1, steer_layer=2, tau=-1.0, seed=5, name="s")
    m = json.loads((s / "manifest.json").read_text())
    m["schedule"] = {"prompt": False, "tokens": 1}
    (s / "manifest.json").write_text(json.dumps(m))
    both = SteeredLlama(tiny_model, packs=[s, named["x"]], **KW)
    only_x = SteeredLlama(tiny_model, named["x"], **KW)
    assert both.schedule.tokens == 1 and only_x.schedule.tokens is None
    for p in PROMPTS[:2]:
        sub = both.generate(p, max_tokens=N, steering=replace(both.steering, enabled=("x",)))
        assert sub.token_ids == only_x.generate(p, max_tokens=N).token_ids


def test_a_shut_pack_does_not_shape_the_turn_with_its_schedule(tiny_model: Path, named: dict,
                                                                tmp_path: Path) -> None:
    """A pack whose gate stays shut is as if not loaded: its short schedule must not cut the open pack's vector
    (it did: the turn took the first loaded pack's schedule, open or not)."""
    s = make_random_pack(tiny_model, tmp_path / "s", gate_layer=1, steer_layer=2, tau=2.0, seed=5, name="s")
    m = json.loads((s / "manifest.json").read_text())
    m["schedule"] = {"prompt": False, "tokens": 1}
    (s / "manifest.json").write_text(json.dumps(m))
    both = SteeredLlama(tiny_model, packs=[s, named["x"]], **KW)
    only_x = SteeredLlama(tiny_model, named["x"], **KW)
    for p in PROMPTS[:2]:
        r = both.generate(p, max_tokens=N)
        assert [o.steered for o in r.packs] == [False, True]
        assert r.token_ids == only_x.generate(p, max_tokens=N).token_ids
    # and when the scheduled pack's gate opens, its schedule applies: the turn differs from the whole-turn vector
    s_open = make_random_pack(tiny_model, tmp_path / "so", gate_layer=1, steer_layer=2, tau=-1.0, seed=5, name="s")
    m["files"] = json.loads((s_open / "manifest.json").read_text())["files"]
    m["tau"] = -1.0
    (s_open / "manifest.json").write_text(json.dumps(m))
    sched = SteeredLlama(tiny_model, s_open, **KW)
    whole = SteeredLlama(tiny_model, s_open, schedule=Schedule(tokens=None), **KW)
    outs = [(sched.generate(p, max_tokens=N).token_ids, whole.generate(p, max_tokens=N).token_ids)
            for p in PROMPTS]
    assert any(a != b for a, b in outs)
