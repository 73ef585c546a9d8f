"""Does the MoSE head's per-prompt vector carry over to phrasing families it never trained on? Leave families out.

A head trained on each realistic-use request's own refusal shift (``extract --realistic-data``) learns the
direction of the phrasing families it is shown (role-play: cosine 0.97 to that family's own shift; DESIGN-NOTES
item 19). The data we are judged on is phrased in ways we do not have, so what matters is whether that direction
generalises. Here the harmful sources are split into folds; per fold, ``train --head-exclude`` leaves the fold's
families out of the head, its mean vector and its experts (both halves of each topic pair), ``convert`` and
``regate`` (the same gate files as the bundled pack, so the same gate) make a pack, and that pack steers the
fold's *validation* prompts (harmful halves and their benign twins) with each vector source, at the bundled pack's
strength and sampler and the sweep's starting schedule (``clean_refusal.START_SCHEDULE``, the bundled pack's until
its ``longer`` stage moved it to 24 tokens). Every source of a fold shares its gate, so the sources differ in the
vector only. Only gate-open prompts are generated (a closed gate is bit-identical to no pack); answers are cached
per pack.

    python bench/head_lofo.py ACTS --gate-acts acts_gate.safetensors --gate-acts acts_gate_singles.safetensors
    # ACTS: an `extract --realistic-data` file (docs/TRAINING.md); ~30 min on 1 thread after the 3 packs (~6 min)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clean_refusal as cr  # noqa: E402
from _util import REPO, smollm2  # noqa: E402

from finesteer_edge.measure.common import md_table  # noqa: E402
from finesteer_edge.pack.manifest import MANIFEST  # noqa: E402
from finesteer_edge.pack.pack import SteeringPack  # noqa: E402

OUT = REPO / "bench" / "results" / "head_lofo.json"
DOC = REPO / "docs" / "HEAD_LOFO.md"
FOLDS: tuple[tuple[str, ...], ...] = (
    ("roleplay", "code", "long_context"),
    ("how_do_i", "steps", "need_to", "airt"),
    ("best_way", "can_you_tell", "guide", "persuasive_article", "blog_post"),
)
"""Every harmful source but AdvBench once: the three families whose mean shift departs most from AdvBench's
(docs/FAMILY_SHIFT.md), then the rest in two groups. AdvBench stays in every head (it is the main training set)."""
SOURCES = ("cast", "finesteer", "projected", "head_direction")
"""The vector sources compared, in clean_refusal.py's method names: the gated mean vector (CAST-style; the bundled
pack's default), the head's own vector, the mean's direction at the head's length, the head's at the mean's."""
BUNDLED = "bundled cast"
"""The last row of every table: the bundled pack's own gated mean vector (AdvBench's shifts only) on the same
prompts, behind the same gate (the regated folds choose the bundled gate), so a fold's mean vector, which also
learned the other folds' phrasings, is compared with the one we ship."""
ROWS = (*SOURCES, BUNDLED)


def head_exclude(fold: tuple[str, ...]) -> str:
    """``--head-exclude`` for a fold: a pair family is the ``tpl:`` source of its rows, the AIRT seeds ``airt``."""
    return ",".join(f if f == "airt" else f"tpl:{f}" for f in fold)


