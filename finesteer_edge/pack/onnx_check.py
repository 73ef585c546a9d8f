"""Static check of ``head.onnx`` before onnxruntime sees it: what a shared pack's head may contain.

onnxruntime will happily run more than a steering head needs, and some of it is unsafe for a file
users download: a model loaded from bytes may still read *external data* files relative to the current
working directory; contrib ops (``com.microsoft``) and other domains are not standard ONNX; control
flow (``Loop``, ``If``, ``Scan``) can spin; and shape-computing ops (``ConstantOfShape``, ``Expand``,
``Tile``, ...) or plain broadcasting between two initializers can ask for gigabytes at session start.
The runtime imports no ``onnx`` package, so this module walks the protobuf wire format itself, with
bounds, and accepts only:

- one graph in the default ONNX domain (no other opset imports, no model-local functions, no training
  info, no sparse tensors, no sub-graphs in attributes);
- nodes from :data:`ALLOWED_OPS`, a short list of standard ops whose output shape follows from the
  input shapes (no data-dependent shapes), which covers every head the converter writes;
- tensors that hold their own data (``float`` or ``int64``; no external data, no string data), with
  element counts that match the bytes present;
- a graph whose every value, with the runtime's real inputs ``[1, n_embd]``, has at most
  :data:`MAX_VALUE_ELEMENTS` elements, and whose matrix products cost at most :data:`MAX_MACS` in total.

Shapes are inferred here from the actual feed shapes, so the one run the loader makes at start-up
allocates what every later run allocates: a head that passes cannot grow memory per turn.
Anything else is a :class:`PackFormatError` naming what was refused.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import PackFormatError

MAX_NODES = 10_000
MAX_RANK = 8
MAX_VALUE_ELEMENTS = 1 << 24
"""64 MiB of float32 per intermediate value; a d=8192 head needs ~8k elements per value."""
MAX_MACS = 1 << 32
"""Total multiply-accumulates of MatMul/Gemm per run (a d=8192 head with a d x d MLP needs ~2**27)."""
MIN_OPSET, MAX_OPSET = 7, 30
MAX_TEXT = 1 << 20

_FLOAT, _INT64 = 1, 7
_ITEMSIZE = {_FLOAT: 4, _INT64: 8}

_UNARY = frozenset({"Identity", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal",
                    "Erf", "Softmax", "LogSoftmax"})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})
_REDUCE = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2"})
ALLOWED_OPS = _UNARY | _BROADCAST | _REDUCE | {"Constant", "MatMul", "Gemm", "Reshape", "Transpose", "Flatten"}

# Attribute types (onnx.AttributeProto.AttributeType) a head may use: FLOAT, INT, STRING, TENSOR, FLOATS, INTS.
_ATTR_OK = {1, 2, 3, 4, 6, 7}


@dataclass
class _Tensor:
    dims: tuple[int, ...]
    dtype: int
    values: np.ndarray | None = None
    """Decoded values of small int64 tensors (Reshape shapes, reduce axes); None otherwise."""


@dataclass
class _Attr:
    type: int = 0
    i: int = 0
    f: float = 0.0
    ints: list[int] = field(default_factory=list)
    floats_n: int = 0
    t: _Tensor | None = None


@dataclass
class _Node:
    op: str = ""
    domain: str = ""
    inputs: list[bytes] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)
    attrs: dict[str, _Attr] = field(default_factory=dict)


@dataclass
class _Graph:
    nodes: list[_Node] = field(default_factory=list)
    inits: dict[bytes, _Tensor] = field(default_factory=dict)
    inputs: list[bytes] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)


class _Reject(Exception):
    pass


# ---------------------------------------------------------------------------------------------- wire format
def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        if pos >= end:
            raise _Reject("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & ((1 << 64) - 1), pos
        shift += 7
    raise _Reject("varint longer than 10 bytes")


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) for each field of one message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise _Reject("field number 0")
        if wt == 0:
            v, pos = _varint(buf, pos, end)
            yield num, wt, v, pos
        elif wt == 1:
            if pos + 8 > end:
                raise _Reject("truncated fixed64")
            yield num, wt, pos, pos + 8
            pos += 8
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if n > end - pos:
                raise _Reject("length-delimited field runs past its message")
            yield num, wt, pos, pos + n
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise _Reject("truncated fixed32")
            yield num, wt, pos, pos + 4
            pos += 4
        else:
            raise _Reject(f"unsupported wire type {wt}")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(buf: memoryview, wt: int, a: int, b: int, out: list[int], limit: int) -> None:
    if wt == 0:
        out.append(_signed(a))
    elif wt == 2:
        pos = a
        while pos < b:
            v, pos = _varint(buf, pos, b)
            out.append(_signed(v))
            if len(out) > limit:
                raise _Reject("too many repeated values")
    else:
        raise _Reject("wrong wire type for an integer field")


def _text(buf: memoryview, wt: int, a: int, b: int) -> bytes:
    if wt != 2:
        raise _Reject("wrong wire type for a string field")
    if b - a > MAX_TEXT:  # names and doc strings are copied: keep a hostile 1 GB "name" out of memory
        raise _Reject(f"a string field of {b - a} bytes, over the {MAX_TEXT}-byte limit")
    return bytes(buf[a:b])


class _Once:
    """Refuses a repeated singular field: protobuf would merge or overwrite it, hiding content."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.seen: set[int] = set()

    def __call__(self, num: int) -> None:
        if num in self.seen:
            raise _Reject(f"{self.what}: field {num} appears twice")
        self.seen.add(num)


