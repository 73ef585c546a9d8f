"""The *unfolded* steering head: the official FineSteer router computed in-graph, for comparison only.

The official research code (DESIGN.md section 3) keeps ``query``, ``key`` and ``value`` as ``Linear(d, d)``
layers and evaluates ``key(C)`` and ``value(C)`` against the frozen prototype bank ``C`` on every forward.
Our packs ship the folded form (:mod:`converters.head_params`), where those products are precomputed: the
router's ``3 d^2`` parameters become ``d K``. This module exports the unfolded form so the benchmarks can
show what folding saves in pack size and head latency, and so a test can prove both forms compute the same
function. It is not a pack format: the runtime loads only folded heads.

Conventions follow :mod:`converters.onnx_head`: same inputs/outputs (``h_gate``, ``h_steer`` ->
``gate_score``, ``vector`` (already times alpha), ``expert_weights``), opset 17, standard ops, no external
data. The gate sub-graph is taken verbatim from the folded exporter, so the two heads can only differ in
the MoSE part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .head_params import FoldedHead, GateParams
from .onnx_head import GraphParts, build_head_onnx, finish_head_model


@dataclass
class UnfoldedHead:
    """SCS gate + MoSE router/synthesis in the official layout (torch ``Linear``: weight is (out, in)).

    ``s = gamma * (softmax(q Kc^T / sqrt(d_h) / t) Vc + mix(h) U^T)`` with ``q = W_q h + b_q``,
    ``Kc = C W_k^T + b_k``, ``Vc = C W_v^T + b_v`` and ``mix(h) = W_2 relu(W_1 h + b_1) + b_2``; the
    exported vector is ``alpha * s``.
    """

    gate: GateParams
    w_q: np.ndarray
    """(d_h, d)"""
    b_q: np.ndarray
    w_k: np.ndarray
    """(d_h, d)"""
    b_k: np.ndarray
    w_v: np.ndarray
    """(d, d): the value projection must map back to the residual width to be added to it."""
    b_v: np.ndarray
    mix_w1: np.ndarray
    """(H, d)"""
    mix_b1: np.ndarray
    mix_w2: np.ndarray
    """(k, H)"""
    mix_b2: np.ndarray
    prototypes: np.ndarray
    """C, (K, d): frozen cluster means of the normalised training deltas."""
    basis: np.ndarray
    """U, (d, k): frozen residual basis."""
    temperature: float
    gamma: float
    alpha: float = 1.0

    @property
    def n_embd(self) -> int:
        return int(self.prototypes.shape[1])

    @property
    def n_experts(self) -> int:
        return int(self.prototypes.shape[0])

    @property
    def router_dim(self) -> int:
        return int(self.w_q.shape[0])

    def _scale(self) -> float:
        return float(np.sqrt(self.router_dim) * self.temperature)

    def fold(self) -> FoldedHead:
        """The exact folded equivalent (DESIGN.md section 1, "Folding"), computed in float64."""
        f64, f32 = np.float64, np.float32
        c = self.prototypes.astype(f64)
        keys = c @ self.w_k.astype(f64).T + self.b_k.astype(f64)  # (K, d_h)
        values = c @ self.w_v.astype(f64).T + self.b_v.astype(f64)  # (K, d)
        s = self._scale()
        ag = float(self.alpha) * float(self.gamma)
        return FoldedHead(
            gate=self.gate,
            router_w=(self.w_q.astype(f64).T @ keys.T / s).astype(f32),
            router_b=(self.b_q.astype(f64) @ keys.T / s).astype(f32),
            experts=(ag * values).astype(f32),
            mlp_w1=self.mix_w1.T.astype(f32),
            mlp_b1=self.mix_b1.astype(f32),
            mlp_w2=self.mix_w2.T.astype(f32),
            mlp_b2=self.mix_b2.astype(f32),
            basis=(ag * self.basis.astype(f64).T).astype(f32),
        )

    def forward(self, h_gate: np.ndarray, h_steer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Float64 reference of the official forward: (score (B,), vector (B, d) times alpha, weights (B, K))."""
        f64 = np.float64
        h = np.atleast_2d(h_steer).astype(f64)
        c = self.prototypes.astype(f64)
        q = h @ self.w_q.astype(f64).T + self.b_q
        keys = c @ self.w_k.astype(f64).T + self.b_k
        values = c @ self.w_v.astype(f64).T + self.b_v
        logits = q @ keys.T / self._scale()
        logits -= logits.max(1, keepdims=True)
        w = np.exp(logits)
        w /= w.sum(1, keepdims=True)
        beta = np.maximum(h @ self.mix_w1.astype(f64).T + self.mix_b1, 0) @ self.mix_w2.astype(f64).T + self.mix_b2
        vec = self.alpha * self.gamma * (w @ values + beta @ self.basis.astype(f64).T)
        return self.gate.score(h_gate), vec, w

    def n_params(self) -> int:
        arrays = [self.w_q, self.b_q, self.w_k, self.b_k, self.w_v, self.b_v, self.mix_w1, self.mix_b1,
                  self.mix_w2, self.mix_b2, self.prototypes, self.basis]
        g = self.gate
        arrays += [a for a in (g.mean, g.components, g.weights) if a is not None]
        return int(sum(a.size for a in arrays))


