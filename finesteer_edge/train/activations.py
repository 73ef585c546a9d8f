"""The activations file written by ``extract`` and read by ``train`` (DESIGN.md section 3).

A safetensors file: ``h_gate`` (M, d), ``h_steer`` (M, d), ``delta`` (M, d), ``label`` (M,) 1 = target,
``split`` (M,) 0 = train / 1 = val, ``has_delta`` (M,), and ``h_layer.N`` (M, d) for every candidate gate
layer N, so ``train`` can choose the gate layer on validation. Metadata key ``finesteer.activations``
holds JSON: format version, task, model fingerprint, layers, per-row ids/groups/prompts, data hashes.

Rows are streamed into memory-mapped scratch files while extracting and copied into the final file in
chunks, so memory stays bounded by the OS page cache however many prompts there are.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ActivationsError
from ..model_info import Fingerprint
from ..strict_json import loads_strict

FORMAT_VERSION = 1
META_KEY = "finesteer.activations"
SPLIT_CODES = {"train": 0, "val": 1}
_CHUNK_ROWS = 4096
MAX_ABS_VALUE = 1e6
"""No hidden state comes near this (the largest "massive activations" reported in LLMs are ~1e4); finite
float32 values beyond it overflow the squared norms and losses of training into Inf."""


@dataclass
class Activations:
    h_gate: np.ndarray
    h_steer: np.ndarray
    delta: np.ndarray
    label: np.ndarray
    split: np.ndarray
    has_delta: np.ndarray
    layers: dict[int, np.ndarray]
    """Candidate gate layer -> (M, d) states."""
    meta: dict[str, Any]
    features: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    """Optional pooled gate features (``f_<kind>.N`` tensors of a gate-only extraction): kind -> layer -> (M, d)."""

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint.from_dict(self.meta["model"])

    @property
    def gate_layer(self) -> int:
        return int(self.meta["gate_layer"])

    @property
    def steer_layer(self) -> int:
        return int(self.meta["steer_layer"])

    @property
    def n_embd(self) -> int:
        return int(self.h_steer.shape[1])

    def mask(self, *, split: str | None = None, target: bool | None = None) -> np.ndarray:
        m = np.ones(self.label.shape[0], dtype=bool)
        if split is not None:
            m &= self.split == SPLIT_CODES[split]
        if target is not None:
            m &= (self.label == 1) if target else (self.label == 0)
        return m

    def groups(self, *, with_variant: bool = False) -> np.ndarray:
        """Row groups (harmful, benign, ...); with ``with_variant`` style rewrites get ``~style``."""
        groups = np.asarray(self.meta["rows"]["group"], dtype=object)
        variants = self.meta["rows"].get("variant")
        if with_variant and variants is not None:
            groups = np.array([g if v == "original" else f"{g}~{v}" for g, v in zip(groups, variants, strict=True)],
                              dtype=object)
        return groups


class ActivationsWriter:
    """Streams rows to scratch memmaps; :meth:`finish` writes the safetensors file atomically.

    With ``scratch`` the memmaps live in that directory and survive an interruption (``abort`` keeps
    them), so an interrupted extraction can reopen them and go on from its last completed row
    (extract.py keeps the journal of which rows are done); they are removed once the file is written.
    """

    def __init__(self, out: str | Path, n_rows: int, d: int, layers: list[int], extra: list[str] = (), *,
                 scratch: str | Path | None = None) -> None:
        self.out = Path(out)
        self.n_rows, self.d, self.layers = n_rows, d, sorted(set(layers))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._keep = scratch is not None
        if scratch is None:
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        else:
            self._tmp = Path(scratch)
            self._tmp.mkdir(parents=True, exist_ok=True)
        self._arrays: dict[str, np.ndarray] = {}
        for name in ("h_gate", "h_steer", "delta", *[f"h_layer.{n}" for n in self.layers], *extra):
            self._arrays[name] = self._open(name, np.float32, (n_rows, d))
        for name in ("label", "split", "has_delta"):
            self._arrays[name] = self._open(name, np.int8, (n_rows,)) if self._keep else np.zeros(n_rows, np.int8)

    def _open(self, name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        path = self._tmp / f"{name}.npy"
        if self._keep and path.is_file():
            try:
                a = np.lib.format.open_memmap(path, mode="r+")
                if a.shape == shape and a.dtype == np.dtype(dtype):
                    return a
            except ValueError:  # a half-written header from an interruption: start this array again
                pass
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def put(self, i: int, **values: Any) -> None:
        for name, v in values.items():
            self._arrays[name][i] = v

    def flush(self) -> None:
        """Push the memmaps to their files: a row is durable before the journal says it is done."""
        for a in self._arrays.values():
            if isinstance(a, np.memmap):
                a.flush()

    def finish(self, meta: dict[str, Any]) -> Path:
        meta = {"format_version": FORMAT_VERSION, **meta}
        part = self._tmp / "out.safetensors"
        _write_safetensors(part, self._arrays, {META_KEY: json.dumps(meta)})
        os.replace(part, self.out)
        self._arrays.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        self._arrays.clear()
        if not self._keep:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _write_safetensors(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """The safetensors layout (8-byte header size, JSON header, raw data), written in row chunks."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.int8): "I8"}
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, a in arrays.items():
        size = a.size * a.itemsize
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays.values():
            for start in range(0, a.shape[0], _CHUNK_ROWS):
                rows = np.ascontiguousarray(a[start : start + _CHUNK_ROWS])
                f.write(rows.astype(a.dtype.newbyteorder("<")).tobytes())