# ---------------------------------------------------------------------------------------------- messages
def _tensor(buf: memoryview, a: int, b: int, what: str) -> _Tensor:
    once = _Once(what)
    dims: list[int] = []
    dtype = 0
    raw_len: int | None = None
    raw_at = (0, 0)
    typed = {4: 0, 5: 0, 7: 0, 10: 0, 11: 0}
    int64_vals: list[int] = []
    for num, wt, x, y in _fields(buf, a, b):
        if num == 1:
            _packed_varints(buf, wt, x, y, dims, MAX_RANK)
        elif num == 2:
            once(num)
            if wt != 0:
                raise _Reject(f"{what}: bad data_type")
            dtype = x
        elif num == 9:
            once(num)
            if wt != 2:
                raise _Reject(f"{what}: bad raw_data")
            raw_len, raw_at = y - x, (x, y)
        elif num in (4, 5, 7, 10, 11):
            width = {4: 4, 10: 8}.get(num)  # float and double are fixed-width; the int fields are varints
            if wt == 2 and width:
                if (y - x) % width:
                    raise _Reject(f"{what}: ragged packed data")
                typed[num] += (y - x) // width
            elif wt in (1, 5) and width:
                typed[num] += 1
            elif num in (5, 7, 11):
                vals: list[int] = []
                _packed_varints(buf, wt, x, y, vals, 1 << 40)
                typed[num] += len(vals)
                if num == 7 and len(int64_vals) < 64:
                    int64_vals.extend(vals)
            else:
                raise _Reject(f"{what}: bad typed data")
        elif num in (8, 12):
            once(num)
            _text(buf, wt, x, y)
        elif num == 16:
            _string_entry(buf, wt, x, y)
        elif num == 14:
            once(num)
            if wt != 0 or x != 0:
                raise _Reject(f"{what} uses external data; a head must hold its own weights")
        elif num == 13:
            raise _Reject(f"{what} uses external data; a head must hold its own weights")
        elif num == 6:
            raise _Reject(f"{what} holds string data")
        else:
            raise _Reject(f"{what}: unexpected tensor field {num}")
    if len(dims) > MAX_RANK or any(d < 0 for d in dims):
        raise _Reject(f"{what}: bad dimensions {dims[:MAX_RANK + 1]}")
    if dtype not in _ITEMSIZE:
        raise _Reject(f"{what}: data type {dtype} is not float32 or int64")
    n = math.prod(dims)
    typed_field = 4 if dtype == _FLOAT else 7
    if any(c for k, c in typed.items() if k != typed_field):
        raise _Reject(f"{what}: data stored in a field that does not match its type")
    if raw_len is not None and typed[typed_field]:
        raise _Reject(f"{what}: both raw and typed data")
    have = raw_len // _ITEMSIZE[dtype] if raw_len is not None else typed[typed_field]
    if (raw_len is not None and raw_len % _ITEMSIZE[dtype]) or have != n:
        raise _Reject(f"{what}: dimensions {dims} do not match the data present")
    values = None
    if dtype == _INT64 and n <= 64:
        if raw_len is not None:
            values = np.frombuffer(bytes(buf[raw_at[0]:raw_at[1]]), dtype="<i8").astype(np.int64)
        else:
            values = np.asarray(int64_vals[:n], dtype=np.int64)
        values = values.reshape(dims)
    return _Tensor(tuple(dims), dtype, values)


