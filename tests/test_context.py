"""Conversations that outgrow the context: the ``context_policy`` of SteeredLlama and ``chat --context-policy``.

``error`` raises ContextOverflowError before touching the KV cache, so the same instance keeps working;
``drop_oldest`` leaves out the oldest exchanges and keeps chatting in a small n_ctx. Equality with a
fresh instance (strict numerics) is the proof that nothing in the KV cache was corrupted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from finesteer_edge import SteeredLlama
from finesteer_edge.errors import ContextOverflowError
from finesteer_edge.result import GenerationResult
from finesteer_edge.steered import drop_oldest_turns
from finesteer_edge.testing.packs import make_random_pack

from .conftest import run_cli

N_CTX = 128
KW = dict(n_ctx=N_CTX, n_threads=1, strict=True)
SYSTEM = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def chat(llm: SteeredLlama, messages: list[dict[str, str]], n: int = 6) -> GenerationResult:
    r = llm.chat(messages, stream=False, max_tokens=n)
    assert isinstance(r, GenerationResult)
    return r


@pytest.fixture(scope="module")
def pack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tiny_model, tmp_path_factory.mktemp("ctx") / "open", tau=-1.0, vector_norm=60.0)


@pytest.mark.parametrize("with_pack", [False, True])
def test_overflow_error_leaves_the_instance_working(tiny_model: Path, pack: Path, with_pack: bool) -> None:
    """After an overflow the instance answers exactly like a twin that never saw the oversized turn."""
    llm, twin = (SteeredLlama(tiny_model, pack if with_pack else None, **KW) for _ in range(2))
    msgs = [SYSTEM, user("hello")]
    first = chat(llm, msgs)
    assert chat(twin, msgs).token_ids == first.token_ids
    msgs.append({"role": "assistant", "content": first.text})
    before = list(llm.session.tokens)
    with pytest.raises(ContextOverflowError, match=f"context holds {N_CTX}"):
        chat(llm, [*msgs, user("word " * 200)])
    assert llm.session.tokens == before and not llm.session.control_active  # KV cache untouched
    with pytest.raises(ContextOverflowError):
        llm.generate("word " * 200)
    msgs.append(user("and then?"))
    got, want = chat(llm, msgs), chat(twin, msgs)
    # a steered turn prefills the whole conversation again with its vector (DESIGN-NOTES item 20)
    assert (got.cached_tokens > 0) == (not with_pack) and got.steered == with_pack
    assert (got.token_ids, got.gate_score) == (want.token_ids, want.gate_score)
    if not with_pack:  # unsteered, a kept cache is also equal to a fresh prefill of the whole conversation
        assert got.token_ids == SteeredLlama(tiny_model, **KW).generate(msgs, max_tokens=6).token_ids


def test_generation_that_fills_the_context(tiny_model: Path) -> None:
    """A turn that fills the context stops with finish_reason "context"; the next turn then overflows
    (error) or drops the oldest exchange (drop_oldest) and goes on."""
    for policy in ("error", "drop_oldest"):
        llm = SteeredLlama(tiny_model, context_policy=policy, **KW)
        msgs = [SYSTEM, user("Tell me a story about the sea.")]
        r = chat(llm, msgs, n=10_000)
        # The last sampled token is output but never decoded: the KV cache holds exactly n_ctx tokens.
        assert r.finish_reason == "context" and r.prompt_tokens + r.tokens - 1 == N_CTX == llm.session.n_past
        msgs += [{"role": "assistant", "content": r.text}, user("more")]
        if policy == "error":
            with pytest.raises(ContextOverflowError):
                chat(llm, msgs)
        else:
            r2 = chat(llm, msgs)
            assert r2.dropped_turns == 1 and r2.tokens > 0
            fresh = SteeredLlama(tiny_model, **KW).generate(drop_oldest_turns(msgs, 1), max_tokens=6)
            assert r2.token_ids == fresh.token_ids


@pytest.mark.parametrize("with_pack", [False, True])
def test_drop_oldest_keeps_chatting(tiny_model: Path, pack: Path, with_pack: bool) -> None:
    llm = SteeredLlama(tiny_model, pack if with_pack else None, context_policy="drop_oldest", **KW)
    history = [SYSTEM]
    dropped = 0
    for turn in range(40):
        history.append(user(f"Question {turn}: what about the number {turn * 7}?"))
        r = chat(llm, history, n=8)
        assert r.prompt_tokens + r.tokens - 1 <= N_CTX and r.tokens > 0 and r.steered == with_pack
        dropped += r.dropped_turns
        history = drop_oldest_turns(history, r.dropped_turns)
        assert history[0] == SYSTEM and history[-1]["content"].startswith(f"Question {turn}:")
        if not with_pack and turn % 13 == 12:
            # The kept cache (system prompt reused, the rest re-prefilled after a drop) answers exactly like a
            # fresh prefill of the trimmed conversation. (With a pack, cached turns were prefilled steered,
            # so a fresh run differs by design: DESIGN.md section 4.)
            fresh = SteeredLlama(tiny_model, **KW).generate(history, max_tokens=8)
            assert r.token_ids == fresh.token_ids
        history.append({"role": "assistant", "content": r.text})
    assert dropped >= 30  # it really ran out of room, many times


def test_drop_oldest_cannot_drop_the_question(tiny_model: Path) -> None:
    llm = SteeredLlama(tiny_model, context_policy="drop_oldest", **KW)
    msgs = [SYSTEM, user("hi"), {"role": "assistant", "content": "hello"}, user("word " * 200)]
    with pytest.raises(ContextOverflowError):
        chat(llm, msgs)
    assert chat(llm, [SYSTEM, user("hi")]).tokens > 0


def test_which_turns_are_dropped() -> None:
    a = {"role": "assistant", "content": "a"}
    msgs = [SYSTEM, a, user("1"), a, {"role": "tool", "content": "t"}, a, {"role": "system", "content": "mid"},
            user("2"), a, user("3")]
    assert drop_oldest_turns(msgs, 0) == msgs
    assert drop_oldest_turns(msgs, 1) == msgs[:1] + msgs[2:]  # a leading assistant greeting goes first
    assert drop_oldest_turns(msgs, 2) == [SYSTEM, msgs[6], user("2"), a, user("3")]  # system messages stay
    assert drop_oldest_turns(msgs, 3) == drop_oldest_turns(msgs, 99) == [SYSTEM, msgs[6], user("3")]
    assert drop_oldest_turns([user("only")], 5) == [user("only")]


def test_bad_policy(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match="context_policy"):
        SteeredLlama(tiny_model, context_policy="truncate", **KW)


def test_cli_chat_context_policy(tiny_model: Path) -> None:
    lines = "".join(f"tell me about the number {i}\n" for i in range(8))
    args = ("chat", str(tiny_model), "--no-pack", "-n", "12", "--n-ctx", "96", "--threads", "1")
    dropping = run_cli(*args, "--context-policy", "drop_oldest", input=lines)
    assert dropping.returncode == 0, dropping.stderr
    assert "forgot the 1 oldest exchange" in dropping.stderr and "error" not in dropping.stderr
    assert len(dropping.stdout.strip().splitlines()) == 8  # every turn answered
    strict = run_cli(*args, input=lines)
    assert strict.returncode == 0 and "error: " in strict.stderr and "context holds 96" in strict.stderr
    bad = run_cli(*args, "--context-policy", "shrink", input="")
    assert bad.returncode == 2 and "context-policy" in bad.stderr
