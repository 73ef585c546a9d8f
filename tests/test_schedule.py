"""Issue 11: a steering schedule over the turn and a layer spread, both recorded in the manifest.

The runtime's schedule is checked against an independent greedy reference built on the bare session
(set / scale / clear the control vector by hand between decodes, argmax of the logits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import SteeredLlama, SteeringPack
from finesteer_edge.errors import PackFormatError
from finesteer_edge.schedule import ALWAYS, Schedule, ScheduleError
from finesteer_edge.spread import Spread, SpreadError
from finesteer_edge.testing.packs import make_random_pack

KW = dict(n_ctx=256, n_threads=1)
PROMPT = "Tell me a story about a fox."


def test_schedule_scales() -> None:
    assert ALWAYS.always_on and all(ALWAYS.scale(t) == 1.0 for t in range(100))
    s = Schedule(tokens=8)
    assert [s.scale(t) for t in (0, 7, 8, 50)] == [1.0, 1.0, 0.0, 0.0] and not s.always_on
    lin = Schedule(tokens=8, decay="linear", steps=4)
    assert [lin.scale(t) for t in range(10)] == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0]
    ex = Schedule(tokens=4, decay="exp", steps=4, floor=0.2)
    assert ex.scale(0) == 1.0 and ex.scale(1) == pytest.approx(0.6) and ex.scale(9) == pytest.approx(0.2)
    assert len({lin.scale(t) for t in range(1000)}) == 5  # few levels: each change costs a re-reserve
    assert Schedule.parse("16") == Schedule(tokens=16) and Schedule.parse("all") == ALWAYS
    assert Schedule.parse("32:linear") == Schedule(tokens=32, decay="linear")
    assert Schedule.parse("8:noprompt") == Schedule(prompt=False, tokens=8)


@pytest.mark.parametrize("bad", [{"tokens": -1}, {"tokens": 1.5}, {"tokens": True}, {"decay": "cosine", "tokens": 4},
                                 {"decay": "linear"}, {"steps": 0, "tokens": 4}, {"floor": 2.0}, {"prompt": "yes"},
                                 {"floor": float("nan")}, {"when": 3}])
def test_bad_schedules_are_refused(bad: dict) -> None:
    with pytest.raises(ScheduleError):
        Schedule.from_dict(bad)


def test_spread_splits_the_total() -> None:
    v = np.arange(4, dtype=np.float32)
    out = Spread(2, 5).apply({3: v})
    assert sorted(out) == [2, 3, 4, 5] and np.allclose(sum(out.values()), v) and np.allclose(out[2], v / 4)
    for a, b in ((0, 3), (4, 2), (True, 3)):
        with pytest.raises(SpreadError):
            Spread(a, b)
    with pytest.raises(SpreadError):
        Spread(1, 8).check(n_layer=8)  # control vectors cover layers 1..n_layer-1


@pytest.fixture(scope="module")
def pack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tiny_model, tmp_path_factory.mktemp("sched") / "pack", tau=0.0, vector_norm=8.0)


def _with_manifest(pack: Path, tmp: Path, **fields: object) -> Path:
    import shutil

    out = tmp / "p"
    shutil.copytree(pack, out)
    m = json.loads((out / "manifest.json").read_text())
    m.update(fields)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def test_manifest_carries_schedule_and_spread(pack: Path, tmp_path: Path) -> None:
    old = SteeringPack.load(pack)
    assert old.manifest.schedule is None and old.manifest.spread is None  # old packs: the whole turn
    p = _with_manifest(pack, tmp_path, schedule={"prompt": True, "tokens": 4, "decay": "linear"},
                       spread={"layers": [1, 3]})
    m = SteeringPack.load(p).manifest  # checksums cover head.onnx/control.gguf only: editing the manifest is fine
    assert m.schedule == Schedule(tokens=4, decay="linear") and m.spread == Spread(1, 3)
    again = json.loads(m.to_json())
    assert again["schedule"]["tokens"] == 4 and again["spread"] == {"layers": [1, 3]}


@pytest.mark.parametrize("fields, msg", [({"schedule": {"tokens": -2}}, "schedule.tokens"),
                                         ({"schedule": [1]}, "schedule must be an object"),
                                         ({"spread": {"layers": [1, 99]}}, "past the last steerable layer"),
                                         ({"spread": {"layers": [0, 2]}}, "1 <= first")])
def test_bad_manifest_fields_fail_closed(pack: Path, tmp_path: Path, fields: dict, msg: str) -> None:
    p = _with_manifest(pack, tmp_path, **fields)
    with pytest.raises(PackFormatError, match=msg):
        SteeringPack.load(p)


def _reference(llm: SteeredLlama, schedule: Schedule, n: int) -> list[int]:
    """Greedy tokens of a steered exact-mode turn with the schedule applied by hand on the bare session."""
    s = llm.session
    toks = llm.prompt_tokens([{"role": "user", "content": PROMPT}])
    s.clear_control()
    s.reset()
    s.decode(toks, capture=True)
    rows, a, b = s.control_buffer(llm.decide().vectors)
    s.set_control(rows, a, b)
    s.reset()
    s.decode(toks)
    out: list[int] = []
    for t in range(n):
        tok = int(np.argmax(s.logits()))
        if s.is_eog(tok):
            break
        out.append(tok)
        scale = schedule.scale(t)
        if scale == 0.0:
            s.clear_control()
        else:
            s.set_control(rows * np.float32(scale), a, b)
        s.decode([tok])
    s.clear_control()
    s.reset()
    return out


@pytest.mark.parametrize("schedule", [Schedule(tokens=3), Schedule(tokens=6, decay="linear", steps=3),
                                      Schedule(tokens=0), Schedule(tokens=5, decay="exp", floor=0.25)])
def test_schedule_matches_a_hand_built_reference(tiny_model: Path, pack: Path, schedule: Schedule) -> None:
    with SteeredLlama(tiny_model, pack, schedule=schedule, strict=True, **KW) as llm:
        got = llm.generate(PROMPT, max_tokens=16)
        want = _reference(llm, schedule, 16)
        assert got.steered and got.token_ids == want
        always = SteeredLlama(tiny_model, pack, strict=True, **KW)
        full = always.generate(PROMPT, max_tokens=16).token_ids
        always.close()
        k = schedule.tokens or 0
        assert full[: k + 1] == got.token_ids[: k + 1]  # identical while the vector is still at full strength
        assert full != got.token_ids  # and the schedule changes what follows (the tiny model is sensitive)
        assert not llm.session.control_active  # cleared at the end of the turn


def test_default_schedule_is_todays_behaviour(tiny_model: Path, pack: Path) -> None:
    with SteeredLlama(tiny_model, pack, strict=True, **KW) as a, \
            SteeredLlama(tiny_model, pack, strict=True, schedule=Schedule(tokens=None), **KW) as b:
        assert a.schedule == ALWAYS
        assert a.generate(PROMPT, max_tokens=12).token_ids == b.generate(PROMPT, max_tokens=12).token_ids
        assert a.generate(PROMPT, max_tokens=12).token_ids == _reference(a, ALWAYS, 12)


def test_schedule_leaves_closed_gates_bit_identical(tiny_model: Path, tmp_path: Path) -> None:
    closed = make_random_pack(tiny_model, tmp_path / "closed", tau=2.0)
    with SteeredLlama(tiny_model, **KW) as plain, \
            SteeredLlama(tiny_model, closed, schedule=Schedule(tokens=2, decay="linear"), **KW) as llm:
        r = llm.generate(PROMPT, max_tokens=10)
        assert not r.steered and r.token_ids == plain.generate(PROMPT, max_tokens=10).token_ids


def test_spread_puts_the_shift_on_the_range(tiny_model: Path, pack: Path, tmp_path: Path) -> None:
    p = _with_manifest(pack, tmp_path, spread={"layers": [1, 3]})
    with SteeredLlama(tiny_model, pack, **KW) as one, SteeredLlama(tiny_model, p, **KW) as spread:
        toks = one.prompt_tokens([{"role": "user", "content": PROMPT}])
        for llm in (one, spread):
            llm.session.reset()
            llm.session.decode(toks, capture=True)
        single = one.decide().vectors
        assert sorted(single) == [2]
        rows, a, b = spread.session.control_buffer(spread.decide().vectors)
        assert (a, b) == (1, 3)
        v = single[2]
        for layer in (1, 2, 3):  # row 0 = layer 1
            np.testing.assert_allclose(rows[layer - 1], v / 3, rtol=1e-6, atol=1e-7)
        assert not rows[3:].any()
        r = spread.generate(PROMPT, max_tokens=6)
        assert r.steered and r.token_ids != one.generate(PROMPT, max_tokens=6).token_ids


def test_write_pack_records_schedule_and_spread(tiny_model: Path, tmp_path: Path) -> None:
    from finesteer_edge.converters.pack_writer import write_pack
    from finesteer_edge.model_info import read_model_info
    from finesteer_edge.testing.packs import random_head

    info = read_model_info(tiny_model)
    head = random_head(info.n_embd, n_experts=2, basis_rank=2, gate_kind="scs", vector_norm=4.0, seed=1)
    out = write_pack(tmp_path / "p", head=head, fingerprint=info.fingerprint, gate_layer=1, steer_layer=2, alpha=1.0,
                     tau=0.0, mean_vector={2: head.experts.mean(0)}, schedule=Schedule(tokens=16),
                     spread=Spread(1, 3))
    m = SteeringPack.load(out).manifest
    assert m.schedule == Schedule(tokens=16) and m.spread == Spread(1, 3)
