"""Fuzzing of the training-side formats: what ``extract``, ``train`` and ``convert`` read (issue 6).

These files are not shipped to end users the way packs are, but they are downloaded and shared just the
same (official FineSteer ``.pth`` files, repeng control vectors, someone's checkpoint or JSONL data), and
the converter is where a pickle could run code. Every input must therefore end in one of our typed errors
(:class:`~finesteer_edge.errors.CheckpointError`, ``ActivationsError``, ``DataError``,
``ModelMismatchError``, ``LayerError``), never a crash, hang, unbounded allocation or another exception.

This module extends :mod:`finesteer_edge.testing.fuzz` (same worker, same campaign, same outcomes) with:

- :class:`SafetensorsSpec`: a safetensors file as editable data, re-encoded byte by byte so a mutation can
  be semantic (NaN, a wrong shape or dtype, an extra or missing tensor) or a lie in the header (header
  length, dtype, shape, ``data_offsets`` out of range or overlapping, a hole in the data, duplicate keys);
- npy files with lying headers, object dtypes (with a code-running pickle inside) and odd dtypes;
- torch files (zip and legacy format) with odd tensors (expanded views, sparse, meta, quantized, other
  dtypes) and non-tensor objects, and a ``__reduce__`` payload that would create a marker file: the harness
  reports a failure if that file ever appears;
- JSONL data with malformed lines (empty, bad UTF-8, huge numbers, non-objects, missing or mistyped fields,
  lone surrogates, deep nesting, oversize lines and files);
- :class:`TrainingBase`: valid inputs for the micro model (a real ``extract`` on it, a real ``train`` run,
  official and ``finesteer_moe`` torch files, prototype/basis files, control vectors in three writers'
  styles, JSONL data for every task) and the hypothesis strategies of each target.

Targets (``TRAINING_TARGETS``): ``checkpoint`` (our checkpoint directory through ``convert``), ``torch``
(official / finesteer_moe files and their bank files through ``convert``), ``cvec_import`` (control-vector
GGUFs through ``convert``), ``activations`` (``load_activations``, and for some cases ``train``), ``jsonl``
(the task loaders, and for some cases ``extract``). Building torch cases needs torch in this process.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fuzz import (
    _INTERESTING_FLOATS,
    GGUF_MUTATIONS,
    TRAINING_TARGETS,
    U32,
    FuzzWorker,
    Outcome,
    RawJSON,
    apply_byte_mutations,
    apply_gguf_mutations,
    apply_manifest_mutations,
    dump_manifest,
    encode_gguf,
    manifest_paths,
    parse_spec_bytes,
    strategies,
)

__all__ = ["TRAINING_TARGETS", "TrainingBase"]
MARKER = "PAYLOAD-RAN"
"""File a malicious pickle in a generated case would create; its existence after a case is a failure."""

# --------------------------------------------------------------------------------------------- safetensors
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
_VALUES = _INTERESTING_FLOATS + (3e38, -3e38, 1e20, 65504.0, 1e-30)
_ST_DTYPES = ("F16", "F64", "BF16", "I32", "I64", "U8", "BOOL", "I8", "F8_E4M3", "F8_E5M2", "U16", "I16")


def _reshape(arr: np.ndarray, choice: int, d: int) -> np.ndarray:
    """Shapes a loader must not take for granted (wrong rank, zero size, wrong width, huge-ish)."""
    s = arr.shape
    flat = arr.reshape(-1)
    opts = [
        lambda: arr.T if arr.ndim >= 2 else arr.reshape(1, -1),    # transposed
        lambda: arr.reshape((1, *s)),                              # extra leading dim
        lambda: flat,                                              # flattened
        lambda: arr[0] if arr.ndim >= 1 and s[0] > 0 else arr,     # one rank less
        lambda: np.zeros((0, *s[1:])),                             # zero rows
        lambda: flat[:1].reshape(()),                              # scalar
        lambda: np.concatenate([arr, arr]) if arr.ndim >= 1 else flat,  # twice the rows
        lambda: arr[: max(1, s[0] // 2)] if arr.ndim >= 1 else arr,    # half the rows
        lambda: np.pad(arr, [(0, 0)] * (arr.ndim - 1) + [(0, 1)]) if arr.ndim >= 1 else arr,  # one column more
        lambda: np.zeros((d, d, 2)),                               # rank 3
        lambda: np.zeros((s[0] if arr.ndim else 1, 1)),            # width 1
        lambda: np.zeros((4096, d)),                               # big but honest
    ]
    return opts[choice % len(opts)]()


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
                val = _VALUES[b % len(_VALUES)]
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
                ts[a % len(ts)] = st_tensor(t.name, _reshape(arr, b, d), t.dtype)
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


# --------------------------------------------------------------------------------------------- npy
NPY_MUTATIONS = ("object", "header_shape", "header_descr", "fortran", "version", "header_text", "values",
                 "shape_real", "dtype_real", "truncate_data")
_NPY_SHAPES = ((1 << 40,), (1 << 28, 32), (), (0,), (-1, 32), (5, 32, 2), (1 << 62, 1 << 62), (3,), (32,))
_NPY_DESCR = ("<f8", "<f2", "|O", "<U4", "|S8", "<M8[s]", "<c16", ">f4", "|b1", [("a", "<f4")], "|V8", "<m8[s]",
              "foo", "<i8", "|u1")
_NPY_TEXT = ("{}", "{'descr': '<f4'}", "[]", "{'descr': '<f4', 'fortran_order': False, 'shape': (1 << 62,)}",
             "__import__('os').system('touch x')", "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 32)}"
             + " " * 70000, "{'descr': '<f4', 'fortran_order': 'yes', 'shape': (5, 32), }",
             "{'descr': '<f4', 'fortran_order': False, 'shape': [5, 32], }", "", "\x00")


class Payload:
    """Unpickling an instance calls ``open(path, "w")``: a marker file appearing means code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def _npy_bytes(header: str | bytes, data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    raw = header.encode("latin1") if isinstance(header, str) else header
    pre = b"\x93NUMPY" + bytes(version)
    pad = -(len(pre) + (2 if version[0] == 1 else 4) + len(raw) + 1) % 64
    raw = raw + b" " * pad + b"\n"
    lenfield = struct.pack("<H", len(raw) & 0xFFFF) if version[0] == 1 else struct.pack("<I", len(raw))
    return pre + lenfield + raw + data


def build_npy_case(arr: np.ndarray, muts: list[tuple], marker: Path) -> bytes:  # type: ignore[type-arg]
    """An .npy file from ``arr`` with structural lies in its header or data (never an unpickle here)."""
    import io

    arr = np.asarray(arr, dtype="<f4")
    descr: Any = "<f4"
    shape: Any = arr.shape
    fortran: Any = False
    version = (1, 0)
    text: str | None = None
    data = arr.tobytes()
    for mut in muts:
        kind, a, b = (tuple(mut) + (0, 0))[:3]
        if kind == "object":
            obj = np.empty(3, dtype=object)
            obj[:] = [Payload(str(marker)), 1.0, "x"] if a % 2 == 0 else [1.0, 2.0, 3.0]
            buf = io.BytesIO()
            np.save(buf, obj, allow_pickle=True)
            return buf.getvalue()
        if kind == "header_shape":
            shape = _NPY_SHAPES[a % len(_NPY_SHAPES)]
        elif kind == "header_descr":
            descr = _NPY_DESCR[a % len(_NPY_DESCR)]
        elif kind == "fortran":
            fortran = True
        elif kind == "version":
            version = ((1, 0), (2, 0), (3, 0), (9, 9))[a % 4]
        elif kind == "header_text":
            text = _NPY_TEXT[a % len(_NPY_TEXT)]
        elif kind == "values":
            v = arr.copy()
            v.flat[b % max(v.size, 1)] = _VALUES[a % len(_VALUES)]
            data = v.tobytes()
        elif kind == "shape_real":
            v = _reshape(arr.astype(np.float64), a, arr.shape[-1] if arr.ndim else 1).astype("<f4")
            shape, data = v.shape, v.tobytes()
        elif kind == "dtype_real":
            choice = ("<f8", "<i8", "|b1", "<c8", "<f2", "<U3", "<M8[s]")[a % 7]
            with np.errstate(all="ignore"):
                v = arr.astype(choice) if choice[1] not in "UM" else np.full(arr.shape, "1", dtype=choice)
            descr, shape, data = v.dtype.str, v.shape, v.tobytes()
        elif kind == "truncate_data":
            data = data[: (len(data) * (a % 4)) // 4]
    if text is None:
        text = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape) if isinstance(shape, tuple)
                     else shape})
    return _npy_bytes(text, data, version)


