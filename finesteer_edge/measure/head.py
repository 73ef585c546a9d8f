"""Steering-head latency and pack size at a given width d, on synthetic weights.

The head runs once per turn, between the unsteered prefill and generation, so its latency adds directly to
the time to first token. We time, per query (batch 1, as the runtime calls it):

- ``onnx_folded``: the shipped ``head.onnx`` in onnxruntime with the runtime's session options (1 thread);
- ``runtime``: the same through :class:`~finesteer_edge.pack.head.HeadRunner` (input copies, output checks);
- ``runtime_cold``: the same after streaming 64 MB through the caches (untimed) before every call. In a real
  turn the head runs right after a prefill that streamed the model's weights through the caches, so its own
  weights are cold: this is the in-turn latency, the warm ones are the best case;
- ``onnx_folded_2t``: the folded head with 2 intra-op threads (what a second core would buy; not what the
  runtime uses);
- ``onnx_unfolded``: query/key/value evaluated in-graph against C (onnxruntime constant-folds key(C) and
  value(C) at load, so query(h) is the remaining extra work);
- ``onnx_unfolded_noopt``: the same with graph optimisations off, i.e. all three projections per query, as
  the official torch module computes them;
- ``numpy_folded``: the folded math in float32 numpy (OPENBLAS_NUM_THREADS=1 is expected).

Needs ``onnx`` (the ``convert`` extra) to build the graphs; the runtime itself never imports it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..vocab import TRAINED_GATE_KINDS
from .common import median, spread

HEAD_VARIANTS = ("onnx_folded", "runtime", "runtime_cold", "onnx_folded_2t", "onnx_unfolded", "onnx_unfolded_noopt",
                 "numpy_folded")
EVICT_BYTES = 64 << 20
"""Larger than the last-level cache of the machines we run on (32 MB L3 here)."""


def random_unfolded_head(d: int, *, n_experts: int = 8, basis_rank: int = 10, hidden: int | None = None,
                         router_dim: int | None = None, gate_kind: str = "scs", gate_components: int = 8,
                         seed: int = 0) -> Any:
    """An :class:`~converters.onnx_unfolded.UnfoldedHead` with random weights in the official layout.

    Defaults follow the released FineSteer scripts: router and MLP hidden widths equal d. Scales keep the
    router logits O(1) so the softmax is neither uniform nor one-hot (both would hide folding errors).
    """
    from ..converters.head_params import GateParams
    from ..converters.onnx_unfolded import UnfoldedHead

    rng = np.random.default_rng(seed)
    f32 = np.float32
    h = hidden if hidden is not None else d
    dh = router_dim if router_dim is not None else d

    def lin(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(f32)

    gate = GateParams(kind=gate_kind)
    if gate_kind in TRAINED_GATE_KINDS:  # the subspace gates: mean + components
        q, _ = np.linalg.qr(rng.standard_normal((d, gate_components)))
        gate.mean = (rng.standard_normal(d) * 0.1).astype(f32)
        gate.components = q.astype(f32)
    if gate_kind == "scs_logistic":
        gate.weights = rng.standard_normal(gate_components + 1).astype(f32)
        gate.bias = 0.1
    elif gate_kind == "logistic":
        gate.weights = (rng.standard_normal(d) / np.sqrt(d)).astype(f32)
        gate.bias = -0.2
    protos = rng.standard_normal((n_experts, d))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    basis, _ = np.linalg.qr(rng.standard_normal((d, basis_rank)))
    return UnfoldedHead(
        gate=gate,
        w_q=lin(dh, d), b_q=(rng.standard_normal(dh) * 0.1).astype(f32),
        w_k=(lin(dh, d) * np.sqrt(d)).astype(f32), b_k=(rng.standard_normal(dh) * 0.1).astype(f32),
        w_v=(lin(d, d) * np.sqrt(d)).astype(f32), b_v=(rng.standard_normal(d) * 0.1).astype(f32),
        mix_w1=lin(h, d), mix_b1=(rng.standard_normal(h) * 0.1).astype(f32),
        mix_w2=lin(basis_rank, h), mix_b2=np.zeros(basis_rank, f32),
        prototypes=protos.astype(f32), basis=basis.astype(f32),
        temperature=1.0, gamma=0.5, alpha=2.0,
    )


def ort_session(model_bytes: bytes, *, threads: int = 1, optimize: bool = True) -> Any:
    """An onnxruntime session configured like :class:`HeadRunner` (threads and optimisation overridable)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


