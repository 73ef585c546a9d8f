"""Fuzzing support for everything a steering pack or a model file feeds into our parsers.

A pack is a file users download and share, and a model file is read by our header check before
llama.cpp sees it, so both must end in one of our typed errors whatever their bytes are. This module
holds the pieces the fast tests (``tests/test_fuzz_packs.py``) and the long run (``bench/fuzz_packs.py``)
share:

- :class:`GGUFSpec`: a GGUF file as editable data (typed metadata, tensors), written back byte by byte,
  so mutations can be semantic (a NaN epsilon, a wrong dtype, a lying count) rather than only random bits;
- :class:`PackParts` and :func:`write_pack_case`: a pack as three editable parts whose manifest checksums
  are *recomputed* after a mutation, so validation beyond the checksum is what gets exercised;
- mutation strategies for hypothesis (:func:`pack_cases`, :func:`model_cases`, :func:`control_cases`),
  each case a small printable tuple list so a failure shrinks to a readable example;
- :class:`FuzzWorker`: runs cases in a separate Python process, because llama.cpp (and, in principle,
  onnxruntime) can abort or segfault on bad input. A dead worker is reported as a crash, a silent one
  as a hang, a peak RSS over the limit as an unbounded allocation; pytest itself never dies.

Needs the ``dev`` extra (hypothesis) and, for head mutations, ``onnx``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------- GGUF as data
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B", U64: "<Q",
        I64: "<q", F64: "<d"}


@dataclass
class KV:
    key: str
    vtype: int
    value: Any
    etype: int = -1
    """Element type when ``vtype`` is ARR (elements of an ARR-of-ARR are ``(etype, list)`` pairs)."""


@dataclass
class TensorSpec:
    name: str
    dims: tuple[int, ...]
    """GGUF order (ne0 first)."""
    ggml_type: int
    data: bytes


@dataclass
class GGUFSpec:
    kvs: list[KV]
    tensors: list[TensorSpec]
    version: int = 3
    alignment: int = 32

    def copy(self) -> GGUFSpec:
        return copy.deepcopy(self)

    def find(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def set(self, key: str, vtype: int, value: Any, etype: int = -1) -> None:
        kv = self.find(key)
        if kv is None:
            self.kvs.append(KV(key, vtype, value, etype))
        else:
            kv.vtype, kv.value, kv.etype = vtype, value, etype

    def remove(self, key: str) -> None:
        self.kvs = [kv for kv in self.kvs if kv.key != key]


def spec_from_file(path: str | Path) -> GGUFSpec:
    """Read a GGUF (small ones: uses gguf.GGUFReader) into an editable spec."""
    import gguf

    r = gguf.GGUFReader(str(path))
    kvs = []
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        types = [int(t) for t in f.types]
        value = f.contents()
        kvs.append(KV(key, types[0], value, types[1] if len(types) > 1 else -1))
    raw = Path(path).read_bytes()
    tensors = [TensorSpec(t.name, tuple(int(x) for x in t.shape), int(t.tensor_type),
                          raw[t.data_offset : t.data_offset + t.n_bytes]) for t in r.tensors]
    return GGUFSpec(kvs=kvs, tensors=tensors, version=3, alignment=int(r.alignment))


def _enc_str(s: Any) -> bytes:
    b = s if isinstance(s, bytes) else str(s).encode("utf-8", errors="surrogatepass")
    return struct.pack("<Q", len(b)) + b


def _enc_value(vtype: int, value: Any, etype: int = -1) -> bytes:
    if vtype == STR:
        return _enc_str(value)
    if vtype == ARR:
        items = list(value) if isinstance(value, (list, tuple, bytes)) else [value]
        out = [struct.pack("<IQ", etype, len(items))]
        for item in items:
            if etype == ARR:
                inner_type, inner = item if isinstance(item, tuple) and len(item) == 2 else (U8, [])
                out.append(_enc_value(ARR, inner, inner_type))
            else:
                out.append(_enc_value(etype, item))
        return b"".join(out)
    if vtype in _FMT:
        fmt = _FMT[vtype]
        if vtype in (F32, F64):
            try:
                return struct.pack(fmt, float(value))
            except (TypeError, ValueError, OverflowError):
                return struct.pack(fmt, 0.0)
        bits = struct.calcsize(fmt) * 8
        v = _coerce(value, vtype)
        v = v & ((1 << bits) - 1) if fmt[1].isupper() else ((v + (1 << (bits - 1))) % (1 << bits)) - (1 << (bits - 1))
        return struct.pack(fmt, v)
    return b""  # an unknown type: the reader must refuse it (no payload written)


def encode_gguf(spec: GGUFSpec, *, n_tensors: int | None = None, n_kv: int | None = None,
                offsets: dict[int, int] | None = None) -> bytes:
    """Serialise ``spec``; the keyword arguments let a mutation lie about counts and offsets."""
    align = spec.alignment if spec.alignment > 0 else 32
    out = [b"GGUF", struct.pack("<I", spec.version & 0xFFFFFFFF),
           struct.pack("<QQ", (len(spec.tensors) if n_tensors is None else n_tensors) & (2**64 - 1),
                       (len(spec.kvs) if n_kv is None else n_kv) & (2**64 - 1))]
    for kv in spec.kvs:
        out += [_enc_str(kv.key), struct.pack("<I", kv.vtype & 0xFFFFFFFF), _enc_value(kv.vtype, kv.value, kv.etype)]
    data_offsets = []
    pos = 0
    for t in spec.tensors:
        data_offsets.append(pos)
        pos += (len(t.data) + align - 1) // align * align
    for i, t in enumerate(spec.tensors):
        off = (offsets or {}).get(i, data_offsets[i])
        out += [_enc_str(t.name), struct.pack("<I", len(t.dims)),
                b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in t.dims),
                struct.pack("<IQ", t.ggml_type & 0xFFFFFFFF, off & (2**64 - 1))]
    head = b"".join(out)
    head += b"\0" * (-len(head) % align)
    body = b"".join(t.data + b"\0" * (-len(t.data) % align) for t in spec.tensors)
    return head + body


# --------------------------------------------------------------------------------------------- byte mutations
def apply_byte_mutations(data: bytes, muts: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """``("flip", pos, bit)``, ``("set", pos, byte)``, ``("truncate", n)``, ``("insert", pos, bytes)``,
    ``("delete", pos, n)``, ``("dup", pos, n)``; positions wrap around the current length."""
    buf = bytearray(data)
    for m in muts:
        kind = m[0]
        n = len(buf)
        if kind == "truncate":
            del buf[m[1] % (n + 1):]
        elif n == 0:
            continue
        elif kind == "flip":
            buf[m[1] % n] ^= 1 << (m[2] % 8)
        elif kind == "set":
            buf[m[1] % n] = m[2] & 0xFF
        elif kind == "insert":
            p = m[1] % (n + 1)
            buf[p:p] = m[2]
        elif kind == "delete":
            p = m[1] % n
            del buf[p : p + m[2]]
        elif kind == "dup":
            p = m[1] % n
            buf[p:p] = buf[p : p + m[2]]
    return bytes(buf)


# --------------------------------------------------------------------------------------------- packs as data
MANIFEST, HEAD, CONTROL = "manifest.json", "head.onnx", "control.gguf"


@dataclass
class PackParts:
    manifest: dict[str, Any]
    head: bytes
    control: bytes

    @classmethod
    def from_dir(cls, path: str | Path) -> PackParts:
        p = Path(path)
        return cls(json.loads((p / MANIFEST).read_text()), (p / HEAD).read_bytes(), (p / CONTROL).read_bytes())


class RawJSON:
    """A manifest value written verbatim (huge integers, NaN, deep nesting: things json.dumps refuses)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"RawJSON({self.text[:40]!r}{'...' if len(self.text) > 40 else ''})"


