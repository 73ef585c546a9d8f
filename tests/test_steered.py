"""SteeredLlama on the tiny GGUF: per-turn gating, exact/fast modes, chat cache, streaming, safety."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import SteeredLlama, SteeringPack
from finesteer_edge.errors import ConcurrentUseError, ContextOverflowError, SelfTestError
from finesteer_edge.llama.session import ContextSettings, LlamaSession
from finesteer_edge.llama.taps import LayerInpTap
from finesteer_edge.result import GenerationResult
from finesteer_edge.testing.packs import make_random_pack

PROMPTS = ["Tell me a story about the sea.", "What is the capital of France?", "hi", "Write a poem about rain."]
KW = dict(n_ctx=512, n_threads=2)


@pytest.fixture(scope="module")
def packs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An always-open pack, plus one whose tau splits PROMPTS into steered and unsteered."""
    root = tmp_path_factory.mktemp("packs")
    opened = make_random_pack(tiny_model, root / "open", tau=-1.0, vector_norm=60.0)
    llm = SteeredLlama(tiny_model, opened, **KW)
    scores = sorted((llm.generate(p, max_tokens=1).gate_score, p) for p in PROMPTS)
    llm.close()
    tau = (scores[1][0] + scores[2][0]) / 2
    split = make_random_pack(tiny_model, root / "split", tau=tau, vector_norm=60.0)
    return {"open": opened, "split": split, "high": scores[-1][1], "low": scores[0][1]}


def reference(model: Path, prompt_tokens: list[int], vector: np.ndarray | None, layer: int, n: int,
              *, steer_prompt: bool) -> list[int]:
    """Greedy decode by hand on the low-level session: the behaviour each mode promises."""
    s = LlamaSession(model, ContextSettings(**KW))
    if vector is not None and steer_prompt:
        s.set_control(*s.control_buffer({layer: vector}))
    s.decode(prompt_tokens)
    if vector is not None:
        s.set_control(*s.control_buffer({layer: vector}))
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


def test_gate_closed_turn_is_bit_identical_to_no_pack(tiny_model: Path, packs: dict) -> None:
    plain = SteeredLlama(tiny_model, **KW)
    llm = SteeredLlama(tiny_model, packs["split"], **KW)
    low, high = packs["low"], packs["high"]
    want = plain.generate(low, max_tokens=24)
    first = llm.generate(low, max_tokens=24)
    steered = llm.generate(high, max_tokens=24)
    after = llm.generate(low, max_tokens=24)
    assert steered.steered and not first.steered and not after.steered
    assert first.token_ids == want.token_ids == after.token_ids
    assert steered.token_ids != plain.generate(high, max_tokens=24).token_ids  # steering does something


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_modes_equal_their_reference(tiny_model: Path, packs: dict, mode: str) -> None:
    llm = SteeredLlama(tiny_model, packs["open"], mode=mode, **KW)
    prompt = packs["high"]
    tokens = llm.prompt_tokens([{"role": "user", "content": prompt}])
    s = LlamaSession(tiny_model, ContextSettings(**KW), tap_layers=(1, 2))
    s.decode(tokens, capture=True)
    vector = SteeringPack.load(packs["open"]).evaluate(s.hidden(1), s.hidden(2)).vector
    got = llm.generate(prompt, max_tokens=20)
    assert got.steered and got.mode == mode
    want = reference(tiny_model, tokens, vector, 2, 20, steer_prompt=(mode == "exact"))
    assert got.token_ids == want
    other = reference(tiny_model, tokens, vector, 2, 20, steer_prompt=(mode != "exact"))
    assert other != want  # the two modes are really different


def test_strength_zero_is_unsteered_output(tiny_model: Path, packs: dict) -> None:
    plain = SteeredLlama(tiny_model, **KW).generate(packs["high"], max_tokens=16)
    zero = SteeredLlama(tiny_model, packs["open"], strength=0.0, **KW).generate(packs["high"], max_tokens=16)
    assert zero.steered and zero.token_ids == plain.token_ids


