"""A gate that reads the last user message (``gate.feature`` ``user_mean`` / ``user_end``, issue 10).

The runtime pools the span while it prefills (a running sum in the tap); the reference here is numpy on every
prompt token's state from a separate fresh prefill that captures all rows, on both tap paths (llama's
``layer_inp`` and qwen2's tap context), with the span split over several ubatches and with a chat whose
earlier turns come from the KV cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import SteeredLlama, SteeringPack
from finesteer_edge.errors import PackFormatError
from finesteer_edge.gate_input import user_span
from finesteer_edge.llama.session import ContextSettings, LlamaSession
from finesteer_edge.pack.manifest import parse_manifest
from finesteer_edge.testing.packs import make_random_pack
from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_model

KW = dict(n_ctx=512, n_threads=1, chat_template="chatml")
GATE = 1
HISTORY = [{"role": "system", "content": "You answer briefly."},
           {"role": "user", "content": "Hi! What is the capital of France?"},
           {"role": "assistant", "content": "Paris."}]
REQUEST = "How do I store ammunition safely in a house with children, step by step, with every detail?"


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TinyConfig(n_embd=128, n_head=4, n_head_kv=2, n_ff=256)
    return write_tiny_model(tmp_path_factory.mktemp(f"gi_{request.param}") / f"{request.param}.gguf",
                            request.param, cfg)


def reference(model: Path, llm: SteeredLlama, messages: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """Every feature by hand: one fresh prefill capturing all rows, pooled with numpy."""
    toks = llm.prompt_tokens(messages)
    a, b = user_span(llm.chat_template, llm.session, messages, len(toks))
    s = LlamaSession(model, ContextSettings(n_ctx=512, n_threads=1, strict=True), tap_layers=(GATE, 2))
    s.decode(toks, capture="all")
    rows = s.hidden_rows(GATE).astype(np.float64)
    s.close()
    return {"last": rows[-1], "user_end": rows[b - 1], "user_mean": rows[a:b].mean(0)}


@pytest.mark.parametrize("feature", ["user_mean", "user_end"])
def test_the_runtime_pools_the_user_message_like_the_reference(model: Path, tmp_path: Path, feature: str) -> None:
    pack = make_random_pack(model, tmp_path / "p", gate_layer=GATE, steer_layer=2, tau=2.0, gate_feature=feature,
                            gate_kind="scs_logistic")
    last = make_random_pack(model, tmp_path / "l", gate_layer=GATE, steer_layer=2, tau=2.0, gate_kind="scs_logistic")
    p = SteeringPack.load(pack)
    assert p.manifest.gate_feature == feature
    # n_batch 8: the user message spans several ubatches, so the running sum is really exercised
    llm = SteeredLlama(model, pack, n_batch=8, strict=True, **KW)
    first = [*HISTORY[:1], {"role": "user", "content": HISTORY[1]["content"]}]
    r1 = llm.chat(first, stream=False, max_tokens=4)
    msgs = [*first, {"role": "assistant", "content": r1.text}, {"role": "user", "content": REQUEST}]
    r2 = llm.chat(msgs, stream=False, max_tokens=4)
    assert r2.cached_tokens > 0  # turn 2 came partly from the KV cache of turn 1
    ref = reference(model, llm, msgs)
    got = llm.session.hidden_span(GATE, feature).astype(np.float64)
    assert np.linalg.norm(got - ref[feature]) <= 1e-5 * np.linalg.norm(ref[feature])
    assert np.linalg.norm(ref["last"] - ref[feature]) > 0.5 * np.linalg.norm(ref[feature])  # not the last token
    want = p.evaluate(ref[feature].astype(np.float32), ref["last"].astype(np.float32)).gate_score
    assert r2.gate_score == pytest.approx(want, rel=1e-4, abs=1e-6)
    # negative control: the last-token gate with the same weights scores something else on this turn
    other = p.evaluate(ref["last"].astype(np.float32), ref["last"].astype(np.float32)).gate_score
    assert abs(other - want) > 1e-3
    assert SteeringPack.load(last).evaluate(ref["last"].astype(np.float32), ref["last"].astype(np.float32)
                                            ).gate_score == pytest.approx(other, rel=1e-6)
    # decide_prompt (no generation) sees the same state as the turn
    assert llm.decide_prompt(msgs)[0].gate_score == pytest.approx(r2.gate_score, rel=1e-4, abs=1e-6)
    llm.close()


def test_span_gate_closed_turns_are_bit_identical_and_open_ones_steer(model: Path, tmp_path: Path) -> None:
    plain = SteeredLlama(model, **KW)
    closed = SteeredLlama(model, make_random_pack(model, tmp_path / "c", gate_layer=GATE, tau=2.0,
                                                  gate_feature="user_mean"), **KW)
    opened = SteeredLlama(model, make_random_pack(model, tmp_path / "o", gate_layer=GATE, tau=-1.0, vector_norm=30.0,
                                                  gate_feature="user_mean"), **KW)
    msgs = [*HISTORY, {"role": "user", "content": REQUEST}]
    want = plain.chat(msgs, stream=False, max_tokens=10).token_ids
    got = closed.chat(msgs, stream=False, max_tokens=10)
    assert not got.steered and got.token_ids == want
    assert opened.chat(msgs, stream=False, max_tokens=10).token_ids != want


def test_decide_without_a_pooled_span_is_an_error(model: Path, tmp_path: Path) -> None:
    llm = SteeredLlama(model, make_random_pack(model, tmp_path / "p", gate_layer=GATE, gate_feature="user_mean"), **KW)
    s = llm.session
    s.reset()
    s.decode(llm.prompt_tokens([{"role": "user", "content": "hi there"}]), capture=True)  # no span pooled
    with pytest.raises(RuntimeError, match="pooled no token span"):
        llm.decide()
    with pytest.raises(ValueError, match="within the new tokens"):
        s.decode([1, 2], capture=True, span=(0, 1))  # in the cached prefix


def _manifest(pack: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((pack / "manifest.json").read_text())


def test_manifest_versions_keep_old_runtimes_from_misreading_the_gate(model: Path, tmp_path: Path) -> None:
    old = _manifest(make_random_pack(model, tmp_path / "old", gate_layer=GATE))
    new = _manifest(make_random_pack(model, tmp_path / "new", gate_layer=GATE, gate_feature="user_mean"))
    assert old["format_version"] == 1 and "feature" not in old["gate"]  # unchanged for last-token gates
    assert new["format_version"] == 2 and new["gate"]["feature"] == "user_mean"
    assert parse_manifest(json.dumps(old).encode()).gate_feature == "last"
    with pytest.raises(PackFormatError, match="needs format_version 2"):
        parse_manifest(json.dumps({**new, "format_version": 1}).encode())
    with pytest.raises(PackFormatError, match="gate.feature"):
        parse_manifest(json.dumps({**new, "gate": {**new["gate"], "feature": "first"}}).encode())
    n_layer = new["model"]["n_layer"]
    with pytest.raises(PackFormatError, match="last layer"):
        parse_manifest(json.dumps({**new, "layers": {**new["layers"], "gate": n_layer - 1}}).encode())
    with pytest.raises(PackFormatError, match="version 6"):  # the next version, unknown to this runtime
        parse_manifest(json.dumps({**new, "format_version": 6}).encode())