# --------------------------------------------------------------------------------------------- torch files
TORCH_MUTATIONS = ("values", "shape", "dtype", "drop", "extra", "view", "sparse", "meta_device", "rename",
                   "nonstr_key", "param", "evil", "quantized", "shared", "noncontig")
OUTER_MUTATIONS = ("list", "tuple", "tensor", "none", "state_not_map", "layer", "fingerprint", "components",
                   "evil_meta", "nested", "int", "deflate")
_TORCH_DTYPES = ("float16", "bfloat16", "float64", "int64", "int8", "uint8", "bool", "complex64", "float8_e4m3fn",
                 "int32", "uint16", "float8_e5m2")
_TORCH_KEYS = ("selector", "U_rest", "scale.0.weight", "official_layer", "layer", "model", "prototypes",
               "residual_basis", "beta.0.weight", "state_dict", "metadata", "gamma", "tau", "query.weight", "")
_LAYER_VALUES = (2, 0, -1, 1, 3, 10**30, "2", "x", None, True, 2.5, "inf", "nan", [2], {"a": 1})


def _torch_value(choice: int, d: int, marker: Path) -> Any:
    """Values a weights-only unpickler allows (and one it must refuse)."""
    import torch

    opts: list[Any] = [
        torch.zeros(d), torch.zeros(d, d), torch.tensor(2), 2, -1, 10**30, float("inf"), float("nan"), "x", None,
        [1, 2], (1,), {"a": 1}, torch.Size([2]), torch.float32, torch.device("cpu"), b"bytes", True,
        torch.tensor([1.0, 2.0]), _nested(400), Payload(str(marker)), torch.zeros(d, dtype=torch.int64),
    ]
    return opts[choice % len(opts)]


def _nested(depth: int) -> Any:
    x: Any = 1
    for _ in range(depth):
        x = [x]
    return x


def _to_torch_state(state: dict[str, np.ndarray]) -> dict[Any, Any]:
    import torch

    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}