def _string_entry(buf: memoryview, wt: int, a: int, b: int) -> None:
    if wt != 2:
        raise _Reject("bad metadata entry")
    for num, wt2, x, y in _fields(buf, a, b):
        if num not in (1, 2):
            raise _Reject("bad metadata entry field")
        _text(buf, wt2, x, y)


def _attribute(buf: memoryview, a: int, b: int, node_what: str) -> tuple[str, _Attr]:
    once = _Once(f"{node_what} attribute")
    name = b""
    attr = _Attr()
    for num, wt, x, y in _fields(buf, a, b):
        if num == 1:
            once(num)
            name = _text(buf, wt, x, y)
        elif num == 20:
            once(num)
            if wt != 0:
                raise _Reject("bad attribute type")
            attr.type = x
        elif num == 2:
            once(num)
            if wt != 5:
                raise _Reject("bad float attribute")
            attr.f = struct.unpack_from("<f", buf, x)[0]
        elif num == 3:
            once(num)
            if wt != 0:
                raise _Reject("bad int attribute")
            attr.i = _signed(x)
        elif num in (4, 13):
            once(num)
            _text(buf, wt, x, y)
        elif num == 5:
            once(num)
            if wt != 2:
                raise _Reject("bad tensor attribute")
            attr.t = _tensor(buf, x, y, f"{node_what} attribute tensor")
        elif num == 7:
            if wt == 2:
                if (y - x) % 4:
                    raise _Reject("ragged float list")
                attr.floats_n += (y - x) // 4
            elif wt == 5:
                attr.floats_n += 1
            else:
                raise _Reject("bad float list")
        elif num == 8:
            _packed_varints(buf, wt, x, y, attr.ints, 1 << 16)
        elif num == 9:
            _text(buf, wt, x, y)
        elif num in (6, 11):
            raise _Reject(f"{node_what} has a sub-graph attribute (control flow is not allowed in a head)")
        else:
            raise _Reject(f"{node_what}: attribute field {num} is not allowed in a head")
    key = name.decode("utf-8", errors="replace")
    if attr.type not in _ATTR_OK:
        raise _Reject(f"{node_what}: attribute {key!r} has type {attr.type}, not allowed in a head")
    return key, attr


def _node(buf: memoryview, a: int, b: int, index: int) -> _Node:
    once = _Once(f"node {index}")
    node = _Node()
    for num, wt, x, y in _fields(buf, a, b):
        if num == 1:
            node.inputs.append(_text(buf, wt, x, y))
        elif num == 2:
            node.outputs.append(_text(buf, wt, x, y))
        elif num in (3, 6):
            once(num)
            _text(buf, wt, x, y)
        elif num == 4:
            once(num)
            node.op = _text(buf, wt, x, y).decode("utf-8", errors="replace")
        elif num == 7:
            once(num)
            node.domain = _text(buf, wt, x, y).decode("utf-8", errors="replace")
        elif num == 5:
            if wt != 2:
                raise _Reject("bad attribute")
            key, attr = _attribute(buf, x, y, f"node {index} ({node.op or '?'})")
            if key in node.attrs:
                raise _Reject(f"node {index}: attribute {key!r} given twice")
            node.attrs[key] = attr
        elif num == 9:
            _string_entry(buf, wt, x, y)
        else:
            raise _Reject(f"node {index}: field {num} is not allowed in a head")
    return node


def _value_info_name(buf: memoryview, a: int, b: int) -> bytes:
    name = None
    for num, wt, x, y in _fields(buf, a, b):
        if num == 1:
            if name is not None:
                raise _Reject("value info named twice")
            name = _text(buf, wt, x, y)
        elif num not in (2, 3, 4) or wt != 2:
            raise _Reject(f"value info field {num} is not allowed")
    if name is None:
        raise _Reject("unnamed graph input or output")
    return name


