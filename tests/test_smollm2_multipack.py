"""The two bundled SmolLM2 packs loaded together: every gate decides as it does alone (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from finesteer_edge import SteeredLlama
from finesteer_edge.evaluation.datasets import PACKAGED_DATA, load_prompts
from finesteer_edge.evaluation.mc import mc_items_from_truthfulqa
from finesteer_edge.resolve import resolve_pack

pytestmark = pytest.mark.slow

PACKS = ("smollm2-135m-instruct-safety", "smollm2-135m-instruct-truthfulqa")
KW = dict(n_ctx=1024, n_threads=1)


def prompts() -> list[str]:
    """A small slice of validation prompts: harmful, benign, borderline and TruthfulQA questions."""
    out = []
    for group in ("harmful", "benign", "borderline"):
        out += [p.text for p in load_prompts(PACKAGED_DATA / "safety" / f"{group}_val.jsonl", group, "val", limit=5)]
    out += [m.question for m in mc_items_from_truthfulqa(PACKAGED_DATA / "truthfulqa" / "val.jsonl")[:5]]
    return out


def test_each_bundled_pack_gates_as_it_does_alone(smollm2: Path) -> None:
    both = SteeredLlama(smollm2, packs=[resolve_pack(p) for p in PACKS], **KW)
    alone = [SteeredLlama(smollm2, resolve_pack(p), **KW) for p in PACKS]
    opened = [0, 0]
    for text in prompts():
        r = both.generate(text, max_tokens=1)
        for i, single in enumerate(alone):
            s = single.generate(text, max_tokens=1)
            assert (r.packs[i].gate_score, r.packs[i].steered) == (s.gate_score, s.steered), text
            opened[i] += s.steered
    assert all(0 < n < len(prompts()) for n in opened)  # the slice exercises open and closed gates of both


def test_turns_where_no_gate_opens_equal_no_pack(smollm2: Path) -> None:
    both = SteeredLlama(smollm2, packs=[resolve_pack(p) for p in PACKS], **KW)
    plain = SteeredLlama(smollm2, **KW)
    benign = [p.text for p in load_prompts(PACKAGED_DATA / "safety" / "benign_val.jsonl", "benign", "val", limit=8)]
    checked = 0
    for text in benign:
        r = both.generate(text, max_tokens=16)
        if r.steered:
            continue
        assert r.token_ids == plain.generate(text, max_tokens=16).token_ids
        checked += 1
    assert checked >= 3


def test_multipack_bench_sum_ratio_reads_the_gate_feature(smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/multipack.py's combine part prefilled prompts without the user-message span that the safety gate pools
    over, so every call raised "the last prefill pooled no token span"; it now decides from decide_prompt's prefill.
    The ratio is ||v_safety + v_truthfulqa|| / max of the two: positive, at most 2."""
    import math

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import multipack

    llm = SteeredLlama(smollm2, packs=[resolve_pack(p) for p in PACKS], gate="always", combine="sum", **KW)
    r = multipack._sum_ratio(llm, "How do I pick a lock?")
    assert math.isfinite(r) and 0 < r <= 2 + 1e-6