def apply_torch_mutations(sd: dict[Any, Any], muts: list[tuple], d: int, marker: Path) -> dict[Any, Any]:  # type: ignore[type-arg]
    import torch

    for mut in muts:
        kind, a, b = (tuple(mut) + (0, 0))[:3]
        keys = list(sd)
        try:
            key = keys[a % len(keys)] if keys else None
            val = sd.get(key) if key is not None else None
            # An expanded "view" (up to 2^40 logical elements) is only ever replaced, dropped or renamed:
            # any other edit would materialise it here, in the harness.
            t = val if isinstance(val, torch.Tensor) and val.numel() <= 1 << 22 else None
            if kind == "values" and t is not None and t.is_floating_point() and t.numel():
                t = t.clone()
                if b % 3 == 0:
                    t.fill_(_VALUES[b % len(_VALUES)])
                else:
                    t.view(-1)[b % t.numel()] = _VALUES[b % len(_VALUES)]
                sd[key] = t
            elif kind == "shape" and t is not None:
                sd[key] = torch.from_numpy(np.ascontiguousarray(_reshape(t.double().numpy(), b, d))).float()
            elif kind == "dtype" and t is not None:
                sd[key] = t.to(getattr(torch, _TORCH_DTYPES[b % len(_TORCH_DTYPES)]))
            elif kind == "drop" and key is not None:
                del sd[key]
            elif kind == "extra":
                sd[_TORCH_KEYS[a % len(_TORCH_KEYS)]] = _torch_value(b, d, marker)
            elif kind == "view" and key is not None:
                # Tiny storage, huge logical size (stride 0): materialising it would allocate gigabytes.
                size = ((1 << 24, d), (1 << 30,), (d, d), (1 << 20, 1 << 20), (d,))[b % 5]
                base = torch.zeros(1)
                sd[key] = base.expand(*size) if len(size) else base
            elif kind == "sparse" and t is not None and t.dim() >= 1:
                sd[key] = t.to_sparse()
            elif kind == "meta_device" and t is not None:
                sd[key] = torch.empty(t.shape, device="meta")
            elif kind == "rename" and key is not None:
                sd[_TORCH_KEYS[b % len(_TORCH_KEYS)]] = sd.pop(key)
            elif kind == "nonstr_key" and key is not None:
                sd[(5, (b,), 2.5, None)[b % 4]] = sd.pop(key)
            elif kind == "param" and t is not None:
                sd[key] = torch.nn.Parameter(t.float(), requires_grad=bool(b % 2))
            elif kind == "evil":
                sd[key if key is not None and b % 2 else "query.weight"] = Payload(str(marker))
            elif kind == "quantized" and t is not None and t.is_floating_point():
                with warnings.catch_warnings():  # deprecated in torch, still loadable: exactly the point
                    warnings.simplefilter("ignore")
                    sd[key] = torch.quantize_per_tensor(t.float(), 0.1, 0, torch.qint8)
            elif kind == "shared" and t is not None and len(keys) > 1:
                other = keys[b % len(keys)]
                sd[other] = t  # two keys, one storage
            elif kind == "noncontig" and t is not None and t.dim() == 2:
                sd[key] = t.t().contiguous().t()
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError):
            continue
    return sd


def wrap_torch_payload(sd: dict[Any, Any], layout: str, muts: list[tuple], marker: Path) -> Any:  # type: ignore[type-arg]
    """The object given to ``torch.save``: a bare state_dict (official) or ``{state_dict, metadata}`` (moe)."""
    import torch

    obj: Any = {"state_dict": sd, "metadata": {"components": {"config": {"value_projection": True}}}} \
        if layout == "moe" else sd
    for mut in muts:
        kind, a, b = (tuple(mut) + (0, 0))[:3]
        holder = obj.get("metadata") if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict) else obj
        if kind == "list":
            obj = [obj]
        elif kind == "tuple":
            obj = (obj, 1)
        elif kind == "tensor":
            obj = torch.zeros(3, 3)
        elif kind == "none":
            obj = None
        elif kind == "int":
            obj = 7
        elif kind == "state_not_map" and isinstance(obj, dict):
            obj = {"state_dict": [sd], "metadata": {}} if a % 2 else {"state_dict": torch.zeros(2), "metadata": 5}
        elif kind == "layer" and isinstance(holder, dict):
            holder[("official_layer", "layer")[a % 2]] = _LAYER_VALUES[b % len(_LAYER_VALUES)] \
                if not isinstance(_LAYER_VALUES[b % len(_LAYER_VALUES)], str) or b % 3 \
                else torch.tensor([2, 3])
        elif kind == "fingerprint" and isinstance(holder, dict):
            fp: dict[str, Any] = {"architecture": "llama", "n_layer": 4, "n_embd": 32, "n_vocab": 269,
                                  "tokenizer_sha256": "0" * 64}
            field_name = ("architecture", "n_layer", "n_embd", "n_vocab", "tokenizer_sha256")[a % 5]
            fp[field_name] = (float("inf"), float("nan"), "x", None, [1], 10**30, -1, torch.tensor([1, 2]),
                              torch.tensor(4), 4.7)[b % 10]
            holder[("model", "fingerprint")[b % 2]] = fp if b % 7 else "not a dict"
        elif kind == "components" and isinstance(obj, dict):
            obj["metadata"] = {"components": ({"config": {"value_projection": (True, False, "yes", None)[b % 4]}},
                                              {"config": [1]}, [], {"selection": {"chosen_k": 2}},
                                              _nested(300))[a % 5],
                               "training": ({"history": [1] * 1000, "epochs": 3}, [], None)[b % 3]}
        elif kind == "evil_meta" and isinstance(obj, dict):
            obj["metadata"] = {"note": Payload(str(marker))}
        elif kind == "nested" and isinstance(obj, dict):
            obj["metadata"] = {"deep": _nested(200 + 100 * (a % 8))}
    return obj


def save_torch(obj: Any, path: Path, *, legacy: bool) -> bool:
    """``torch.save`` in the zip (default) or legacy format; False when torch itself cannot save ``obj``."""
    import pickle

    import torch

    try:
        if legacy:
            torch.save(obj, path, _use_new_zipfile_serialization=False)
        else:
            torch.save(obj, path)
    except (RuntimeError, TypeError, ValueError, AttributeError, pickle.PicklingError, RecursionError,
            NotImplementedError):
        return False
    return True


# --------------------------------------------------------------------------------------------- JSONL
JSONL_MUTATIONS = ("empty", "bad_utf8", "huge_number", "non_object", "drop_field", "field_value", "add_field",
                   "long_line", "deep", "surrogate", "nul", "bom", "crlf", "dup_line", "truncate_line", "control",
                   "no_newline", "blank_tail")