def _graph(buf: memoryview, a: int, b: int) -> _Graph:
    once = _Once("graph")
    g = _Graph()
    for num, wt, x, y in _fields(buf, a, b):
        if num == 1:
            if wt != 2:
                raise _Reject("bad node")
            if len(g.nodes) >= MAX_NODES:
                raise _Reject(f"more than {MAX_NODES} nodes")
            g.nodes.append(_node(buf, x, y, len(g.nodes)))
        elif num in (2, 10):
            once(num)
            _text(buf, wt, x, y)
        elif num == 5:
            if wt != 2:
                raise _Reject("bad initializer")
            t_name = _tensor_name(buf, x, y)
            if t_name in g.inits:
                raise _Reject(f"initializer {t_name.decode('utf-8', 'replace')!r} defined twice")
            g.inits[t_name] = _tensor(buf, x, y, f"initializer {t_name.decode('utf-8', 'replace')!r}")
        elif num == 11:
            g.inputs.append(_value_info_name(buf, x, y))
        elif num == 12:
            g.outputs.append(_value_info_name(buf, x, y))
        elif num == 13:
            _value_info_name(buf, x, y)
        elif num == 16:
            _string_entry(buf, wt, x, y)
        elif num == 15:
            raise _Reject("sparse initializers are not allowed in a head")
        else:
            raise _Reject(f"graph field {num} is not allowed in a head")
    return g


def _tensor_name(buf: memoryview, a: int, b: int) -> bytes:
    for num, wt, x, y in _fields(buf, a, b):
        if num == 8:
            return _text(buf, wt, x, y)
    return b""


def _model(buf: memoryview) -> tuple[_Graph, dict[str, int]]:
    once = _Once("model")
    graph: _Graph | None = None
    opsets: dict[str, int] = {}
    for num, wt, x, y in _fields(buf, 0, len(buf)):
        if num == 1:
            once(num)
            if wt != 0 or not 3 <= x <= 64:
                raise _Reject("bad ir_version")
        elif num in (2, 3, 4, 6):
            once(num)
            _text(buf, wt, x, y)
        elif num == 5:
            once(num)
            if wt != 0:
                raise _Reject("bad model_version")
        elif num == 7:
            once(num)
            if wt != 2:
                raise _Reject("bad graph")
            graph = _graph(buf, x, y)
        elif num == 8:
            if wt != 2:
                raise _Reject("bad opset import")
            domain, version = "", None
            for n2, w2, x2, y2 in _fields(buf, x, y):
                if n2 == 1:
                    domain = _text(buf, w2, x2, y2).decode("utf-8", errors="replace")
                elif n2 == 2 and w2 == 0:
                    version = _signed(x2)
                else:
                    raise _Reject("bad opset import field")
            if domain in opsets or version is None:
                raise _Reject(f"opset import for domain {domain!r} repeated or without version")
            opsets[domain] = version
        elif num == 14:
            _string_entry(buf, wt, x, y)
        elif num == 25:
            raise _Reject("model-local functions are not allowed in a head")
        elif num == 20:
            raise _Reject("training info is not allowed in a head")
        else:
            raise _Reject(f"model field {num} is not allowed in a head")
    if graph is None:
        raise _Reject("no graph")
    return graph, opsets


