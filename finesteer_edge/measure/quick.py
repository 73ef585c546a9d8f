"""``finesteer-edge bench``: what steering costs on *your* model and pack, in one short run.

Five variants answer the same prompt, greedy, on a fresh KV cache each turn:

- ``stock``: llama-cpp-python's own ``Llama.generate`` (same context settings), to show our loop is not slower;
- ``plain``: our :class:`SteeredLlama` with no pack: the baseline every ratio divides by;
- ``gate_closed``: with the pack, gate closed (tap + head run, no vector): must cost ~nothing;
- ``gate_open_fast`` / ``gate_open_exact``: gate open, vector on; exact re-prefills the turn's tokens.

A given pack is forced closed/open with the ``gate`` policy (``never``/``always``), so its own threshold does
not decide which variant is measured. Without a pack (and none bundled for the model) two random packs are
built (tau 2 closes the SCS gate for every prompt, tau -1 opens it: the energy score lies in [0, 1]); their
weights are random, so the *timings* are meaningful and the generated text is not.

Variants are interleaved round by round and summarised by medians; all ratios come from this one run.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PackError
from .common import environment, interleaved, loadavg, median, ratio, time_call
from .prompts import SHORT_PROMPT
from .turns import TurnTiming, open_stock_llama, steered_turn, stock_turn

VARIANTS = ("stock", "plain", "gate_closed", "gate_open_fast", "gate_open_exact")
STEERED_VARIANTS = ("gate_closed", "gate_open_fast", "gate_open_exact")

TARGETS = {
    "decode_ratio_gate_closed": (">=", 0.98),
    "decode_ratio_gate_open_fast": (">=", 0.98),
    "decode_ratio_gate_open_exact": (">=", 0.98),
    "ttft_ratio_gate_closed": ("<=", 1.03),
    "decode_ratio_plain_vs_stock": (">=", 0.98),
}


@dataclass(frozen=True)
class PackPlan:
    """Which pack directory and gate policy produce the closed and the open variants."""

    closed: Path
    open: Path
    gate_closed: str
    gate_open: str
    random: bool
    note: str | None = None


def random_layers(n_layer: int) -> tuple[int, int]:
    """(gate, steer) layers for a random pack: mid-depth gate, steer at ~1/3 depth (as the paper's 12 of 32)."""
    gate = min(max(n_layer // 2, 0), n_layer - 2)
    steer = min(max(n_layer // 3, 1), n_layer - 2)
    return gate, steer


def plan_packs(model_path: Path, pack_path: Path | None, workdir: Path) -> PackPlan:
    """Use the given pack (gate forced by policy), or build random closed/open packs in ``workdir``."""
    if pack_path is not None:
        return PackPlan(closed=pack_path, open=pack_path, gate_closed="never", gate_open="always", random=False)
    from ..model_info import read_model_info
    from ..testing.packs import make_random_pack

    try:
        import onnx  # noqa: F401  (the pack writer needs it; the runtime does not)
    except ImportError:
        raise PackError(
            f"no pack given and none bundled for {Path(model_path).name}; building a random pack to time needs the "
            "'convert' extra (pip install 'finesteer-edge[convert]'), or pass --pack"
        ) from None
    info = read_model_info(model_path)
    gate, steer = random_layers(info.n_layer)
    kw = dict(gate_layer=gate, steer_layer=steer, vector_norm=4.0, seed=0)
    closed = make_random_pack(model_path, workdir / "random-closed", tau=2.0, **kw)  # type: ignore[arg-type]
    opened = make_random_pack(model_path, workdir / "random-open", tau=-1.0, **kw)  # type: ignore[arg-type]
    note = (f"no pack given and none bundled for {Path(model_path).name}: timing a RANDOM pack (gate layer {gate}, "
            f"steer layer {steer}; tau 2 = closed, tau -1 = open); its text is meaningless, its costs are real")
    return PackPlan(closed=closed, open=opened, gate_closed="pack", gate_open="pack", random=True, note=note)


def open_variant(name: str, model_path: Path, plan: PackPlan, *, threads: int, n_ctx: int) -> Any:
    """Load one variant's model object (each owns its own llama.cpp context)."""
    from ..steered import SteeredLlama

    if name == "stock":
        return open_stock_llama(model_path, n_threads=threads, n_ctx=n_ctx)
    if name == "plain":
        return SteeredLlama(model_path, None, n_threads=threads, n_ctx=n_ctx)
    if name == "gate_closed":
        return SteeredLlama(model_path, plan.closed, gate=plan.gate_closed, n_threads=threads, n_ctx=n_ctx)
    if name == "gate_closed_cb_eval":  # the pre-tap_context fallback: the callback in the generation context
        return SteeredLlama(model_path, plan.closed, gate=plan.gate_closed, n_threads=threads, n_ctx=n_ctx,
                            tap_method="cb_eval")
    if name in ("gate_open_fast", "gate_open_exact"):
        mode = name.rsplit("_", 1)[1]
        return SteeredLlama(model_path, plan.open, gate=plan.gate_open, mode=mode, n_threads=threads, n_ctx=n_ctx)
    raise ValueError(f"unknown variant {name!r}")


def close_variant(obj: Any) -> None:
    close = getattr(obj, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


def runner_for(name: str, obj: Any, messages: list[dict[str, str]], tokens: list[int],
               max_tokens: int) -> Callable[[], TurnTiming]:
    if name == "stock":
        return lambda: stock_turn(obj, tokens, max_tokens)
    return lambda: steered_turn(obj, messages, max_tokens)


def fits_in_memory(model_path: Path, n_instances: int) -> bool:
    """Whether ``n_instances`` copies of the model fit in half the available memory.

    Each variant loads the model in its own context. Weights are mmapped and shared by the page cache, but
    llama.cpp repacks some quantisations (e.g. Q4_0, Q4_K) into private buffers on AVX2/AVX-512 machines,
    so a 5 GB 8B model could need 25 GB when interleaved; we assume the worst.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):  # pragma: no cover - non-Linux: trust the user
        return True
    return Path(model_path).stat().st_size * n_instances < avail / 2


def run_variants(model_path: Path, plan: PackPlan, messages: list[dict[str, str]], *, threads: int, n_ctx: int,
                 max_tokens: int, rounds: int, warmup: int = 1, variants: tuple[str, ...] = VARIANTS,
                 interleave: bool = True) -> tuple[dict[str, list[TurnTiming]], dict[str, Any]]:
    """Time every variant; returns the samples and side information (prompt tokens, hidden states, tap method).

    Interleaved (all variants loaded, round-robin) unless ``interleave`` is False, in which case each variant
    is loaded, run ``warmup + rounds`` times and freed before the next: less robust to drifting load, but
    needs one model in memory at a time.
    """
    side: dict[str, Any] = {}
    with _loaded(model_path, plan, variants if interleave else (), threads=threads, n_ctx=n_ctx) as objs:
        if interleave:
            tokens = _prompt_tokens(objs, model_path, messages, threads)
            runners = {n: runner_for(n, objs[n], messages, tokens, max_tokens) for n in variants}
            samples = interleaved(runners, rounds, warmup=warmup)
            _capture_side(objs, side)
        else:
            samples = {}
            tokens = _prompt_tokens({}, model_path, messages, threads)
            for n in variants:
                with _loaded(model_path, plan, (n,), threads=threads, n_ctx=n_ctx) as one:
                    samples.update(interleaved({n: runner_for(n, one[n], messages, tokens, max_tokens)},
                                               rounds, warmup=warmup))
                    _capture_side(one, side)
    side["prompt_tokens"] = len(tokens)
    return samples, side


@contextlib.contextmanager
def _loaded(model_path: Path, plan: PackPlan, names: tuple[str, ...], *, threads: int,
            n_ctx: int) -> Iterator[dict[str, Any]]:
    objs: dict[str, Any] = {}
    try:
        for n in names:
            objs[n] = open_variant(n, model_path, plan, threads=threads, n_ctx=n_ctx)
        yield objs
    finally:
        for obj in objs.values():
            close_variant(obj)


def _prompt_tokens(objs: dict[str, Any], model_path: Path, messages: list[dict[str, str]], threads: int) -> list[int]:
    """The exact token ids our loop feeds (chat template applied), so the stock loop gets the same prompt."""
    for obj in objs.values():
        if hasattr(obj, "prompt_tokens"):
            return list(obj.prompt_tokens(messages))
    from ..steered import SteeredLlama

    with SteeredLlama(model_path, None, n_threads=threads, n_ctx=512) as llm:
        return list(llm.prompt_tokens(messages))


def _capture_side(objs: dict[str, Any], side: dict[str, Any]) -> None:
    """Keep the last prefill's hidden states and the pack of the gate-closed variant, to time the head."""
    llm = objs.get("gate_closed") or objs.get("gate_open_exact") or objs.get("gate_open_fast")
    if llm is None or llm.pack is None or "hidden" in side:
        return
    m = llm.pack.manifest
    side["pack"] = llm.pack
    side["hidden"] = (llm.session.hidden(m.gate_layer).copy(), llm.session.hidden(m.steer_layer).copy())
    side["tap_method"] = llm.session.tap.method if llm.session.tap else None
    side["cvec_api"] = llm.session.cvec_api


def summarize(samples: dict[str, list[TurnTiming]]) -> dict[str, Any]:
    """Medians per variant and the ratios against ``plain`` (and ``plain`` against ``stock``)."""
    out: dict[str, Any] = {}
    for name, runs in samples.items():
        out[f"decode_tps_{name}"] = median([r.decode_tps for r in runs if not math.isnan(r.decode_tps)])
        out[f"ttft_ms_{name}"] = median([r.ttft_s * 1e3 for r in runs])
        out[f"tokens_{name}"] = median([r.tokens for r in runs])
        out[f"cpu_decode_tps_{name}"] = median([r.cpu_decode_tps for r in runs if not math.isnan(r.cpu_decode_tps)])
        out[f"cpu_ttft_ms_{name}"] = median([r.cpu_ttft_s * 1e3 for r in runs if not math.isnan(r.cpu_ttft_s)])
    if "plain" in samples:
        for name in STEERED_VARIANTS:
            if name in samples:
                out[f"decode_ratio_{name}"] = ratio(out[f"decode_tps_{name}"], out["decode_tps_plain"])
                out[f"ttft_ratio_{name}"] = ratio(out[f"ttft_ms_{name}"], out["ttft_ms_plain"])
                # the same ratios in CPU time: robust to other jobs on the machine (see turns.py)
                out[f"cpu_decode_ratio_{name}"] = ratio(out[f"cpu_decode_tps_{name}"], out["cpu_decode_tps_plain"])
                out[f"cpu_ttft_ratio_{name}"] = ratio(out[f"cpu_ttft_ms_{name}"], out["cpu_ttft_ms_plain"])
        if "stock" in samples:
            out["decode_ratio_plain_vs_stock"] = ratio(out["decode_tps_plain"], out["decode_tps_stock"])
            out["cpu_decode_ratio_plain_vs_stock"] = ratio(out["cpu_decode_tps_plain"], out["cpu_decode_tps_stock"])
            out["ttft_ratio_plain_vs_stock"] = ratio(out["ttft_ms_plain"], out["ttft_ms_stock"])
    if "gate_open_exact" in samples and "gate_closed" in samples and "plain" in samples:
        # Exact mode's promise: at most one extra prefill of the turn's own tokens. The plain TTFT is one
        # prefill (+ one sample), so this ratio should be <= ~1 (plus a ~2 ms control-vector re-reserve).
        extra = out["ttft_ms_gate_open_exact"] - out["ttft_ms_gate_closed"]
        out["exact_extra_ms"] = extra
        out["exact_extra_over_prefill"] = ratio(extra, out["ttft_ms_plain"])
    return out


def check_targets(summary: dict[str, Any]) -> dict[str, bool | None]:
    """Which of the issue's targets this run meets (None: not measured)."""
    out: dict[str, bool | None] = {}
    for key, (op, bound) in TARGETS.items():
        v = summary.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out[f"{key} {op} {bound}"] = None
        else:
            out[f"{key} {op} {bound}"] = bool(v >= bound) if op == ">=" else bool(v <= bound)
    return out


def pack_bytes(path: Path) -> int:
    """Bytes on disk of a pack directory's regular files (manifest, head, control vector)."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def run_quick_bench(model_path: str | os.PathLike[str], pack_path: str | os.PathLike[str] | None = None, *,
                    threads: int | None = None, max_tokens: int = 64, repeats: int = 5, warmup: int = 1,
                    n_ctx: int = 1024, prompt: str = SHORT_PROMPT, head_iters: int = 200, stock: bool = True,
                    interleave: bool | None = None) -> dict[str, Any]:
    """Run the quick benchmark and return one JSON-able dict (the ``--json`` output)."""
    from ..llama.session import default_threads

    model_path = Path(model_path)
    threads = threads or default_threads()
    variants = VARIANTS if stock else VARIANTS[1:]
    if interleave is None:
        interleave = fits_in_memory(model_path, len(variants))
    env = environment(threads=threads)
    messages = [{"role": "user", "content": prompt}]
    with tempfile.TemporaryDirectory(prefix="finesteer-bench-") as tmp:
        plan = plan_packs(model_path, Path(pack_path) if pack_path else None, Path(tmp))
        samples, side = run_variants(model_path, plan, messages, threads=threads, n_ctx=n_ctx, max_tokens=max_tokens,
                                     rounds=repeats, warmup=warmup, variants=variants, interleave=interleave)
        head_ms = float("nan")
        if "pack" in side:
            h_gate, h_steer = side["hidden"]
            pack = side["pack"]
            head_ms = median(time_call(lambda: pack.evaluate(h_gate, h_steer), min_iters=head_iters,
                                       max_iters=head_iters, budget_s=0.0)) * 1e3
        size = pack_bytes(plan.open)
    summary = summarize(samples)
    steered_flags = {n: sorted({bool(r.steered) for r in samples[n]}) for n in STEERED_VARIANTS if n in samples}
    result: dict[str, Any] = {
        **summary,
        "head_ms": head_ms,
        "pack_bytes": size,
        "threads": threads,
        "model": str(model_path),
        "pack": None if plan.random else str(plan.open),
        "random_pack": plan.random,
        "note": plan.note,
        "prompt_tokens": side.get("prompt_tokens"),
        "max_tokens": max_tokens,
        "repeats": repeats,
        "interleaved": interleave,
        "tap_method": side.get("tap_method"),
        "cvec_api": side.get("cvec_api"),
        "checks": {
            "gate_closed_never_steered": steered_flags.get("gate_closed") == [False],
            "gate_open_always_steered": all(steered_flags.get(n) == [True]
                                            for n in ("gate_open_fast", "gate_open_exact") if n in steered_flags),
        },
        "runs": {n: [r.to_dict() for r in runs] for n, runs in samples.items()},
        "environment": {**env, "loadavg_end": loadavg()},
    }
    result["targets"] = check_targets(result)
    return result


def jsonable(obj: Any) -> Any:
    """NaN/inf become None: ``json.dumps`` would otherwise write the invalid token ``NaN``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table ``finesteer-edge bench`` prints."""
    from .common import text_table

    rows = []
    labels = {"stock": "llama_cpp.Llama (stock)", "plain": "plain (no pack)", "gate_closed": "gate closed",
              "gate_open_fast": "gate open, fast", "gate_open_exact": "gate open, exact"}
    for n in VARIANTS:
        if f"decode_tps_{n}" not in r:
            continue
        dr = r.get(f"decode_ratio_{n}") if n in STEERED_VARIANTS else None
        tr = r.get(f"ttft_ratio_{n}") if n in STEERED_VARIANTS else None
        cdr = r.get(f"cpu_decode_ratio_{n}") if n in STEERED_VARIANTS else None
        rows.append([labels[n], _f(r[f"decode_tps_{n}"], 1), _f(dr, 3), _f(cdr, 3), _f(r[f"ttft_ms_{n}"], 1),
                     _f(tr, 3), _f(r[f"tokens_{n}"], 0)])
    env = r["environment"]
    lines = []
    if r.get("note"):
        lines.append(f"note: {r['note']}")
    lines += [
        f"model {Path(r['model']).name}, {r['threads']} threads, prompt {r['prompt_tokens']} tokens, "
        f"{r['max_tokens']} new tokens, median of {r['repeats']} {'interleaved ' if r['interleaved'] else ''}runs",
        "",
        text_table(["variant", "decode tok/s", "vs plain", "(CPU time)", "TTFT ms", "vs plain", "tokens"], rows),
        "",
        f"plain vs stock llama_cpp.Llama decode: {_f(r.get('decode_ratio_plain_vs_stock'), 3)}",
        f"exact mode extra TTFT: {_f(r.get('exact_extra_ms'), 1)} ms = "
        f"{_f(r.get('exact_extra_over_prefill'), 2)} x one plain prefill",
        f"head: {_f(r['head_ms'], 3)} ms per query   pack: {r['pack_bytes']:,} bytes   "
        f"tap: {r.get('tap_method')}",
        f"load average {env['loadavg_start']} -> {env['loadavg_end']} (on {env['cpus_usable']} usable CPUs)",
        "targets: " + ", ".join(f"{k}: {'ok' if v else 'MISSED' if v is False else 'n/a'}"
                                for k, v in r["targets"].items()),
    ]
    return "\n".join(lines)


def _f(v: Any, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"
