"""A small, bounded GGUF reader: metadata, tensor directory, and F32 tensor data.

Why not ``gguf.GGUFReader``: it builds a numpy view per array element (6 s for SmolLM2's 49k-token
vocabulary) and trusts the file's counts. Packs are files users download and share, so this reader
checks every length against the file size before it allocates or reads, and reports any problem as
one :class:`GGUFFormatError`. Writing stays with ``gguf.GGUFWriter`` (converters).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"
GGML_TYPE_F32 = 0
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4
_MAX_NAME = 1 << 16

# GGUF metadata value types (the format's numbering; the one definition: testing/fuzz.py imports it).
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR = {
    U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
    BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d",
}


class GGUFFormatError(ValueError):
    """The file is not a well-formed GGUF (the message says where it broke)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    """GGUF order (ne0 first), as llama.cpp sees it."""
    ggml_type: int
    offset: int
    """Absolute byte offset of the data in the file."""


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    file_size: int = 0
    data: bytes | None = None
    """The whole file when parsed from memory (see :func:`parse_gguf_bytes`)."""
    types: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Key -> (GGUF value type, element type of an array or -1): checks that care about the stored type
    (llama.cpp reads some arrays as raw floats or ints without checking) need more than the Python value."""

    def read_f32(self, info: TensorInfo) -> np.ndarray:
        """Data of an F32 tensor, as a fresh array in numpy order (reversed GGUF shape)."""
        if info.ggml_type != GGML_TYPE_F32:
            raise GGUFFormatError(f"tensor {info.name!r} is not F32 (ggml type {info.ggml_type})")
        n = math.prod(info.shape)  # Python ints: a lying shape must not wrap around like int64 would
        end = info.offset + 4 * n
        if end > self.file_size:
            raise GGUFFormatError(f"tensor {info.name!r} data runs past the end of the file")
        if self.data is not None:
            raw = self.data[info.offset : end]
        else:
            with open(self.path, "rb") as f:
                f.seek(info.offset)
                raw = f.read(4 * n)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(tuple(reversed(info.shape)))


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFFormatError(f"truncated while reading {what} at byte {self.pos}")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype], what)
        if vtype == STR:
            return self.string(what)
        if vtype == ARR:
            if depth > 2:
                raise GGUFFormatError(f"{what}: arrays nested too deeply")
            etype = self.unpack("<I", what)
            n = self.unpack("<Q", what)
            if etype in _SCALAR:
                width = struct.calcsize(_SCALAR[etype])
                self.need(n * width, what)
                arr = np.frombuffer(self.buf, dtype=np.dtype(_SCALAR[etype]), count=n, offset=self.pos)
                self.pos += n * width
                return arr.tolist() if n <= 4096 else arr.copy()
            # Every string or array element takes at least 8 bytes: bound n before looping.
            self.need(n * 8, what)
            return [self.value(etype, what, depth + 1) for _ in range(n)]
        raise GGUFFormatError(f"{what}: unknown metadata value type {vtype}")


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf(path: str | Path, *, skip_keys: tuple[str, ...] = ()) -> GGUFFile:
    """Parse header, metadata and tensor directory. ``skip_keys`` values are parsed but not kept."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise GGUFFormatError(f"{path} is too small to be a GGUF file ({size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(path, mm, size, skip_keys)
    except OSError as exc:
        raise GGUFFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc


def parse_gguf_bytes(data: bytes, name: str = "<memory>") -> GGUFFile:
    """Parse a GGUF held in memory (e.g. bytes already checksummed), tensors readable from it."""
    if len(data) < 24:
        raise GGUFFormatError(f"{name} is too small to be a GGUF file ({len(data)} bytes)")
    g = _parse(Path(name), data, len(data), ())
    g.data = data
    return g


def _parse(path: Path, mm: mmap.mmap | bytes, size: int, skip_keys: tuple[str, ...]) -> GGUFFile:
    cur = _Cursor(mm, size)
    if bytes(mm[:4]) != GGUF_MAGIC:
        raise GGUFFormatError(f"{path} is not a GGUF file (bad magic {bytes(mm[:4])!r})")
    cur.pos = 4
    version = cur.unpack("<I", "version")
    if version not in (2, 3):
        raise GGUFFormatError(f"{path}: unsupported GGUF version {version}")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "metadata count")
    # Each KV takes >= 12 bytes and each tensor info >= 24: refuse counts the file cannot hold.
    if n_kv * 12 > size or n_tensors * 24 > size:
        raise GGUFFormatError(f"{path}: header claims {n_kv} keys and {n_tensors} tensors, more than the file holds")
    metadata: dict[str, Any] = {}
    types: dict[str, tuple[int, int]] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        vtype = cur.unpack("<I", f"type of {key!r}")
        etype = -1
        if vtype == ARR and cur.pos + 4 <= size:
            (etype,) = struct.unpack_from("<I", mm, cur.pos)
        val = cur.value(vtype, f"value of {key!r}")
        types[key] = (vtype, etype)
        if key not in skip_keys:
            metadata[key] = val
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    for i in range(n_tensors):
        name = cur.string(f"tensor {i} name")
        if len(name) > _MAX_NAME:
            raise GGUFFormatError(f"{path}: tensor {i} name too long")
        n_dims = cur.unpack("<I", f"dims of {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise GGUFFormatError(f"{path}: tensor {name!r} has {n_dims} dimensions")
        shape = tuple(cur.unpack("<Q", f"shape of {name!r}") for _ in range(n_dims))
        ggml_type = cur.unpack("<I", f"type of {name!r}")
        offset = cur.unpack("<Q", f"offset of {name!r}")
        infos.append((name, shape, ggml_type, offset))
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"{path}: bad general.alignment {alignment!r}")
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, shape, ggml_type, offset in infos:
        if any(d > size for d in shape) or data_start + offset > size:
            raise GGUFFormatError(f"{path}: tensor {name!r} has an impossible shape or offset")
        tensors.append(TensorInfo(name, shape, ggml_type, data_start + offset))
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors, file_size=size, types=types)
