"""Import a repeng or llama.cpp control-vector GGUF as a static pack, optionally behind an SCS gate.

The pack must do exactly what stock llama.cpp does with the file (``--control-vector``): add
``direction.N`` to the output of block N (our layer N), summing repeated layers. So direction numbers
are kept as written and never shifted here. What differs between writers is only where a direction
was *measured*, which we detect and record in the provenance:

* repeng (``ControlVector.export_gguf``) writes ``controlvector.layer_count`` as uint32 (the number of
  directions) and measures direction N at HF ``hidden_states[N+1]`` = output of block N: measured at N.
* llama.cpp's cvector-generator writes ``layer_count`` as int32 (= n_layer - 1), reads ``l_out-k`` and
  writes it as ``direction.(k+1)``: measured at N-1, applied one block later.
* finesteer-edge's own ``control.gguf`` (int32 plus ``controlvector.finesteer.*`` keys): measured at N.
* anything else: "unknown".
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from finesteer_edge.errors import CheckpointError, ModelMismatchError, PackFormatError
from finesteer_edge.model_info import Fingerprint, read_model_info
from finesteer_edge.pack.control_vector import ControlVector, read_control_vector
from finesteer_edge.train.checkpoint import load_checkpoint

from ..fold import gate_params
from ..head_params import GateParams
from ..sources import StaticSource

ALWAYS_TAU = 0.5
F32_MAX = float(np.finfo(np.float32).max)
REPENG = "repeng"
GENERATOR = "llama.cpp cvector-generator"
FINESTEER = "finesteer-edge"
UNKNOWN = "unknown"


def import_control_vector(
    path: Path,
    *,
    model: Path | None = None,
    gate_checkpoint: Path | None = None,
    strength: float | None = 1.0,
    **_ignored: Any,
) -> StaticSource:
    """Read a control-vector GGUF into a :class:`StaticSource` (directions already times ``strength``).

    Args:
        path: the .gguf control vector (read with our strict reader: only F32 1-D ``direction.N``, N >= 1).
        model: the GGUF the pack is for; a control vector of another width is refused here.
        gate_checkpoint: one of our checkpoint directories; its SCS gate decides per query whether the
            vector is applied. Without it the gate is always open (stock llama.cpp behaviour).
        strength: multiplies every direction (like ``--control-vector-scaled FILE strength``); None = 1.0,
            so a CLI can forward an unset option as is.
    """
    path = Path(path)
    strength = 1.0 if strength is None else float(strength)
    if not math.isfinite(strength):
        raise CheckpointError(f"strength must be finite, is {strength}")
    try:
        cv = read_control_vector(path)
    except PackFormatError as exc:
        raise CheckpointError(f"{path}: not a usable control vector: {exc}") from exc
    info = read_model_info(model) if model is not None else None
    if info is not None and cv.n_embd != info.n_embd:
        raise ModelMismatchError(f"{path}: the control vector has n_embd {cv.n_embd}, {info.path.name} has "
                                 f"{info.n_embd}: it was made for another model")
    if info is not None:
        beyond = sorted(n for n in cv.directions if n > info.n_layer - 1)
        if beyond:
            raise CheckpointError(f"{path}: direction layers {beyond} do not exist in {info.path.name} "
                                  f"({info.n_layer} layers, steerable 1..{info.n_layer - 1})")

    count_type, tensor_counts = _layer_count_type(path)
    tool, measured_shift, how = _detect_writer(cv, count_type)
    scaled = {n: strength * v.astype(np.float64) for n, v in cv.directions.items()}
    norms = {n: float(np.linalg.norm(v)) for n, v in scaled.items()}
    too_big = sorted(n for n, v in scaled.items() if not (np.abs(v).max(initial=0.0) <= F32_MAX
                                                          and norms[n] <= F32_MAX))
    if too_big:
        # Finite float32 values can still overflow once scaled or summed into a norm: the pack would hold
        # Inf (and its manifest could not even be written as JSON).
        raise CheckpointError(f"{path}: direction(s) {too_big[:8]} times strength {strength:g} overflow float32")
    directions = {n: v.astype(np.float32) for n, v in scaled.items()}
    strongest = max(directions, key=lambda n: norms[n])

    fingerprint: Fingerprint | None = None
    model_name = ""
    if gate_checkpoint is not None:
        gck = load_checkpoint(gate_checkpoint)
        g = gck.gate
        width = None if g.mean is None else int(g.mean.shape[0])
        if width != cv.n_embd:
            raise ModelMismatchError(f"gate checkpoint {gate_checkpoint} has d={width} but the control vector has "
                                     f"n_embd {cv.n_embd}: they come from different models")
        if info is not None and gck.fingerprint is not None:
            problems = gck.fingerprint.mismatches(info.fingerprint)
            if problems:
                raise ModelMismatchError(f"gate checkpoint {gate_checkpoint} was trained on another model than "
                                         f"{info.path.name}: {'; '.join(problems)}")
        gate, gate_layer, tau = gate_params(g), int(g.layer), float(g.tau)
        fingerprint = gck.fingerprint
        model_name = str(gck.config.get("model_name", ""))
        gate_info: dict[str, Any] = {"source": str(gate_checkpoint), "kind": g.kind, "layer": gate_layer, "tau": tau}
    else:
        n_layer = _n_layer(info, cv, tool)
        top = max(1, n_layer - 2) if n_layer is not None else strongest
        gate, gate_layer, tau = GateParams(kind="always"), min(max(strongest, 1), top), ALWAYS_TAU
        gate_info = {"source": "none: always open (stock llama.cpp applies the vector to every query)",
                     "layer": gate_layer}

    per_layer = {
        str(n): {
            "applied_at_layer": n,
            "measured_at_layer": (n - measured_shift) if measured_shift is not None else UNKNOWN,
            "norm": norms[n],
            **({"tensors_summed": tensor_counts[n]} if tensor_counts.get(n, 1) > 1 else {}),
        }
        for n in sorted(directions)
    }
    notes = []
    if info is not None and cv.model_hint and cv.model_hint != info.fingerprint.architecture:
        notes.append(f"model_hint {cv.model_hint!r} differs from the model's architecture "
                     f"{info.fingerprint.architecture!r} (repeng writes the HF model_type)")
    provenance = {
        "importer": "control_vector",
        "tool": tool,
        "tool_evidence": how,
        "model_hint": cv.model_hint,
        "layer_count": cv.layer_count,
        "layer_count_type": count_type,
        "layer_convention": "direction.N is added to the output of block N (stock llama.cpp); numbers kept as written",
        "directions": per_layer,
        "strength": strength,
        "strongest_layer": strongest,
        "gate": gate_info,
        "sha256": _sha256(path),
        **({"notes": notes} if notes else {}),
    }
    return StaticSource(directions=directions, gate=gate, gate_layer=gate_layer, tau=tau, fingerprint=fingerprint,
                        model_name=model_name, provenance=provenance)


def _layer_count_type(path: Path) -> tuple[str | None, dict[int, int]]:
    """The GGUF value type of ``controlvector.layer_count`` and how many tensors each layer has.

    Our strict reader keeps values, not their types; the type is what tells repeng from the generator.
    gguf-py's reader runs only after the strict reader has accepted the file, so it sees a well-formed one.
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf-py raises plain ValueError/struct errors
        raise CheckpointError(f"{path}: cannot read the GGUF header ({exc})") from exc
    field = reader.get_field("controlvector.layer_count")
    count_type = None
    if field is not None and field.types:
        count_type = {gguf.GGUFValueType.UINT32: "uint32", gguf.GGUFValueType.INT32: "int32"}.get(
            field.types[0], field.types[0].name.lower())
    counts: dict[int, int] = {}
    for t in reader.tensors:
        n = int(t.name.split(".", 1)[1])
        counts[n] = counts.get(n, 0) + 1
    return count_type, counts


