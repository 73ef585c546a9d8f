"""Fold a trained MoSE router into the exported head (DESIGN.md section 1, "Folding").

``Kc = C W_k^T + b_k`` and ``Vc = C W_v^T + b_v`` depend only on the frozen prototype bank, so

    logits = (s x W_q^T + b_q) Kc^T / (sqrt(d_h) t) = h [s W_q^T Kc^T / (sqrt(d_h) t)] + b_q Kc^T / (sqrt(d_h) t)

turns the router's 3 d d_h parameters into one d x K matrix, and ``alpha * gamma`` folds into the
expert rows and the residual basis. Computed in float64 so the float32 export is exact to rounding.
"""

from __future__ import annotations

import math

import numpy as np

from finesteer_edge.train.checkpoint import Checkpoint, GateParamsCkpt, MoSEParams

from .head_params import FoldedHead, GateParams


def fold_router(p: MoSEParams, alpha: float) -> dict[str, np.ndarray]:
    kc = p.C @ p.W_k.T + p.b_k  # (K, d_h)
    vc = p.C @ p.W_v.T + p.b_v  # (K, d)
    scale = 1.0 / (math.sqrt(p.W_q.shape[0]) * p.t)
    return {
        "router_w": p.input_scale * (p.W_q.T @ kc.T) * scale,
        "router_b": (p.b_q @ kc.T) * scale,
        "experts": alpha * p.gamma * vc,
        "mlp_w1": p.input_scale * p.W1.T,
        "mlp_b1": p.b1,
        "mlp_w2": p.W2.T,
        "mlp_b2": p.b2,
        "basis": alpha * p.gamma * p.U.T,
    }


def gate_params(g: GateParamsCkpt) -> GateParams:
    if g.kind == "always":
        return GateParams(kind="always")
    return GateParams(kind=g.kind, mean=g.mean, components=g.components, weights=g.weights, bias=g.bias)


def fold_checkpoint(ckpt: Checkpoint, alpha: float | None = None) -> FoldedHead:
    a = ckpt.alpha if alpha is None else alpha
    f = fold_router(ckpt.mose, a)
    gate = gate_params(ckpt.gate)
    head = FoldedHead(gate=gate, **f)
    return _as_float32(head)


def _as_float32(head: FoldedHead) -> FoldedHead:
    for name, value in vars(head).items():
        if isinstance(value, np.ndarray):
            setattr(head, name, value.astype(np.float32))
    g = head.gate
    for name in ("mean", "components", "weights"):
        v = getattr(g, name)
        if v is not None:
            setattr(g, name, np.asarray(v, dtype=np.float32))
    g.bias = float(g.bias)
    return head


def unfolded_params(p: MoSEParams) -> int:
    """Parameters of the unfolded router + MLP + bank + basis (what an unfolded head would ship)."""
    arrays = (p.C, p.U, p.W_q, p.b_q, p.W_k, p.b_k, p.W_v, p.b_v, p.W1, p.b1, p.W2, p.b2)
    return int(sum(a.size for a in arrays)) + 3


def torch_reference(p: MoSEParams, alpha: float, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unfolded module in torch float64, the way training runs it: (vector * alpha, weights)."""
    import torch

    x = torch.from_numpy(np.atleast_2d(h).astype(np.float64)) * p.input_scale

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float64))

    q = x @ t(p.W_q).T + t(p.b_q)
    kc = t(p.C) @ t(p.W_k).T + t(p.b_k)
    vc = t(p.C) @ t(p.W_v).T + t(p.b_v)
    a = torch.softmax(q @ kc.T / math.sqrt(kc.shape[1]) / p.t, dim=-1)
    beta = torch.relu(x @ t(p.W1).T + t(p.b1)) @ t(p.W2).T + t(p.b2)
    s = alpha * p.gamma * (a @ vc + beta @ t(p.U).T)
    return s.numpy(), a.numpy()
