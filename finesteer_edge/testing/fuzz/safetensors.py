"""A safetensors file as editable data: semantic tensor edits, and lies in its header.

:class:`SafetensorsSpec` is re-encoded byte by byte (:func:`encode_safetensors`), so a mutation can be
semantic (NaN, a wrong shape or dtype, an extra or missing tensor: :func:`apply_st_mutations`) or a lie in
the header (header length, dtype, shape, ``data_offsets`` out of range or overlapping, a hole in the data,
odd ``__metadata__``). Our checkpoints, activations files and bank files are safetensors.
"""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core import TENSOR_VALUES, RawJSON, dump_manifest, odd_shape

ST_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
            "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}
ST_ITEMSIZE = {**{k: np.dtype(v).itemsize for k, v in ST_NUMPY.items()}, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass
class STensor:
    name: str
    dtype: str
    shape: list[int]
    data: bytes

    def array(self) -> np.ndarray | None:
        """Values as float64 (None for dtypes numpy cannot read)."""
        if self.dtype not in ST_NUMPY:
            return None
        return np.frombuffer(self.data, dtype=ST_NUMPY[self.dtype]).reshape(self.shape).astype(np.float64)


def st_tensor(name: str, arr: np.ndarray, dtype: str = "F32") -> STensor:
    """A tensor of ``arr``'s shape and values, encoded as safetensors ``dtype`` (also BF16 and F8)."""
    a = np.asarray(arr, dtype=np.float64)
    if dtype in ST_NUMPY:
        np_dtype = np.dtype(ST_NUMPY[dtype])
        with np.errstate(all="ignore"):
            if np_dtype.kind in "iu":
                info = np.iinfo(np_dtype)
                a = np.nan_to_num(a, nan=0.0, posinf=info.max, neginf=info.min).clip(info.min, info.max)
            data = a.astype(np_dtype).tobytes()
    elif dtype == "BF16":
        data = (a.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    else:  # F8: the top byte of the half-precision pattern (E5M2), reused as E4M3 bits
        with np.errstate(all="ignore"):
            data = (a.astype("<f2").view("<u2") >> 8).astype("u1").tobytes()
    return STensor(name, dtype, [int(x) for x in a.shape], data)


@dataclass
class SafetensorsSpec:
    tensors: list[STensor]
    metadata: dict[str, str] | None = None

    def copy(self) -> SafetensorsSpec:
        return copy.deepcopy(self)

    def find(self, name: str) -> STensor | None:
        return next((t for t in self.tensors if t.name == name), None)


def parse_safetensors(data: bytes) -> SafetensorsSpec:
    """A spec from a well-formed safetensors file (the base files, never mutated bytes)."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    meta = header.pop("__metadata__", None)
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    tensors = [STensor(k, v["dtype"], list(v["shape"]), body[v["data_offsets"][0] : v["data_offsets"][1]])
               for k, v in items]
    return SafetensorsSpec(tensors, meta)


def _json_text(value: Any) -> str:
    return dump_manifest(value, indent=None).decode("utf-8", errors="surrogatepass")


HEADER_MUTATIONS = ("hlen", "offsets", "hdtype", "hshape", "meta", "json", "gap", "entry", "tail")
_HLEN = ("-1", "+1", "0", "1", "+8", "1<<62", "max", "100MB", "file", "-8")
_OFFSETS = ("zero", "reversed", "past_end", "huge", "overlap_prev", "overlap_first", "negative", "strings", "short",
            "long", "null", "float", "shift")
_HDTYPES = ("F64", "F16", "BF16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "I64", "C64", "F4", "", "f32", 7, None,
            "U64", "I4")
_HSHAPES = ([1 << 40], [-1, 32], [], [0], ["32"], [1 << 31, 1 << 31], [32, 32, 32], [1.5], None, [1 << 64], [2, -2],
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [(1 << 32) + 1, 0])
_METAS = ("delete", "nonstring", "string", "list", "null", "nested", "huge_key", "many")


def encode_safetensors(spec: SafetensorsSpec, header_muts: list[tuple] | tuple = ()) -> bytes:  # type: ignore[type-arg]
    """Serialise ``spec``; ``header_muts`` are lies in the header written on top of the true layout."""
    entries: list[list[Any]] = []
    if spec.metadata is not None:
        entries.append(["__metadata__", dict(spec.metadata)])
    tensor_entries: list[list[Any]] = []
    offset = 0
    for t in spec.tensors:
        info = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(t.data)]}
        tensor_entries.append([t.name, info])
        offset += len(t.data)
    entries += tensor_entries
    body = b"".join(t.data for t in spec.tensors)
    hlen_lie: str | None = None
    text_edit: int | None = None
    tail: bytes = b""
    for mut in header_muts:
        kind, a, b = (tuple(mut) + (0, 0))[:3]
        ents = [e for e in tensor_entries if isinstance(e[1], dict)]
        if kind == "hlen":
            hlen_lie = _HLEN[a % len(_HLEN)]
        elif kind == "offsets" and ents:
            i = a % len(ents)
            e = ents[i][1].get("data_offsets")
            if not isinstance(e, list) or len(e) != 2 or not all(isinstance(x, int) for x in e):
                continue
            s, end = e
            first = ents[0][1].get("data_offsets", [0, 0])
            choice = _OFFSETS[b % len(_OFFSETS)]
            new: Any = {"zero": [0, 0], "reversed": [end, s], "past_end": [s, len(body) + 4], "huge": [s, 1 << 62],
                        "overlap_prev": [max(0, s - 4), end - 4 if end >= 4 else end],
                        "overlap_first": list(first) if ents[i] is not ents[0] else [0, end - s],
                        "negative": [-1, end], "strings": [str(s), str(end)], "short": [s],
                        "long": [s, end, end], "null": None, "float": [float(s), float(end)],
                        "shift": [s + 1, end + 1]}[choice]
            ents[i][1]["data_offsets"] = new
        elif kind == "hdtype" and ents:
            ents[a % len(ents)][1]["dtype"] = _HDTYPES[b % len(_HDTYPES)]
        elif kind == "hshape" and ents:
            ents[a % len(ents)][1]["shape"] = copy.deepcopy(_HSHAPES[b % len(_HSHAPES)])
        elif kind == "meta":
            choice = _METAS[a % len(_METAS)]
            meta_i = next((i for i, e in enumerate(entries) if e[0] == "__metadata__"), None)
            value: Any = {"delete": None, "nonstring": {"k": 1, "x": [1]}, "string": "meta", "list": [],
                          "null": RawJSON("null"), "nested": {"k": {"a": "b"}},
                          "huge_key": {"k" * 100_000: "v"}, "many": {f"k{i}": "v" for i in range(5000)}}[choice]
            if meta_i is not None:
                if choice == "delete":
                    del entries[meta_i]
                elif choice in ("nested", "nonstring") and isinstance(entries[meta_i][1], dict):
                    entries[meta_i][1].update(value)
                else:
                    entries[meta_i][1] = value
            elif value is not None:
                entries.insert(0, ["__metadata__", value])
        elif kind == "json":
            text_edit = a
        elif kind == "gap" and len(ents) > 1:
            # A hole of 8 bytes after tensor i: every later offset moves, so the file is self-consistent
            # except that some bytes belong to no tensor.
            i = a % (len(ents) - 1)
            cut = ents[i][1]["data_offsets"][1] if isinstance(ents[i][1].get("data_offsets"), list) else 0
            if not isinstance(cut, int):
                continue
            body = body[:cut] + b"\0" * 8 + body[cut:]
            for e in ents[i + 1 :]:
                off = e[1].get("data_offsets")
                if isinstance(off, list) and all(isinstance(x, int) for x in off):
                    e[1]["data_offsets"] = [x + 8 for x in off]
        elif kind == "entry" and ents:
            e = ents[a % len(ents)]
            choice = b % 6
            if choice == 0:
                e[1] = "F32"
            elif choice == 1:
                e[1] = [e[1].get("dtype"), e[1].get("shape")]
            elif choice == 2:
                e[1].pop("dtype", None)
            elif choice == 3:
                e[1].pop("shape", None)
            elif choice == 4:
                e[1]["extra"] = {"x": 1}
            else:
                e[1].pop("data_offsets", None)
        elif kind == "tail":
            tail = (b"\0" * 8, b"junk", b"\0" * (1 << 16))[a % 3]
    text = "{" + ",".join(json.dumps(k) + ":" + _json_text(v) for k, v in entries) + "}"
    if text_edit is not None:
        choice = text_edit % 7
        text = (text[: len(text) // 2], "[]", "null", text + "garbage", "\ufeff" + text, text.replace(":", "=", 1),
                '{"a":' * 2000 + "1" + "}" * 2000)[choice]
    raw = text.encode("utf-8", errors="surrogatepass")
    raw += b" " * (-len(raw) % 8)
    n = len(raw)
    total = 8 + n + len(body)
    hlen = {None: n, "-1": n - 1, "+1": n + 1, "0": 0, "1": 1, "+8": n + 8, "1<<62": 1 << 62, "max": (1 << 64) - 1,
            "100MB": 100_000_001, "file": total, "-8": n - 8}[hlen_lie]
    return struct.pack("<Q", hlen & ((1 << 64) - 1)) + raw + body + tail


ST_MUTATIONS = ("values", "shape", "dtype", "drop", "extra", "rename", "dup")
_ST_DTYPES = ("F16", "F64", "BF16", "I32", "I64", "U8", "BOOL", "I8", "F8_E4M3", "F8_E5M2", "U16", "I16")


def apply_st_mutations(spec: SafetensorsSpec, muts: list[tuple], extra_names: tuple[str, ...],  # type: ignore[type-arg]
                       d: int) -> SafetensorsSpec:
    """Semantic edits: every tensor stays exactly what its header says (the header lies come later)."""
    spec = spec.copy()
    ts = spec.tensors
    for mut in muts:
        kind, a, b = (tuple(mut) + (0, 0))[:3]
        try:
            if kind == "values" and ts:
                t = ts[a % len(ts)]
                arr = t.array()
                if arr is None or arr.size == 0:
                    continue
                val = TENSOR_VALUES[b % len(TENSOR_VALUES)]
                if b % 3 == 0:
                    arr[...] = val
                else:
                    arr.flat[b % arr.size] = val
                ts[a % len(ts)] = st_tensor(t.name, arr, t.dtype)
            elif kind == "shape" and ts:
                t = ts[a % len(ts)]
                arr = t.array()
                if arr is None:
                    continue
                ts[a % len(ts)] = st_tensor(t.name, odd_shape(arr, b, d), t.dtype)
            elif kind == "dtype" and ts:
                t = ts[a % len(ts)]
                arr = t.array()
                if arr is None:
                    continue
                ts[a % len(ts)] = st_tensor(t.name, arr, _ST_DTYPES[b % len(_ST_DTYPES)])
            elif kind == "drop" and ts:
                del ts[a % len(ts)]
            elif kind == "extra":
                name = extra_names[a % len(extra_names)]
                shape = ((d,), (d, d), (), (1,), (0,), (3, d), (d, 4), (7,), (2, 2, 2))[b % 9]
                ts.append(st_tensor(name, np.full(shape, 0.5 + (b % 3))))
            elif kind == "rename" and ts:
                ts[a % len(ts)].name = extra_names[b % len(extra_names)]
            elif kind == "dup" and ts:
                ts.append(copy.deepcopy(ts[a % len(ts)]))
        except (ValueError, IndexError, TypeError):
            continue
    return spec