def dump_manifest(doc: Any, indent: int | None = 1) -> bytes:
    """``doc`` as JSON with :class:`RawJSON` values spliced in verbatim (``indent=None``: one line, for JSONL)."""
    raws: list[str] = []

    def swap(x: Any) -> Any:
        if isinstance(x, RawJSON):
            raws.append(x.text)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(x, dict):
            return {k: swap(v) for k, v in x.items()}
        if isinstance(x, list):
            return [swap(v) for v in x]
        return x

    text = json.dumps(swap(doc), indent=indent)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', raw)
    return text.encode("utf-8", errors="surrogatepass")


def _walk(doc: Any, path: tuple) -> Any:  # type: ignore[type-arg]
    for k in path:
        doc = doc[k]
    return doc


def apply_manifest_mutations(doc: dict[str, Any], muts: list[tuple]) -> Any:  # type: ignore[type-arg]
    """``("delete", path)``, ``("replace", path, value)``, ``("add", path, key, value)``; path () is the root."""
    doc = copy.deepcopy(doc)
    for m in muts:
        kind, path = m[0], m[1]
        try:
            if kind == "replace" and not path:
                doc = m[2]
                continue
            if kind == "add":
                target = _walk(doc, path)
                if isinstance(target, dict):
                    target[m[2]] = m[3]
                continue
            parent = _walk(doc, path[:-1])
            if kind == "delete":
                del parent[path[-1]]
            elif kind == "replace":
                parent[path[-1]] = m[2]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the path: nothing to do
    return doc


@dataclass
class PackCase:
    """One mutated pack. Parts are mutated first, checksums recomputed, then the manifest is mutated."""

    head_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    head_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    control_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    control_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    manifest_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    manifest_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    file_op: tuple | None = None  # type: ignore[type-arg]
    recompute: bool = True


def build_pack_case(base: PackParts, case: PackCase) -> tuple[bytes, bytes, bytes]:
    """(manifest, head, control) bytes of the mutated pack."""
    head = apply_head_mutations(base.head, case.head_muts) if case.head_muts else base.head
    head = apply_byte_mutations(head, case.head_bytes_muts)
    control = base.control
    if case.control_muts:
        control = apply_gguf_mutations(control, case.control_muts)
    control = apply_byte_mutations(control, case.control_bytes_muts)
    doc = copy.deepcopy(base.manifest)
    if case.recompute:
        for name, blob in ((HEAD, head), (CONTROL, control)):
            doc["files"][name] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    doc = apply_manifest_mutations(doc, case.manifest_muts)
    manifest = apply_byte_mutations(dump_manifest(doc), case.manifest_bytes_muts)
    return manifest, head, control