def _detect_writer(cv: ControlVector, count_type: str | None) -> tuple[str, int | None, str]:
    """(tool, measured = applied - shift, evidence). shift None: cannot be told apart."""
    layers = sorted(cv.directions)
    if any(k.startswith("controlvector.finesteer.") for k in cv.metadata):
        return FINESTEER, 0, "controlvector.finesteer.* keys"
    if count_type == "uint32":
        return REPENG, 0, "layer_count written as uint32 (gguf-py add_uint32, as repeng's export_gguf does)"
    if count_type == "int32":
        # compare lengths first: layer_count comes from the file and may be 2^63
        full = cv.layer_count == len(layers) and layers == list(range(1, len(layers) + 1))
        if full:
            return GENERATOR, 1, ("layer_count written as int32 and directions 1..layer_count "
                                  "(the generator writes l_out-k as direction.(k+1))")
        return UNKNOWN, None, ("layer_count is int32 like llama.cpp's generator, but the directions are not its "
                               "1..layer_count block")
    return UNKNOWN, None, f"layer_count type {count_type or 'missing'}: no known writer"


def _n_layer(info: Any, cv: ControlVector, tool: str) -> int | None:
    if info is not None:
        return int(info.n_layer)
    if tool == GENERATOR and cv.layer_count is not None:
        return cv.layer_count + 1
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
