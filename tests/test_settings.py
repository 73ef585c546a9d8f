"""One vocabulary (vocab.py), frozen settings objects, and steering changes that cannot skip their checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from finesteer_edge import SamplingParams, SteeredLlama, SteeringSettings
from finesteer_edge.evaluation.executors import run_task
from finesteer_edge.pack import manifest
from finesteer_edge.testing.packs import make_random_pack
from finesteer_edge.vocab import (
    MANIFEST_VECTOR_SOURCES,
    VECTOR_SOURCES,
    choices,
    vector_source_from_manifest,
    vector_source_to_manifest,
)

KW = dict(n_ctx=256, n_threads=1)


def test_vector_source_spellings_map_both_ways() -> None:
    for api, man in zip(VECTOR_SOURCES, MANIFEST_VECTOR_SOURCES, strict=True):
        assert vector_source_to_manifest(api) == man and vector_source_from_manifest(man) == api
    with pytest.raises(ValueError, match="vector_source"):
        vector_source_to_manifest("control")  # type: ignore[arg-type]
    assert choices(("head", "mean")) == "head or mean" and choices(("a", "b", "c")) == "a, b or c"


def test_no_module_keeps_its_own_copy_of_a_vocabulary() -> None:
    """Any module-level tuple spelling one of vocab.py's sets *is* vocab.py's tuple, never a copy."""
    import importlib

    from finesteer_edge import vocab

    sets = {name: v for name, v in vars(vocab).items() if name.isupper() and isinstance(v, tuple)}
    for modname in ("finesteer_edge.steered", "finesteer_edge.pack.manifest", "finesteer_edge.train.scs",
                    "finesteer_edge.train.checkpoint", "finesteer_edge.train.trainer", "finesteer_edge.settings",
                    "finesteer_edge.multipack", "finesteer_edge.evaluation.runner", "cli.run_cmds",
                    "cli.train_cmds"):
        mod = importlib.import_module(modname)
        for name, value in vars(mod).items():
            for vname, vset in sets.items():
                if isinstance(value, tuple) and set(value) == set(vset):
                    assert value is vset, f"{modname}.{name} copies vocab.{vname}"
    assert manifest.MODES is vocab.MODES


@pytest.mark.parametrize("bad", [
    dict(max_tokens=-1), dict(max_tokens=1.5), dict(temperature=-0.1), dict(temperature=float("nan")),
    dict(seed=-1), dict(seed=1 << 40), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=2.0),
    dict(stop=[1, 2]), dict(temperature=True),
])
def test_bad_sampling_params_raise_at_construction(bad: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        SamplingParams(**bad)


@pytest.mark.parametrize("bad", [
    dict(mode="slow"), dict(gate="sometimes"), dict(vector_source="control"), dict(strength=float("inf")),
    dict(strength="1"),
])
def test_bad_steering_settings_raise_at_construction(bad: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        SteeringSettings(**bad)


def test_settings_are_frozen_and_replace_rechecks() -> None:
    sp = SamplingParams(stop=["a"])  # any sequence of strings is kept as a tuple
    assert sp.stop == ("a",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sp.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="mode"):
        dataclasses.replace(SteeringSettings(), mode="bogus")


@pytest.fixture(scope="module")
def pack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tiny_model, tmp_path_factory.mktemp("settings") / "p", tau=-1.0, vector_norm=60.0)


def test_steering_attributes_cannot_be_assigned_past_the_checks(tiny_model: Path, pack: Path) -> None:
    llm = SteeredLlama(tiny_model, pack, **KW)
    for name, value in (("mode", "bogus"), ("gate", "never"), ("strength", 2.0), ("vector_source", "mean")):
        with pytest.raises(AttributeError):
            setattr(llm, name, value)
    with pytest.raises(ValueError, match="mode"):
        llm.set_steering(mode="bogus")
    with pytest.raises(TypeError):
        llm.set_steering({"mode": "fast"})  # type: ignore[arg-type]
    assert llm.mode == "exact"  # a refused change leaves the settings as they were
    new = llm.set_steering(mode="fast", strength=0.5)
    assert (llm.mode, llm.strength, llm.steering) == ("fast", 0.5, new)
    llm.close()


def test_executor_tasks_go_through_the_checks(tiny_model: Path, pack: Path) -> None:
    llm = SteeredLlama(tiny_model, pack, **KW)
    with pytest.raises(ValueError, match="gate"):
        run_task(llm, ("gen", "sometimes", "head", "exact", 1.0, "hi"), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strength"):
        run_task(llm, ("gen", "pack", "head", "exact", float("nan"), "hi"), 2)
    got = run_task(llm, ("gen", "never", "mean", "fast", 2.0, "hi"), 2)
    assert not got.steered and llm.steering == SteeringSettings("fast", 2.0, "never", "mean")
    llm.close()


def test_sampling_object_and_loose_keywords_agree(tiny_model: Path) -> None:
    llm = SteeredLlama(tiny_model, **KW)
    sp = SamplingParams(max_tokens=6, temperature=0.8, seed=7)
    a = llm.generate("Tell me a story.", sampling=sp)
    b = llm.generate("Tell me a story.", max_tokens=6, temperature=0.8, seed=7)
    c = llm.generate("Tell me a story.", sampling=sp, max_tokens=3)  # a loose keyword replaces that field
    assert a.token_ids == b.token_ids and a.seed == 7 and c.token_ids == a.token_ids[: c.tokens] and c.tokens <= 3
    with pytest.raises(ValueError, match="max_tokens"):
        llm.generate("hi", max_tokens=-1)
    with pytest.raises(TypeError):
        llm.generate("hi", sampling={"max_tokens": 2})  # type: ignore[arg-type]
    llm.close()


def test_per_call_steering_chooses_the_vector_source(tiny_model: Path, pack: Path) -> None:
    """``generate(steering=...)`` steers with that turn's vector source (it used the instance's: head)."""
    head = SteeredLlama(tiny_model, pack, **KW)
    mean = SteeredLlama(tiny_model, pack, vector_source="mean", **KW)
    for p in ("Tell me a story about the sea.", "hi"):
        want = mean.generate(p, max_tokens=12).token_ids
        got = head.generate(p, max_tokens=12, steering=SteeringSettings(vector_source="mean"))
        assert got.steered and got.token_ids == want
        assert head.generate(p, max_tokens=12).token_ids != want  # the two sources really differ here
    assert head.vector_source == "head"  # the instance's own setting is untouched
    head.close()
    mean.close()
