"""The folded steering head as plain numpy arrays, and its reference forward pass.

This is the exported form of SCS + MoSE (DESIGN.md section 1). The router's query/key projections
and the prototype bank are folded into one d x K matrix, and alpha * gamma into the expert and basis
rows, so the head is:

    gate_score = g(h_gate)                                   (see GateParams)
    w          = softmax(h_steer @ router_w + router_b)      expert weights, K
    beta       = relu(h_steer @ mlp_w1 + mlp_b1) @ mlp_w2 + mlp_b2     basis coefficients, k
    vector     = w @ experts + beta @ basis                  (already times alpha)

A static vector is K = 1, zero router, ``experts = [v]`` and k = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GATE_EPS = 1e-12


@dataclass
class GateParams:
    kind: str
    """``scs``: energy ratio; ``scs_logistic``: logistic read-out of SCS coordinates + energy;
    ``logistic``: logistic probe on the raw state; ``always``: constant 1."""
    mean: np.ndarray | None = None
    """(d,) SCS centre m."""
    components: np.ndarray | None = None
    """(d, K_g) SCS subspace V (orthonormal columns)."""
    weights: np.ndarray | None = None
    """scs_logistic: (K_g + 1,) over [coordinates, energy]; logistic: (d,)."""
    bias: float = 0.0

    def score(self, h: np.ndarray) -> np.ndarray:
        h = np.atleast_2d(h).astype(np.float64)
        if self.kind == "always":
            return np.ones(h.shape[0])
        if self.kind == "logistic":
            assert self.weights is not None
            return _sigmoid(h @ self.weights + self.bias)
        assert self.mean is not None and self.components is not None
        c = h - self.mean
        z = c @ self.components
        energy = (z**2).sum(1) / ((c**2).sum(1) + GATE_EPS)
        if self.kind == "scs":
            return energy
        assert self.weights is not None
        feats = np.concatenate([z, energy[:, None]], axis=1)
        return _sigmoid(feats @ self.weights + self.bias)


@dataclass
class FoldedHead:
    gate: GateParams
    router_w: np.ndarray
    """(d, K) = W_q^T (W_k C^T + b_k 1^T) / (sqrt(d_h) t)."""
    router_b: np.ndarray
    """(K,)"""
    experts: np.ndarray
    """(K, d) = alpha * gamma * (C W_v^T + b_v)."""
    mlp_w1: np.ndarray
    """(d, H)"""
    mlp_b1: np.ndarray
    mlp_w2: np.ndarray
    """(H, k)"""
    mlp_b2: np.ndarray
    basis: np.ndarray
    """(k, d) = alpha * gamma * U^T."""

    @property
    def n_embd(self) -> int:
        return int(self.experts.shape[1])

    @property
    def n_experts(self) -> int:
        return int(self.experts.shape[0])

    @property
    def basis_rank(self) -> int:
        return int(self.basis.shape[0])

    def forward(self, h_gate: np.ndarray, h_steer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched reference: (score (B,), vector (B, d), weights (B, K)) in float64."""
        h = np.atleast_2d(h_steer).astype(np.float64)
        logits = h @ self.router_w + self.router_b
        logits -= logits.max(1, keepdims=True)
        w = np.exp(logits)
        w /= w.sum(1, keepdims=True)
        vec = w @ self.experts
        if self.basis_rank:
            beta = np.maximum(h @ self.mlp_w1 + self.mlp_b1, 0) @ self.mlp_w2 + self.mlp_b2
            vec = vec + beta @ self.basis
        return self.gate.score(h_gate), vec, w

    def n_params(self) -> int:
        arrays = [self.router_w, self.router_b, self.experts, self.mlp_w1, self.mlp_b1, self.mlp_w2,
                  self.mlp_b2, self.basis]
        g = self.gate
        arrays += [a for a in (g.mean, g.components, g.weights) if a is not None]
        return int(sum(a.size for a in arrays))

    def check_finite(self) -> list[str]:
        bad = [name for name, a in vars(self).items() if isinstance(a, np.ndarray) and not np.isfinite(a).all()]
        bad += [f"gate.{name}" for name, a in vars(self.gate).items()
                if isinstance(a, np.ndarray) and not np.isfinite(a).all()]
        return bad


def static_head(vector: np.ndarray, gate: GateParams | None = None) -> FoldedHead:
    """A head that always proposes ``vector`` (optionally behind a gate)."""
    v = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    d = v.shape[1]
    return FoldedHead(
        gate=gate or GateParams(kind="always"),
        router_w=np.zeros((d, 1), np.float32),
        router_b=np.zeros(1, np.float32),
        experts=v,
        mlp_w1=np.zeros((d, 0), np.float32),
        mlp_b1=np.zeros(0, np.float32),
        mlp_w2=np.zeros((0, 0), np.float32),
        mlp_b2=np.zeros(0, np.float32),
        basis=np.zeros((0, d), np.float32),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