def test_chat_reuses_kv_cache_and_streams(tiny_model: Path, packs: dict) -> None:
    llm = SteeredLlama(tiny_model, packs["split"], **KW)
    msgs = [{"role": "user", "content": packs["low"]}]
    items = list(llm.chat(msgs, max_tokens=12))
    result = items[-1]
    assert isinstance(result, GenerationResult)
    assert "".join(x for x in items[:-1] if isinstance(x, str)) == result.text
    msgs += [{"role": "assistant", "content": result.text}, {"role": "user", "content": packs["low"]}]
    second = llm.chat(msgs, stream=False, max_tokens=12)
    assert isinstance(second, GenerationResult)
    assert second.cached_tokens > result.prompt_tokens // 2
    assert not second.steered and not result.steered
    msgs += [{"role": "assistant", "content": second.text}, {"role": "user", "content": packs["high"]}]
    third = llm.chat(msgs, stream=False, max_tokens=12)
    assert isinstance(third, GenerationResult)
    # a steered exact turn prefills the whole conversation again, with the vector (tests/test_chat_steering.py)
    assert third.steered and third.cached_tokens == 0
    llm.reset()
    assert llm.chat(msgs, stream=False, max_tokens=1).cached_tokens == 0  # type: ignore[union-attr]


def test_plain_chat_turn_equals_fresh_prompt(tiny_model: Path) -> None:
    llm = SteeredLlama(tiny_model, strict=True, **KW)
    msgs = [{"role": "user", "content": "hello"}]
    r1 = llm.chat(msgs, stream=False, max_tokens=8)
    msgs += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "more"}]  # type: ignore[union-attr]
    r2 = llm.chat(msgs, stream=False, max_tokens=8)
    fresh = SteeredLlama(tiny_model, strict=True, **KW).generate(msgs, max_tokens=8)
    assert r2.cached_tokens > 0 and r2.token_ids == fresh.token_ids  # type: ignore[union-attr]


def test_stop_strings_and_limits(tiny_model: Path) -> None:
    llm = SteeredLlama(tiny_model, **KW)
    full = llm.generate("Tell me a story about the sea.", max_tokens=30)
    assert full.tokens == 30 and full.finish_reason == "length"
    stop = full.text[10:13]
    cut = llm.generate("Tell me a story about the sea.", max_tokens=30, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]
    assert llm.generate("hi", max_tokens=0).text == ""


def test_seeded_sampling_is_reproducible(tiny_model: Path) -> None:
    llm = SteeredLlama(tiny_model, **KW)
    a = llm.generate("hi", max_tokens=16, temperature=1.0, seed=7)
    b = llm.generate("hi", max_tokens=16, temperature=1.0, seed=7)
    c = llm.generate("hi", max_tokens=16, temperature=1.0, seed=8)
    assert a.token_ids == b.token_ids != c.token_ids and a.seed == 7


def test_prompt_longer_than_context(tiny_model: Path) -> None:
    llm = SteeredLlama(tiny_model, n_ctx=64, n_threads=2)
    with pytest.raises(ContextOverflowError, match="context holds 64"):
        llm.generate("word " * 200)


def test_reentrant_use_is_refused_and_threads_are_serialised(tiny_model: Path, packs: dict) -> None:
    llm = SteeredLlama(tiny_model, packs["split"], **KW)
    stream = llm.chat([{"role": "user", "content": "hi"}], max_tokens=5)
    next(iter(stream))  # type: ignore[arg-type]
    with pytest.raises(ConcurrentUseError):
        llm.generate("hi")
    stream.close()  # type: ignore[union-attr]
    sequential = [llm.generate(p, max_tokens=10).token_ids for p in PROMPTS]
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        results[i] = llm.generate(PROMPTS[i], max_tokens=10).token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(PROMPTS))] == sequential