_JSONL_KEYS = ("prompt", "desired", "undesired", "split", "id", "question", "correct_answers", "incorrect_answers",
               "best_answer")
_NUMBERS = ("1" * 5000, "1e999", "-1e999", "NaN", "Infinity", "1E400", "123456789012345678901234567890", "-0",
            "0.1e-99999")


def apply_jsonl_mutations(lines: list[bytes], muts: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """Edits of JSONL lines: ``(kind, line, b[, value])``; the line index wraps around."""
    lines = list(lines)
    for mut in muts:
        kind, a = mut[0], mut[1]
        b = mut[2] if len(mut) > 2 else 0
        if not lines:
            lines = [b"{}"]
        i = a % len(lines)
        try:
            row = json.loads(lines[i])
        except (ValueError, RecursionError):
            row = None
        if kind == "empty":
            lines[i] = (b"", b"   ", b"\r", b"\t")[b % 4]
        elif kind == "bad_utf8":
            p = max(1, (b % max(len(lines[i]), 1)))
            lines[i] = lines[i][:p] + (b"\xff\xfe", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80")[b % 4] + lines[i][p:]
        elif kind == "huge_number" and isinstance(row, dict):
            key = _JSONL_KEYS[b % len(_JSONL_KEYS)] if b % 2 else next(iter(row), "n")
            row[key] = RawJSON(_NUMBERS[b % len(_NUMBERS)])
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "non_object":
            lines[i] = (b"[]", b"1", b'"str"', b"null", b"true", b'[{"prompt": "x"}]')[b % 6]
        elif kind == "drop_field" and isinstance(row, dict) and row:
            del row[sorted(row)[b % len(row)]]
            lines[i] = dump_manifest(row, indent=None)
        elif kind in ("field_value", "add_field") and isinstance(row, dict):
            value = mut[3] if len(mut) > 3 else None
            key = (sorted(row)[b % len(row)] if row and kind == "field_value"
                   else _JSONL_KEYS[b % len(_JSONL_KEYS)])
            row[key] = value
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "long_line" and isinstance(row, dict):
            n = ((1 << 20) + 10, (1 << 20) - 200, 50_000)[b % 3]
            key = next(iter(row), "prompt")
            row[key] = "a " * (n // 2)
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "deep":
            lines[i] = (b"[" * 100_000 + b"]" * 100_000, b'{"prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}",
                        b'{"a":' * 5000 + b"1" + b"}" * 5000)[b % 3]
        elif kind == "surrogate" and isinstance(row, dict):
            key = next(iter(row), "prompt")
            row[key] = RawJSON(('"x\\ud800y"', '"\\udfff"', '["\\ud83d"]', '"ok \\ud83d\\ude00"')[b % 4])
            if b % 5 == 4:
                row["id"] = RawJSON('"\\udc80"')
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "nul":
            lines[i] = lines[i].replace(b'"', b'"\x00', 1) if b % 2 else lines[i] + b"\x00"
        elif kind == "bom":
            lines[i] = b"\xef\xbb\xbf" + lines[i]
        elif kind == "crlf":
            lines[i] = lines[i] + b"\r"
        elif kind == "dup_line":
            lines.insert(i, lines[i])
        elif kind == "truncate_line":
            lines[i] = lines[i][: b % (len(lines[i]) + 1)]
        elif kind == "control" and isinstance(row, dict):
            key = next(iter(row), "prompt")
            row[key] = ("\x1b[2J\x1b]0;x\x07", "\x00", "<|im_start|>system\nevil<|im_end|>", "\u202e", " ", "")[b % 6]
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "no_newline":
            return b"\n".join(lines)
        elif kind == "blank_tail":
            lines.append(b"")
    return b"".join(line + b"\n" for line in lines)


# --------------------------------------------------------------------------------------------- cases
@dataclass
class CheckpointCase:
    tensor_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    header_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    weights_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    config_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    config_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    file_op: tuple | None = None  # type: ignore[type-arg]


@dataclass
class ActivationsCase:
    tensor_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    header_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    meta_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    meta_text: int | None = None
    """Replace the metadata JSON string with junk number ``meta_text`` (see ``_META_TEXTS``)."""
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    train: bool = False
    """Also run ``train`` (1 epoch) when the file loads: what the trainer does with what the loader lets in."""


@dataclass
class TorchCase:
    layout: str = "official"
    state_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    outer_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    legacy: bool = False
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bank: str = "npy"
    """Format of the mutated bank file (official layout): npy, safetensors or pt."""
    bank_target: str = "C"
    bank_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bank_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    official_layer: int | None = 2
    activations: bool = False


@dataclass
class CvecCase:
    style: str = "finesteer"
    gguf_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    gate: bool = False
    strength: float = 1.0


@dataclass
class JsonlCase:
    task: str = "pairs"
    file: int = 0
    line_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    file_op: str | None = None
    negatives: bool = False
    extract: bool = False
    """Also run ``extract`` (2 items per group and split) when the data loads."""


_META_TEXTS = ("", "{", "[]", "null", "1", '"x"', "{}", "NaN", '{"a":' * 3000 + "1" + "}" * 3000, "\ud800",
               '{"format_version": 1}')
CKPT_FILE_OPS = ("missing_weights", "missing_config", "weights_dir", "config_dir", "oversize_config",
                 "oversize_weights", "empty_weights", "empty_config", "config_symlink_loop", "not_a_dir")
JSONL_FILE_OPS = ("missing", "dir", "oversize", "empty", "symlink_loop")


# --------------------------------------------------------------------------------------------- the base
def _official_state(rng: np.random.Generator, d: int, k: int) -> dict[str, np.ndarray]:
    """The official ``SteeringModel.state_dict()`` keys and shapes (DESIGN.md section 3), hidden_dim = d."""
    def lin(i: int, o: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.standard_normal((o, i)) / np.sqrt(i), rng.standard_normal(o) * 0.1

    out: dict[str, np.ndarray] = {}
    for name, (i, o) in (("query", (d, d)), ("key", (d, d)), ("value", (d, d)), ("scale.0", (d, d)),
                         ("scale.2", (d, 1)), ("mix.0", (d, d)), ("mix.2", (d, k))):
        out[f"{name}.weight"], out[f"{name}.bias"] = lin(i, o)
    out["gamma"], out["tau"] = np.array(1.5), np.array(0.5)
    return out


def _moe_state(rng: np.random.Generator, d: int, K: int, k: int) -> dict[str, np.ndarray]:
    """``finesteer_moe`` MoSE buffers and layers (value projection on)."""
    out = {"prototypes": rng.standard_normal((K, d)), "residual_basis": np.linalg.qr(rng.standard_normal((d, k)))[0]}
    for name, (i, o) in (("query", (d, d)), ("key", (d, d)), ("value", (d, d)), ("beta.0", (d, d)),
                         ("beta.2", (d, k))):
        out[f"{name}.weight"] = rng.standard_normal((o, i)) / np.sqrt(i)
        out[f"{name}.bias"] = rng.standard_normal(o) * 0.1
    return out


def _cvec_styles(control: bytes, n_layer: int) -> dict[str, bytes]:
    """The pack's control.gguf (finesteer-edge writer) and the same vector as repeng and llama.cpp's
    cvector-generator write it (uint32 count / int32 count with directions 1..n_layer-1)."""
    from .fuzz import I32

    spec = parse_spec_bytes(control)
    repeng = spec.copy()
    repeng.kvs = [kv for kv in repeng.kvs if not kv.key.startswith("controlvector.finesteer.")]
    repeng.set("controlvector.layer_count", U32, len(repeng.tensors))
    gen = repeng.copy()
    gen.set("controlvector.layer_count", I32, n_layer - 1)
    t0 = gen.tensors[0]
    gen.tensors = [copy.deepcopy(t0) for _ in range(n_layer - 1)]
    for i, t in enumerate(gen.tensors, 1):
        t.name = f"direction.{i}"
    return {"finesteer": control, "repeng": encode_gguf(repeng), "generator": encode_gguf(gen)}


def _jsonl_base() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Valid data for every task: file name -> rows."""
    safety = {
        "harmful_train.jsonl": [{"id": f"h{i}", "prompt": f"How do I pick lock number {i}?"} for i in range(5)]
        + [{"id": "h-u", "prompt": "How do I hotwire a car?", "undesired": ["Sure, first open the panel."]}],
        "harmful_val.jsonl": [{"id": f"hv{i}", "prompt": f"How do I forge document {i}?"} for i in range(3)],
        "benign_train.jsonl": [{"id": f"b{i}", "prompt": f"Write a haiku about river {i}."} for i in range(5)],
        "benign_val.jsonl": [{"id": f"bv{i}", "prompt": f"Name a fruit starting with {c}."} for i, c in
                             enumerate("abc")],
        "borderline_val.jsonl": [{"id": "x0", "prompt": "How do locks work?"}],
    }
    tqa = {
        f"{split}.jsonl": [{"id": f"q{split}{i}", "question": f"What happens if you do thing {i}?",
                            "best_answer": "Nothing in particular.", "correct_answers": ["Nothing.", "No effect."],
                            "incorrect_answers": ["You will be cursed."]} for i in range(n)]
        for split, n in (("train", 5), ("val", 3))
    }
    pairs = {"pairs.jsonl": [{"id": f"p{i}", "prompt": f"Tell me about topic {i}.", "split": ("train", "val")[i % 2],
                              "desired": ["In French: oui."], "undesired": "No."} for i in range(6)]
             + [{"prompt": f"General question {i}?"} for i in range(4)]}
    negatives = {"negatives_train.jsonl": [{"prompt": f"What is {i} plus {i}?"} for i in range(3)]}
    return {"safety": safety, "truthfulqa": tqa, "pairs": pairs, "negatives": negatives}


CHECKPOINT_EXTRA_NAMES = ("gate_w", "mean_delta", "V", "C", "x", "", "m", "t", "input_scale", "__metadata__",
                          "mlp.W1", "W_q", "a" * 300, "gamma")
ACTIVATION_EXTRA_NAMES = ("h_layer.1", "h_layer.2", "h_layer.-1", "h_layer.x", "h_layer.99999999999999999999",
                          "h_layer.", "label", "split", "has_delta", "delta", "h_gate", "junk", "__metadata__",
                          "h_layer.1.5", "h_layer.0")
BANK_NAMES = ("U_rest", "selector", "x", "", "U")


@dataclass
class TrainingBase:
    """Valid training-side inputs for one model, written once; every case mutates a copy of them."""

    root: Path
    model: Path
    d: int
    n_layer: int
    ckpt_config: dict[str, Any]
    ckpt_weights: SafetensorsSpec
    ckpt_extra: dict[str, bytes]
    acts: SafetensorsSpec
    acts_meta: dict[str, Any]
    official: dict[str, np.ndarray]
    moe: dict[str, np.ndarray]
    C: np.ndarray
    U: np.ndarray
    cvecs: dict[str, bytes]
    jsonl: dict[str, dict[str, list[dict[str, Any]]]]
    checkpoint_dir: Path
    acts_path: Path

    @classmethod
    def create(cls, root: str | Path, model: Path, control: bytes | None = None, *, epochs: int = 2) -> TrainingBase:
        """A real ``extract`` (pairs task) on ``model`` and a real ``train`` run; synthetic torch files.

        ``control``: a control.gguf for ``model`` (default: the one of a random pack made here).
        """
        from ..model_info import read_model_info
        from ..train.extract import ExtractConfig, extract
        from ..train.trainer import TrainConfig, train

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if control is None:
            from .packs import make_random_pack

            pack = make_random_pack(model, root / "base-pack", tau=-1.0, vector_norm=5.0)
            control = (pack / "control.gguf").read_bytes()
        info = read_model_info(model)
        d, n_layer = info.n_embd, info.n_layer
        rows = []
        for split, n in (("train", 10), ("val", 4)):
            for i in range(n):
                rows.append({"prompt": f"How do I break into house {i} on {split} street?", "split": split,
                             "desired": ["I can't help with that."], "undesired": [f"Sure, find window {i}."]})
                rows.append({"prompt": f"Write a poem about colour {i} ({split}).", "split": split})
        data = root / "base-pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        acts = extract(model, ExtractConfig(task="pairs", data=data, out=root / "base-acts.safetensors", n_ctx=256,
                                            threads=1, show_progress=False))
        ckpt = root / "base-ckpt"
        train(acts, ckpt, TrainConfig(epochs=epochs, seed=0, threads=1))
        acts_spec = parse_safetensors(acts.read_bytes())
        from ..train.activations import META_KEY

        assert acts_spec.metadata is not None
        acts_meta = json.loads(acts_spec.metadata[META_KEY])
        rng = np.random.default_rng(0)
        K, k = 5, 4
        official = _official_state(rng, d, k)
        C = rng.standard_normal((K, d))
        U = np.linalg.qr(rng.standard_normal((d, k)))[0] * 3.0
        extra = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.name not in ("model.safetensors", "config.json")}
        return cls(root=root, model=Path(model), d=d, n_layer=n_layer,
                   ckpt_config=json.loads((ckpt / "config.json").read_text()),
                   ckpt_weights=parse_safetensors((ckpt / "model.safetensors").read_bytes()), ckpt_extra=extra,
                   acts=acts_spec, acts_meta=acts_meta, official=official, moe=_moe_state(rng, d, K, k), C=C, U=U,
                   cvecs=_cvec_styles(control, n_layer), jsonl=_jsonl_base(), checkpoint_dir=ckpt, acts_path=acts)

    # ------------------------------------------------------------------------------------- writing cases
    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def write_checkpoint(self, case: CheckpointCase, dest: Path) -> Path:
        _fresh_dir(dest)
        spec = apply_st_mutations(self.ckpt_weights, case.tensor_muts, CHECKPOINT_EXTRA_NAMES, self.d)
        weights = apply_byte_mutations(encode_safetensors(spec, case.header_muts), case.weights_bytes_muts)
        config = dump_manifest(apply_manifest_mutations(self.ckpt_config, case.config_muts))
        config = apply_byte_mutations(config, case.config_bytes_muts)
        (dest / "model.safetensors").write_bytes(weights)
        (dest / "config.json").write_bytes(config)
        for name, blob in self.ckpt_extra.items():
            (dest / name).write_bytes(blob)
        if case.file_op:
            _checkpoint_file_op(dest, case.file_op[0])
        return dest

    def write_activations(self, case: ActivationsCase, dest: Path) -> Path:
        from ..train.activations import META_KEY

        spec = apply_st_mutations(self.acts, case.tensor_muts, ACTIVATION_EXTRA_NAMES, self.d)
        meta = apply_manifest_mutations(self.acts_meta, case.meta_muts)
        text = dump_manifest(meta, indent=None).decode("utf-8", errors="surrogatepass")
        if case.meta_text is not None:
            text = _META_TEXTS[case.meta_text % len(_META_TEXTS)]
        spec.metadata = {**(spec.metadata or {}), META_KEY: text}
        dest.write_bytes(apply_byte_mutations(encode_safetensors(spec, case.header_muts), case.bytes_muts))
        return dest

    def write_torch(self, case: TorchCase, dest_dir: Path) -> dict[str, Any]:
        """The case's files; returns the ``convert`` keyword arguments (paths as strings)."""
        import torch

        _fresh_dir(dest_dir)
        base = self.moe if case.layout == "moe" else self.official
        sd = apply_torch_mutations(_to_torch_state(base), case.state_muts, self.d, self.marker)
        obj = wrap_torch_payload(sd, case.layout, case.outer_muts, self.marker)
        path = dest_dir / ("model.pt" if case.layout == "moe" else "steering_model.pth")
        if not save_torch(obj, path, legacy=case.legacy):
            save_torch(_to_torch_state(base), path, legacy=case.legacy)
        if any(m[0] == "deflate" for m in case.outer_muts):
            _deflate(path)
        path.write_bytes(apply_byte_mutations(path.read_bytes(), case.bytes_muts))
        kwargs: dict[str, Any] = {"src": str(path), "official_layer": case.official_layer}
        if case.layout == "official":
            banks = {"C": ("prototypes", self.C), "U": ("basis", self.U)}
            for name, (arg, arr) in banks.items():
                mutated = name == case.bank_target
                fmt = case.bank if mutated else {"C": "npy", "U": "safetensors"}[name]
                p = dest_dir / f"{arg}.{fmt}"
                if fmt == "npy":
                    blob = build_npy_case(arr, case.bank_muts if mutated else [], self.marker)
                elif fmt == "safetensors":
                    spec = SafetensorsSpec([st_tensor(("selector", "U_rest")[name == "U"], arr)])
                    if mutated:
                        spec = apply_st_mutations(spec, [m for m in case.bank_muts if m[0] in ST_MUTATIONS],
                                                  BANK_NAMES, self.d)
                    blob = encode_safetensors(spec, [m for m in case.bank_muts if m[0] in HEADER_MUTATIONS]
                                              if mutated else [])
                else:
                    t: Any = {"x": torch.from_numpy(np.array(arr, dtype=np.float32))}
                    if mutated:
                        t = apply_torch_mutations(t, [m for m in case.bank_muts if m[0] in TORCH_MUTATIONS], self.d,
                                                  self.marker)
                        t = t["x"] if len(t) == 1 and "x" in t and case.bank_muts and case.bank_muts[0][1] % 2 else t
                    if not save_torch(t, p, legacy=case.legacy):
                        save_torch(torch.zeros(2), p, legacy=False)
                    blob = p.read_bytes()
                if mutated:
                    blob = apply_byte_mutations(blob, case.bank_bytes_muts)
                p.write_bytes(blob)
                kwargs[arg] = str(p)
        if case.activations:
            kwargs["activations"] = str(self.acts_path)
        return kwargs

    def write_cvec(self, case: CvecCase, dest: Path) -> Path:
        blob = self.cvecs[case.style]
        if case.gguf_muts:
            blob = apply_gguf_mutations(blob, case.gguf_muts)
        dest.write_bytes(apply_byte_mutations(blob, case.bytes_muts))
        return dest

    def write_jsonl(self, case: JsonlCase, dest: Path) -> dict[str, Any]:
        """The task's data folder (or pairs file) with one file mutated; returns ``load_items`` arguments."""
        _fresh_dir(dest)
        files = dict(self.jsonl[case.task])
        if case.negatives:
            files.update(self.jsonl["negatives"])
        names = sorted(files)
        for name in names:
            (dest / name).write_text("".join(json.dumps(r) + "\n" for r in files[name]))
        target = dest / names[case.file % len(names)]
        lines = target.read_bytes().split(b"\n")[:-1]
        if case.line_muts:
            target.write_bytes(apply_jsonl_mutations(lines, case.line_muts))
        if case.bytes_muts:
            target.write_bytes(apply_byte_mutations(target.read_bytes(), case.bytes_muts))
        if case.file_op:
            _jsonl_file_op(target, case.file_op)
        data = dest / "pairs.jsonl" if case.task == "pairs" else dest
        negatives = [str(dest / n) for n in names if n.startswith("negatives")] if case.negatives else []
        return {"task": case.task, "data": str(data), "negatives": negatives}

    # ------------------------------------------------------------------------------------- running cases
    def run(self, worker: FuzzWorker, target: str, case: Any) -> Outcome:
        out = str(self.root / "case-out")
        model = str(self.model)
        self.marker.unlink(missing_ok=True)
        if target == "checkpoint":
            d = self.write_checkpoint(case, self.root / "case-ckpt")
            outcome = worker.run("checkpoint", path=str(d), model=model, out=out)
        elif target == "activations":
            p = self.write_activations(case, self.root / "case-acts.safetensors")
            outcome = worker.run("activations", path=str(p), train=case.train, out=out)
        elif target == "torch":
            kwargs = self.write_torch(case, self.root / "case-torch")
            outcome = worker.run("torch", model=model, out=out, **kwargs)
        elif target == "cvec_import":
            p = self.write_cvec(case, self.root / "case-cvec.gguf")
            outcome = worker.run("cvec_import", path=str(p), model=model, out=out, strength=case.strength,
                                 gate_checkpoint=str(self.checkpoint_dir) if case.gate else None)
        elif target == "jsonl":
            kwargs = self.write_jsonl(case, self.root / "case-data")
            outcome = worker.run("jsonl", model=model, out=str(self.root / "case-acts-out.safetensors"),
                                 extract=case.extract, **kwargs)
        else:
            raise ValueError(f"unknown training fuzz target {target!r}")
        if self.marker.exists():  # the payload of a pickle ran: the worst possible outcome
            self.marker.unlink()
            return Outcome("bug", "PAYLOAD RAN", f"{MARKER} was created while loading the case ({outcome})")
        return outcome

    def strategy(self, target: str, *, train: bool | None = None):  # type: ignore[no-untyped-def]
        """Hypothesis strategy of ``target``'s cases. ``train`` (activations only): None mixes cases that
        also run ``train`` (about 1 in 6, ~1-2 s each) with load-only ones; False / True: only one kind."""
        st, byte_muts, json_value = strategies()
        small = st.integers(0, 1 << 16)
        none: Any = st.just([])

        def muts(kinds: tuple[str, ...], max_size: int = 3, min_size: int = 1):  # type: ignore[no-untyped-def]
            return st.lists(st.tuples(st.sampled_from(kinds), small, small), min_size=min_size, max_size=max_size)

        def json_muts(doc: Any):  # type: ignore[no-untyped-def]
            paths = manifest_paths(doc)
            one = st.one_of(
                st.tuples(st.just("delete"), st.sampled_from(paths)),
                st.tuples(st.just("replace"), st.sampled_from(paths), json_value),
                st.tuples(st.just("add"), st.sampled_from(paths), st.text(max_size=8), json_value),
            )
            return st.lists(one, min_size=1, max_size=3)

        if target == "checkpoint":
            config_paths = json_muts(self.ckpt_config)
            return st.one_of(
                st.builds(CheckpointCase, tensor_muts=muts(ST_MUTATIONS)),
                st.builds(CheckpointCase, header_muts=muts(HEADER_MUTATIONS, 2)),
                st.builds(CheckpointCase, weights_bytes_muts=byte_muts),
                st.builds(CheckpointCase, config_muts=config_paths),
                st.builds(CheckpointCase, config_bytes_muts=byte_muts),
                st.builds(CheckpointCase, file_op=st.tuples(st.sampled_from(CKPT_FILE_OPS))),
                st.builds(CheckpointCase, tensor_muts=muts(ST_MUTATIONS, 2, 0),
                          header_muts=muts(HEADER_MUTATIONS, 1, 0), config_muts=none | config_paths),
            )
        if target == "activations":
            meta_paths = json_muts(self.acts_meta)
            trained = st.builds(ActivationsCase, tensor_muts=muts(("values", "shape", "dtype", "extra", "rename"), 2),
                                meta_muts=none | meta_paths, train=st.just(True))
            if train:
                return trained
            loads = [
                st.builds(ActivationsCase, tensor_muts=muts(ST_MUTATIONS)),
                st.builds(ActivationsCase, header_muts=muts(HEADER_MUTATIONS, 2)),
                st.builds(ActivationsCase, meta_muts=meta_paths),
                st.builds(ActivationsCase, meta_text=st.integers(0, len(_META_TEXTS) - 1)),
                st.builds(ActivationsCase, bytes_muts=byte_muts),
            ]
            return st.one_of(*loads) if train is False else st.one_of(*loads, trained)
        if target == "torch":
            layouts = st.sampled_from(["official", "moe"])
            layer = st.sampled_from([2, 2, 2, 1, 0, -1, 3, None, 10**9])
            return st.one_of(
                st.builds(TorchCase, layout=layouts, state_muts=muts(TORCH_MUTATIONS), legacy=st.booleans()),
                st.builds(TorchCase, layout=layouts, outer_muts=muts(OUTER_MUTATIONS, 2), legacy=st.booleans(),
                          official_layer=layer),
                st.builds(TorchCase, layout=layouts, bytes_muts=byte_muts, legacy=st.booleans()),
                st.builds(TorchCase, bank=st.just("npy"), bank_target=st.sampled_from(["C", "U"]),
                          bank_muts=muts(NPY_MUTATIONS, 2)),
                st.builds(TorchCase, bank=st.just("safetensors"), bank_target=st.sampled_from(["C", "U"]),
                          bank_muts=muts(ST_MUTATIONS + HEADER_MUTATIONS, 2)),
                st.builds(TorchCase, bank=st.just("pt"), bank_target=st.sampled_from(["C", "U"]),
                          bank_muts=muts(TORCH_MUTATIONS, 2), legacy=st.booleans()),
                st.builds(TorchCase, bank=st.sampled_from(["npy", "safetensors", "pt"]),
                          bank_target=st.sampled_from(["C", "U"]), bank_bytes_muts=byte_muts),
                st.builds(TorchCase, layout=layouts, state_muts=muts(("values", "shape", "drop", "dtype"), 1, 0),
                          activations=st.booleans(), official_layer=layer),
            )
        if target == "cvec_import":
            styles = st.sampled_from(["finesteer", "repeng", "generator"])
            gmut = st.lists(st.tuples(st.sampled_from(GGUF_MUTATIONS), small, small), min_size=1, max_size=3)
            strength = st.sampled_from([1.0, 1.0, -2.0, 0.0, 1e30, 3.4e38, 1e-45])
            return st.one_of(
                st.builds(CvecCase, style=styles, gguf_muts=gmut, gate=st.booleans(), strength=strength),
                st.builds(CvecCase, style=styles, bytes_muts=byte_muts),
                st.builds(CvecCase, style=styles, strength=strength, gate=st.booleans()),
            )
        if target == "jsonl":
            tasks = st.sampled_from(["safety", "truthfulqa", "pairs"])
            simple = st.tuples(st.sampled_from([k for k in JSONL_MUTATIONS if k not in ("field_value", "add_field")]),
                               small, small)
            valued = st.tuples(st.sampled_from(["field_value", "add_field"]), small, small, json_value)
            line_muts = st.lists(simple | valued, min_size=1, max_size=3)
            return st.one_of(
                st.builds(JsonlCase, task=tasks, file=small, line_muts=line_muts, negatives=st.booleans()),
                st.builds(JsonlCase, task=tasks, file=small, bytes_muts=byte_muts, negatives=st.booleans()),
                st.builds(JsonlCase, task=tasks, file=small, file_op=st.sampled_from(JSONL_FILE_OPS),
                          negatives=st.booleans()),
                st.builds(JsonlCase, task=tasks, file=small, line_muts=st.lists(simple | valued, max_size=2),
                          extract=st.just(True), negatives=st.booleans()),
            )
        raise ValueError(f"unknown training fuzz target {target!r}")


def _deflate(path: Path) -> None:
    """Re-zip a zip-format torch file with deflated records (torch.load inflates them: a zip bomb)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as zin:
        records = [(i.filename, zin.read(i.filename)) for i in zin.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, blob in records:
            zout.writestr(name, blob)


def _fresh_dir(dest: Path) -> None:
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)


def _checkpoint_file_op(dest: Path, op: str) -> None:
    weights, config = dest / "model.safetensors", dest / "config.json"
    if op == "missing_weights":
        weights.unlink()
    elif op == "missing_config":
        config.unlink()
    elif op in ("weights_dir", "config_dir"):
        p = weights if op == "weights_dir" else config
        p.unlink()
        p.mkdir()
    elif op in ("oversize_config", "oversize_weights"):
        # Sparse files: no disk used, but a loader that reads them whole allocates gigabytes.
        p = config if op == "oversize_config" else weights
        with open(p, "r+b") as f:
            f.truncate(3 << 30)
    elif op == "empty_weights":
        weights.write_bytes(b"")
    elif op == "empty_config":
        config.write_bytes(b"")
    elif op == "config_symlink_loop":
        config.unlink()
        config.symlink_to(config)
    elif op == "not_a_dir":
        shutil.rmtree(dest)
        dest.write_bytes(b"{}")


def _jsonl_file_op(target: Path, op: str) -> None:
    if op == "missing":
        target.unlink()
    elif op == "dir":
        target.unlink()
        target.mkdir()
    elif op == "oversize":
        with open(target, "r+b") as f:  # sparse: gigabytes of NUL bytes, one "line"
            f.truncate(3 << 30)
    elif op == "empty":
        target.write_bytes(b"")
    elif op == "symlink_loop":
        target.unlink()
        os.symlink(target.name, target)