def cli(*args: str) -> None:
    """One finesteer-edge command, as a user runs it; its output is kept only when it fails."""
    r = subprocess.run([sys.executable, "-c", "from finesteer_edge.cli.app import main; main()", *args], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    if r.returncode != 0:
        raise SystemExit(f"finesteer-edge {' '.join(args)} failed:\n{r.stderr[-2000:]}")


def make_pack(acts: Path, gate_acts: list[Path], fold: tuple[str, ...], work: Path, alpha: float) -> Path:
    """The fold's pack: train without the fold's sources, convert at the bundled pack's alpha, regate."""
    tag = "-".join(fold)
    ckpt, raw, pack = work / f"ckpt.{tag}", work / f"raw.{tag}", work / f"pack.{tag}"
    if (pack / MANIFEST).exists():
        return pack
    cli("train", str(acts), "--out", str(ckpt), "--threads", "1", "--head-feature", "user_mean",
        "--head-exclude", head_exclude(fold))
    cli("convert", str(ckpt), "--out", str(raw), "--model", "smollm2-135m-instruct", "--name",
        f"lofo-{tag}", "--alpha", f"{alpha:g}", "--overwrite")
    if gate_acts:
        cli("regate", str(raw), *(a for g in gate_acts for a in ("--gate-acts", str(g))), "--out", str(pack),
            "--overwrite")
    else:
        raw.rename(pack)
    return pack


def measure(pack: Path, fold: tuple[str, ...], cfgs: list[cr.Config]) -> dict[str, Any]:
    """Each source of the fold's pack, then the bundled pack's mean vector, on the fold's validation prompts,
    pooled and per family."""
    sets, sizes = cr.load_heldout(0, "val", ("single",), frozenset(fold))
    per_family = {fam: cr.load_heldout(0, "val", ("single",), frozenset({fam}))[0]["single"]["harmful"]
                  for fam in fold}
    out: dict[str, Any] = {"fold": list(fold), "exclude": head_exclude(fold), "sizes": sizes, "points": [],
                           "families": {fam: [] for fam in fold}, "generated": 0}
    bundled_cache = cr.cache_file(REPO / "bench" / "results" / "clean_refusal.json", (cr.PACK / MANIFEST).read_bytes())
    runs = ((pack, cr.cache_file(OUT, (pack / MANIFEST).read_bytes()), list(zip(cfgs, SOURCES, strict=True))),
            (cr.PACK, bundled_cache, [(cfgs[SOURCES.index("cast")], BUNDLED)]))
    for steer_pack, cache, named in runs:
        runner = cr.Runner(smollm2(), cache, steer_pack)
        for cfg, method in named:
            p = runner.metrics(cfg, sets["single"]) | {"method": method}
            out["points"].append({k: v for k, v in p.items() if k != "examples"} | {"examples": p["examples"][:2]})
            print(fold[0], "...", method, cr.row(p), flush=True)
            for fam, prompts in per_family.items():
                q = runner.metrics(cfg, {"harmful": prompts})
                out["families"][fam].append({"method": method, "n": q["n_harmful"], "open": q["steered_harmful"],
                                             "refusal": q["refusal"], "clean": q["clean"]})
        out["generated"] += runner.generated
        runner.llm.close()
    return out


def pooled(folds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each source over every fold: rates weighted by the fold's prompt counts (every source is measured on each
    family exactly when that family was left out)."""
    rows = []
    for i, method in enumerate(ROWS):
        ps = [f["points"][i] for f in folds]
        nh, nb = sum(p["n_harmful"] for p in ps), sum(p["n_benign"] for p in ps)
        rows.append({"method": method, "n_harmful": nh, "n_benign": nb,
                     **{k: sum(p[k] * p["n_harmful"] for p in ps) / nh
                        for k in ("steered_harmful", "refusal", "degenerate", "ended", "clean")},
                     "over_benign": sum(p["over_benign"] * p["n_benign"] for p in ps) / nb})
    return rows


def render(res: dict[str, Any]) -> str:
    """docs/HEAD_LOFO.md from the results file (a test checks the doc is this rendering)."""
    pct = "{:.1%}".format
    head = ["vector source", "harmful", "gate open", "refusal", "degenerate", "ended", "clean refusal", "benign",
            "benign over-refusal"]

    def cells(p: dict[str, Any], name: str) -> list[str]:
        return [name, str(p["n_harmful"]), pct(p["steered_harmful"]), pct(p["refusal"]), pct(p["degenerate"]),
                pct(p["ended"]), pct(p["clean"]), str(p["n_benign"]), pct(p["over_benign"])]

    lines = ["# The head on phrasing families it never trained on (leave families out)", "",
             f"Generated by `{res['command']}` (do not edit; numbers from `bench/results/head_lofo.json`).", "",
             f"- model `{res['model']}`, activations `{res['acts']}` (sha256 {res['acts_sha256'][:12]}), head "
             f"feature `user_mean`, alpha {res['alpha']:g}, gate files: {', '.join(res['gate_acts']) or 'none'}",
             f"- steering: strength {res['strength']:g} x alpha, schedule `{res['schedule']}`, sampler "
             f"`{res['sampler']}`, {res['threads']} llama.cpp thread, {res['seconds']:.0f} s "
             f"({sum(f['generated'] for f in res['folds'])} answers generated in this run, the others read from "
             "the answer caches of earlier runs of the same packs)",
             "- per fold, the head, its mean vector and its experts are trained without the fold's sources; the "
             "fold's validation prompts (harmful halves, AIRT seeds, the benign twins) are steered by that pack; "
             "per family: refused / harmful validation prompts (clean refusals); `bundled cast` is the bundled pack's "
             "own gated mean vector (AdvBench's shifts only) on the same prompts behind the same gate",
             "", "## Pooled over the folds (each prompt measured by the pack that never saw its family)", ""]
    lines += md_table(head, [cells(p, p["method"]) for p in res["pooled"]]).splitlines()
    for f in res["folds"]:
        lines += ["", f"## Fold: {', '.join(f['fold'])} left out (`--head-exclude {f['exclude']}`)", ""]
        lines += md_table(head, [cells(p, p["method"]) for p in f["points"]]).splitlines()
        lines += ["", md_table(["family", *ROWS],
                               [[fam, *(f"{r['refusal'] * r['n']:.0f}/{r['n']} ({r['clean'] * r['n']:.0f} clean)"
                                        for r in rows)] for fam, rows in f["families"].items()]).rstrip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("acts", type=Path, help="An `extract --realistic-data` activations file.")
    ap.add_argument("--gate-acts", type=Path, action="append", default=[],
                    help="Gate activations for regate (repeatable; none: each fold keeps the gate train fits).")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "finesteer-edge" / "head_lofo",
                    help="Where the folds' checkpoints and packs go (reused when present).")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args()
    t0 = time.perf_counter()
    bundled = SteeringPack.load(cr.PACK).manifest
    strength = bundled.strength
    cfgs = [cr.Config(m, strength, cr.START_SCHEDULE, None, cr.START_SAMPLER) for m in SOURCES]
    args.work.mkdir(parents=True, exist_ok=True)
    folds = []
    for fold in FOLDS:
        pack = make_pack(args.acts, args.gate_acts, fold, args.work, bundled.alpha)
        folds.append(measure(pack, fold, cfgs))
    with args.acts.open("rb") as fh:
        acts_sha = hashlib.file_digest(fh, "sha256").hexdigest()
    command = " ".join(["python bench/head_lofo.py", args.acts.name,
                        *(f"--gate-acts {g.name}" for g in args.gate_acts)])  # file names: no local paths
    res = {"command": command, "model": "SmolLM2-135M-Instruct.Q4_1",
           "acts": args.acts.name, "acts_sha256": acts_sha, "gate_acts": [g.name for g in args.gate_acts],
           "alpha": bundled.alpha, "strength": strength, "schedule": cr.START_SCHEDULE, "sampler": cr.START_SAMPLER,
           "threads": 1, "folds": folds, "pooled": pooled(folds), "seconds": time.perf_counter() - t0}
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    args.doc.write_text(render(res))
    print(f"wrote {args.out} and {args.doc}")


if __name__ == "__main__":
    main()
