"""Import MoSE heads trained by the FineSteer research code into a :class:`Checkpoint` for ``convert``.

Two torch layouts exist in the wild (DESIGN.md section 3; layouts learnt from jzhang538/FineSteer
``steering.py`` and YukinoAsuna/FineSteer ``finesteer_moe``, no code taken from either):

* **official** ``SteeringModel.state_dict()`` (.pth): ``query``/``key``/``value`` Linear layers,
  ``mix.0``/``mix.2`` (the basis-coefficient MLP), an unused ``scale.*`` MLP, scalars ``gamma`` and
  ``tau`` (the softmax *temperature*, not a gate threshold). The prototype bank (``selector``) and the
  basis (``U_rest``) are plain attributes there and are not saved, so they come from separate files
  or are recomputed from one of our activations files.
* **finesteer_moe** ``{"state_dict", "metadata"}``: ``prototypes`` (K, d) and ``residual_basis`` (d, k)
  buffers, ``query``/``key`` Linear layers, ``value`` only when the preset uses a value projection
  (otherwise the value map is the identity), ``beta.0``/``beta.2`` (the MLP); no gamma, no temperature.

Both read features at HF ``hidden_states[L]`` (the *input* of block L, our layer L-1) and add the
vector to the output of block L (our layer L), so a head imported with ``official_layer=L`` reads
layer L-1 and steers layer L; the Checkpoint records both numbers.

Every torch file, including prototype/basis files, is read only through
:func:`~finesteer_edge.train.checkpoint.load_torch_weights` (``torch.load(weights_only=True)``): a
pickle that would run code is refused, never executed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from finesteer_edge.errors import ActivationsError, CheckpointError, ModelMismatchError
from finesteer_edge.model_info import Fingerprint, read_model_info
from finesteer_edge.train.checkpoint import (
    Checkpoint,
    GateParamsCkpt,
    MoSEParams,
    load_checkpoint,
    load_torch_weights,
    read_safetensors,
    torch_tensor_array,
)

CONVENTION = "official hidden_states[L] = block L input = finesteer-edge layer L-1"
ALWAYS_TAU = 0.5

OFFICIAL = "finesteer-official"
MOE = "finesteer_moe"

# Our MoSEParams field -> the key that holds it in each layout (None: not stored in that layout).
OFFICIAL_MAP: dict[str, str] = {
    "W_q": "query.weight", "b_q": "query.bias", "W_k": "key.weight", "b_k": "key.bias",
    "W_v": "value.weight", "b_v": "value.bias", "W1": "mix.0.weight", "b1": "mix.0.bias",
    "W2": "mix.2.weight", "b2": "mix.2.bias", "t": "tau", "gamma": "gamma",
}
MOE_MAP: dict[str, str] = {
    "C": "prototypes", "U": "residual_basis", "W_q": "query.weight", "b_q": "query.bias",
    "W_k": "key.weight", "b_k": "key.bias", "W_v": "value.weight", "b_v": "value.bias",
    "W1": "beta.0.weight", "b1": "beta.0.bias", "W2": "beta.2.weight", "b2": "beta.2.bias",
}
# Keys that only one layout has: how we tell them apart.
_MOE_MARKERS = ("prototypes", "residual_basis", "beta.0.weight", "beta.2.weight")
# Where a checkpoint could carry its own layer / fingerprint (neither layout saves them today).
_LAYER_KEYS = ("official_layer", "layer")
_FP_KEYS = ("model", "fingerprint")

_MATRICES = ("C", "U", "W_q", "W_k", "W_v", "W1", "W2")
_VECTORS = ("b_q", "b_k", "b_v", "b1", "b2")


def import_torch_checkpoint(
    path: Path,
    *,
    model: Path | None = None,
    prototypes: Path | None = None,
    basis: Path | None = None,
    activations: Path | None = None,
    official_layer: int | None = None,
    gate_checkpoint: Path | None = None,
    alpha: float | None = None,
    **_ignored: Any,
) -> Checkpoint:
    """Read an official FineSteer or ``finesteer_moe`` torch checkpoint as one of our Checkpoints.

    Args:
        path: the .pth/.pt file (read with ``weights_only=True`` only).
        model: the GGUF the pack is for; checks width, depth and any fingerprint the inputs carry.
        prototypes, basis: the official layout's bank C (K, d) and basis U (d, k): .npy, one-tensor
            .safetensors, or a weights-only .pt holding one tensor.
        activations: our activations file; recomputes missing C/U from its training targets' deltas
            and gives ``mean_delta`` (the static control.gguf vector).
        official_layer: L as the research code counts it (``hidden_states[L]``, hook on ``layers[L]``).
        gate_checkpoint: one of our checkpoint directories whose SCS gate guards the imported head;
            without it the gate is always open.
        alpha: strength (default 1.0; ``convert --alpha`` overrides it).
    """
    path = Path(path)
    where = str(path)
    payload = load_torch_weights(path)
    state, meta, outer = _split_payload(payload, where)
    tensors = _tensors(state, where)
    layout = MOE if any(k in tensors for k in _MOE_MARKERS) else OFFICIAL
    provenance: dict[str, Any] = {"importer": "torch_checkpoints", "layout": layout, "file": where,
                                  "sha256": _sha256(path)}

    layer = _resolve_layer(official_layer, meta, outer, where)
    model_fp = read_model_info(model).fingerprint if model is not None else None
    acts = _load_acts(activations, model, model_fp, layer) if activations is not None else None

    if layout == OFFICIAL:
        fields, src = _official_fields(tensors, where, provenance)
        _official_bank(fields, src, tensors, where, prototypes=prototypes, basis=basis, acts=acts,
                       activations=activations, provenance=provenance)
    else:
        if prototypes is not None or basis is not None:
            raise CheckpointError(f"{where}: a finesteer_moe checkpoint carries its own prototypes and "
                                  "residual_basis; do not pass --prototypes/--basis")
        fields, src = _moe_fields(tensors, meta, where, provenance)
    mose = _checked_params(fields, src, where)
    d = mose.d
    if model_fp is not None and model_fp.n_embd != d:
        raise ModelMismatchError(f"{where}: the checkpoint has d={d} but {Path(model).name} has n_embd "  # type: ignore[arg-type]
                                 f"{model_fp.n_embd}")

    file_fp = _file_fingerprint(meta, outer, where)
    fps = [(f"{where} metadata", file_fp)]
    n_layer = next((fp.n_layer for fp in (model_fp, file_fp) if fp is not None), None)

    if gate_checkpoint is not None:
        gck = load_checkpoint(gate_checkpoint)
        gate = gck.gate
        if gate.mean is None or gate.mean.shape != (d,):
            width = None if gate.mean is None else gate.mean.shape[0]
            raise ModelMismatchError(f"gate checkpoint {gate_checkpoint} has d={width} but the imported head has "
                                     f"d={d}: it was trained on another model")
        fps.append((f"gate checkpoint {gate_checkpoint}", gck.fingerprint))
        n_layer = n_layer or (gck.fingerprint.n_layer if gck.fingerprint else None)
        provenance["gate"] = {"source": str(gate_checkpoint), "kind": gate.kind, "layer": gate.layer, "tau": gate.tau}
        model_name = str(gck.config.get("model_name", ""))
    else:
        model_name = ""
        gate = GateParamsCkpt(kind="always", layer=layer - 1, tau=ALWAYS_TAU)
        provenance["gate"] = {"source": "none: always open (the research code steers every query)"}
    fingerprint = _agree(fps, model, model_fp)
    if n_layer is not None and not layer <= n_layer - 2:
        raise CheckpointError(f"{where}: official layer {layer} steers block {layer}, but a {n_layer}-layer model "
                              f"can be steered at blocks 1..{n_layer - 2} only")

    mean_delta = None
    if acts is not None:
        mean_delta, info = _acts_mean_delta(acts, d, where)
        provenance["activations"] = {**provenance.get("activations", {}), **info, "path": str(activations)}

    a = 1.0 if alpha is None else float(alpha)
    if not math.isfinite(a):
        raise CheckpointError(f"alpha must be finite, is {alpha}")
    config: dict[str, Any] = {
        "source_kind": layout,
        "model_name": model_name,
        "steer_layer": layer,
        "feature_layer": layer - 1,
        "official_feature_layer": layer,
        "feature_layer_convention": CONVENTION,
        "alpha": a,
        "gate": {"kind": gate.kind, "layer": gate.layer, "tau": gate.tau},
        "experts": int(mose.C.shape[0]),
        "basis_rank": int(mose.U.shape[1]),
        "hidden": int(mose.W1.shape[0]),
        "provenance": _json_safe(provenance),
    }
    return Checkpoint(mose=mose, gate=gate, steer_layer=layer, alpha=a, fingerprint=fingerprint,
                      mean_delta=mean_delta, config=config, feature_layer=layer - 1)


# ---------------------------------------------------------------------------------------------- payload
def _split_payload(payload: Any, where: str) -> tuple[Mapping[str, Any], dict[str, Any], Mapping[str, Any]]:
    """(state_dict, metadata, outer dict): a bare state_dict or a ``{state_dict, metadata}`` wrapper."""
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{where}: expected a state_dict (a dict of tensors), found {type(payload).__name__}")
    if "state_dict" in payload:
        state = payload["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{where}: 'state_dict' is a {type(state).__name__}, not a dict of tensors")
        meta = payload.get("metadata")
        return state, dict(meta) if isinstance(meta, Mapping) else {}, payload
    return payload, {}, {}


def _tensors(state: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    import torch

    out: dict[str, np.ndarray] = {}
    odd = []
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[str(key)] = torch_tensor_array(value, f"{where}: {str(key)[:80]}")
        else:
            odd.append(str(key))
    if odd:
        raise CheckpointError(f"{where}: state_dict entries that are not tensors: {', '.join(odd)}")
    return out


# ---------------------------------------------------------------------------------------------- layouts
def _official_fields(t: dict[str, np.ndarray], where: str,
                     provenance: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    missing = [key for key in OFFICIAL_MAP.values() if key not in t]
    if missing:
        raise CheckpointError(f"{where}: not a complete FineSteer SteeringModel state_dict; missing tensors: "
                              f"{', '.join(missing)}")
    fields: dict[str, Any] = {name: t[key] for name, key in OFFICIAL_MAP.items()}
    src = dict(OFFICIAL_MAP)
    provenance["ignored_keys"] = sorted(k for k in t if k.startswith("scale."))
    provenance["tau"] = "official tau is the router's softmax temperature t (not the gate threshold)"
    return fields, src


def _moe_fields(t: dict[str, np.ndarray], meta: dict[str, Any], where: str,
                provenance: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    cfg = meta.get("components", {}).get("config", {}) if isinstance(meta.get("components"), Mapping) else {}
    declared = cfg.get("value_projection") if isinstance(cfg, Mapping) else None
    has_value = "value.weight" in t or "value.bias" in t or declared is True
    wanted = [k for name, k in MOE_MAP.items() if has_value or name not in ("W_v", "b_v")]
    missing = [k for k in wanted if k not in t]
    if missing:
        raise CheckpointError(f"{where}: not a complete finesteer_moe MoSE state_dict; missing tensors: "
                              f"{', '.join(missing)}")
    fields: dict[str, Any] = {name: t[key] for name, key in MOE_MAP.items() if key in t}
    src = dict(MOE_MAP)
    if not has_value:
        # The "MoSE" preset's value bank is nn.Identity: the experts are the prototypes themselves.
        d = fields["C"].shape[1] if fields["C"].ndim == 2 else 0
        fields["W_v"], fields["b_v"] = np.eye(d), np.zeros(d)
        src["W_v"] = src["b_v"] = "identity value map (no value.* tensors)"
    fields["t"], fields["gamma"] = 1.0, 1.0
    src["t"], src["gamma"] = "temperature 1 (not in finesteer_moe)", "gamma 1 (not in finesteer_moe)"
    provenance["value_projection"] = bool(has_value)
    provenance["metadata"] = _moe_meta_summary(meta)
    return fields, src


def _official_bank(fields: dict[str, Any], src: dict[str, str], t: dict[str, np.ndarray], where: str, *,
                   prototypes: Path | None, basis: Path | None, acts: Any, activations: Path | None,
                   provenance: dict[str, Any]) -> None:
    """C and U for the official layout: given files, tensors the file happens to carry, or recomputed."""
    sources: dict[str, Any] = {}
    for name, given, in_file, label in (("C", prototypes, "selector", "prototypes"), ("U", basis, "U_rest", "basis")):
        if given is not None:
            fields[name] = _read_single_tensor(Path(given), label)
            src[name] = f"{label} ({Path(given).name})"
            sources[label] = {"source": "file", "path": str(given), "sha256": _sha256(Path(given))}
        elif in_file in t:
            fields[name] = t[in_file]
            src[name] = in_file
            sources[label] = {"source": f"checkpoint tensor {in_file}"}
    need = [n for n in ("C", "U") if n not in fields]
    if need:
        if acts is None:
            what = " and ".join({"C": "the prototype bank (selector, K x d)", "U": "the basis (U_rest, d x k)"}[n]
                                for n in need)
            flags = " and ".join({"C": "--prototypes", "U": "--basis"}[n] for n in need)
            raise CheckpointError(f"{where}: an official FineSteer checkpoint does not store {what}: pass {flags}, "
                                  f"or --activations to recompute them from the training deltas")
        from finesteer_edge.train.mose import build_experts

        d = int(fields["W_q"].shape[-1]) if np.ndim(fields["W_q"]) == 2 else -1
        if acts.n_embd != d:
            raise ModelMismatchError(f"the activations {activations} have d={acts.n_embd} but {where} has d={d} "
                                     f"(query.weight): they come from another model")
        W2 = fields["W2"]
        k = int(W2.shape[0]) if W2.ndim == 2 else 0
        deltas = _train_deltas(acts)
        if len(deltas) < k + 1:
            raise CheckpointError(f"{where}: recomputing the basis needs at least {k + 1} training targets with "
                                  f"deltas (its mix.2 layer has {k} outputs); {activations} has {len(deltas)}")
        experts = build_experts(deltas, k_basis=k, seed=0)
        note = ("recomputed by finesteer-edge build_experts (normalised deltas, PCA, KMeans K in 4..10 by "
                "Calinski-Harabasz; basis = PCA of the centred deltas) from the activations' training targets; "
                "it matches the research code's bank only if that was built the same way from the same deltas")
        if "C" in need:
            fields["C"] = experts.prototypes.astype(np.float64)
            src["C"] = "prototypes recomputed from activations"
            sources["prototypes"] = {"source": "recomputed", "K": int(experts.prototypes.shape[0]),
                                     "cluster_sizes": experts.sizes, "note": note}
        if "U" in need:
            fields["U"] = experts.basis.astype(np.float64)
            src["U"] = "basis recomputed from activations"
            sources["basis"] = {"source": "recomputed", "k": int(experts.basis.shape[1]), "note": note}
        provenance["activations"] = {"recomputed": need, "n_train_targets": len(deltas)}
    provenance["bank"] = sources


# ---------------------------------------------------------------------------------------------- checks
def _checked_params(f: dict[str, Any], src: dict[str, str], where: str) -> MoSEParams:
    """MoSEParams with every shape and NaN/Inf problem reported at once, in the source file's names."""
    bad_rank = [f"{src[n]} has {np.ndim(f[n])} dimensions, expected 2" for n in _MATRICES if np.ndim(f[n]) != 2]
    bad_rank += [f"{src[n]} has {np.ndim(f[n])} dimensions, expected 1" for n in _VECTORS if np.ndim(f[n]) != 1]
    bad_rank += [f"{src[n]} must be a scalar, has shape {np.shape(f[n])}" for n in ("t", "gamma")
                 if np.size(f[n]) != 1]
    if bad_rank:
        raise CheckpointError(f"{where}: mis-shaped tensors: {'; '.join(bad_rank)}")
    dh, d = f["W_q"].shape
    K, k, H = f["C"].shape[0], f["U"].shape[1], f["W1"].shape[0]
    want = {"C": (K, d), "U": (d, k), "W_q": (dh, d), "b_q": (dh,), "W_k": (dh, d), "b_k": (dh,), "W_v": (d, d),
            "b_v": (d,), "W1": (H, d), "b1": (H,), "W2": (k, H), "b2": (k,)}
    problems = [f"{src[n]} has shape {tuple(f[n].shape)}, expected {shape}"
                for n, shape in want.items() if tuple(f[n].shape) != shape]
    if problems:
        raise CheckpointError(f"{where}: mis-shaped tensors (d={d} from {src['W_q']}): {'; '.join(problems)}")
    t, gamma = float(np.reshape(f["t"], ())), float(np.reshape(f["gamma"], ()))
    bad = [src[n] for n in want if not np.isfinite(f[n]).all()]
    bad += [src[n] for n, v in (("t", t), ("gamma", gamma)) if not math.isfinite(v)]
    if bad:
        raise CheckpointError(f"{where}: NaN/Inf weights in {', '.join(bad)}")
    p = MoSEParams(C=f["C"], U=f["U"], W_q=f["W_q"], b_q=f["b_q"], W_k=f["W_k"], b_k=f["b_k"], W_v=f["W_v"],
                   b_v=f["b_v"], W1=f["W1"], b1=f["b1"], W2=f["W2"], b2=f["b2"], t=t, gamma=gamma, input_scale=1.0)
    p.check(where)  # the same rules as our own checkpoints (also: temperature > 0)
    return p


