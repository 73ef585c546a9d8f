"""Two SteeredLlama instances used from two threads give what they give one after the other.

Each instance owns its llama.cpp context, tap and onnxruntime session (or shares a SteeringPack, whose
onnxruntime session is safe to run from several threads); nothing is process-global except the backend
initialisation. Calls on *one* instance are serialised, which tests/test_steered.py covers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from finesteer_edge import SteeredLlama, SteeringPack
from finesteer_edge.result import GenerationResult
from finesteer_edge.testing.packs import make_random_pack

PROMPTS = ["Tell me a story about the sea.", "What is the capital of France?", "hi", "Write a poem about rain."]
KW = dict(n_ctx=256, n_threads=1)


@pytest.fixture(scope="module")
def split_pack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tau between the gate scores of PROMPTS: two of them steered, two not."""
    root = tmp_path_factory.mktemp("conc")
    opened = make_random_pack(tiny_model, root / "open", tau=-1.0, vector_norm=60.0, seed=3)
    with SteeredLlama(tiny_model, opened, **KW) as llm:
        scores = sorted(llm.generate(p, max_tokens=1).gate_score for p in PROMPTS)  # type: ignore[type-var]
    return make_random_pack(tiny_model, root / "split", tau=(scores[1] + scores[2]) / 2, vector_norm=60.0, seed=3)


def run_all(llm: SteeredLlama) -> list[tuple[list[int], bool]]:
    out = []
    for p in PROMPTS * 2:
        r = llm.generate(p, max_tokens=10)
        out.append((r.token_ids, r.steered))
    items = list(llm.chat([{"role": "user", "content": PROMPTS[0]}], max_tokens=10))  # type: ignore[arg-type]
    last = items[-1]
    assert isinstance(last, GenerationResult)
    out.append((last.token_ids, last.steered))
    return out


@pytest.mark.parametrize("setup", ["separate_packs", "shared_pack", "pack_and_plain", "cb_eval_tap", "tap_context"])
def test_two_instances_in_two_threads(tiny_model: Path, split_pack: Path, setup: str) -> None:
    shared = SteeringPack.load(split_pack)
    if setup == "separate_packs":
        a, b = SteeredLlama(tiny_model, split_pack, **KW), SteeredLlama(tiny_model, split_pack, **KW)
    elif setup == "shared_pack":
        a, b = SteeredLlama(tiny_model, shared, **KW), SteeredLlama(tiny_model, shared, **KW)
    elif setup == "pack_and_plain":
        a, b = SteeredLlama(tiny_model, split_pack, **KW), SteeredLlama(tiny_model, **KW)
    elif setup == "cb_eval_tap":  # the Python graph callback tap runs on ggml's threads and takes the GIL
        a, b = (SteeredLlama(tiny_model, split_pack, tap_method="cb_eval", **KW) for _ in range(2))
    else:  # two contexts per instance (tap + generation), four in all, on one model
        a, b = (SteeredLlama(tiny_model, split_pack, tap_method="tap_context", **KW) for _ in range(2))
    sequential = [run_all(a), run_all(b)]
    assert {steered for _, steered in sequential[0]} == {True, False}  # both kinds of turn, concurrently
    concurrent: list[list[tuple[list[int], bool]] | None] = [None, None]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(i: int, llm: SteeredLlama) -> None:
        try:
            start.wait()
            concurrent[i] = run_all(llm)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, llm)) for i, llm in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert concurrent == sequential
    a.close()
    b.close()


def test_interleaved_streams_on_two_instances(tiny_model: Path, split_pack: Path) -> None:
    """Two open chat streams advanced in turn from one thread do not see each other's steering."""
    a, b = SteeredLlama(tiny_model, split_pack, **KW), SteeredLlama(tiny_model, split_pack, **KW)
    want = [a.generate(PROMPTS[i], max_tokens=12).token_ids for i in (0, 2)]
    sa = iter(a.chat([{"role": "user", "content": PROMPTS[0]}], max_tokens=12))  # type: ignore[arg-type]
    sb = iter(b.chat([{"role": "user", "content": PROMPTS[2]}], max_tokens=12))  # type: ignore[arg-type]
    done: dict[str, GenerationResult] = {}
    while len(done) < 2:
        for name, stream in (("a", sa), ("b", sb)):
            if name not in done:
                item = next(stream)
                if isinstance(item, GenerationResult):
                    done[name] = item
    assert [done["a"].token_ids, done["b"].token_ids] == want
