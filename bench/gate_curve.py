"""The held-out trade-off of a pack's gate threshold (issue 10): recall and false positives on unseen sources.

No threshold of the bundled safety gate meets both issue 10 targets on held-out sources (docs/GATE_CEILING.md),
so ``--gate-threshold`` (``SteeringSettings.threshold``, the server's ``steering.threshold``) leaves the trade-off
to the user. This script says what each threshold buys: the pack's gate candidate (kind, feature, layer, C from
its manifest) is fitted with one source fold left out and calibrated on the other sources' validation rows, as
when it was chosen (``gate_select.loso_margins``); moving the threshold by m logit units from the pack's tau
moves every fold's threshold by m, and the held-out rates are read at each m.

    python bench/gate_curve.py GATE_ACTS [MORE_ACTS...] [--pack DIR]
        [--out bench/results/gate_curve.json] [--md docs/gate/GATE_CURVE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "finesteer_edge" / "packs" / "smollm2-135m-instruct-safety"
CANDIDATE = re.compile(r"^(?P<kind>\w+?)(?:\(C=(?P<c>[0-9.eE+-]+)\))?@(?P<feature>\w+)\.(?P<layer>\d+)$")


def pack_candidate(manifest: dict[str, Any]) -> str:
    """The gate candidate the pack's newest gate selection chose (its provenance), e.g.
    ``probe(C=0.03)@user_mean.14``."""
    prov = manifest.get("provenance") or {}
    gate = prov.get("gate") or {}
    if "candidate" not in gate:
        raise SystemExit("the pack's provenance names no gate candidate (it was not chosen by leave-one-source-out)")
    return str(gate["candidate"])


def parse_candidate(name: str):  # type: ignore[no-untyped-def]
    from finesteer_edge.train.gate_select import Candidate

    m = CANDIDATE.match(name)
    if not m:
        raise SystemExit(f"cannot read gate candidate {name!r}")
    c = m.group("c")
    return Candidate(m.group("kind"), int(m.group("layer")), m.group("feature"), float(c) if c else None)


def main() -> None:
    from finesteer_edge.measure.common import md_table
    from finesteer_edge.train.activations import load_activations
    from finesteer_edge.train.gate_select import gate_data, loso_margins, threshold_curve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("acts", type=Path, nargs="+", help="gate-only activations files (extract --gate-only)")
    ap.add_argument("--pack", type=Path, default=PACK)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gate_curve.json")
    ap.add_argument("--md", type=Path, default=REPO / "docs" / "gate" / "GATE_CURVE.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    manifest = json.loads((args.pack / "manifest.json").read_text(encoding="utf-8"))
    name = pack_candidate(manifest)
    cand = parse_candidate(name)
    tau = float(manifest["tau"])
    d = gate_data([load_activations(p) for p in args.acts])
    held, ok = loso_margins(cand, d)
    rows = threshold_curve(held, ok, d, tau, cand.kind)
    res = {"pack": manifest.get("name"), "candidate": name, "tau": tau, "files": [p.name for p in args.acts],
           "rows": rows, "seconds": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")

    def pc(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    shapes = sorted(rows[0]["by_shape"])
    table = md_table(
        ["threshold", "logit move", "recall (mean over sources)", "false positives (mean over sources)",
         "worst-shape recall", "worst-shape false positives", *(f"{s}: recall / FP" for s in shapes)],
        [[f"{r['threshold']:.3f}" + (" (pack)" if r["margin"] == 0 else ""), f"{r['margin']:+g}", pc(r["loso_recall"]),
          pc(r["loso_fpr"]), pc(r["loso_min_shape_recall"]), pc(r["loso_max_shape_fpr"]),
          *(f"{pc(r['by_shape'][s]['recall'])} / {pc(r['by_shape'][s]['fpr'])}" for s in shapes)] for r in rows])
    text = (f"# Gate threshold trade-off on held-out sources\n\nWritten by `python bench/gate_curve.py "
            f"{' '.join(res['files'])}` for pack `{res['pack']}` (gate `{name}`, tau {tau:.4f}); do not edit.\n\n"
            "Each source fold is scored by the gate candidate fitted and calibrated without it (leave-one-source-out, "
            "as when the gate was chosen); a threshold m logit units from tau moves every fold's threshold by m. "
            "Set it with `--gate-threshold` (CLI), `SteeredLlama(threshold=...)` / `SteeringSettings(threshold=...)`, "
            "or the server's `steering.threshold`. Higher: fewer benign turns steered and fewer harmful ones.\n\n"
            + table + "\n")
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
