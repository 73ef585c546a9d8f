"""llama.cpp control-vector GGUF files (``control.gguf``): read strictly, write what stock llama.cpp loads.

Stock llama.cpp rejects the whole file if any tensor is not an F32 1-D ``direction.N`` (N >= 1) of the
model's n_embd, and sums several directions for one layer. We hold ourselves to the same rules on
read, and write only such tensors, with our own metadata under ``controlvector.finesteer.*``.

Layer numbers: ``direction.N`` is added to the output of block N, the same N as everywhere in
finesteer-edge. llama.cpp's cvector-generator reads layer k and writes ``direction.(k+1)``; importers
convert that at the boundary, never here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PackFormatError
from ..gguf_file import GGML_TYPE_F32, GGUFFormatError, parse_gguf_bytes, read_gguf

_DIRECTION = re.compile(r"direction\.(\d{1,6})")
ARCH = "controlvector"


@dataclass
class ControlVector:
    directions: dict[int, np.ndarray]
    """layer -> (n_embd,) float32, summed when the file repeats a layer."""
    model_hint: str = ""
    layer_count: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_embd(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])


def read_control_vector(source: str | Path | bytes, *, n_embd: int | None = None, n_layer: int | None = None,
                        max_bytes: int = 1 << 30, name: str | None = None) -> ControlVector:
    """Read and validate a file or in-memory bytes; every violation is a :class:`PackFormatError`."""
    if isinstance(source, bytes):
        label = name or "control vector"
        size = len(source)
    else:
        path = Path(source)
        label = name or path.name
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise PackFormatError(f"{label}: {exc.strerror or exc}") from exc
    if size > max_bytes:
        raise PackFormatError(f"{label} is {size} bytes, larger than any control vector should be")
    try:
        g = parse_gguf_bytes(source, label) if isinstance(source, bytes) else read_gguf(source)
    except GGUFFormatError as exc:
        raise PackFormatError(f"{label}: {exc}") from exc
    md = g.metadata
    if md.get("general.architecture") != ARCH:
        raise PackFormatError(f"{label}: general.architecture is {md.get('general.architecture')!r}, not {ARCH!r}")
    if not g.tensors:
        raise PackFormatError(f"{label} holds no direction tensors")
    directions: dict[int, np.ndarray] = {}
    for info in g.tensors:
        m = _DIRECTION.fullmatch(info.name)
        if not m:
            raise PackFormatError(f"{label}: unexpected tensor {info.name!r} (only direction.N allowed)")
        layer = int(m.group(1))
        if layer < 1:
            raise PackFormatError(f"{label}: {info.name} targets layer 0, which llama.cpp cannot steer")
        if n_layer is not None and layer >= n_layer:
            raise PackFormatError(f"{label}: {info.name} is beyond the model's {n_layer} layers")
        if info.ggml_type != GGML_TYPE_F32 or len(info.shape) != 1:
            raise PackFormatError(f"{label}: {info.name} must be a 1-D F32 tensor")
        if n_embd is not None and info.shape[0] != n_embd:
            raise PackFormatError(f"{label}: {info.name} has {info.shape[0]} values, the model has n_embd {n_embd}")
        try:
            v = g.read_f32(info)
        except GGUFFormatError as exc:
            raise PackFormatError(f"{label}: {exc}") from exc
        if not np.all(np.isfinite(v)):
            raise PackFormatError(f"{label}: {info.name} contains NaN or Inf")
        directions[layer] = directions[layer] + v if layer in directions else v
    widths = {v.shape[0] for v in directions.values()}
    if len(widths) != 1:
        raise PackFormatError(f"{label}: direction tensors have different sizes {sorted(widths)}")
    count = md.get("controlvector.layer_count")
    return ControlVector(
        directions=directions,
        model_hint=str(md.get("controlvector.model_hint", "")),
        layer_count=int(count) if isinstance(count, int) else None,
        metadata={k: v for k, v in md.items() if k.startswith("controlvector.")},
    )


def write_control_vector(path: str | Path, directions: Mapping[int, np.ndarray], *, model_hint: str,
                         n_layer: int, extra: Mapping[str, Any] | None = None) -> Path:
    """Write a stock-compatible control vector. ``extra`` keys go under ``controlvector.finesteer.``."""
    import gguf

    path = Path(path)
    if not directions:
        raise ValueError("a control vector needs at least one direction")
    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_string("controlvector.model_hint", model_hint)
    w.add_int32("controlvector.layer_count", n_layer)
    for key, value in (extra or {}).items():
        full = f"controlvector.finesteer.{key}"
        if isinstance(value, bool):
            w.add_bool(full, value)
        elif isinstance(value, int):
            w.add_int64(full, value)
        elif isinstance(value, float):
            w.add_float64(full, value)
        else:
            w.add_string(full, str(value))
    for layer in sorted(directions):
        if layer < 1:
            raise ValueError("llama.cpp cannot steer layer 0")
        v = np.ascontiguousarray(directions[layer], dtype=np.float32)
        if v.ndim != 1:
            raise ValueError("directions must be 1-D")
        w.add_tensor(f"direction.{layer}", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
