"""Issue 11: llama.cpp's repetition penalties and DRY in the sampler chain, greedy or sampled, the same for
steered and unsteered turns. The repeat penalty is checked against a hand-computed greedy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import SteeredLlama
from finesteer_edge.settings import Penalties
from finesteer_edge.testing.packs import make_random_pack

KW = dict(n_ctx=256, n_threads=1, strict=True)
PROMPT = "Count the sheep in the field."


def _penalised_reference(llm: SteeredLlama, n: int, penalty: float, last_n: int) -> list[int]:
    """llama.cpp's repeat penalty by hand: a seen token's logit is divided by ``penalty`` if > 0, else multiplied."""
    s = llm.session
    s.reset()
    s.decode(llm.prompt_tokens([{"role": "user", "content": PROMPT}]))
    out: list[int] = []
    for _ in range(n):
        logits = s.logits()
        for tok in set(out[-last_n:]):
            logits[tok] = logits[tok] / penalty if logits[tok] > 0 else logits[tok] * penalty
        tok = int(np.argmax(logits))
        if s.is_eog(tok):
            break
        out.append(tok)
        s.decode([tok])
    s.reset()
    return out


def test_repeat_penalty_matches_reference(tiny_model: Path) -> None:
    with SteeredLlama(tiny_model, **KW) as llm:
        plain = llm.generate(PROMPT, max_tokens=24).token_ids
        assert len(set(plain)) < len(plain)  # the tiny model repeats itself: there is something to penalise
        got = llm.generate(PROMPT, max_tokens=24, repeat_penalty=1.5, repeat_last_n=16).token_ids
        assert got == _penalised_reference(llm, 24, 1.5, 16)
        assert got != plain
        off = llm.generate(PROMPT, max_tokens=24, repeat_penalty=1.0, dry_multiplier=0.0).token_ids
        assert off == plain  # off means the old chain exactly


def test_dry_breaks_repeats(tiny_model: Path) -> None:
    def repeated_bigrams(ids: list[int]) -> int:
        grams = [tuple(ids[i:i + 2]) for i in range(len(ids) - 1)]
        return len(grams) - len(set(grams))

    with SteeredLlama(tiny_model, **KW) as llm:
        plain = llm.generate(PROMPT, max_tokens=40).token_ids
        assert repeated_bigrams(plain) > 0  # the tiny model's greedy answer repeats a token pair
        # allowed length 1 and a large multiplier: a token that would continue a repeated token is pushed down
        dry = llm.generate(PROMPT, max_tokens=40, penalties=Penalties(dry_multiplier=50.0, dry_allowed_length=1))
        assert dry.token_ids != plain
        assert repeated_bigrams(dry.token_ids) < repeated_bigrams(plain)
        sampled = llm.generate(PROMPT, max_tokens=20, temperature=0.8, seed=3,
                               penalties=Penalties(repeat_penalty=1.3, dry_multiplier=1.0))
        again = llm.generate(PROMPT, max_tokens=20, temperature=0.8, seed=3,
                             penalties=Penalties(repeat_penalty=1.3, dry_multiplier=1.0))
        assert sampled.token_ids == again.token_ids  # seeded: reproducible with penalties in the chain


def test_penalties_apply_identically_to_closed_gates(tiny_model: Path, tmp_path: Path) -> None:
    closed = make_random_pack(tiny_model, tmp_path / "closed", tau=2.0)
    pen = Penalties(repeat_penalty=1.3, dry_multiplier=0.8)
    with SteeredLlama(tiny_model, **KW) as plain, SteeredLlama(tiny_model, closed, **KW) as llm:
        r = llm.generate(PROMPT, max_tokens=20, penalties=pen)
        assert not r.steered and r.token_ids == plain.generate(PROMPT, max_tokens=20, penalties=pen).token_ids


@pytest.mark.parametrize("bad", [dict(repeat_penalty=0.0), dict(repeat_penalty=float("inf")),
                                 dict(dry_multiplier=-1.0), dict(repeat_last_n=-1),
                                 dict(dry_multiplier=0.5, dry_base=0.5)])
def test_bad_penalties(bad: dict) -> None:
    with pytest.raises(ValueError):
        Penalties(**bad)