def write_pack_case(base: PackParts, case: PackCase, dest: Path, outside: Path) -> Path:
    """Write the case into ``dest`` (emptied first). ``outside`` is a scratch directory outside the pack."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    manifest, head, control = build_pack_case(base, case)
    blobs = {MANIFEST: manifest, HEAD: head, CONTROL: control}
    for name, blob in blobs.items():
        (dest / name).write_bytes(blob)
    if case.file_op:
        _file_op(dest, outside, blobs, case.file_op)
    return dest


FILE_OPS = ("missing", "symlink_out", "symlink_in", "symlink_dotdot", "dir", "fifo", "oversize", "hardlink_out",
            "dangling", "pack_is_file", "pack_missing", "pack_symlink")


def _file_op(dest: Path, outside: Path, blobs: dict[str, bytes], op: tuple) -> None:  # type: ignore[type-arg]
    kind, name = op[0], op[1]
    target = dest / name
    outside.mkdir(parents=True, exist_ok=True)
    if kind == "missing":
        target.unlink()
    elif kind in ("symlink_out", "symlink_dotdot", "hardlink_out"):
        real = outside / f"real-{name}"
        real.unlink(missing_ok=True)
        real.write_bytes(blobs[name])
        target.unlink()
        if kind == "hardlink_out":
            os.link(real, target)
        elif kind == "symlink_out":
            target.symlink_to(real)
        else:
            target.symlink_to(os.path.relpath(real, dest))  # "../outside/real-x": a `..` path out of the pack
    elif kind == "symlink_in":
        other = next(n for n in blobs if n != name)
        target.unlink()
        target.symlink_to(other)
    elif kind == "dangling":
        target.unlink()
        target.symlink_to(outside / "does-not-exist")
    elif kind == "dir":
        target.unlink()
        target.mkdir()
    elif kind == "fifo":
        target.unlink()
        os.mkfifo(target)
    elif kind == "oversize":
        # A sparse file just over the loader's limit for that member: costs no disk, must be refused unread.
        limits = {MANIFEST: 4 << 20, HEAD: 2 << 30, CONTROL: 1 << 30}
        with open(target, "r+b") as f:
            f.truncate(limits[name] + 1)
    elif kind == "pack_is_file":
        shutil.rmtree(dest)
        dest.write_bytes(blobs[MANIFEST])
    elif kind == "pack_missing":
        shutil.rmtree(dest)
    elif kind == "pack_symlink":
        # The pack directory itself is a symlink to a real pack elsewhere: that is the user's choice, allowed.
        real = outside / "real-pack"
        if real.exists():
            shutil.rmtree(real)
        shutil.move(str(dest), real)
        dest.symlink_to(real, target_is_directory=True)


# --------------------------------------------------------------------------------------------- head mutations
HEAD_MUTATIONS = ("input_dims", "input_dtype", "output_dims", "rename_io", "drop_output", "extra_input",
                  "init_values", "init_dims", "init_dtype", "custom_op", "banned_op", "external", "opset",
                  "extra_opset", "ir_version", "function", "sparse", "drop_node", "swap_nodes", "retype_node",
                  "attr", "reshape_target", "dup_graph", "subgraph", "huge_broadcast", "const_node")
_DIMS = ([1, 1], [2, 3], [1], [], [1, 0], [1 << 20, 1 << 20], [1 << 40], [-1, 5], ["N", "d"], [1, 2, 3, 4, 5])
_DTYPES = (2, 3, 6, 7, 9, 10, 11, 16, 8, 0, 99)
_OPS = ("ConstantOfShape", "Expand", "Tile", "Range", "NonZero", "Loop", "If", "Scan", "Resize", "Pad",
        "Shape", "Gather", "Cast", "Einsum", "RandomNormal", "Multinomial", "Upsample", "Split")
_LOCATIONS = ("hostfile", "../../../../etc/passwd", "/etc/passwd", "sub/../../x", "head.onnx", "manifest.json",
              "\x00", "")


def apply_head_mutations(data: bytes, muts: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """Structured edits of an ONNX head (needs ``onnx``); returns the serialised bytes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load_from_string(data)
    g = m.graph
    for mut in muts:
        try:
            kind, a, b = mut[0], mut[1], mut[2]
            inits = list(g.initializer)
            if kind == "input_dims":
                _set_dims(g.input[a % len(g.input)], _DIMS[b % len(_DIMS)])
            elif kind == "input_dtype":
                g.input[a % len(g.input)].type.tensor_type.elem_type = _DTYPES[b % len(_DTYPES)]
            elif kind == "output_dims":
                _set_dims(g.output[a % len(g.output)], _DIMS[b % len(_DIMS)])
            elif kind == "rename_io":
                vi = (list(g.input) + list(g.output))[a % (len(g.input) + len(g.output))]
                vi.name = ("h_gate", "h_steer", "vector", "x", "", "gate_score\x00")[b % 6]
            elif kind == "drop_output" and len(g.output) > 0:
                del g.output[a % len(g.output)]
            elif kind == "extra_input":
                g.input.append(helper.make_tensor_value_info(("extra", "h_gate", "router_w")[a % 3],
                                                             TensorProto.FLOAT, [1, b % 7 + 1]))
            elif kind == "init_values" and inits:
                t = inits[a % len(inits)]
                if t.data_type == TensorProto.FLOAT:
                    arr = numpy_helper.to_array(t).copy()
                    val = (float("nan"), float("inf"), float("-inf"), 3e38, 1e30, 0.0, 1e-45, -3e38)[b % 8]
                    if arr.size:
                        arr.flat[b % arr.size] = val
                        if b % 3 == 0:
                            arr[...] = val
                    t.CopyFrom(numpy_helper.from_array(arr.astype("float32"), t.name))
            elif kind == "init_dims" and inits:
                t = inits[a % len(inits)]
                dims = list(t.dims)
                choice = b % 5
                new = (dims[::-1], dims + [1], [1 << 40] + dims[1:], [0], [max(1, int(x)) * 2 for x in dims])[choice]
                del t.dims[:]
                t.dims.extend(new)
            elif kind == "init_dtype" and inits:
                inits[a % len(inits)].data_type = _DTYPES[b % len(_DTYPES)]
            elif kind == "custom_op":
                domain = ("evil.domain", "com.microsoft", "ai.onnx.ml", "ai.onnx.preview.training", "")[a % 5]
                op = ("Gelu", "FusedMatMul", "Foo", "Attention", "Relu")[b % 5]
                g.node.insert(0, helper.make_node(op, ["h_gate"], ["custom_out"], domain=domain))
                if domain and not any(o.domain == domain for o in m.opset_import):
                    m.opset_import.append(helper.make_opsetid(domain, 1))
            elif kind == "banned_op":
                op = _OPS[a % len(_OPS)]
                shape = numpy_helper.from_array(np.array([1 << 15, 1 << 15], "int64"), f"shp{len(inits)}")
                g.initializer.append(shape)
                g.node.insert(b % (len(g.node) + 1), helper.make_node(op, [shape.name], [f"banned{len(g.node)}"]))
            elif kind == "external" and inits:
                t = inits[a % len(inits)]
                t.ClearField("raw_data")
                t.ClearField("float_data")
                t.data_location = TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", _LOCATIONS[b % len(_LOCATIONS)]), ("offset", "0")):
                    e = t.external_data.add()
                    e.key, e.value = k, v
            elif kind == "opset":
                m.opset_import[0].version = (1, 6, 7, 13, 18, 21, 23, 99, 10000, -1)[a % 10]
            elif kind == "extra_opset":
                m.opset_import.append(helper.make_opsetid(("com.microsoft", "evil", "")[a % 3], b % 5))
            elif kind == "ir_version":
                m.ir_version = (0, 1, 3, 4, 7, 9, 10, 11, 12, 100)[a % 10]
            elif kind == "function":
                f = helper.make_function("evil.fn", "Fn", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                                         [helper.make_opsetid("", 17)])
                m.functions.append(f)
                g.node.insert(0, helper.make_node("Fn", ["h_gate"], ["fn_out"], domain="evil.fn"))
            elif kind == "sparse":
                vals = numpy_helper.from_array(np.ones(1, np.float32), "sp")
                idx = numpy_helper.from_array(np.zeros(1, np.int64), "sp_idx")
                g.sparse_initializer.append(helper.make_sparse_tensor(vals, idx, [1 << 30]))
            elif kind == "drop_node" and len(g.node) > 0:
                del g.node[a % len(g.node)]
            elif kind == "swap_nodes" and len(g.node) > 1:
                i, j = a % len(g.node), b % len(g.node)
                ni, nj = onnx.NodeProto(), onnx.NodeProto()
                ni.CopyFrom(g.node[i])
                nj.CopyFrom(g.node[j])
                g.node[i].CopyFrom(nj)
                g.node[j].CopyFrom(ni)
            elif kind == "retype_node" and len(g.node) > 0:
                g.node[a % len(g.node)].op_type = ("Add", "MatMul", "Relu", "Softmax", "Gemm", "Reshape", "Transpose",
                                                   "Flatten", "ReduceSum", "Max", "", "matmul")[b % 12]
            elif kind == "attr" and len(g.node) > 0:
                node = g.node[a % len(g.node)]
                name, value = (("axis", 5), ("axis", -9), ("axes", [7]), ("keepdims", 1), ("perm", [0, 0]),
                               ("transB", 1), ("allowzero", 1), ("value", 3.0))[b % 8]
                for i, at in enumerate(node.attribute):
                    if at.name == name:
                        del node.attribute[i]
                        break
                node.attribute.append(helper.make_attribute(name, value))
            elif kind == "reshape_target":
                for t in g.initializer:
                    if t.data_type == TensorProto.INT64:
                        new = ([0], [-1, -1], [1 << 40], [-5], [2, -1], [1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0])[a % 7]
                        t.CopyFrom(numpy_helper.from_array(np.asarray(new, np.int64), t.name))
                        break
            elif kind == "dup_graph":
                pass  # handled at the byte level below
            elif kind == "subgraph":
                body = helper.make_graph([helper.make_node("Identity", ["h_gate"], ["sg_out"])], "body", [],
                                         [helper.make_tensor_value_info("sg_out", TensorProto.FLOAT, None)])
                cond = numpy_helper.from_array(np.array(True), "cond")
                g.initializer.append(cond)
                g.node.insert(0, helper.make_node("If", ["cond"], ["if_out"], then_branch=body, else_branch=body))
            elif kind == "huge_broadcast":
                n = (1 << 13) if a % 2 else (1 << 12)
                col = numpy_helper.from_array(np.ones((n, 1), np.float32), "hb_col")
                row = numpy_helper.from_array(np.ones((1, n), np.float32), "hb_row")
                g.initializer.extend([col, row])
                g.node.insert(0, helper.make_node(("Add", "MatMul", "Mul")[b % 3], ["hb_col", "hb_row"], ["hb_out"]))
            elif kind == "const_node":
                nan = numpy_helper.from_array(np.full((b % 4 + 1,), np.nan, np.float32))
                g.node.insert(0, helper.make_node("Constant", [], ["cn_out"], value=nan))
        except (ValueError, IndexError, TypeError, KeyError, AttributeError, OverflowError):
            continue  # an earlier mutation left nothing this one can apply to (e.g. data no longer fits dims)
    out = m.SerializeToString()
    if any(mut[0] == "dup_graph" for mut in muts):
        # A second `graph` field: protobuf merges repeated singular messages, which could hide nodes.
        extra = helper.make_graph([helper.make_node("Relu", ["h_gate"], ["dup_out"])], "dup", [], [])
        blob = extra.SerializeToString()
        out += bytes([7 << 3 | 2]) + _varint(len(blob)) + blob
    return bytes(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _set_dims(vi: Any, dims: list[Any]) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


# --------------------------------------------------------------------------------------------- GGUF mutations
GGUF_MUTATIONS = ("kv_value", "kv_type", "kv_delete", "kv_add", "kv_str", "kv_dup", "tensor_type", "tensor_dims",
                  "tensor_name", "tensor_drop", "tensor_dup", "tensor_data", "tensor_values", "version",
                  "alignment", "lie_counts", "lie_offset", "tokens", "token_ids")
_INTERESTING_INTS = (0, 1, -1, 2, 3, 7, 255, 256, 65535, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 62, (1 << 64) - 1,
                     -(1 << 63), 100_000, 10**9)
_INTERESTING_FLOATS = (float("nan"), float("inf"), float("-inf"), -1.0, 0.0, -0.0, 1e-45, 1e38, -1e-5, 1e30, 5e-324)
_STRINGS = ("", "llama", "gpt2", "controlvector", "evil", "bert", "qwen3", "x" * 1000, "\udcff", "{{ 1/0 }}",
            "{% for x in range(10**9) %}x{% endfor %}", "{{ ''.__class__.__mro__ }}", "{% raw %}", "direction.1",
            "t5", "rwkv", "plamo2", "no_vocab", "llama3", "smollm")
_TENSOR_NAMES = ("direction.0", "direction.1", "direction.2", "direction.3", "direction.99", "direction.-1",
                 "direction.1x", "direction.00002", "foo", "", "direction." + "9" * 7, "token_embd.weight",
                 "blk.0.attn_q.weight", "output.weight", "x" * 70000)


def apply_gguf_mutations(data: bytes, muts: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """Semantic GGUF edits: ``(kind, a, b)`` tuples, integer parameters chosen modulo what they index."""
    spec = parse_spec_bytes(data)
    lie: dict[str, Any] = {}
    for mut in muts:
        try:
            _gguf_mutation(spec, lie, *mut)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError):
            continue  # an earlier mutation left nothing this one can apply to
    return encode_gguf(spec, n_tensors=lie.get("n_tensors"), n_kv=lie.get("n_kv"), offsets=lie.get("offsets"))


def _gguf_mutation(spec: GGUFSpec, lie: dict[str, Any], kind: str, a: int, b: int) -> None:
    kvs, tensors = spec.kvs, spec.tensors
    if kind == "kv_value" and kvs:
        kv = kvs[a % len(kvs)]
        if kv.vtype in (F32, F64):
            kv.value = _INTERESTING_FLOATS[b % len(_INTERESTING_FLOATS)]
        elif kv.vtype == STR:
            kv.value = _STRINGS[b % len(_STRINGS)]
        elif kv.vtype == BOOL:
            kv.value = b % 3
        elif kv.vtype == ARR:
            items = list(kv.value)
            kv.value = (items[: b % (len(items) + 1)], items + items[: b % 7 + 1], [], items[::-1])[b % 4]
        else:
            kv.value = _INTERESTING_INTS[b % len(_INTERESTING_INTS)]
    elif kind == "kv_type" and kvs:
        kv = kvs[a % len(kvs)]
        new = b % 14
        if new == ARR:
            kv.vtype, kv.etype, kv.value = ARR, (U32, STR, F32, ARR, 13)[b % 5], []
        elif new == STR:
            kv.vtype, kv.value = STR, str(kv.value)[:50]
        elif new == 13:
            kv.vtype = 13  # unknown value type
        else:
            kv.vtype = new
            kv.value = _coerce(kv.value, new)
    elif kind == "kv_delete" and kvs:
        del kvs[a % len(kvs)]
    elif kind == "kv_add":
        key = ("general.alignment", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
               "llama.expert_count", "llama.attention.key_length", "llama.rope.scaling.factor",
               "tokenizer.ggml.scores", "tokenizer.ggml.unknown_token_id", "llama.vocab_size",
               "controlvector.layer_count", "general.architecture", "llama.rope.scaling.type",
               "llama.attention.value_length", "llama.embedding_length_per_layer_input",
               "llama.expert_used_count", "llama.expert_group_count", "llama.expert_group_used_count",
               "llama.nextn_predict_layers", "llama.attention.sliding_window", "llama.logit_scale")[a % 20]
        value = (_INTERESTING_INTS + _INTERESTING_FLOATS)[b % (len(_INTERESTING_INTS) + len(_INTERESTING_FLOATS))]
        spec.set(key, F32 if isinstance(value, float) else U32, value)
    elif kind == "kv_str":
        key = ("llama.rope.scaling.type", "tokenizer.ggml.model", "tokenizer.ggml.pre", "general.architecture",
               "tokenizer.chat_template", "controlvector.model_hint", "general.name")[a % 7]
        spec.set(key, STR, _STRINGS[b % len(_STRINGS)])
    elif kind == "kv_dup" and kvs:
        kvs.append(copy.deepcopy(kvs[a % len(kvs)]))
    elif kind == "tensor_type" and tensors:
        tensors[a % len(tensors)].ggml_type = (1, 2, 8, 12, 30, 39, 40, 100, (1 << 32) - 1, 0)[b % 10]
    elif kind == "tensor_dims" and tensors:
        t = tensors[a % len(tensors)]
        d = list(t.dims) or [1]
        t.dims = tuple((d[::-1], d + [1], d + [2], [d[0] + 1, *d[1:]], [0], [], [1 << 40],
                        [(1 << 62), 4], [1] * 5, [d[0] // 2, *d[1:]])[b % 10])
    elif kind == "tensor_name" and tensors:
        tensors[a % len(tensors)].name = _TENSOR_NAMES[b % len(_TENSOR_NAMES)]
    elif kind == "tensor_drop" and tensors:
        del tensors[a % len(tensors)]
    elif kind == "tensor_dup" and tensors:
        tensors.append(copy.deepcopy(tensors[a % len(tensors)]))
    elif kind == "tensor_data" and tensors:
        t = tensors[a % len(tensors)]
        t.data = (t.data[: len(t.data) // 2], t.data + b"\0" * 64, b"", t.data[:3])[b % 4]
    elif kind == "tensor_values" and tensors:
        t = tensors[a % len(tensors)]
        if t.ggml_type == 0 and len(t.data) >= 4:
            val = struct.pack("<f", _INTERESTING_FLOATS[b % len(_INTERESTING_FLOATS)])
            buf = bytearray(t.data)
            if b % 2:
                buf[:] = val * (len(buf) // 4)
            else:
                p = (b * 4) % len(buf) // 4 * 4
                buf[p : p + 4] = val
            t.data = bytes(buf)
    elif kind == "version":
        spec.version = (0, 1, 2, 4, 0xFFFFFFFF, 0x03000000)[a % 6]
    elif kind == "alignment":
        val = (0, 1, 3, 8, 64, 1 << 20, 1 << 40, -1)[a % 8]
        spec.set("general.alignment", (U32, U64, STR, F32)[b % 4], val if b % 4 != 2 else str(val))
    elif kind == "lie_counts":
        target = ("n_tensors", "n_kv")[a % 2]
        base = len(tensors) if target == "n_tensors" else len(kvs)
        lie[target] = (base + 1, base - 1, 0, 1 << 40, (1 << 64) - 1, base * 2)[b % 6]
    elif kind == "lie_offset" and tensors:
        lie.setdefault("offsets", {})[a % len(tensors)] = (1, 31, 1 << 20, (1 << 64) - 32, 0, 4096)[b % 6]
    elif kind == "tokens":
        kv = spec.find("tokenizer.ggml.tokens")
        if kv is not None:
            toks = list(kv.value)
            bad = [(t if isinstance(t, bytes) else str(t).encode()) + b"\xff" for t in toks[:5]]
            kv.value = (toks[:1], toks + ["<|extra|>"], [], toks[:-1], bad, toks[: len(toks) // 2],
                        ["" for _ in toks], toks[:-1] + toks[:1])[b % 8]
    elif kind == "token_ids":
        key = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
               "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id")[a % 5]
        spec.set(key, (U32, I32, U64, STR)[b % 4], (1 << 31, -1, 100_000, 269, 268, 0)[b % 6]
                 if b % 4 != 3 else "1")


def _coerce(value: Any, vtype: int) -> Any:
    if vtype in (F32, F64):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            return 0.0
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 1


def parse_spec_bytes(data: bytes) -> GGUFSpec:
    """A spec from a well-formed GGUF in memory (the base files, never mutated bytes)."""
    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        return spec_from_file(f.name)


# --------------------------------------------------------------------------------------------- hypothesis
def strategies():  # type: ignore[no-untyped-def]
    """Hypothesis strategies (imported lazily: hypothesis is a dev dependency)."""
    from hypothesis import strategies as st

    ints = st.integers(min_value=0, max_value=1 << 20)
    byte_mut = st.one_of(
        st.tuples(st.just("flip"), ints, st.integers(0, 7)),
        st.tuples(st.just("set"), ints, st.sampled_from([0, 0xFF, 0x7F, 0x80, 0x01, 0x3F])),
        st.tuples(st.just("truncate"), ints),
        st.tuples(st.just("insert"), ints, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), ints, st.integers(1, 64)),
        st.tuples(st.just("dup"), ints, st.integers(1, 64)),
    )
    byte_muts = st.lists(byte_mut, min_size=1, max_size=4)
    json_leaf = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
        st.sampled_from([0, -1, 1, 2, 3, 4096, 65536, 1 << 31, 1 << 63, 1 << 64, 10**30, 1e308, -0.0, 0.5, "",
                         "../head.onnx", "/etc/passwd", "head.onnx", "x" * 5000, "\ud800", [], {}]),
        st.sampled_from([RawJSON("1" * 5000), RawJSON("1e999"), RawJSON("-1e999"), RawJSON("NaN"),
                         RawJSON("Infinity"), RawJSON("-Infinity"), RawJSON("[" * 5000 + "]" * 5000),
                         RawJSON('{"a":' * 3000 + "1" + "}" * 3000), RawJSON("1E400"), RawJSON('"\\ud800"'),
                         RawJSON("[" * 500 + "]" * 500), RawJSON("123456789012345678901234567890")]),
    )
    json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                               max_size=3),
                              max_leaves=6)
    return st, byte_muts, json_value


def manifest_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:  # type: ignore[type-arg]
    """Every key path of the base manifest (the root included)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += manifest_paths(v, (*prefix, k))
    return out


def pack_cases(base: PackParts):  # type: ignore[no-untyped-def]
    """Strategy of :class:`PackCase` focused on one pack input at a time, sometimes several."""
    st, byte_muts, json_value = strategies()
    paths = manifest_paths(base.manifest)
    small = st.integers(0, 1 << 16)
    manifest_mut = st.one_of(
        st.tuples(st.just("delete"), st.sampled_from(paths)),
        st.tuples(st.just("replace"), st.sampled_from(paths), json_value),
        st.tuples(st.just("add"), st.sampled_from(paths), st.text(max_size=8), json_value),
    )
    head_mut = st.tuples(st.sampled_from(HEAD_MUTATIONS), small, small)
    gguf_mut = st.tuples(st.sampled_from(GGUF_MUTATIONS), small, small)
    file_op = st.tuples(st.sampled_from(FILE_OPS), st.sampled_from([MANIFEST, HEAD, CONTROL]))
    none: Any = st.just([])
    return st.one_of(
        st.builds(PackCase, manifest_muts=st.lists(manifest_mut, min_size=1, max_size=3)),
        st.builds(PackCase, manifest_bytes_muts=byte_muts),
        st.builds(PackCase, head_muts=st.lists(head_mut, min_size=1, max_size=3)),
        st.builds(PackCase, head_bytes_muts=byte_muts),
        st.builds(PackCase, control_muts=st.lists(gguf_mut, min_size=1, max_size=3)),
        st.builds(PackCase, control_bytes_muts=byte_muts),
        st.builds(PackCase, file_op=file_op),
        st.builds(PackCase, head_muts=st.lists(head_mut, max_size=2), control_muts=st.lists(gguf_mut, max_size=2),
                  manifest_muts=st.lists(manifest_mut, max_size=2), head_bytes_muts=none | byte_muts,
                  recompute=st.booleans()),
    )


def runnable_pack_cases(base: PackParts):  # type: ignore[no-untyped-def]
    """Mutations that keep a pack loadable more often: numbers, layers, tau, weights. Used with llama.cpp."""
    st, _, json_value = strategies()
    numbers = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, -1, 1 << 31, 0.0, -0.0, 1e30, -1e30, 3.4e38, 1e-45, 1e308]),
                        st.floats(allow_nan=False, allow_infinity=False), st.integers(-8, 8))
    keys = [("alpha",), ("tau",), ("layers", "gate"), ("layers", "steer"), ("experts",), ("basis_rank",),
            ("mode",), ("vector_source",), ("method",), ("gate", "kind")]
    manifest_mut = st.one_of(
        st.tuples(st.just("replace"), st.sampled_from(keys), numbers),
        st.tuples(st.just("replace"), st.sampled_from([("mode",), ("vector_source",), ("method",), ("gate", "kind")]),
                  st.sampled_from(["exact", "fast", "head", "control", "static", "finesteer", "always", "scs"])),
    )
    small = st.integers(0, 1 << 16)
    head_mut = st.tuples(st.sampled_from(("init_values", "init_values", "attr", "retype_node")), small, small)
    gguf_mut = st.tuples(st.sampled_from(("tensor_values", "tensor_name", "tensor_dup", "kv_value")), small, small)
    return st.builds(PackCase, manifest_muts=st.lists(manifest_mut, max_size=3),
                     head_muts=st.lists(head_mut, max_size=2), control_muts=st.lists(gguf_mut, max_size=2))


@dataclass
class ModelCase:
    gguf_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    header_only: bool = True
    """Byte mutations hit the header (metadata and tensor directory), where parsers live."""


def model_cases():  # type: ignore[no-untyped-def]
    st, byte_muts, _ = strategies()
    small = st.integers(0, 1 << 16)
    gguf_mut = st.tuples(st.sampled_from(GGUF_MUTATIONS), small, small)
    return st.one_of(
        st.builds(ModelCase, gguf_muts=st.lists(gguf_mut, min_size=1, max_size=3)),
        st.builds(ModelCase, bytes_muts=byte_muts, header_only=st.booleans()),
    )


def build_model_case(base: bytes, header_len: int, case: ModelCase) -> bytes:
    data = apply_gguf_mutations(base, case.gguf_muts) if case.gguf_muts else base
    if case.bytes_muts:
        if case.header_only:
            head = apply_byte_mutations(data[:header_len], case.bytes_muts)
            data = head + data[header_len:]
        else:
            data = apply_byte_mutations(data, case.bytes_muts)
    return data


def gguf_header_len(data: bytes) -> int:
    """Where tensor data starts (end of the tensor directory, aligned), via our own reader."""
    from ..gguf_file import parse_gguf_bytes

    g = parse_gguf_bytes(data)
    return min((t.offset for t in g.tensors), default=len(data))


# --------------------------------------------------------------------------------------------- the worker
@dataclass(frozen=True)
class Outcome:
    kind: str
    """``ok`` (accepted), ``typed`` (one of our errors), ``bug`` (another exception), ``crash`` (the
    process died), ``hang`` (no answer in time) or ``memory`` (peak RSS over the limit)."""
    error: str = ""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in ("bug", "crash", "hang", "memory")

    def __str__(self) -> str:
        return f"{self.kind}: {self.error} {self.detail}".strip()


class FuzzWorker:
    """A persistent ``python -m finesteer_edge.testing.fuzz_worker`` that evaluates one case per request.

    A crash, a hang (no answer within ``timeout``) or a peak RSS above ``rss_limit_mb`` becomes a failing
    :class:`Outcome` and the worker is restarted for the next case. ``training=True`` imports torch, onnx
    and scikit-learn at start-up (before the address-space cap), for the training-side targets.
    """

    def __init__(self, *, timeout: float = 60.0, rss_limit_mb: int = 1500, log_dir: str | Path | None = None,
                 training: bool = False) -> None:
        self.training = training
        self.timeout = timeout
        self.rss_limit_mb = rss_limit_mb
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="fuzzworker-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.cases = 0
        self._buf = b""
        self._eof = False

    def _start(self) -> None:
        # GGML_NO_BACKTRACE: on GGML_ASSERT, ggml would attach gdb to print a backtrace (tens of seconds).
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "GGML_NO_BACKTRACE": "1"}
        self._log = open(self.log_dir / f"worker-{self.restarts}.log", "wb")  # noqa: SIM115 - closed in _stop
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finesteer_edge.testing.fuzz_worker", str(self.rss_limit_mb),
             *(["--training"] if self.training else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
        )
        self._buf = b""
        ready = self._read_line(120.0)
        if ready is None or json.loads(ready).get("ready") is not True:
            raise RuntimeError(f"fuzz worker did not start; see {self.log_dir}")

    def _stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.proc = None
            self._log.close()

    def _read_line(self, timeout: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        self._eof = False
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self._eof = True
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def run(self, op: str, **kwargs: Any) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        self.cases += 1
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._read_line(self.timeout)
        if line is None:
            try:  # EOF comes before the exit status: give a dying worker a moment to be reaped
                code = self.proc.wait(timeout=10) if self._eof else None
            except subprocess.TimeoutExpired:
                code = None
            alive = code is None
            self._stop()
            tail = self._log_tail()
            self.restarts += 1
            if alive:
                return Outcome("hang", f"no answer in {self.timeout:.0f}s", tail)
            return Outcome("crash", f"worker died with {_signal_name(code)}", tail)
        reply = json.loads(line)
        if reply.get("maxrss_mb", 0) > self.rss_limit_mb:
            self._stop()
            self.restarts += 1
            return Outcome("memory", f"peak RSS {reply['maxrss_mb']} MB > {self.rss_limit_mb} MB",
                           f"{reply.get('kind')}: {reply.get('error', '')}")
        return Outcome(reply["kind"], reply.get("error", ""), reply.get("detail", ""))

    def _log_tail(self) -> str:
        try:
            text = (self.log_dir / f"worker-{self.restarts}.log").read_text(errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return "\n".join(lines[-12:])

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> FuzzWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# --------------------------------------------------------------------------------------------- campaigns
MICRO_CONFIG_KW = dict(n_layer=4, n_embd=32, n_head=2, n_head_kv=1, n_ff=64, context_length=256)
"""A 225 KB llama GGUF: small enough that writing and loading thousands of mutants stays fast."""
RUN_PROMPTS = ("hi", "Tell me a story about the sea.")
TARGETS = ("pack", "control", "model", "pack_run")
TRAINING_TARGETS = ("checkpoint", "torch", "cvec_import", "activations", "jsonl")
"""The training-side formats (``finesteer_edge.testing.fuzz_training``): need torch, onnx and sklearn."""


@dataclass
class FuzzBase:
    """The valid inputs every mutation starts from, and scratch paths for the cases."""

    root: Path
    model: Path
    pack: Path
    parts: PackParts
    model_bytes: bytes
    header_len: int
    training: Any = None
    """A :class:`~finesteer_edge.testing.fuzz_training.TrainingBase` when created with ``training=True``."""

    @classmethod
    def create(cls, root: str | Path, *, training: bool = False) -> FuzzBase:
        from .packs import make_random_pack
        from .tiny_model import TinyConfig, write_tiny_llama

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        model = write_tiny_llama(root / "micro.gguf", TinyConfig(**MICRO_CONFIG_KW))  # type: ignore[arg-type]
        pack = make_random_pack(model, root / "base-pack", tau=-1.0, vector_norm=5.0)
        data = model.read_bytes()
        parts = PackParts.from_dir(pack)
        train_base = None
        if training:
            from .fuzz_training import TrainingBase

            train_base = TrainingBase.create(root / "training", model, parts.control)
        return cls(root, model, pack, parts, data, gguf_header_len(data), train_base)

    def run(self, worker: FuzzWorker, target: str, case: Any) -> Outcome:
        """Write ``case`` for ``target`` and evaluate it in the worker."""
        if target in TRAINING_TARGETS:
            if self.training is None:
                raise ValueError(f"target {target!r} needs FuzzBase.create(..., training=True)")
            return self.training.run(worker, target, case)  # type: ignore[no-any-return]
        if target in ("pack", "pack_run"):
            d = write_pack_case(self.parts, case, self.root / "case-pack", self.root / "outside")
            if target == "pack":
                return worker.run("pack", path=str(d))
            return worker.run("pack_run", path=str(d), model=str(self.model), prompts=list(RUN_PROMPTS))
        if target == "control":
            gguf_muts, byte_muts = case
            blob = apply_gguf_mutations(self.parts.control, gguf_muts) if gguf_muts else self.parts.control
            p = self.root / "case-control.gguf"
            p.write_bytes(apply_byte_mutations(blob, byte_muts))
            return worker.run("control", path=str(p), n_embd=MICRO_CONFIG_KW["n_embd"],
                              n_layer=MICRO_CONFIG_KW["n_layer"])
        if target == "model":
            p = self.root / "case-model.gguf"
            p.write_bytes(build_model_case(self.model_bytes, self.header_len, case))
            return worker.run("model", path=str(p), pack=str(self.pack))
        raise ValueError(f"unknown fuzz target {target!r}")

    def strategy(self, target: str):  # type: ignore[no-untyped-def]
        if target in TRAINING_TARGETS:
            if self.training is None:
                raise ValueError(f"target {target!r} needs FuzzBase.create(..., training=True)")
            return self.training.strategy(target)
        st, byte_muts, _ = strategies()
        if target == "pack":
            return pack_cases(self.parts)
        if target == "pack_run":
            return runnable_pack_cases(self.parts)
        if target == "model":
            return model_cases()
        if target == "control":
            small = st.integers(0, 1 << 16)
            gguf_mut = st.tuples(st.sampled_from(GGUF_MUTATIONS), small, small)
            return st.one_of(st.tuples(st.lists(gguf_mut, min_size=1, max_size=3), st.just([])),
                             st.tuples(st.just([]), byte_muts),
                             st.tuples(st.lists(gguf_mut, max_size=2), byte_muts))
        raise ValueError(f"unknown fuzz target {target!r}")


@dataclass
class CampaignResult:
    cases: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[tuple[str, Any, Outcome]] = field(default_factory=list)
    seconds: float = 0.0
    restarts: int = 0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def summary(self) -> str:
        lines = [f"{self.total} fuzz cases in {self.seconds:.1f}s ({self.restarts} worker restarts), "
                 f"{len(self.failures)} failures"]
        for target, n in self.cases.items():
            top = sorted(self.outcomes[target].items(), key=lambda kv: -kv[1])
            lines.append(f"  {target:9s} {n:6d} cases: " + ", ".join(f"{k} {v}" for k, v in top[:6]))
        for target, case, outcome in self.failures[:20]:
            lines.append(f"  FAILED {target}: {case!r}\n    {str(outcome)[:2000]}")
        return "\n".join(lines)


def run_campaign(base: FuzzBase, worker: FuzzWorker, budget: dict[str, int], *, seed: int = 0,
                 progress: Any = None) -> CampaignResult:
    """Run ``budget[target]`` hypothesis-generated cases per target; failures are collected, not raised,
    so the count is complete and every failing case is listed."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    result = CampaignResult()
    t0 = time.monotonic()

    def make(target: str, n: int, counts: dict[str, int]):  # type: ignore[no-untyped-def]
        @hseed(seed)
        @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=base.strategy(target))
        def one(case: Any) -> None:
            outcome = base.run(worker, target, case)
            key = f"{outcome.kind}:{outcome.error}" if outcome.error and outcome.kind != "bug" else outcome.kind
            counts[key] = counts.get(key, 0) + 1
            result.cases[target] += 1
            if outcome.failed:
                result.failures.append((target, case, outcome))
            if progress is not None and result.cases[target] % 500 == 0:
                progress(f"{target}: {result.cases[target]}/{n} ({time.monotonic() - t0:.0f}s)")

        return one

    for target, n in budget.items():
        result.outcomes[target] = {}
        result.cases[target] = 0
        make(target, n, result.outcomes[target])()
    result.seconds = time.monotonic() - t0
    result.restarts = worker.restarts
    return result
