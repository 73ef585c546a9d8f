"""Build valid steering packs from random numpy arrays, for tests and benchmarks.

They go through the same writer as ``finesteer-edge convert`` (needs the ``convert`` extra: onnx),
so a test pack is exactly the documented format, only with random weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..model_info import read_model_info
from ..vocab import TRAINED_GATE_KINDS


def random_head(d: int, *, n_experts: int = 4, basis_rank: int = 3, hidden: int | None = None,
                gate_kind: str = "scs", gate_components: int = 8, vector_norm: float = 4.0,
                seed: int = 0):  # type: ignore[no-untyped-def]
    """A FoldedHead with random weights whose vectors have roughly ``vector_norm``."""
    from ..converters.head_params import FoldedHead, GateParams

    rng = np.random.default_rng(seed)
    h = hidden if hidden is not None else d
    f32 = np.float32
    q, _ = np.linalg.qr(rng.standard_normal((d, gate_components)))
    gate = GateParams(kind=gate_kind)
    if gate_kind in TRAINED_GATE_KINDS:  # the subspace gates: mean + components
        gate.mean = rng.standard_normal(d).astype(f32) * 0.1
        gate.components = q.astype(f32)
    if gate_kind == "scs_logistic":
        gate.weights = rng.standard_normal(gate_components + 1).astype(f32)
        gate.bias = 0.1
    elif gate_kind == "logistic":
        gate.weights = (rng.standard_normal(d) / np.sqrt(d)).astype(f32)
        gate.bias = 0.0
    experts = rng.standard_normal((n_experts, d))
    experts *= vector_norm / np.linalg.norm(experts, axis=1, keepdims=True)
    return FoldedHead(
        gate=gate,
        router_w=(rng.standard_normal((d, n_experts)) / np.sqrt(d)).astype(f32),
        router_b=rng.standard_normal(n_experts).astype(f32) * 0.1,
        experts=experts.astype(f32),
        mlp_w1=(rng.standard_normal((d, h)) / np.sqrt(d)).astype(f32),
        mlp_b1=np.zeros(h, f32),
        mlp_w2=(rng.standard_normal((h, basis_rank)) / np.sqrt(h) * 0.1).astype(f32),
        mlp_b2=np.zeros(basis_rank, f32),
        basis=(rng.standard_normal((basis_rank, d)) / np.sqrt(d)).astype(f32),
    )


def make_random_pack(model_path: str | Path, out: str | Path, *, gate_layer: int = 1, steer_layer: int = 2,
                     tau: float = 0.0, alpha: float = 1.0, gate_kind: str = "scs", n_experts: int = 4,
                     basis_rank: int = 3, vector_norm: float = 4.0, mode: str = "exact", seed: int = 0,
                     overwrite: bool = True, name: str = "random-test-pack", gate_feature: str = "last",
                     head_feature: str = "last") -> Path:
    """A valid pack for ``model_path`` (``name``: its manifest name, which a server's requests use;
    ``gate_feature`` / ``head_feature``: what the gate / head reads, as in ``finesteer_edge.vocab.GateFeature``).
    ``tau <= 0`` opens the SCS gate for every prompt; ``tau > 1``
    closes it for every prompt (the energy ratio lies in [0, 1])."""
    from ..converters.pack_writer import write_pack

    info = read_model_info(model_path)
    head = random_head(info.n_embd, n_experts=n_experts, basis_rank=basis_rank, gate_kind=gate_kind,
                       vector_norm=vector_norm, seed=seed)
    mean = head.experts.mean(0)
    return write_pack(
        out, head=head, fingerprint=info.fingerprint, gate_layer=gate_layer, steer_layer=steer_layer,
        alpha=alpha, tau=tau, mean_vector={steer_layer: mean}, mode=mode, name=name,
        description="random weights for tests", model_name=info.name, overwrite=overwrite,
        provenance={"kind": "random", "seed": seed}, gate_feature=gate_feature, head_feature=head_feature,
    )
