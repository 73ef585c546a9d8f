"""One evaluation suite end to end: load model + pack + data, run the methods, attach provenance.

Shared by ``finesteer-edge eval`` and ``scripts/run_eval.py`` so the CLI and the report always run the
same code. The returned dict is JSON-ready; it records what a number needs to be judged later: the
model's and the pack's sha256, every data file's sha256 and how many rows were used, thread count,
versions, load average, and wall time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import file_sha256
from ..errors import DataError
from ..settings import CLI_PENALTIES, Penalties
from .datasets import SAFETY_GROUPS, Prompt, describe_file, load_prompts
from .executors import PoolExecutor
from .mc import MCItem, load_any_mc, load_mc_items
from .runner import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_STRENGTHS,
    REUSE_CHECKS,
    Engine,
    MCEngine,
    run_safety,
    run_truthfulqa,
)

SUITES = ("safety", "truthfulqa")


@dataclass
class SuiteConfig:
    suite: str
    model: Path
    pack: Path
    test: dict[str, Path | None]
    """safety: harmful/benign/borderline; truthfulqa: ``mc`` (+ optional benign/borderline for the gate)."""
    val: dict[str, Path | None] = field(default_factory=dict)
    """safety: harmful/benign/borderline val splits; truthfulqa: ``mc`` (TruthfulQA rows or MC items)."""
    methods: Sequence[str] = ()
    strengths: Sequence[float] = DEFAULT_STRENGTHS
    max_tokens: int = DEFAULT_MAX_TOKENS
    limit: int | None = None
    threads: int | None = None
    n_ctx: int = 2048
    progress: bool = True
    seed: int = 0
    reuse_checks: int = REUSE_CHECKS
    workers: int = 1
    """Worker processes, each with its own model and ``threads`` threads (see executors.py)."""
    command: str = ""
    chat_template: str | None = None
    """None: the model's own; or a built-in name / Jinja file (SteeredLlama's ``chat_template``)."""
    penalties: Penalties = CLI_PENALTIES
    """safety: the sampler of every answer, every method alike (base included): greedy plus llama.cpp's repetition
    penalties. Default: what ``generate``/``chat`` use (:data:`~finesteer_edge.settings.CLI_PENALTIES`), so the
    numbers are what a user of the CLI gets; :data:`~finesteer_edge.settings.NO_PENALTIES` is plain greedy.
    Recorded in the results' ``settings.penalties``. (truthfulqa scores log-probabilities: no sampler.)"""


def pack_identity(pack_dir: Path) -> dict[str, Any]:
    """Name, layers, tau, alpha, default vector source and strength, and hashes of a pack (sha256 of manifest.json
    pins all its files)."""
    raw = (pack_dir / "manifest.json").read_bytes()
    m = json.loads(raw)
    return {
        "path": str(pack_dir), "name": m.get("name"), "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "files": m.get("files"), "layers": m.get("layers"), "tau": m.get("tau"), "alpha": m.get("alpha"),
        "gate": m.get("gate"), "experts": m.get("experts"), "method": m.get("method"),
        "vector_source": m.get("vector_source"), "strength": m.get("strength", 1.0),
        "provenance": m.get("provenance"), "description": m.get("description"),
    }


def _versions() -> dict[str, str]:
    from ..measure.common import versions

    return versions()