# ---------------------------------------------------------------------------------------------- shapes
def _broadcast(shapes: list[tuple[int, ...]], what: str) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise _Reject(f"{what}: shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _matmul(a: tuple[int, ...], b: tuple[int, ...], what: str) -> tuple[tuple[int, ...], int]:
    if not a or not b:
        raise _Reject(f"{what}: MatMul of a scalar")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise _Reject(f"{what}: MatMul shapes {a} x {b} do not match")
    batch = _broadcast([a2[:-2], b2[:-2]], what) if len(a2) > 2 or len(b2) > 2 else ()
    out = (*batch, *((a2[-2],) if len(a) > 1 else ()), *((b2[-1],) if len(b) > 1 else ()))
    return out, math.prod(batch) * a2[-2] * a2[-1] * b2[-1]


def _axis(ax: int, rank: int, what: str) -> int:
    if not -rank <= ax < max(rank, 1):
        raise _Reject(f"{what}: axis {ax} out of range for rank {rank}")
    return ax % max(rank, 1)


def _infer(g: _Graph, opset: int, n_embd: int) -> None:
    shapes: dict[bytes, tuple[int, ...]] = {}
    consts: dict[bytes, np.ndarray] = {}
    for name in g.inputs:
        if name in shapes or name in g.inits:
            raise _Reject(f"graph input {name.decode('utf-8', 'replace')!r} defined twice")
        shapes[name] = (1, n_embd)
    for name, t in g.inits.items():
        shapes[name] = t.dims
        if t.values is not None:
            consts[name] = t.values
    macs = 0
    for i, node in enumerate(g.nodes):
        what = f"node {i} ({node.op})"
        if node.domain not in ("", "ai.onnx"):
            raise _Reject(f"{what} is from domain {node.domain!r}; a head uses standard ONNX ops only")
        if node.op not in ALLOWED_OPS:
            allowed = ", ".join(sorted(ALLOWED_OPS))
            raise _Reject(f"{what}: op {node.op!r} is not allowed in a head (allowed: {allowed})")
        if len(node.outputs) != 1 or not node.outputs[0]:
            raise _Reject(f"{what} must have exactly one output")
        ins: list[tuple[int, ...] | None] = []
        for name in node.inputs:
            if not name:
                ins.append(None)
                continue
            if name not in shapes:
                raise _Reject(f"{what} reads {name.decode('utf-8', 'replace')!r} before it is defined")
            ins.append(shapes[name])
        shape, value, cost = _node_shape(node, ins, [consts.get(n) for n in node.inputs], opset, what)
        macs += cost
        if macs > MAX_MACS:
            raise _Reject(f"the head needs more than {MAX_MACS} multiply-adds per run")
        if math.prod(shape) > MAX_VALUE_ELEMENTS or len(shape) > MAX_RANK:
            raise _Reject(f"{what} produces a {shape} value, over the {MAX_VALUE_ELEMENTS}-element limit")
        out = node.outputs[0]
        if out in shapes:
            raise _Reject(f"{what} redefines {out.decode('utf-8', 'replace')!r}")
        shapes[out] = shape
        if value is not None:
            consts[out] = value
    for name in g.outputs:
        if name not in shapes:
            raise _Reject(f"graph output {name.decode('utf-8', 'replace')!r} is never computed")


def _node_shape(node: _Node, ins: list[tuple[int, ...] | None], vals: list[np.ndarray | None], opset: int,
                what: str) -> tuple[tuple[int, ...], np.ndarray | None, int]:
    op, at = node.op, node.attrs

    def need(n_min: int, n_max: int) -> list[tuple[int, ...]]:
        present = [s for s in ins if s is not None]
        if not n_min <= len(ins) <= n_max or len(present) < n_min or any(s is None for s in ins[:n_min]):
            raise _Reject(f"{what}: wrong number of inputs")
        return present

    if op == "Constant":
        need(0, 0)
        if len(at) != 1:
            raise _Reject(f"{what}: a Constant needs exactly one value attribute")
        key, a = next(iter(at.items()))
        if key == "value" and a.t is not None:
            return a.t.dims, a.t.values, 0
        if key in ("value_float", "value_int"):
            return (), (np.asarray(a.i, np.int64) if key == "value_int" else None), 0
        if key == "value_ints":
            return (len(a.ints),), np.asarray(a.ints, np.int64), 0
        if key == "value_floats":
            return (a.floats_n,), None, 0
        raise _Reject(f"{what}: Constant attribute {key!r} is not allowed")
    if op in _UNARY:
        return need(1, 1)[0], None, 0
    if op in _BROADCAST:
        present = need(2, 2) if op not in ("Max", "Min") else need(1, 64)
        return _broadcast(present, what), None, 0
    if op == "MatMul":
        a, b = need(2, 2)
        shape, cost = _matmul(a, b, what)
        return shape, None, cost
    if op == "Gemm":
        present = need(2, 3)
        a, b = present[0], present[1]
        if len(a) != 2 or len(b) != 2:
            raise _Reject(f"{what}: Gemm needs 2-D inputs")
        if at.get("transA", _Attr()).i:
            a = a[::-1]
        if at.get("transB", _Attr()).i:
            b = b[::-1]
        shape, cost = _matmul(a, b, what)
        if len(present) == 3 and _broadcast([present[2], shape], what) != shape:
            raise _Reject(f"{what}: Gemm bias does not broadcast to {shape}")
        return shape, None, cost
    if op == "Reshape":
        data, target = need(2, 2)
        spec = vals[1]
        if spec is None or spec.ndim != 1:
            raise _Reject(f"{what}: the target shape must be a constant 1-D int64 tensor")
        allow_zero = at.get("allowzero", _Attr()).i
        dims = [int(d) for d in spec]
        out = []
        for j, d in enumerate(dims):
            if d == 0 and not allow_zero:
                if j >= len(data):
                    raise _Reject(f"{what}: bad 0 in the target shape")
                out.append(data[j])
            else:
                out.append(d)
        n = math.prod(data)
        if out.count(-1) > 1 or any(d < -1 for d in out):
            raise _Reject(f"{what}: bad target shape {dims}")
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            if known == 0 or n % known:
                raise _Reject(f"{what}: cannot reshape {data} to {dims}")
            out[out.index(-1)] = n // known
        if math.prod(out) != n:
            raise _Reject(f"{what}: cannot reshape {data} to {dims}")
        return tuple(out), None, 0
    if op == "Transpose":
        (data,) = need(1, 1)
        perm = at["perm"].ints if "perm" in at else list(range(len(data)))[::-1]
        if sorted(perm) != list(range(len(data))):
            raise _Reject(f"{what}: bad permutation {perm}")
        return tuple(data[p] for p in perm), None, 0
    if op == "Flatten":
        (data,) = need(1, 1)
        ax = at.get("axis", _Attr(i=1)).i
        if not -len(data) <= ax <= len(data):
            raise _Reject(f"{what}: axis {ax} out of range")
        ax = ax + len(data) if ax < 0 else ax
        return (math.prod(data[:ax]), math.prod(data[ax:])), None, 0
    if op in _REDUCE:
        present = need(1, 2)
        data = present[0]
        if "axes" in at:
            axes = list(at["axes"].ints)
        elif len(present) == 2:
            spec = vals[1]
            if spec is None or spec.ndim != 1:
                raise _Reject(f"{what}: reduce axes must be a constant 1-D int64 tensor")
            axes = [int(x) for x in spec]
        else:
            axes = []
        keep = at.get("keepdims", _Attr(i=1)).i
        if not axes:
            if at.get("noop_with_empty_axes", _Attr()).i:
                return data, None, 0
            axes = list(range(len(data)))
        norm = {_axis(x, len(data), what) for x in axes}
        out = tuple((1 if keep else None) if j in norm else d for j, d in enumerate(data))
        return tuple(d for d in out if d is not None), None, 0
    raise _Reject(f"{what}: op {op!r} is not allowed")  # pragma: no cover - ALLOWED_OPS is checked first


# ---------------------------------------------------------------------------------------------- entry point
def check_head_onnx(data: bytes, n_embd: int, *, name: str = "head.onnx") -> None:
    """Refuse a head that is more than a bounded, standard-ops ONNX graph (see the module docstring)."""
    try:
        graph, opsets = _model(memoryview(data))
        if set(opsets) - {"", "ai.onnx"}:
            others = sorted(set(opsets) - {"", "ai.onnx"})
            raise _Reject(f"imports non-standard operator domains {others}; a head uses standard ONNX ops only")
        if len(opsets) != 1:
            raise _Reject("needs exactly one opset import, for the default ONNX domain")
        opset = next(iter(opsets.values()))
        if not MIN_OPSET <= opset <= MAX_OPSET:
            raise _Reject(f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}")
        _infer(graph, opset, n_embd)
    except _Reject as exc:
        raise PackFormatError(f"{name} is not an acceptable steering head: {exc}") from None
    except RecursionError:  # pragma: no cover - nesting is bounded by the message structure
        raise PackFormatError(f"{name} is nested too deeply") from None
