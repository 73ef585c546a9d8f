"""A fuzz campaign: the valid inputs every mutation starts from (:class:`FuzzBase`), and the runner.

:class:`FuzzBase` writes a micro llama GGUF and a random pack for it (and, with ``training=True``, a
:class:`~finesteer_edge.testing.fuzz.training.TrainingBase`), turns a case of a target into files and asks
the worker to evaluate them. :func:`run_campaign` runs a budget of hypothesis-generated cases per target
and collects every failure instead of stopping at the first, so the count is complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core import apply_byte_mutations
from .gguf import apply_gguf_mutations, build_model_case, control_cases, gguf_header_len, model_cases
from .pack import PackParts, pack_cases, runnable_pack_cases, write_pack_case
from .training import TRAINING_TARGETS, TrainingBase
from .worker import FuzzWorker, Outcome

MICRO_CONFIG_KW = dict(n_layer=4, n_embd=32, n_head=2, n_head_kv=1, n_ff=64, context_length=256)
"""A 225 KB llama GGUF: small enough that writing and loading thousands of mutants stays fast."""
RUN_PROMPTS = ("hi", "Tell me a story about the sea.")
TARGETS = ("pack", "control", "model", "pack_run")


@dataclass
class FuzzBase:
    """The valid inputs every mutation starts from, and scratch paths for the cases."""

    root: Path
    model: Path
    pack: Path
    parts: PackParts
    model_bytes: bytes
    header_len: int
    training: TrainingBase | None = None
    """The training-side inputs, when created with ``training=True``."""

    @classmethod
    def create(cls, root: str | Path, *, training: bool = False) -> FuzzBase:
        from ..packs import make_random_pack
        from ..tiny_model import TinyConfig, write_tiny_llama

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        model = write_tiny_llama(root / "micro.gguf", TinyConfig(**MICRO_CONFIG_KW))  # type: ignore[arg-type]
        pack = make_random_pack(model, root / "base-pack", tau=-1.0, vector_norm=5.0)
        data = model.read_bytes()
        parts = PackParts.from_dir(pack)
        train_base = None
        if training:
            train_base = TrainingBase.create(root / "training", model, parts.control)
        return cls(root, model, pack, parts, data, gguf_header_len(data), train_base)

    def run(self, worker: FuzzWorker, target: str, case: Any) -> Outcome:
        """Write ``case`` for ``target`` and evaluate it in the worker."""
        if target in TRAINING_TARGETS:
            if self.training is None:
                raise ValueError(f"target {target!r} needs FuzzBase.create(..., training=True)")
            return self.training.run(worker, target, case)
        if target in ("pack", "pack_run"):
            d = write_pack_case(self.parts, case, self.root / "case-pack", self.root / "outside")
            if target == "pack":
                return worker.run("pack", path=str(d))
            return worker.run("pack_run", path=str(d), model=str(self.model), prompts=list(RUN_PROMPTS))
        if target == "control":
            gguf_muts, byte_muts = case
            blob = apply_gguf_mutations(self.parts.control, gguf_muts) if gguf_muts else self.parts.control
            p = self.root / "case-control.gguf"
            p.write_bytes(apply_byte_mutations(blob, byte_muts))
            return worker.run("control", path=str(p), n_embd=MICRO_CONFIG_KW["n_embd"],
                              n_layer=MICRO_CONFIG_KW["n_layer"])
        if target == "model":
            p = self.root / "case-model.gguf"
            p.write_bytes(build_model_case(self.model_bytes, self.header_len, case))
            return worker.run("model", path=str(p), pack=str(self.pack))
        raise ValueError(f"unknown fuzz target {target!r}")

    def strategy(self, target: str):  # type: ignore[no-untyped-def]
        if target in TRAINING_TARGETS:
            if self.training is None:
                raise ValueError(f"target {target!r} needs FuzzBase.create(..., training=True)")
            return self.training.strategy(target)
        if target == "pack":
            return pack_cases(self.parts)
        if target == "pack_run":
            return runnable_pack_cases(self.parts)
        if target == "model":
            return model_cases()
        if target == "control":
            return control_cases()
        raise ValueError(f"unknown fuzz target {target!r}")


@dataclass
class CampaignResult:
    cases: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[tuple[str, Any, Outcome]] = field(default_factory=list)
    seconds: float = 0.0
    restarts: int = 0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def kinds(self, target: str | None = None) -> set[str]:
        """The outcome kinds seen (``ok``, ``typed``...) for ``target``, or over all targets."""
        tables = [self.outcomes.get(target, {})] if target is not None else list(self.outcomes.values())
        return {key.split(":", 1)[0] for table in tables for key in table}

    def summary(self) -> str:
        lines = [f"{self.total} fuzz cases in {self.seconds:.1f}s ({self.restarts} worker restarts), "
                 f"{len(self.failures)} failures"]
        for target, n in self.cases.items():
            top = sorted(self.outcomes[target].items(), key=lambda kv: -kv[1])
            lines.append(f"  {target:9s} {n:6d} cases: " + ", ".join(f"{k} {v}" for k, v in top[:6]))
        for target, case, outcome in self.failures[:20]:
            lines.append(f"  FAILED {target}: {case!r}\n    {str(outcome)[:2000]}")
        return "\n".join(lines)


def run_campaign(base: FuzzBase, worker: FuzzWorker, budget: dict[str, int], *, seed: int = 0,
                 progress: Any = None) -> CampaignResult:
    """Run ``budget[target]`` hypothesis-generated cases per target; failures are collected, not raised,
    so the count is complete and every failing case is listed."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    result = CampaignResult()
    t0 = time.monotonic()

    def make(target: str, n: int, counts: dict[str, int]):  # type: ignore[no-untyped-def]
        @hseed(seed)
        @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=base.strategy(target))
        def one(case: Any) -> None:
            outcome = base.run(worker, target, case)
            key = f"{outcome.kind}:{outcome.error}" if outcome.error and outcome.kind != "bug" else outcome.kind
            counts[key] = counts.get(key, 0) + 1
            result.cases[target] += 1
            if outcome.failed:
                result.failures.append((target, case, outcome))
            if progress is not None and result.cases[target] % 500 == 0:
                progress(f"{target}: {result.cases[target]}/{n} ({time.monotonic() - t0:.0f}s)")

        return one

    for target, n in budget.items():
        result.outcomes[target] = {}
        result.cases[target] = 0
        make(target, n, result.outcomes[target])()
    result.seconds = time.monotonic() - t0
    result.restarts = worker.restarts
    return result
