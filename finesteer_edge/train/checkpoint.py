"""The trained checkpoint (``train`` output, ``convert`` input): a directory with
``model.safetensors`` (DESIGN.md section 3 names) and ``config.json``.

Tensors: gate ``V`` (d, K_g), ``m`` (d,) [``gate_w`` (K_g+1,) for the supervised gate]; MoSE ``C``
(K, d), ``U`` (d, k), ``W_q``/``W_k``/``W_v`` (d_h, d) [torch Linear layout], ``b_q``/``b_k``/``b_v``,
``mlp.W1`` (H, d), ``mlp.b1``, ``mlp.W2`` (k, H), ``mlp.b2``, scalars ``t``, ``gamma``, ``input_scale``,
and ``mean_delta`` (d,), the static (CAA) vector used for control.gguf and baselines.

safetensors holds no code, so reading it can never execute anything; torch files from other tools are
read only with ``torch.load(weights_only=True)`` (see :func:`load_torch_weights`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..model_info import Fingerprint
from ..vocab import GATE_FEATURES, HEAD_FEATURES, TRAINED_GATE_KINDS, check_choice

FORMAT_NAME = "finesteer-edge-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MAX_CONFIG_BYTES = 16 << 20
"""config.json holds layers, thresholds and metrics (kilobytes): a bigger one is refused unread."""

MOSE_KEYS = ("C", "U", "W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "mlp.W1", "mlp.b1", "mlp.W2", "mlp.b2", "t",
             "gamma", "input_scale")


@dataclass
class MoSEParams:
    """Everything the folded head needs, as float64 numpy arrays, whatever the source checkpoint."""

    C: np.ndarray
    U: np.ndarray
    W_q: np.ndarray
    b_q: np.ndarray
    W_k: np.ndarray
    b_k: np.ndarray
    W_v: np.ndarray
    b_v: np.ndarray
    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray
    t: float
    gamma: float
    input_scale: float = 1.0

    @property
    def d(self) -> int:
        return int(self.W_q.shape[1])

    def check(self, where: str) -> None:
        """Shapes consistent with one d, K, k, H; finite values. Lists every problem."""
        not_matrix = [n for n in ("C", "U", "W_q", "W1", "W2") if getattr(self, n).ndim != 2]
        if not_matrix:
            raise CheckpointError(f"{where}: {', '.join(not_matrix)} must be matrices")
        d, dh = self.W_q.shape[1], self.W_q.shape[0]
        K, k, H = self.C.shape[0], self.U.shape[1], self.W1.shape[0]
        want = {
            "C": (K, d), "U": (d, k), "W_q": (dh, d), "b_q": (dh,), "W_k": (dh, d), "b_k": (dh,),
            "W_v": (d, d), "b_v": (d,), "W1": (H, d), "b1": (H,), "W2": (k, H), "b2": (k,),
        }
        problems = [f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}"
                    for name, shape in want.items() if tuple(getattr(self, name).shape) != shape]
        if problems:
            raise CheckpointError(f"{where}: mis-shaped tensors: {'; '.join(problems)}")
        bad = [name for name in want if not np.isfinite(getattr(self, name)).all()]
        bad += [name for name in ("t", "gamma", "input_scale") if not math.isfinite(getattr(self, name))]
        if bad:
            raise CheckpointError(f"{where}: NaN/Inf in {', '.join(bad)}")
        if self.t <= 0:
            raise CheckpointError(f"{where}: temperature t must be > 0, is {self.t}")
        if K == 0 or d == 0:  # shapes can agree with no expert or no width at all: nothing to steer with
            raise CheckpointError(f"{where}: the head needs at least one expert and d >= 1 (K={K}, d={d})")


@dataclass
class GateParamsCkpt:
    kind: str
    layer: int
    tau: float
    mean: np.ndarray | None = None
    components: np.ndarray | None = None
    weights: np.ndarray | None = None
    bias: float = 0.0
    feature: str = "last"
    """What the gate reads (``finesteer_edge.vocab.GateFeature``); checkpoints before issue 10 have none: last."""


@dataclass
class Checkpoint:
    mose: MoSEParams
    gate: GateParamsCkpt
    steer_layer: int
    alpha: float
    fingerprint: Fingerprint | None
    mean_delta: np.ndarray | None
    config: dict[str, Any] = field(default_factory=dict)
    feature_layer: int | None = None
    """Layer whose state feeds MoSE when it differs from ``steer_layer`` (official FineSteer imports)."""
    head_feature: str = "last"
    """What MoSE reads at that layer (``finesteer_edge.vocab.HEAD_FEATURES``); checkpoints before issue 11: last."""


def save_checkpoint(out: Path, tensors: dict[str, np.ndarray], config: dict[str, Any],
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write atomically (temp dir, then rename)."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config},
                                             indent=2, allow_nan=False) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not is_checkpoint_dir(path):
        raise CheckpointError(f"{path}: not a finesteer-edge checkpoint (needs {CONFIG} and {WEIGHTS})")
    config = _read_config(path / CONFIG)
    if config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path / CONFIG}: not a {FORMAT_NAME} config")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {str(config.get('format_version'))[:40]} is not supported")
    tensors = read_safetensors(path / WEIGHTS)
    missing = [k for k in (*MOSE_KEYS, "V", "m") if k not in tensors]
    if missing:
        raise CheckpointError(f"{path}: missing tensors: {', '.join(missing)}")
    try:
        gate_cfg = config["gate"]
        gate = GateParamsCkpt(
            kind=str(gate_cfg["kind"]), layer=int(gate_cfg["layer"]), tau=float(gate_cfg["tau"]),
            mean=tensors["m"].astype(np.float64), components=tensors["V"].astype(np.float64),
            weights=tensors["gate_w"].astype(np.float64) if "gate_w" in tensors else None,
            bias=float(gate_cfg.get("bias", 0.0)),
            feature=check_choice(gate_cfg.get("feature", "last"), GATE_FEATURES, "gate.feature"),
        )
        steer_layer, alpha = int(config["steer_layer"]), float(config["alpha"])
        fp = Fingerprint.from_dict(config["model"]) if "model" in config else None
        feature = config.get("feature_layer")
        feature_layer = int(feature) if feature is not None else None
        head_feature = check_choice(config.get("head_feature", "last"), HEAD_FEATURES, "head_feature")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CheckpointError(f"{path / CONFIG}: missing or bad field ({exc})") from exc
    if gate.kind not in TRAINED_GATE_KINDS:
        raise CheckpointError(
            f"{path / CONFIG}: gate kind {gate.kind[:40]!r} is not one of {', '.join(TRAINED_GATE_KINDS)}"
        )
    mose = mose_from_tensors(tensors, str(path))
    d = mose.d
    m, V = gate.mean, gate.components
    assert m is not None and V is not None
    if m.shape != (d,) or V.ndim != 2 or V.shape[0] != d or V.shape[1] == 0:
        raise CheckpointError(f"{path}: gate tensors m {m.shape} and V {V.shape} do not fit d={d} "
                              f"(expected ({d},) and ({d}, K_g >= 1))")
    if gate.kind == "scs_logistic" and (gate.weights is None or gate.weights.shape != (V.shape[1] + 1,)):
        shape = None if gate.weights is None else gate.weights.shape
        raise CheckpointError(f"{path}: the scs_logistic gate needs a gate_w tensor of shape ({V.shape[1] + 1},) "
                              f"(V has {V.shape[1]} components), found {shape}")
    bad = [name for name, arr in (("m", m), ("V", V), ("gate_w", gate.weights))
           if arr is not None and not np.isfinite(arr).all()]
    if bad:
        raise CheckpointError(f"{path}: NaN/Inf in gate tensor(s) {', '.join(bad)}")
    mean_delta = tensors.get("mean_delta")
    if mean_delta is not None and (mean_delta.shape != (d,) or not np.isfinite(mean_delta).all()):
        raise CheckpointError(f"{path}: mean_delta has shape {mean_delta.shape} or NaN/Inf")
    if not math.isfinite(gate.tau) or not math.isfinite(alpha) or not math.isfinite(gate.bias):
        raise CheckpointError(f"{path}: tau, bias and alpha must be finite")
    return Checkpoint(mose=mose, gate=gate, steer_layer=steer_layer, alpha=alpha, fingerprint=fp,
                      mean_delta=None if mean_delta is None else mean_delta.astype(np.float64), config=config,
                      feature_layer=feature_layer, head_feature=head_feature)


def _read_config(path: Path) -> dict[str, Any]:
    """config.json, size-capped and strict (its numbers end up in the pack manifest, which is strict JSON)."""
    from ..strict_json import loads_strict

    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, more than a checkpoint config can be "
                                  f"({MAX_CONFIG_BYTES} bytes)")
        config = loads_strict(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({str(exc)[:200]})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a {FORMAT_NAME} config")
    return config


def mose_from_tensors(t: dict[str, np.ndarray], where: str) -> MoSEParams:
    def f(k: str) -> np.ndarray:
        return np.asarray(t[k], dtype=np.float64)

    def scalar(k: str) -> float:
        a = np.asarray(t[k], dtype=np.float64)
        if a.size != 1:
            raise CheckpointError(f"{where}: {k} must be a scalar, has shape {a.shape}")
        return float(a.reshape(()))

    p = MoSEParams(C=f("C"), U=f("U"), W_q=f("W_q"), b_q=f("b_q"), W_k=f("W_k"), b_k=f("b_k"), W_v=f("W_v"),
                   b_v=f("b_v"), W1=f("mlp.W1"), b1=f("mlp.b1"), W2=f("mlp.W2"), b2=f("mlp.b2"), t=scalar("t"),
                   gamma=scalar("gamma"), input_scale=scalar("input_scale"))
    if any(getattr(p, n).ndim != want for n, want in (("C", 2), ("U", 2), ("W_q", 2), ("W1", 2), ("W2", 2))):
        raise CheckpointError(f"{where}: C, U, W_q, W1 and W2 must be matrices")
    p.check(where)
    return p


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    except Exception as exc:  # safetensors' own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_torch_weights(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` only: a pickle that needs arbitrary code is refused.

    Anything else torch raises on a damaged file (its zip reader, its restricted unpickler: IndexError,
    KeyError, struct and allocation errors, ...) means the same to the user: not a readable torch file.
    """
    import pickle
    import zipfile

    import torch

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                packed = [i.filename for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED]
            if packed:
                # torch.save never compresses, but torch.load inflates whatever it finds: a deflated
                # record expands ~1000x in memory (a 10 MB file would allocate 10 GB).
                raise CheckpointError(f"{path}: refused: compressed records ({packed[0][:80]}, ...) in a torch "
                                      f"file; torch.save writes them uncompressed")
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: not a weights-only torch file (loading it would run code from the file); "
            f"re-save it with torch.save(state_dict) or convert it to safetensors"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a third-party parser at a trust boundary: every failure is ours
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first})") from exc


def torch_tensor_array(t: Any, what: str) -> np.ndarray:
    """A loaded torch tensor as float64 numpy, if it is a plain dense weight.

    ``weights_only`` still lets through tensors that are not weights: sparse, quantized and meta-device
    tensors, complex ones, and views whose shape claims far more values than the file stores (stride 0:
    a few bytes that would materialise as gigabytes). Those are refused before anything is allocated.
    """
    import torch

    if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu" or t.is_complex():
        kind = "quantized" if t.is_quantized else "complex" if t.is_complex() else f"{t.layout}/{t.device.type}"
        raise CheckpointError(f"{what}: a {kind} tensor is not a plain dense weight")
    stored = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    if t.numel() * t.element_size() > stored:
        raise CheckpointError(f"{what}: shape {tuple(t.shape)} needs more values than the file stores "
                              f"({stored} bytes): an expanded or overlapping view, not a weight")
    try:
        return t.detach().to(torch.float64).numpy()
    except (RuntimeError, TypeError) as exc:  # dtypes numpy cannot take
        raise CheckpointError(f"{what}: cannot read a {t.dtype} tensor ({str(exc)[:100]})") from exc
