"""Give an existing pack a new gate: keep its MoSE head and control vector byte-for-byte in meaning, replace
the SCS gate (kind, layer, threshold) by one fitted on gate-only activations.

Why: the gate and MoSE are independent parts of the head (the gate reads ``h_gate``, MoSE ``h_steer``).
Retraining the gate on new data (issue 10: topic-matched pairs, conversation shapes) needs only a cheap
prefill per row, while a full rebuild repeats the model's own 48-token answers for every harmful prompt
(27+ min on one thread). The MoSE arrays are read back from the pack's ``head.onnx`` initializers and
re-exported with the new gate through the same exporter and checks as ``convert``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from finesteer_edge.errors import PackError
from finesteer_edge.pack.pack import SteeringPack
from finesteer_edge.train.scs import GateFit

from .convert import _check_onnx, _probe_inputs, check_layers, file_digest
from .head_params import FoldedHead, GateParams
from .pack_writer import write_pack

MOSE_ARRAYS = ("router_w", "router_b", "experts", "mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2", "basis")


def read_mose(pack_dir: Path) -> dict[str, np.ndarray]:
    """The folded MoSE arrays of a pack's head.onnx (float64, shapes as in :class:`FoldedHead`)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string((pack_dir / "head.onnx").read_bytes())
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    missing = [n for n in MOSE_ARRAYS if n not in inits and n not in ("mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2",
                                                                     "basis")]
    if missing:
        raise PackError(f"{pack_dir}: head.onnx has no {', '.join(missing)}: not a FineSteer head")
    out = {n: inits[n] for n in MOSE_ARRAYS if n in inits}
    out["router_b"] = out["router_b"].reshape(-1)
    d = out["experts"].shape[1]
    if "basis" not in out:  # k = 0: no residual basis
        out.update(mlp_w1=np.zeros((d, 0)), mlp_b1=np.zeros(0), mlp_w2=np.zeros((0, 0)), mlp_b2=np.zeros(0),
                   basis=np.zeros((0, d)))
    out["mlp_b1"] = out["mlp_b1"].reshape(-1)
    out["mlp_b2"] = out["mlp_b2"].reshape(-1)
    return out


def regate(pack_dir: Path, gate: GateFit, out: Path, *, name: str = "", description: str | None = None,
           overwrite: bool = False, gate_provenance: dict[str, Any] | None = None) -> Path:
    """Write ``out``: ``pack_dir``'s MoSE head and control vector with ``gate`` (layer, kind, tau)."""
    old = SteeringPack.load(pack_dir)
    m = old.manifest
    if m.method != "finesteer":
        raise PackError(f"{pack_dir}: only FineSteer packs have a gate to replace (method {m.method})")
    check_layers(m.model.n_layer, gate.layer, m.steer_layer, m.head_layer, what="regated pack")
    mose = read_mose(Path(pack_dir))
    g = GateParams(kind=gate.kind, mean=gate.mean, components=gate.components, weights=gate.weights,
                   bias=float(gate.bias))
    head = FoldedHead(gate=g, **mose)
    if head.n_embd != m.model.n_embd:
        raise PackError(f"{pack_dir}: head width {head.n_embd} != the model's n_embd {m.model.n_embd}")
    probe = _probe_inputs(head.n_embd, 1.0 / 40.0, 0)
    errs: list[float] = []
    provenance = {
        "regated_from": {"path": str(pack_dir), "manifest_sha256": file_digest(Path(pack_dir) / "manifest.json"),
                         "provenance": m.provenance, "gate": {"kind": m.gate_kind, "layer": m.gate_layer,
                                                              "tau": m.tau, "feature": m.gate_feature}},
        "gate": gate_provenance or {},
    }
    pack = write_pack(
        out, head=head, fingerprint=m.model, gate_layer=gate.layer, steer_layer=m.steer_layer, alpha=m.alpha,
        tau=gate.tau, mean_vector=old.mean_vector(), method="finesteer", vector_source=m.vector_source,
        mode=m.mode, name=name or m.name, description=m.description if description is None else description,
        model_name=m.model_name, provenance=json.loads(json.dumps(provenance, default=float)),
        overwrite=overwrite, feature_layer=m.feature_layer, schedule=m.schedule, spread=m.spread,
        gate_feature=gate.feature, strength=m.strength, head_feature=m.head_feature,
        verify=lambda tmp: errs.append(_check_onnx(tmp, head, probe)) or _same_mose(old, tmp, probe),
    )
    return pack


def _same_mose(old: SteeringPack, new_dir: Path, probe: np.ndarray) -> None:
    """The new head's steering vector and expert weights equal the old pack's: only the gate changed."""
    new = SteeringPack.load(new_dir)
    for row in probe.astype(np.float32):
        a, b = old.evaluate(row, row), new.evaluate(row, row)
        scale = float(np.abs(a.vector).max()) or 1.0
        if float(np.abs(a.vector - b.vector).max()) > 1e-5 * scale or not np.allclose(a.expert_weights,
                                                                                          b.expert_weights, atol=1e-6):
            raise PackError("regate changed the MoSE head's output; refusing to write the pack")
