"""SCS: Subspace-guided Conditional Steering, the gate that decides *whether* to steer.

Published form (DESIGN.md section 1): PCA of target prompts' states at the gate layer (mean m, top K_g
components V chosen by explained variance), score ``s(h) = ||V^T (h - m)||^2 / ||h - m||^2``, and a
threshold from a logistic fit of p = sigmoid(w s + b) on target vs general validation prompts,
``tau = -b / w`` (with no general prompts: the 10th percentile of target scores, i.e. 90% recall).

Supervised variant ``scs_logistic`` (DESIGN.md section 8): the same subspace, then a logistic
read-out of its coordinates and the energy score, fitted on the *training* split's targets vs
negatives; its probability is calibrated on validation the same way. ``train`` reports both at every
candidate layer and keeps the published gate unless the variant is measurably better on validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError
from ..vocab import TRAINED_GATE_KINDS

RECALL_FALLBACK = 0.10  # 10th percentile of target scores = 90% recall
PREFER_PUBLISHED_MARGIN = 0.01


@dataclass
class GateFit:
    kind: str
    layer: int
    mean: np.ndarray
    components: np.ndarray
    weights: np.ndarray | None
    bias: float
    tau: float
    explained: float
    metrics: dict[str, Any] = field(default_factory=dict)
    feature: str = "last"
    """What the gate reads at ``layer`` (``finesteer_edge.vocab.GateFeature``); the scores above take that state."""

    def score(self, h: np.ndarray) -> np.ndarray:
        z, energy = _coords(h, self.mean, self.components)
        if self.kind == "scs":
            return energy
        assert self.weights is not None
        return _sigmoid(np.concatenate([z, energy[:, None]], 1) @ self.weights + self.bias)


def fit_subspace(
    h: np.ndarray, *, variance: float = 0.9, cap: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean and top components of ``h`` (targets) covering ``variance`` of its variance, at most ``cap``."""
    from sklearn.decomposition import PCA

    if h.shape[0] < 3:
        raise DataError(f"SCS needs at least 3 target prompts, got {h.shape[0]}")
    pca = PCA(n_components=min(cap, h.shape[0] - 1, h.shape[1]), svd_solver="full", random_state=seed)
    pca.fit(h.astype(np.float64))
    cum = np.cumsum(pca.explained_variance_ratio_)
    k = int(min(np.searchsorted(cum, variance) + 1, len(cum)))
    return pca.mean_, pca.components_[:k].T.copy(), float(cum[k - 1])