def load_activations(path: str | Path) -> Activations:
    """Read and validate an activations file; problems are :class:`ActivationsError`."""
    path = Path(path)
    if not path.is_file():
        raise ActivationsError(f"activations file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta_raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except ActivationsError:
        raise
    except Exception as exc:  # safetensors raises its own errors for malformed files
        raise ActivationsError(f"{path}: not a readable activations file ({exc})") from exc
    if meta_raw is None:
        raise ActivationsError(f"{path}: no {META_KEY} metadata; was it written by finesteer-edge extract?")
    try:
        meta = loads_strict(meta_raw)  # strict: these numbers go on into checkpoints and pack manifests
        Fingerprint.from_dict(meta["model"])
        gate, steer = int(meta["gate_layer"]), int(meta["steer_layer"])
        rows = meta["rows"]
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise ActivationsError(f"{path}: malformed metadata ({str(exc)[:200]})") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ActivationsError(f"{path}: activations format {meta.get('format_version')} is not supported")
    missing = [k for k in ("h_gate", "h_steer", "delta", "label", "split", "has_delta") if k not in tensors]
    if missing:
        raise ActivationsError(f"{path}: missing tensors {', '.join(missing)}")
    m, d = tensors["h_steer"].shape if tensors["h_steer"].ndim == 2 else (-1, -1)
    for k in ("h_gate", "h_steer", "delta"):
        if tensors[k].shape != (m, d) or tensors[k].dtype != np.float32:
            raise ActivationsError(f"{path}: tensor {k} has shape {tensors[k].shape}, expected ({m}, {d}) float32")
    for k in ("label", "split", "has_delta"):
        if tensors[k].shape != (m,):
            raise ActivationsError(f"{path}: tensor {k} has shape {tensors[k].shape}, expected ({m},)")
        if not np.isin(tensors[k], (0, 1)).all():  # flags and codes: anything else matches no mask
            raise ActivationsError(f"{path}: tensor {k} must hold only 0 and 1")
    if d != Fingerprint.from_dict(meta["model"]).n_embd:
        raise ActivationsError(f"{path}: rows have {d} values but the model's n_embd is {meta['model']['n_embd']}")
    if not isinstance(rows, dict) or any(not isinstance(v, list) or len(v) != m for v in rows.values()):
        raise ActivationsError(f"{path}: per-row metadata does not match {m} rows")
    layers = {}
    for k, v in tensors.items():
        if k.startswith("h_layer."):
            try:
                layer = int(k.split(".", 1)[1])
            except ValueError:
                raise ActivationsError(f"{path}: bad tensor name {k}") from None
            if v.shape != (m, d):
                raise ActivationsError(f"{path}: tensor {k} has shape {v.shape}")
            layers[layer] = v
    features: dict[str, dict[int, np.ndarray]] = {}
    for k, v in tensors.items():
        if k.startswith("f_") and "." in k:
            kind, _, num = k[2:].rpartition(".")
            if not num.isdigit() or v.shape != (m, d) or v.dtype != np.float32:
                raise ActivationsError(f"{path}: bad feature tensor {k} {v.shape}")
            if not (np.abs(v) <= MAX_ABS_VALUE).all():
                raise ActivationsError(f"{path}: tensor {k} contains NaN, Inf or values beyond {MAX_ABS_VALUE:g}")
            features.setdefault(kind, {})[int(num)] = v
    layers.setdefault(gate, tensors["h_gate"])
    layers.setdefault(steer, tensors["h_steer"])
    for k in ("h_gate", "h_steer", "delta", *[f"h_layer.{n}" for n in layers if f"h_layer.{n}" in tensors]):
        if not (np.abs(tensors[k]) <= MAX_ABS_VALUE).all():
            raise ActivationsError(f"{path}: tensor {k} contains NaN, Inf or values beyond {MAX_ABS_VALUE:g}")
    return Activations(
        h_gate=tensors["h_gate"], h_steer=tensors["h_steer"], delta=tensors["delta"], label=tensors["label"],
        split=tensors["split"], has_delta=tensors["has_delta"], layers=layers, meta=meta, features=features,
    )