def test_failed_selftest_fails_closed(tiny_model: Path, packs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tap that reads the wrong layer must stop the pack, never fall back silently."""
    real_last = LayerInpTap.last
    monkeypatch.setattr(LayerInpTap, "last", lambda self, layer: real_last(self, 1))
    with pytest.raises(SelfTestError, match="layer numbering"):
        SteeredLlama(tiny_model, packs["open"], **KW)
    with pytest.warns(RuntimeWarning, match="STEERING DISABLED"):
        llm = SteeredLlama(tiny_model, packs["open"], allow_unsteered=True, **KW)
    r = llm.generate("hi", max_tokens=3)
    assert llm.pack is None and not r.steered and r.gate_score is None and llm.unsteered_reason


def test_instances_sharing_one_loaded_model_keep_their_own_steering(tiny_model: Path, packs: dict) -> None:
    """Two contexts on one LlamaModel (a server's slots): weights loaded once, control vectors apart.

    A steered turn on one instance must not change what the other generates, and each must match an
    instance that loaded the model on its own.
    """
    from finesteer_edge.llama.model import LlamaModel

    alone_plain = SteeredLlama(tiny_model, **KW)
    alone_steered = SteeredLlama(tiny_model, packs["open"], **KW)
    want_plain = alone_plain.generate(PROMPTS[0], max_tokens=12).token_ids
    want_steered = alone_steered.generate(PROMPTS[0], max_tokens=12).token_ids
    alone_plain.close()
    alone_steered.close()
    assert want_plain != want_steered  # the vector matters, so a leak would show

    model = LlamaModel(tiny_model)
    a = SteeredLlama(model, packs["open"], **KW)
    b = SteeredLlama(model, **KW)
    assert a.session.model is b.session.model
    got_steered = a.generate(PROMPTS[0], max_tokens=12)
    got_plain = b.generate(PROMPTS[0], max_tokens=12)
    assert got_steered.steered and not got_plain.steered
    assert got_steered.token_ids == want_steered
    assert got_plain.token_ids == want_plain
    a.close()
    model.close()  # b still uses the weights: freeing is deferred until b closes
    assert not model.closed
    assert b.generate(PROMPTS[0], max_tokens=12).token_ids == want_plain
    b.close()
    assert model.closed


def test_gate_threshold_overrides_the_packs_tau(tiny_model: Path, packs: dict) -> None:
    """``threshold`` replaces the pack's tau for the gate, per instance and per call, and the result reports the
    threshold the score was held against; a threshold above every score leaves the turn bit-identical to no pack."""
    from finesteer_edge.settings import SteeringSettings

    low, high = packs["low"], packs["high"]
    llm = SteeredLlama(tiny_model, packs["split"], **KW)
    tau = llm.pack.manifest.tau
    r_low, r_high = llm.generate(low, max_tokens=8), llm.generate(high, max_tokens=8)
    assert (r_low.steered, r_high.steered) == (False, True) and r_high.threshold == tau
    # a threshold just under the low prompt's score opens its gate; one just over the high prompt's shuts it
    opened = llm.generate(low, max_tokens=8, steering=SteeringSettings(threshold=r_low.gate_score - 1e-6))
    assert opened.steered and opened.threshold == pytest.approx(r_low.gate_score - 1e-6)
    assert opened.packs[0].threshold == opened.threshold and opened.gate_score == r_low.gate_score
    shut = SteeredLlama(tiny_model, packs["split"], threshold=r_high.gate_score + 1e-6, **KW)
    assert shut.threshold == pytest.approx(r_high.gate_score + 1e-6)
    plain = SteeredLlama(tiny_model, **KW).generate(high, max_tokens=8)
    got = shut.generate(high, max_tokens=8)
    assert not got.steered and got.token_ids == plain.token_ids
    assert llm.generate(high, max_tokens=8).steered  # the per-call setting did not stick to the instance
    with pytest.raises(ValueError):
        SteeringSettings(threshold=float("nan"))