def _coords(h: np.ndarray, mean: np.ndarray, comps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.atleast_2d(h).astype(np.float64) - mean
    z = c @ comps
    return z, (z**2).sum(1) / ((c**2).sum(1) + 1e-12)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def calibrate_tau(pos: np.ndarray, neg: np.ndarray) -> tuple[float, str]:
    """The DESIGN recipe: 1-D logistic fit on validation scores (classes balanced), tau = -b/w.

    Balanced weights put tau where both classes are equally likely regardless of how many general
    prompts the validation split happens to hold. Falls back to 90% recall when the fit is degenerate.
    """
    from sklearn.linear_model import LogisticRegression

    fallback = float(np.quantile(pos, RECALL_FALLBACK))
    if len(neg) == 0:
        return fallback, "10th percentile of target scores (no general prompts)"
    x = np.concatenate([pos, neg])[:, None]
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    scale = float(x.std()) or 1.0
    lr = LogisticRegression(C=1e4, class_weight="balanced", max_iter=1000)
    lr.fit(x / scale, y)
    w, b = float(lr.coef_[0, 0]) / scale, float(lr.intercept_[0])
    if w <= 0 or not np.isfinite(w):
        return fallback, "10th percentile of target scores (logistic fit degenerate)"
    return -b / w, "logistic fit on validation (balanced), tau = -b/w"


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def gate_metrics(fit: GateFit, h_val: np.ndarray, is_target: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    s = fit.score(h_val)
    pos, neg = s[is_target], s[~is_target]
    out: dict[str, Any] = {
        "auroc": auroc(pos, neg),
        "recall": float((pos >= fit.tau).mean()) if len(pos) else float("nan"),
        "fpr": float((neg >= fit.tau).mean()) if len(neg) else float("nan"),
        "n_target": int(len(pos)),
        "n_negative": int(len(neg)),
    }
    for g in sorted(set(groups[~is_target])):
        m = (~is_target) & (groups == g)
        out[f"fpr_{g}"] = float((s[m] >= fit.tau).mean())
    target_groups = sorted(set(groups[is_target]))
    if len(target_groups) > 1:
        for g in target_groups:
            m = is_target & (groups == g)
            out[f"recall_{g}"] = float((s[m] >= fit.tau).mean())
    out["balanced_accuracy"] = (out["recall"] + 1 - out["fpr"]) / 2 if len(neg) else out["recall"]
    out["margin"] = separation_margin(fit.kind, pos, neg)
    return out


def separation_margin(kind: str, pos: np.ndarray, neg: np.ndarray) -> float:
    """(10th pct of targets - 90th pct of negatives) / pooled std, in logit units for probabilities.

    Breaks ties between gates that are all perfect on a small validation split: the one with more room
    between the classes should transfer better to prompts it has not seen.
    """
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    if kind != "scs":
        pos, neg = (np.log(np.clip(x, 1e-9, 1 - 1e-9) / (1 - np.clip(x, 1e-9, 1 - 1e-9))) for x in (pos, neg))
    spread = float(np.std(np.r_[pos, neg])) or 1.0
    return float((np.quantile(pos, 0.1) - np.quantile(neg, 0.9)) / spread)


def fit_gate(kind: str, layer: int, h_train: np.ndarray, y_train: np.ndarray, h_val: np.ndarray, y_val: np.ndarray,
             groups_val: np.ndarray, *, variance: float = 0.9, cap: int = 128, seed: int = 0,
             calibrate: bool = True) -> GateFit:
    """Fit one gate kind at one layer; targets are ``y == 1``. ``calibrate=False`` leaves tau and the
    validation metrics to the caller (leave-one-source-out selection calibrates on other rows)."""
    if kind not in TRAINED_GATE_KINDS:
        raise ValueError(f"gate kind must be one of {TRAINED_GATE_KINDS}")
    mean, comps, explained = fit_subspace(h_train[y_train == 1], variance=variance, cap=cap, seed=seed)
    fit = GateFit(kind, layer, mean, comps, None, 0.0, 0.0, explained)
    if kind == "scs_logistic":
        from sklearn.linear_model import LogisticRegression

        if not (y_train == 0).any():
            raise DataError("the scs_logistic gate needs negative (general) prompts in the training split")
        z, e = _coords(h_train, mean, comps)
        feats = np.concatenate([z, e[:, None]], 1)
        scale = feats.std(0) + 1e-8
        lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000, random_state=seed)
        lr.fit(feats / scale, y_train)
        fit.weights = lr.coef_[0] / scale
        fit.bias = float(lr.intercept_[0])
    if not calibrate:
        return fit
    s_val = fit.score(h_val)
    fit.tau, how = calibrate_tau(s_val[y_val == 1], s_val[y_val == 0])
    fit.metrics = gate_metrics(fit, h_val, y_val == 1, groups_val)
    fit.metrics.update(tau_method=how, components=int(comps.shape[1]), explained_variance=explained)
    return fit


def choose_gate(fits: list[GateFit]) -> GateFit:
    """Best validation balanced accuracy (then AUROC, then separation margin); published SCS unless
    beaten by a margin."""

    def key(f: GateFit) -> tuple[float, float, float]:
        m = f.metrics
        return (m["balanced_accuracy"], m["auroc"], -np.inf if np.isnan(m["margin"]) else m["margin"])

    best = max(fits, key=key)
    published = [f for f in fits if f.kind == "scs"]
    if published and best.kind != "scs":
        best_pub = max(published, key=key)
        if best.metrics["balanced_accuracy"] - best_pub.metrics["balanced_accuracy"] < PREFER_PUBLISHED_MARGIN:
            return best_pub
    return best