def run_suite(cfg: SuiteConfig, *, generations_path: Path | None = None) -> dict[str, Any]:
    """Run one suite and return its results with provenance (see the module docstring)."""
    from ..measure.common import cpu_model, loadavg
    from ..steered import SteeredLlama

    if cfg.suite not in SUITES:
        raise DataError(f"unknown suite {cfg.suite!r}; choose one of {', '.join(SUITES)}")
    pack_id = pack_identity(cfg.pack)  # before the run: a pack replaced meanwhile must not be credited
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    load0 = loadavg()
    failed = True
    data: dict[str, Any] = {}
    sink = None
    if generations_path is not None:
        generations_path.parent.mkdir(parents=True, exist_ok=True)
        sink = generations_path.open("w", encoding="utf-8")

    def on_generation(row: dict[str, Any]) -> None:
        if sink is not None:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")

    if cfg.workers < 1:
        raise DataError("workers must be >= 1")
    threads = cfg.threads or (1 if cfg.workers > 1 else None)
    llm = SteeredLlama(cfg.model, cfg.pack, n_threads=threads, n_ctx=cfg.n_ctx, chat_template=cfg.chat_template)
    executor: PoolExecutor | None = None
    try:
        if cfg.workers > 1:
            executor = PoolExecutor(cfg.model, cfg.pack, workers=cfg.workers, n_threads=llm.n_threads,
                                    n_ctx=cfg.n_ctx, max_tokens=cfg.max_tokens, chat_template=cfg.chat_template)
        sweep = len(cfg.strengths) > 1
        if cfg.suite == "safety":
            test = _load_groups(cfg.test, "test", cfg.limit, data)
            val = _load_groups(cfg.val, "val", cfg.limit, data) if sweep else None
            if not test.get("harmful") or not test.get("benign"):
                raise DataError("the safety suite needs harmful and benign prompts")
            engine = Engine(llm, max_tokens=cfg.max_tokens, progress=cfg.progress, executor=executor,
                            penalties=cfg.penalties)
            res = run_safety(engine, test, val, cfg.methods, cfg.strengths, on_generation=on_generation,
                             reuse_checks=cfg.reuse_checks)
        else:
            mc_path = cfg.test.get("mc")
            if mc_path is None:
                raise DataError("the truthfulqa suite needs MC items (--mc)")
            items = _limit(load_mc_items(mc_path), cfg.limit)
            data["mc_test"] = describe_file(mc_path, len(items))
            val_items: list[MCItem] | None = None
            if sweep:
                vp = cfg.val.get("mc")
                if vp is None:
                    raise DataError("sweeping several strengths needs validation items (--val)")
                val_items = _limit(load_any_mc(vp, seed=cfg.seed), cfg.limit)
                data["mc_val"] = {**describe_file(vp, len(val_items)), "shuffle_seed": cfg.seed}
            others = _load_groups({g: cfg.test.get(g) for g in ("benign", "borderline")}, "test", cfg.limit, data)
            engine_mc = MCEngine(llm, progress=cfg.progress, executor=executor)
            res = run_truthfulqa(engine_mc, items, val_items, cfg.methods, cfg.strengths, other_prompts=others,
                                 on_generation=on_generation, reuse_checks=cfg.reuse_checks)
        failed = False
    finally:
        if executor is not None:
            executor.close(graceful=not failed)
        llm.close()
        if sink is not None:
            sink.close()
    res["data"] = data
    res["model"] = {"path": str(cfg.model), "name": cfg.model.name, "sha256": file_sha256(cfg.model)}
    res["pack"] = pack_id
    if pack_identity(cfg.pack)["manifest_sha256"] != pack_id["manifest_sha256"]:
        res["pack"]["warning"] = "the pack directory changed during the run; results belong to the hash above"
    res["settings"].update(threads=llm.n_threads, workers=cfg.workers, n_ctx=cfg.n_ctx, limit=cfg.limit,
                           seed=cfg.seed)
    res["environment"] = {
        "command": cfg.command, "cpu": cpu_model(), "loadavg_start": load0, "loadavg_end": loadavg(),
        "versions": _versions(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    res["timing"]["seconds_wall"] = time.perf_counter() - t0
    # CPU time of this process and its (finished) workers: with the machine to ourselves the wall time is
    # about cpu_seconds / cores, whatever the load was during this run.
    res["timing"]["cpu_seconds"] = _cpu_seconds() - cpu0
    return res


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _limit(xs: list[Any], limit: int | None) -> list[Any]:
    return xs if limit is None else xs[:limit]


def _load_groups(paths: dict[str, Path | None], split: str, limit: int | None,
                 data: dict[str, Any]) -> dict[str, list[Prompt]]:
    out: dict[str, list[Prompt]] = {}
    for group in SAFETY_GROUPS:
        p = paths.get(group)
        if p is None:
            continue
        out[group] = load_prompts(p, group, split, limit=limit)
        data[f"{group}_{split}"] = describe_file(p, len(out[group]))
    return out


def compact(res: dict[str, Any]) -> dict[str, Any]:
    """The results without per-prompt gate scores (what ``--json`` prints; results.json keeps everything)."""
    out = dict(res)
    gate = dict(res.get("gate", {}))
    scores = gate.pop("scores", None)
    if scores is not None:
        gate["n"] = {g: len(xs) for g, xs in scores.items()}
    out["gate"] = gate
    return out