def build_unfolded_head_onnx(head: UnfoldedHead, *, doc: str = "") -> bytes:
    """Serialise ``head`` with the query/key/value projections evaluated in-graph against ``C``.

    Note for timing: onnxruntime's graph optimiser constant-folds ``key(C)`` and ``value(C)`` (both inputs
    are initializers) when the session is created, so with optimisations on only ``query(h)`` remains a
    per-query ``d x d_h`` product; with optimisations off every query pays all three, as the official
    torch module does.
    """

    d, k_exp, k_basis = head.n_embd, head.n_experts, int(head.basis.shape[1])
    if head.w_v.shape != (d, d):
        raise ValueError(f"value projection must be ({d}, {d}) to add to the residual stream, is {head.w_v.shape}")
    parts = GraphParts(*_gate_subgraph(head.gate, d))
    const, node = parts.const, parts.node

    f32 = np.float32
    bank = const("prototypes", head.prototypes.astype(f32))
    q0 = node("MatMul", ["h_steer", const("query_wT", head.w_q.T.astype(f32))], "query_lin")
    q = node("Add", [q0, const("query_b", head.b_q.reshape(1, -1))], "query")
    k0 = node("MatMul", [bank, const("key_wT", head.w_k.T.astype(f32))], "key_lin")
    keys = node("Add", [k0, const("key_b", head.b_k.reshape(1, -1))], "keys")
    v0 = node("MatMul", [bank, const("value_wT", head.w_v.T.astype(f32))], "value_lin")
    values = node("Add", [v0, const("value_b", head.b_v.reshape(1, -1))], "values")
    keys_t = node("Transpose", [keys], "keys_T", perm=[1, 0])
    raw = node("MatMul", [q, keys_t], "router_raw")
    logits = node("Mul", [raw, const("router_scale", np.array([1.0 / head._scale()]))], "router_logits")
    node("Softmax", [logits], "expert_weights", axis=-1)
    mix = node("MatMul", ["expert_weights", values], "expert_mix")
    if k_basis:
        a1 = node("MatMul", ["h_steer", const("mix_w1T", head.mix_w1.T.astype(f32))], "mix_l1")
        a1b = node("Add", [a1, const("mix_b1", head.mix_b1.reshape(1, -1))], "mix_l1b")
        r = node("Relu", [a1b], "mix_relu")
        a2 = node("MatMul", [r, const("mix_w2T", head.mix_w2.T.astype(f32))], "mix_l2")
        beta = node("Add", [a2, const("mix_b2", head.mix_b2.reshape(1, -1))], "basis_coeffs")
        resid = node("MatMul", [beta, const("basis_T", head.basis.T.astype(f32))], "basis_mix")
        total = node("Add", [mix, resid], "steer_sum")
    else:
        total = mix
    node("Mul", [total, const("alpha_gamma", np.array([head.alpha * head.gamma]))], "vector")

    return finish_head_model(parts.nodes, parts.inits, "finesteer_head_unfolded", d, k_exp, doc)


def _gate_subgraph(gate: GateParams, d: int) -> tuple[list, list]:  # type: ignore[type-arg]
    """The nodes and initializers that compute ``gate_score`` in the folded exporter's graph.

    Exporting a throw-away folded head (same gate, a 1-expert static MoSE) and keeping only the ancestors
    of ``gate_score`` reuses the folded exporter's gate code instead of duplicating it.
    """
    import onnx

    from .head_params import static_head

    folded = onnx.load_from_string(build_head_onnx(static_head(np.zeros(d, np.float32), gate)))
    g = folded.graph
    producer = {out: n for n in g.node for out in n.output}
    needed: set[str] = set()
    stack = ["gate_score"]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in producer:
            stack.extend(i for i in producer[name].input if i)
    nodes = [n for n in g.node if any(o in needed for o in n.output)]
    inits = [t for t in g.initializer if t.name in needed]
    return nodes, inits
