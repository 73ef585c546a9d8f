"""Where a gate-closed turn spends its time: a workload for a sampling profiler, and a summary of its output.

    py-spy record --native -f raw -o prof.txt -- python bench/profile_turns.py    # 6 turns x 128 tokens
    python bench/profile_turns.py --summarize prof.txt

The workload is SmolLM2 with a random pack whose gate never opens (tau 2), 1 llama.cpp thread, greedy.
The summary counts the samples whose stack passes through each part (``llama_decode``, the head in
onnxruntime, sampling, our generation loop); everything else is start-up (imports, model load, self-test).
py-spy is not a dependency of the project (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)

PARTS = {  # in order: a sample counts for the first part whose frame is on its stack
    "llama_decode": ("llama_decode",),
    "head (onnxruntime)": ("finesteer_edge/pack/head.py",),
    "sampling": ("llama_sampler_sample",),
    "our generation loop (rest of generate)": ("SteeredLlama.generate (",),
}


def workload(turns: int, max_tokens: int) -> None:
    from finesteer_edge.steered import SteeredLlama
    from finesteer_edge.testing.packs import make_random_pack

    model = _util.smollm2()
    with tempfile.TemporaryDirectory(prefix="fse-profile-") as tmp:
        pack = make_random_pack(model, Path(tmp) / "closed", gate_layer=15, steer_layer=10, tau=2.0, seed=0)
        with SteeredLlama(model, pack, n_threads=1, n_ctx=1024) as llm:
            for _ in range(turns):
                r = llm.generate("Write a short story about a lighthouse keeper.", max_tokens=max_tokens)
                assert not r.steered


def summarize(path: Path) -> dict[str, float]:
    """Share of samples per part from py-spy's raw (collapsed-stack) output: ``frame;frame;... count``.

    Parts are exclusive and checked in order, so a decode called from our loop counts as ``llama_decode``
    and "our generation loop" is what the turn spends in Python outside decode, head and sampling.
    """
    total = 0
    counts = dict.fromkeys([*PARTS, "other (start-up: imports, model load, self-test)"], 0)
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        part = next((p for p, needles in PARTS.items() if any(x in stack for x in needles)), None)
        counts[part or "other (start-up: imports, model load, self-test)"] += int(n)
    return {part: c / total for part, c in counts.items()} if total else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--summarize", type=Path, default=None, help="py-spy raw output to summarise instead.")
    args = p.parse_args()
    if args.summarize:
        for part, share in summarize(args.summarize).items():
            print(f"{part}: {100 * share:.1f}% of samples")
        return
    workload(args.turns, args.max_tokens)


if __name__ == "__main__":
    main()