class NumpyFoldedHead:
    """The folded head as the few float32 numpy products a runtime without onnxruntime would do."""

    def __init__(self, head: Any) -> None:
        g = head.gate
        self.kind = g.kind
        self.mean = None if g.mean is None else g.mean.astype(np.float32)
        self.components = None if g.components is None else np.ascontiguousarray(g.components, np.float32)
        self.router_w = np.ascontiguousarray(head.router_w, np.float32)
        self.router_b = head.router_b.astype(np.float32)
        self.experts = np.ascontiguousarray(head.experts, np.float32)
        self.w1 = np.ascontiguousarray(head.mlp_w1, np.float32)
        self.b1 = head.mlp_b1.astype(np.float32)
        self.w2 = np.ascontiguousarray(head.mlp_w2, np.float32)
        self.b2 = head.mlp_b2.astype(np.float32)
        self.basis = np.ascontiguousarray(head.basis, np.float32)

    def run(self, h_gate: np.ndarray, h_steer: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        if self.kind != "scs":  # pragma: no cover - the benchmark uses the published SCS gate
            raise NotImplementedError("numpy benchmark head implements the scs gate only")
        assert self.mean is not None and self.components is not None
        c = h_gate - self.mean
        z = c @ self.components
        score = float(z @ z) / (float(c @ c) + 1e-12)
        logits = h_steer @ self.router_w + self.router_b
        w = np.exp(logits - logits.max())
        w /= w.sum()
        beta = np.maximum(h_steer @ self.w1 + self.b1, 0) @ self.w2 + self.b2
        return score, w @ self.experts + beta @ self.basis, w


MAX_REL_ERR = 1e-4
"""A timed head variant must return the float64 folded reference's outputs within this relative error."""


def check_outputs(what: str, got: Any, want: Any, *, tol: float = MAX_REL_ERR) -> float:
    """Largest relative error of (gate_score, vector, expert_weights) against the reference; raises past ``tol``.

    Relative to each output's largest magnitude, so a wrong head cannot win the benchmark by being fast.
    """
    worst = 0.0
    for name, g, w in zip(("gate_score", "vector", "expert_weights"), got, want, strict=True):
        g64 = np.asarray(g, dtype=np.float64).reshape(-1)
        w64 = np.asarray(w, dtype=np.float64).reshape(-1)
        if g64.shape != w64.shape:
            raise AssertionError(f"{what}: {name} has shape {g64.shape}, the reference {w64.shape}")
        err = float(np.abs(g64 - w64).max() / (np.abs(w64).max() + 1e-30))
        if not err <= tol:  # also catches NaN
            raise AssertionError(f"{what} differs from the folded reference in {name} ({err:.2e})")
        worst = max(worst, err)
    return worst


def head_latency(d: int, *, n_experts: int = 8, basis_rank: int = 10, rounds: int = 200, budget_s: float = 20.0,
                 seed: int = 0, variants: tuple[str, ...] = HEAD_VARIANTS, hidden: int | None = None) -> dict[str, Any]:
    """Median per-query latency (ms) of each head variant at width ``d``, interleaved call by call.

    Also checks that every variant returns the folded head's outputs (rtol 1e-4), so a fast wrong head
    cannot win. Returns ``{variant: {median_ms, min_ms, max_ms, n}, "params": {...}, "max_rel_err": ...}``.
    """
    import time

    from ..converters.onnx_head import build_head_onnx
    from ..converters.onnx_unfolded import build_unfolded_head_onnx
    from ..pack.head import HeadRunner

    unfolded = random_unfolded_head(d, n_experts=n_experts, basis_rank=basis_rank, seed=seed, hidden=hidden)
    folded = unfolded.fold()
    folded_bytes = build_head_onnx(folded)
    unfolded_bytes = build_unfolded_head_onnx(unfolded) if any("unfolded" in v for v in variants) else b""
    rng = np.random.default_rng(seed + 1)
    h_gate = rng.standard_normal((1, d)).astype(np.float32)
    h_steer = rng.standard_normal((1, d)).astype(np.float32)
    feeds = {"h_gate": h_gate, "h_steer": h_steer}
    outs = ["gate_score", "vector", "expert_weights"]

    fns: dict[str, Any] = {}
    preps: dict[str, Any] = {}
    evict_buf = np.ones(EVICT_BYTES // 8, np.float64) if "runtime_cold" in variants else None
    for v in variants:
        if v == "onnx_folded":
            s = ort_session(folded_bytes)
            fns[v] = lambda s=s: s.run(outs, feeds)
        elif v == "onnx_folded_2t":
            s = ort_session(folded_bytes, threads=2)
            fns[v] = lambda s=s: s.run(outs, feeds)
        elif v == "onnx_unfolded":
            s = ort_session(unfolded_bytes)
            fns[v] = lambda s=s: s.run(outs, feeds)
        elif v == "onnx_unfolded_noopt":
            s = ort_session(unfolded_bytes, optimize=False)
            fns[v] = lambda s=s: s.run(outs, feeds)
        elif v in ("runtime", "runtime_cold"):
            r = HeadRunner(folded_bytes, d, n_experts)
            fns[v] = lambda r=r: r.run(h_gate[0], h_steer[0])
            if v == "runtime_cold":
                preps[v] = lambda: float(evict_buf.sum())  # type: ignore[union-attr]
        elif v == "numpy_folded":
            nh = NumpyFoldedHead(folded)
            fns[v] = lambda nh=nh: nh.run(h_gate[0], h_steer[0])
        else:
            raise ValueError(f"unknown head variant {v!r}")

    ref = folded.forward(h_gate, h_steer)
    max_err = 0.0
    for v, fn in fns.items():
        out = fn()
        if v in ("runtime", "runtime_cold"):
            out = (out.gate_score, out.vector, out.expert_weights)
        max_err = max(max_err, check_outputs(f"head variant {v} at d={d}", out, ref))

    times: dict[str, list[float]] = {v: [] for v in fns}
    for fn in fns.values():  # warm-up: first runs allocate
        fn()
    start = time.perf_counter()
    for i in range(rounds):
        names = list(fns)
        k = i % len(names)
        for v in names[k:] + names[:k]:
            if v in preps:
                preps[v]()
            t = time.perf_counter()
            fns[v]()
            times[v].append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and i >= 10:
            break
    result: dict[str, Any] = {}
    for v, ts in times.items():
        lo, hi = spread(ts)
        result[v] = {"median_ms": median(ts) * 1e3, "min_ms": lo * 1e3, "max_ms": hi * 1e3, "n": len(ts)}
    result["params"] = {"folded": folded.n_params(), "unfolded": unfolded.n_params()}
    result["onnx_bytes"] = {"folded": len(folded_bytes), "unfolded": len(unfolded_bytes)}
    result["max_rel_err"] = max_err
    return result


def pack_sizes(d: int, *, n_layer: int = 32, n_experts: int = 8, basis_rank: int = 10, seed: int = 0,
               hidden: int | None = None) -> dict[str, int]:
    """Bytes of a real folded pack at width ``d`` (written with the pack writer) and of its unfolded twin.

    The unfolded pack is the same directory with ``head.onnx`` replaced by the unfolded export (it is not a
    loadable pack format; it is what shipping the official layout would weigh).
    """
    from ..converters.onnx_unfolded import build_unfolded_head_onnx
    from ..converters.pack_writer import write_pack
    from ..model_info import Fingerprint

    unfolded = random_unfolded_head(d, n_experts=n_experts, basis_rank=basis_rank, seed=seed, hidden=hidden)
    folded = unfolded.fold()
    fp = Fingerprint(architecture="llama", n_layer=n_layer, n_embd=d, n_vocab=32000, tokenizer_sha256="0" * 64)
    steer = max(1, n_layer // 3)
    with tempfile.TemporaryDirectory(prefix="fse-packsize-") as tmp:
        out = write_pack(Path(tmp) / "pack", head=folded, fingerprint=fp, gate_layer=n_layer // 2, steer_layer=steer,
                         alpha=1.0, tau=0.5, mean_vector={steer: folded.experts.mean(0)}, name=f"size-d{d}")
        sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    unfolded_head = len(build_unfolded_head_onnx(unfolded))
    folded_total = sum(sizes.values())
    return {
        "d": d,
        "hidden": hidden or d,
        "head_folded": sizes["head.onnx"],
        "head_unfolded": unfolded_head,
        "control": sizes["control.gguf"],
        "manifest": sizes["manifest.json"],
        "pack_folded": folded_total,
        "pack_unfolded": folded_total - sizes["head.onnx"] + unfolded_head,
        "params_folded": folded.n_params(),
        "params_unfolded": unfolded.n_params(),
    }