def _read_single_tensor(path: Path, label: str) -> np.ndarray:
    """A prototype/basis file: .npy (no pickles), .safetensors with one tensor, or a weights-only torch file."""
    if not path.is_file():
        raise CheckpointError(f"{label} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        # Never unpickle (allow_pickle=False refuses object arrays); memory-map so that a header whose
        # shape claims more than the file holds fails instead of allocating it; numbers only.
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
            if arr.dtype.kind not in "fiub":
                raise ValueError(f"dtype {arr.dtype} is not a real number type")
            return np.array(arr, dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - numpy's header parser raises ValueError, TokenError, EOFError...
            raise CheckpointError(f"{path}: not a plain .npy array ({str(exc)[:200]})") from exc
    if suffix == ".safetensors":
        found = read_safetensors(path)
        if len(found) != 1:
            raise CheckpointError(f"{path}: expected one tensor for the {label}, found {len(found)} "
                                  f"({', '.join(sorted(found)) or 'none'})")
        return np.asarray(next(iter(found.values())), dtype=np.float64)
    if suffix in (".pt", ".pth", ".bin"):
        import torch

        obj = load_torch_weights(path)
        if isinstance(obj, Mapping) and len(obj) == 1:
            obj = next(iter(obj.values()))
        if not isinstance(obj, torch.Tensor):
            raise CheckpointError(f"{path}: expected one tensor for the {label}, found {type(obj).__name__}")
        return torch_tensor_array(obj, f"{path}")
    raise CheckpointError(f"{path}: unsupported {label} file type {suffix!r} (use .npy, .safetensors or .pt)")


def _resolve_layer(given: int | None, meta: Mapping[str, Any], outer: Mapping[str, Any], where: str) -> int:
    stored = None
    for holder in (meta, outer):
        for key in _LAYER_KEYS:
            value = holder.get(key)
            if value is not None and not isinstance(value, Mapping):
                try:
                    stored = int(value)
                except (TypeError, ValueError, OverflowError, RuntimeError):  # RuntimeError: a tensor of 2+ values
                    raise CheckpointError(f"{where}: stored layer {str(value)[:40]!r} is not an integer") from None
                break
        if stored is not None:
            break
    if given is None and stored is None:
        raise CheckpointError(f"{where}: the FineSteer research checkpoints do not record their layer: pass "
                              f"--official-layer L (the L of hidden_states[L] / model.layers[L] in that code)")
    if given is not None and stored is not None and int(given) != stored:
        raise CheckpointError(f"{where}: the file says layer {stored} but --official-layer is {given}")
    layer = int(given if given is not None else stored)  # type: ignore[arg-type]
    if layer < 1:
        raise CheckpointError(f"{where}: official layer {layer} would read the embeddings and steer block {layer}; "
                              "llama.cpp cannot steer layer 0 (use L >= 1)")
    return layer


def _file_fingerprint(meta: Mapping[str, Any], outer: Mapping[str, Any], where: str) -> Fingerprint | None:
    for holder in (meta, outer):
        for key in _FP_KEYS:
            value = holder.get(key)
            if isinstance(value, Mapping):
                try:
                    return Fingerprint.from_dict(dict(value))
                except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
                    raise CheckpointError(f"{where}: malformed model fingerprint in '{key}' ({str(exc)[:100]})") \
                        from exc
    return None


def _agree(fps: list[tuple[str, Fingerprint | None]], model: Path | None,
           model_fp: Fingerprint | None) -> Fingerprint | None:
    """The one fingerprint every input agrees on (None when none carries one)."""
    known = [(label, fp) for label, fp in fps if fp is not None]
    for label, fp in known:
        if model_fp is not None:
            problems = fp.mismatches(model_fp)
            if problems:
                raise ModelMismatchError(f"{label} was made for another model than {Path(model).name}: "  # type: ignore[arg-type]
                                         f"{'; '.join(problems)}")
    for (la, a), (lb, b) in zip(known, known[1:], strict=False):
        problems = a.mismatches(b)
        if problems:
            raise ModelMismatchError(f"{la} and {lb} come from different models: {'; '.join(problems)}")
    return known[0][1] if known else None


# ---------------------------------------------------------------------------------------------- activations
def _load_acts(path: Path, model: Path | None, model_fp: Fingerprint | None, layer: int) -> Any:
    """Our activations file, checked against --model and against the layer the imported head uses.

    The research code measures features and deltas at ``hidden_states[L]`` (our L-1); deltas measured at
    our L (where the vector is added) are accepted too. Any other layer would build a bank in the wrong
    space, so it is refused.
    """
    from finesteer_edge.train.activations import load_activations

    acts = load_activations(path)
    if model_fp is not None:
        problems = acts.fingerprint.mismatches(model_fp)
        if problems:
            raise ActivationsError(f"the activations {path} come from another model than "
                                   f"{Path(model).name}: {'; '.join(problems)}")  # type: ignore[arg-type]
    if acts.steer_layer not in (layer - 1, layer):
        raise ActivationsError(f"the activations {path} hold deltas at layer {acts.steer_layer}; official layer "
                               f"{layer} needs them at layer {layer - 1} ({CONVENTION}) or {layer}")
    return acts


def _train_deltas(acts: Any) -> np.ndarray:
    m = acts.mask(split="train", target=True) & (acts.has_delta == 1)
    return np.asarray(acts.delta[m], dtype=np.float64)


def _acts_mean_delta(acts: Any, d: int, where: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The static fallback vector: mean training delta (the research code measures it at hidden_states[L])."""
    if acts.n_embd != d:
        raise ModelMismatchError(f"the activations have d={acts.n_embd} but {where} has d={d}")
    deltas = _train_deltas(acts)
    if len(deltas) == 0:
        raise CheckpointError("the activations hold no training targets with deltas")
    info = {"layer": acts.steer_layer, "n_train_targets": int(len(deltas)),
            "mean_delta": "mean of the training targets' deltas"}
    return deltas.mean(0), info


# ---------------------------------------------------------------------------------------------- provenance
def _moe_meta_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The finesteer_moe metadata without the per-epoch history (it can be long)."""
    out: dict[str, Any] = {}
    comp = meta.get("components")
    if isinstance(comp, Mapping):
        out["components"] = {k: v for k, v in comp.items() if k != "selection"}
        sel = comp.get("selection")
        if isinstance(sel, Mapping):
            out["components"]["chosen_k"] = sel.get("chosen_k")
    train = meta.get("training")
    if isinstance(train, Mapping):
        out["training"] = {k: v for k, v in train.items() if k != "history"}
    return out


def _json_safe(x: Any) -> Any:
    """Manifests are strict JSON: no NaN/Inf, no tensors, string keys."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (bool, str)) or x is None:
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if hasattr(x, "shape"):
        return f"<array {tuple(x.shape)}>"
    return str(x)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
