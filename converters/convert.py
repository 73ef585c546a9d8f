"""``convert``: a trained checkpoint (ours, an official FineSteer one, or a control vector) -> steering pack.

Every source becomes a :class:`Source`: either a MoSE checkpoint (folded into the head) or a static
vector (a control vector, optionally behind an SCS gate). Then the same steps run: fold, check the
folded head against the unfolded torch math (must agree within 1e-5 relative), export ``head.onnx``
(onnx checker), check ONNX against torch, write ``control.gguf`` and ``manifest.json`` atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finesteer_edge.errors import ActivationsError, CheckpointError, LayerError, ModelMismatchError
from finesteer_edge.model_info import Fingerprint, read_model_info
from finesteer_edge.train.checkpoint import Checkpoint, is_checkpoint_dir, load_checkpoint

from .fold import fold_checkpoint, torch_reference, unfolded_params
from .head_params import FoldedHead, GateParams, static_head
from .pack_writer import write_pack
from .sources import StaticSource

FOLD_RTOL = 1e-5
ONNX_RTOL = 1e-4


@dataclass
class ConvertReport:
    pack: Path
    method: str
    folded_bytes: int
    unfolded_bytes: int
    head_bytes: int
    pack_bytes: int
    fold_max_rel_error: float
    onnx_max_rel_error: float
    layers: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["pack"] = str(self.pack)
        return d


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(p.name.encode())
                h.update(p.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def load_source(src: Path, **importer_args: Any) -> Checkpoint | StaticSource:
    """Our checkpoint directory, a torch file (official FineSteer / finesteer_moe), or a control-vector GGUF."""
    if not src.exists():
        raise CheckpointError(f"checkpoint not found: {src}")
    if is_checkpoint_dir(src):
        return load_checkpoint(src)
    if src.suffix == ".gguf":
        from .importers.control_vector import import_control_vector

        return import_control_vector(src, **importer_args)
    if src.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        from .importers.torch_checkpoints import import_torch_checkpoint

        return import_torch_checkpoint(src, **importer_args)
    raise CheckpointError(f"{src}: unknown checkpoint type (expected a checkpoint directory, .pth/.pt or .gguf)")


def resolve_fingerprint(source_fp: Fingerprint | None, model: Path | None, what: str) -> tuple[Fingerprint, str]:
    if model is None:
        if source_fp is None:
            raise CheckpointError(f"{what} does not record the model it was trained on: pass --model")
        return source_fp, ""
    info = read_model_info(model)
    if source_fp is not None:
        problems = source_fp.mismatches(info.fingerprint)
        if problems:
            raise ModelMismatchError(f"{what} was made for another model than {model.name}: {'; '.join(problems)}")
    return info.fingerprint, info.name


def convert(src: Path, out: Path, *, model: Path | None = None, alpha: float | None = None, tau: float | None = None,
            mode: str = "exact", name: str = "", description: str = "", overwrite: bool = False,
            seed: int = 0, **importer_args: Any) -> ConvertReport:
    source = load_source(src, model=model, **importer_args)
    if isinstance(source, StaticSource):
        return _convert_static(source, src, out, model=model, alpha=alpha, tau=tau, mode=mode, name=name,
                               description=description, overwrite=overwrite, seed=seed)
    ckpt = source
    fp, model_name = resolve_fingerprint(ckpt.fingerprint, model, f"checkpoint {src}")
    model_name = model_name or str(ckpt.config.get("model_name", ""))
    a = ckpt.alpha if alpha is None else float(alpha)
    feature = ckpt.steer_layer if ckpt.feature_layer is None else ckpt.feature_layer
    check_layers(fp.n_layer, ckpt.gate.layer, ckpt.steer_layer, feature, what=f"checkpoint {src}")
    head = fold_checkpoint(ckpt, a)
    if head.n_embd != fp.n_embd:
        raise ModelMismatchError(f"checkpoint has d={head.n_embd} but the model's n_embd is {fp.n_embd}")
    probe = _probe_inputs(head.n_embd, ckpt.mose.input_scale, seed)
    fold_err = _check_fold(ckpt, a, head, probe)
    errs: list[float] = []
    mean_vec = a * ckpt.mean_delta if ckpt.mean_delta is not None else head.experts.mean(0)
    g = ckpt.gate
    provenance = {
        "source": {"path": str(src), "sha256": file_digest(src),
                   "kind": ckpt.config.get("source_kind", "finesteer-edge")},
        "training": _training_summary(src, ckpt),
        "mean_vector": "training mean delta x alpha" if ckpt.mean_delta is not None else "mean of expert vectors",
        "fold_max_rel_error": fold_err,
    }
    for key in ("feature_layer_convention", "official_feature_layer"):
        if key in ckpt.config:
            provenance[key] = ckpt.config[key]
    pack = write_pack(
        out, head=head, fingerprint=fp, gate_layer=g.layer, steer_layer=ckpt.steer_layer, alpha=a,
        tau=g.tau if tau is None else tau, mean_vector={ckpt.steer_layer: mean_vec}, method="finesteer",
        vector_source="head", mode=mode, name=name or out.name, description=description, model_name=model_name,
        provenance=provenance, overwrite=overwrite, feature_layer=ckpt.feature_layer, gate_feature=g.feature,
        head_feature=ckpt.head_feature,
        verify=lambda tmp: errs.append(_check_onnx(tmp, head, probe)),
    )
    onnx_err = errs[0]
    head_bytes = (pack / "head.onnx").stat().st_size
    unfolded = unfolded_params(ckpt.mose) * 4 + _gate_bytes(head.gate)
    return ConvertReport(
        pack=pack, method="finesteer", folded_bytes=head.n_params() * 4, unfolded_bytes=unfolded,
        head_bytes=head_bytes, pack_bytes=sum(p.stat().st_size for p in pack.iterdir()),
        fold_max_rel_error=fold_err, onnx_max_rel_error=onnx_err,
        layers={"gate": g.layer, "steer": ckpt.steer_layer, "feature": feature},
    )


def _convert_static(src: StaticSource, path: Path, out: Path, *, model: Path | None, alpha: float | None,
                    tau: float | None, mode: str, name: str, description: str, overwrite: bool,
                    seed: int) -> ConvertReport:
    fp, model_name = resolve_fingerprint(src.fingerprint, model, f"{path}")
    bad = [n for n in src.directions if not 1 <= n <= fp.n_layer - 1]
    if bad:
        raise CheckpointError(f"{path}: direction layers {bad} are outside 1..{fp.n_layer - 1}")
    for layer, v in src.directions.items():
        if v.shape != (fp.n_embd,):
            raise ModelMismatchError(f"{path}: direction.{layer} has {v.shape[0]} values, the model has {fp.n_embd}")
    a = 1.0 if alpha is None else float(alpha)
    directions = {n: a * v for n, v in src.directions.items()}
    if not math.isfinite(a) or not all(np.isfinite(v).all() and np.isfinite(np.linalg.norm(v.astype(np.float64)))
                                       for v in directions.values()):
        raise CheckpointError(f"{path}: the directions times alpha {a:g} are not finite in float32")
    strongest = max(directions, key=lambda n: float(np.linalg.norm(directions[n].astype(np.float64))))
    steer = min(strongest, fp.n_layer - 2)  # nominal for a static pack: the rows of control.gguf are applied
    check_layers(fp.n_layer, src.gate_layer, steer, steer, what=str(path))
    head = static_head(directions[strongest], src.gate)
    probe = _probe_inputs(fp.n_embd, 1.0, seed)
    errs: list[float] = []
    pack = write_pack(
        out, head=head, fingerprint=fp, gate_layer=src.gate_layer, steer_layer=steer,
        alpha=a, tau=src.tau if tau is None else tau, mean_vector=directions, method="static",
        vector_source="control", mode=mode, name=name or out.name, description=description,
        model_name=model_name or src.model_name,
        provenance={"source": {"path": str(path), "sha256": file_digest(path)}, **src.provenance}, overwrite=overwrite,
        verify=lambda tmp: errs.append(_check_onnx(tmp, head, probe)),
    )
    onnx_err = errs[0]
    size = sum(p.stat().st_size for p in pack.iterdir())
    return ConvertReport(pack=pack, method="static", folded_bytes=head.n_params() * 4,
                         unfolded_bytes=head.n_params() * 4, head_bytes=(pack / "head.onnx").stat().st_size,
                         pack_bytes=size, fold_max_rel_error=0.0, onnx_max_rel_error=onnx_err,
                         layers={"gate": src.gate_layer, "steer": steer, "feature": steer})


def check_layers(n_layer: int, gate: int, steer: int, feature: int, *, what: str) -> None:
    """The runtime's layer rules, checked before anything is written (see finesteer_edge.pack.pack)."""
    top = n_layer - 2
    problems = []
    if not 0 <= gate <= top:
        problems.append(f"gate layer {gate} is outside 0..{top}")
    if not 1 <= steer <= top:
        problems.append(f"steer layer {steer} is outside 1..{top}")
    if not 0 <= feature <= top:
        problems.append(f"feature layer {feature} is outside 0..{top}")
    if problems:
        raise LayerError(f"{what}: {'; '.join(problems)} for a {n_layer}-layer model")


