"""A chat turn against the same conversation in one fresh turn: is a chat steered as ``eval`` measures it?

``eval`` and bench/clean_refusal.py answer a conversation with ``generate()``: one fresh prefill of the whole
conversation. A user's ``chat`` (the CLI, the server's slots) answers it with the earlier turns in the KV cache.
This script answers the held-out sources' validation requests (pair phrasings and AIRT seeds, their benign twins,
general prompts, hard negatives), after 1-4 benign exchanges and under a system prompt (shapes.py's train pool;
no test file is read), both ways, with the bundled safety pack at its own defaults and the CLI's sampler:

* ``generate``: a fresh turn;
* ``chat``: the history before the request already in the KV cache, computed unsteered (as after gate-closed
  turns), then ``chat()``.

It reports refusal / ended / clean refusal of the harmful requests, over-refusal of the benign ones, how often
the two ways give the same text, and the median time to first token of steered turns. Each run is stored under
``--label`` (e.g. the commit it ran on), so a run on an older checkout sits next to today's
(``PYTHONPATH=<checkout> python bench/chat_turns.py --label <commit>``).

    python bench/chat_turns.py --label now          # ~10 minutes at 1 thread
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, smollm2  # noqa: E402
from clean_refusal import PACK, load_heldout  # noqa: E402

import finesteer_edge  # noqa: E402
from finesteer_edge.evaluation.refusal import is_clean_refusal, is_degenerate, is_ended, is_refusal  # noqa: E402
from finesteer_edge.llama.batches import common_prefix  # noqa: E402
from finesteer_edge.measure.common import cpu_model, loadavg, md_table, versions  # noqa: E402
from finesteer_edge.result import GenerationResult  # noqa: E402
from finesteer_edge.settings import CLI_PENALTIES  # noqa: E402
from finesteer_edge.steered import SteeredLlama  # noqa: E402
from finesteer_edge.vocab import vector_source_from_manifest  # noqa: E402

SHAPES = ("history", "system")
PATHS = ("generate", "chat")
MAX_TOKENS = 64
OUT = REPO / "bench" / "results" / "chat_turns.json"
DOC = REPO / "docs" / "CHAT_TURNS.md"


def answer_in_chat(llm: SteeredLlama, msgs: list[dict[str, str]]) -> GenerationResult:
    """``chat()`` with everything before the last user message already in the KV cache, computed unsteered."""
    llm.reset()
    s = llm.session
    full = llm.prompt_tokens(msgs)
    text = llm.chat_template.render(msgs[:-1], add_generation_prompt=False)
    prefix = s.tokenize(text, add_special=False, parse_special=True)
    if s.add_bos and (not prefix or prefix[0] != s.bos):
        prefix.insert(0, s.bos)
    n = min(common_prefix(prefix, full), len(full) - 1)
    if n:
        s.decode(full[:n])
    r = llm.chat(msgs, stream=False, max_tokens=MAX_TOKENS, penalties=CLI_PENALTIES)
    assert isinstance(r, GenerationResult)
    return r


def measure(llm: SteeredLlama, convs: dict[str, list[list[dict[str, str]]]]) -> dict[str, Any]:
    rows: dict[str, dict[str, list[GenerationResult]]] = {p: {} for p in PATHS}
    for group, items in convs.items():
        for path in PATHS:
            rows[path][group] = [
                llm.generate(m, max_tokens=MAX_TOKENS, penalties=CLI_PENALTIES) if path == "generate"
                else answer_in_chat(llm, m) for m in items]
    out: dict[str, Any] = {}
    for path in PATHS:
        h, b = rows[path]["harmful"], rows[path]["benign"]
        out[path] = {
            "n_harmful": len(h), "n_benign": len(b),
            "steered_harmful": float(np.mean([r.steered for r in h])),
            "refusal": float(np.mean([is_refusal(r.text) for r in h])),
            "ended": float(np.mean([is_ended(r.finish_reason, r.tokens) for r in h])),
            "degenerate": float(np.mean([is_degenerate(r.text) for r in h])),
            "clean": float(np.mean([is_clean_refusal(r.text, r.finish_reason, r.tokens) for r in h])),
            "over_benign": float(np.mean([is_refusal(r.text) for r in b])),
            "steered_benign": float(np.mean([r.steered for r in b])),
            "cached_tokens_steered": float(np.mean([r.cached_tokens for r in h + b if r.steered] or [0])),
            "ttft_ms_steered": float(np.median([r.ttft_seconds * 1e3 for r in h + b if r.steered] or [0])),
        }
    pairs = [(a, c) for g in convs for a, c in zip(rows["generate"][g], rows["chat"][g], strict=True)]
    out["same_text"] = float(np.mean([a.text == c.text for a, c in pairs]))
    for name, want in (("steered", True), ("closed", False)):
        both = [a.text == c.text for a, c in pairs if a.steered == c.steered == want]
        out[f"n_{name}_both"] = len(both)
        out[f"same_text_{name}"] = float(np.mean(both)) if both else None
    return out


def label_row(label: str, shape: str, path: str, m: dict[str, Any]) -> list[str]:
    pct = pct_or_dash
    return [label, shape, path, pct(m["refusal"]), pct(m["ended"]), pct(m["clean"]), pct(m["degenerate"]),
            pct(m["over_benign"]), f"{pct(m['steered_harmful'])} / {pct(m['steered_benign'])}",
            f"{m['cached_tokens_steered']:.1f}", f"{m['ttft_ms_steered']:.0f}"]


def pct_or_dash(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render(res: dict[str, Any]) -> str:
    head = ["run", "shape", "answered by", "refusal", "ended <=64", "clean refusal", "degenerate", "over benign",
            "steered h / b", "cached tokens (steered turns)", "TTFT ms (steered, median)"]
    rows, same = [], []
    for label, run in res["runs"].items():
        for shape in SHAPES:
            if shape in run["shapes"]:
                for path in PATHS:
                    rows.append(label_row(label, shape, path, run["shapes"][shape][path]))
                h = run["shapes"][shape]
                same.append(f"- `{label}`, {shape}: the two ways gave the same text for {100 * h['same_text']:.1f}% "
                            f"of the conversations: {pct_or_dash(h['same_text_steered'])} of the {h['n_steered_both']} "
                            f"steered both ways, {pct_or_dash(h['same_text_closed'])} of the {h['n_closed_both']} "
                            "gate-closed both ways.")
    runs = "\n".join(f"- `{label}`: {run['code']}; pack defaults `{run['pack_defaults']}`; {run['cpu']}, "
                     f"{run['threads']} llama.cpp thread, load average {run['loadavg']}, {run['seconds']:.0f} s"
                     for label, run in res["runs"].items())
    return "\n".join([
        "# A chat turn against the same conversation in one fresh turn",
        "",
        "Generated by `python bench/chat_turns.py` (do not edit; numbers from `bench/results/chat_turns.json`).",
        "",
        f"The held-out sources' validation requests (first {res['limit']} harmful and {res['limit']} benign per "
        "shape, spread over the files) after 1-4 benign exchanges (`history`) and under a system prompt "
        "(`system`), shapes.py's train pool; no test file is read. The bundled safety pack at its own defaults "
        "(as they were at each run, listed with it), the CLI's sampler (repeat penalty 1.1 over 64 tokens, DRY 0.8), "
        f"{MAX_TOKENS} new tokens. `generate`: one fresh turn; `chat`: the turns before the request already in "
        "the KV cache, computed unsteered, then `chat()`. Refusal by the improved matcher; ended = end-of-turn "
        "within 64 tokens; clean = refusal, not degenerate, ended. A steered turn prefills the whole conversation "
        "afresh with its vector either way (DESIGN-NOTES item 20), so its text must match; a gate-closed chat turn "
        "reads the history from the cache, computed in other batches than one fresh prefill, which moves llama.cpp's "
        "F16 KV cache by a few ulp and can change a greedy answer (plain llama.cpp does the same), so its text may "
        "differ.",
        "",
        runs,
        "",
        md_table(head, rows),
        "",
        *same,
        "",
    ])


def code_version() -> str:
    """Where the measured ``finesteer_edge`` came from, and its commit (a run on an older checkout says so)."""
    root = Path(finesteer_edge.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "finesteer_edge"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"finesteer_edge {finesteer_edge.__version__} (not a git checkout)"
    return f"finesteer_edge at commit {commit}{' with uncommitted changes' if dirty else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="Name of this run in the results (e.g. the commit).")
    ap.add_argument("--limit", type=int, default=40, help="Harmful and benign conversations per shape.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--doc", default=str(DOC), help="Markdown to render ('' to skip).")
    args = ap.parse_args()
    t0 = time.time()
    res: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    sets, _ = load_heldout(args.limit, "val", SHAPES, pool="train")
    llm = SteeredLlama(smollm2(), PACK, n_threads=args.threads, n_ctx=1024)
    m = llm.pack.manifest
    sch = m.schedule.to_dict() if m.schedule else {}
    run: dict[str, Any] = {"code": code_version(), "cpu": cpu_model(), "threads": args.threads,
                           "versions": versions(), "shapes": {},
                           "pack_defaults": f"vector {vector_source_from_manifest(m.vector_source)}, strength "
                                            f"{m.strength:g}, schedule {json.dumps(sch, sort_keys=True)}"}
    for shape in SHAPES:
        run["shapes"][shape] = measure(llm, sets[shape])
        h = run["shapes"][shape]
        print(f"{shape}: refusal generate {h['generate']['refusal']:.3f}, chat {h['chat']['refusal']:.3f}; "
              f"same text {h['same_text']:.3f}", file=sys.stderr)
    llm.close()
    run["loadavg"] = loadavg()
    run["seconds"] = time.time() - t0
    res["limit"] = args.limit
    res["runs"][args.label] = run
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    if args.doc:
        Path(args.doc).write_text(render(res))
        print(f"rendered {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