def _probe_inputs(d: int, input_scale: float, seed: int) -> np.ndarray:
    """Inputs at the scale the head sees: norm ~ 1 / input_scale."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) / max(input_scale, 1e-12)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(a - b, axis=-1) / (np.linalg.norm(b, axis=-1) + 1e-30)))


def _check_fold(ckpt: Checkpoint, alpha: float, head: FoldedHead, probe: np.ndarray) -> float:
    _, vec, w = head.forward(probe, probe)
    ref_vec, ref_w = torch_reference(ckpt.mose, alpha, probe)
    err = max(_rel(vec, ref_vec), float(np.abs(w - ref_w).max()))
    if not err <= FOLD_RTOL:
        raise CheckpointError(f"the folded head differs from the torch module by {err:.2e} (limit {FOLD_RTOL:g})")
    return err


def _check_onnx(pack: Path, head: FoldedHead, probe: np.ndarray) -> float:
    from finesteer_edge.errors import PackError
    from finesteer_edge.pack.pack import SteeringPack

    errs = []
    try:
        p = SteeringPack.load(pack)
        for row in probe.astype(np.float32):
            out = p.evaluate(row, row)
            score, vec, w = head.forward(row, row)
            errs.append(_rel(out.vector[None], vec))
            # gate scores live in [0, 1] (energy ratio or probability): compare absolutely
            errs.append(abs(out.gate_score - float(score[0])))
    except PackError as exc:  # e.g. weights whose float32 products overflow: the runtime would refuse the pack
        raise CheckpointError(f"the exported head fails the runtime's checks: {exc}") from exc
    err = max(errs)
    if not err <= ONNX_RTOL:
        raise CheckpointError(f"head.onnx differs from the folded head by {err:.2e} (limit {ONNX_RTOL:g})")
    return err


def _gate_bytes(g: GateParams) -> int:
    return 4 * sum(a.size for a in (g.mean, g.components, g.weights) if a is not None)


def _training_summary(src: Path, ckpt: Checkpoint) -> dict[str, Any]:
    report = src / "report.json" if src.is_dir() else None
    out: dict[str, Any] = {k: ckpt.config[k] for k in ("task", "provenance", "metrics") if k in ckpt.config}
    if report is not None and report.is_file():
        try:
            r = json.loads(report.read_text())
            out["report"] = {"gate": {k: v for k, v in r["gate"].items() if k != "candidates"},
                             "experts": r["experts"], "mose": {k: v for k, v in r["mose"].items() if k != "history"},
                             "epochs_run": len(r["mose"].get("history", []))}
        except (OSError, ValueError, KeyError):
            pass
    return out


def check_activations_model(acts_fp: Fingerprint, model: Path) -> None:
    problems = acts_fp.mismatches(read_model_info(model).fingerprint)
    if problems:
        raise ActivationsError(f"the activations come from another model than {model.name}: {'; '.join(problems)}")
