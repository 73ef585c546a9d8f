"""A bounded reader of the protobuf wire format, for ONNX heads: bytes -> :class:`Graph`, without ``onnx``.

The runtime imports no ``onnx`` package (``import finesteer_edge`` stays light), so ``head.onnx`` is
read here, field by field, before onnxruntime sees it. The reader is the first half of the security check
(the second, op allowlist and shape bounds, is ``onnx_check.py``): every length is checked against its
message, strings are capped at :data:`MAX_TEXT`, a repeated singular field is refused (protobuf would
merge it and could hide nodes), and what a head may not hold is refused where it is met: external or
string data, sub-graphs in attributes, sparse initializers, model-local functions, training info, any
field it does not know. Errors are :class:`Rejected` with a message naming what was refused.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

MAX_NODES = 10_000
MAX_RANK = 8
MAX_TEXT = 1 << 20

FLOAT, INT64 = 1, 7
_ITEMSIZE = {FLOAT: 4, INT64: 8}

# Attribute types (onnx.AttributeProto.AttributeType) a head may use: FLOAT, INT, STRING, TENSOR, FLOATS, INTS.
_ATTR_OK = {1, 2, 3, 4, 6, 7}


@dataclass
class Tensor:
    dims: tuple[int, ...]
    dtype: int
    values: np.ndarray | None = None
    """Decoded values of small int64 tensors (Reshape shapes, reduce axes); None otherwise."""


@dataclass
class Attr:
    type: int = 0
    i: int = 0
    f: float = 0.0
    ints: list[int] = field(default_factory=list)
    floats_n: int = 0
    t: Tensor | None = None


@dataclass
class Node:
    op: str = ""
    domain: str = ""
    inputs: list[bytes] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)
    attrs: dict[str, Attr] = field(default_factory=dict)


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    inits: dict[bytes, Tensor] = field(default_factory=dict)
    inputs: list[bytes] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)


class Rejected(Exception):
    """What the reader or the checker refuses; ``check_head_onnx`` turns it into a ``PackFormatError``."""


# ---------------------------------------------------------------------------------------------- wire format
def read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        if pos >= end:
            raise Rejected("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & ((1 << 64) - 1), pos
        shift += 7
    raise Rejected("varint longer than 10 bytes")


def read_fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) for each field of one message."""
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise Rejected("field number 0")
        if wt == 0:
            v, pos = read_varint(buf, pos, end)
            yield num, wt, v, pos
        elif wt == 1:
            if pos + 8 > end:
                raise Rejected("truncated fixed64")
            yield num, wt, pos, pos + 8
            pos += 8
        elif wt == 2:
            n, pos = read_varint(buf, pos, end)
            if n > end - pos:
                raise Rejected("length-delimited field runs past its message")
            yield num, wt, pos, pos + n
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise Rejected("truncated fixed32")
            yield num, wt, pos, pos + 4
            pos += 4
        else:
            raise Rejected(f"unsupported wire type {wt}")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(buf: memoryview, wt: int, a: int, b: int, out: list[int], limit: int) -> None:
    if wt == 0:
        out.append(_signed(a))
    elif wt == 2:
        pos = a
        while pos < b:
            v, pos = read_varint(buf, pos, b)
            out.append(_signed(v))
            if len(out) > limit:
                raise Rejected("too many repeated values")
    else:
        raise Rejected("wrong wire type for an integer field")


def _text(buf: memoryview, wt: int, a: int, b: int) -> bytes:
    if wt != 2:
        raise Rejected("wrong wire type for a string field")
    if b - a > MAX_TEXT:  # names and doc strings are copied: keep a hostile 1 GB "name" out of memory
        raise Rejected(f"a string field of {b - a} bytes, over the {MAX_TEXT}-byte limit")
    return bytes(buf[a:b])


class _Once:
    """Refuses a repeated singular field: protobuf would merge or overwrite it, hiding content."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.seen: set[int] = set()

    def __call__(self, num: int) -> None:
        if num in self.seen:
            raise Rejected(f"{self.what}: field {num} appears twice")
        self.seen.add(num)


# ---------------------------------------------------------------------------------------------- messages
def _tensor(buf: memoryview, a: int, b: int, what: str) -> Tensor:
    once = _Once(what)
    dims: list[int] = []
    dtype = 0
    raw_len: int | None = None
    raw_at = (0, 0)
    typed = {4: 0, 5: 0, 7: 0, 10: 0, 11: 0}
    int64_vals: list[int] = []
    for num, wt, x, y in read_fields(buf, a, b):
        if num == 1:
            _packed_varints(buf, wt, x, y, dims, MAX_RANK)
        elif num == 2:
            once(num)
            if wt != 0:
                raise Rejected(f"{what}: bad data_type")
            dtype = x
        elif num == 9:
            once(num)
            if wt != 2:
                raise Rejected(f"{what}: bad raw_data")
            raw_len, raw_at = y - x, (x, y)
        elif num in (4, 5, 7, 10, 11):
            width = {4: 4, 10: 8}.get(num)  # float and double are fixed-width; the int fields are varints
            if wt == 2 and width:
                if (y - x) % width:
                    raise Rejected(f"{what}: ragged packed data")
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
                raise Rejected(f"{what}: bad typed data")
        elif num in (8, 12):
            once(num)
            _text(buf, wt, x, y)
        elif num == 16:
            _string_entry(buf, wt, x, y)
        elif num == 14:
            once(num)
            if wt != 0 or x != 0:
                raise Rejected(f"{what} uses external data; a head must hold its own weights")
        elif num == 13:
            raise Rejected(f"{what} uses external data; a head must hold its own weights")
        elif num == 6:
            raise Rejected(f"{what} holds string data")
        else:
            raise Rejected(f"{what}: unexpected tensor field {num}")
    if len(dims) > MAX_RANK or any(d < 0 for d in dims):
        raise Rejected(f"{what}: bad dimensions {dims[:MAX_RANK + 1]}")
    if dtype not in _ITEMSIZE:
        raise Rejected(f"{what}: data type {dtype} is not float32 or int64")
    n = math.prod(dims)
    typed_field = 4 if dtype == FLOAT else 7
    if any(c for k, c in typed.items() if k != typed_field):
        raise Rejected(f"{what}: data stored in a field that does not match its type")
    if raw_len is not None and typed[typed_field]:
        raise Rejected(f"{what}: both raw and typed data")
    have = raw_len // _ITEMSIZE[dtype] if raw_len is not None else typed[typed_field]
    if (raw_len is not None and raw_len % _ITEMSIZE[dtype]) or have != n:
        raise Rejected(f"{what}: dimensions {dims} do not match the data present")
    values = None
    if dtype == INT64 and n <= 64:
        if raw_len is not None:
            values = np.frombuffer(bytes(buf[raw_at[0]:raw_at[1]]), dtype="<i8").astype(np.int64)
        else:
            values = np.asarray(int64_vals[:n], dtype=np.int64)
        values = values.reshape(dims)
    return Tensor(tuple(dims), dtype, values)


def _string_entry(buf: memoryview, wt: int, a: int, b: int) -> None:
    if wt != 2:
        raise Rejected("bad metadata entry")
    for num, wt2, x, y in read_fields(buf, a, b):
        if num not in (1, 2):
            raise Rejected("bad metadata entry field")
        _text(buf, wt2, x, y)


def _attribute(buf: memoryview, a: int, b: int, node_what: str) -> tuple[str, Attr]:
    once = _Once(f"{node_what} attribute")
    name = b""
    attr = Attr()
    for num, wt, x, y in read_fields(buf, a, b):
        if num == 1:
            once(num)
            name = _text(buf, wt, x, y)
        elif num == 20:
            once(num)
            if wt != 0:
                raise Rejected("bad attribute type")
            attr.type = x
        elif num == 2:
            once(num)
            if wt != 5:
                raise Rejected("bad float attribute")
            attr.f = struct.unpack_from("<f", buf, x)[0]
        elif num == 3:
            once(num)
            if wt != 0:
                raise Rejected("bad int attribute")
            attr.i = _signed(x)
        elif num in (4, 13):
            once(num)
            _text(buf, wt, x, y)
        elif num == 5:
            once(num)
            if wt != 2:
                raise Rejected("bad tensor attribute")
            attr.t = _tensor(buf, x, y, f"{node_what} attribute tensor")
        elif num == 7:
            if wt == 2:
                if (y - x) % 4:
                    raise Rejected("ragged float list")
                attr.floats_n += (y - x) // 4
            elif wt == 5:
                attr.floats_n += 1
            else:
                raise Rejected("bad float list")
        elif num == 8:
            _packed_varints(buf, wt, x, y, attr.ints, 1 << 16)
        elif num == 9:
            _text(buf, wt, x, y)
        elif num in (6, 11):
            raise Rejected(f"{node_what} has a sub-graph attribute (control flow is not allowed in a head)")
        else:
            raise Rejected(f"{node_what}: attribute field {num} is not allowed in a head")
    key = name.decode("utf-8", errors="replace")
    if attr.type not in _ATTR_OK:
        raise Rejected(f"{node_what}: attribute {key!r} has type {attr.type}, not allowed in a head")
    return key, attr


def _node(buf: memoryview, a: int, b: int, index: int) -> Node:
    once = _Once(f"node {index}")
    node = Node()
    for num, wt, x, y in read_fields(buf, a, b):
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
                raise Rejected("bad attribute")
            key, attr = _attribute(buf, x, y, f"node {index} ({node.op or '?'})")
            if key in node.attrs:
                raise Rejected(f"node {index}: attribute {key!r} given twice")
            node.attrs[key] = attr
        elif num == 9:
            _string_entry(buf, wt, x, y)
        else:
            raise Rejected(f"node {index}: field {num} is not allowed in a head")
    return node


def _value_info_name(buf: memoryview, a: int, b: int) -> bytes:
    name = None
    for num, wt, x, y in read_fields(buf, a, b):
        if num == 1:
            if name is not None:
                raise Rejected("value info named twice")
            name = _text(buf, wt, x, y)
        elif num not in (2, 3, 4) or wt != 2:
            raise Rejected(f"value info field {num} is not allowed")
    if name is None:
        raise Rejected("unnamed graph input or output")
    return name


def _graph(buf: memoryview, a: int, b: int) -> Graph:
    once = _Once("graph")
    g = Graph()
    for num, wt, x, y in read_fields(buf, a, b):
        if num == 1:
            if wt != 2:
                raise Rejected("bad node")
            if len(g.nodes) >= MAX_NODES:
                raise Rejected(f"more than {MAX_NODES} nodes")
            g.nodes.append(_node(buf, x, y, len(g.nodes)))
        elif num in (2, 10):
            once(num)
            _text(buf, wt, x, y)
        elif num == 5:
            if wt != 2:
                raise Rejected("bad initializer")
            t_name = _tensor_name(buf, x, y)
            if t_name in g.inits:
                raise Rejected(f"initializer {t_name.decode('utf-8', 'replace')!r} defined twice")
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
            raise Rejected("sparse initializers are not allowed in a head")
        else:
            raise Rejected(f"graph field {num} is not allowed in a head")
    return g


def _tensor_name(buf: memoryview, a: int, b: int) -> bytes:
    for num, wt, x, y in read_fields(buf, a, b):
        if num == 8:
            return _text(buf, wt, x, y)
    return b""


def read_model(buf: memoryview) -> tuple[Graph, dict[str, int]]:
    """The graph and the opset imports (domain -> version) of a serialised ``ModelProto``."""
    once = _Once("model")
    graph: Graph | None = None
    opsets: dict[str, int] = {}
    for num, wt, x, y in read_fields(buf, 0, len(buf)):
        if num == 1:
            once(num)
            if wt != 0 or not 3 <= x <= 64:
                raise Rejected("bad ir_version")
        elif num in (2, 3, 4, 6):
            once(num)
            _text(buf, wt, x, y)
        elif num == 5:
            once(num)
            if wt != 0:
                raise Rejected("bad model_version")
        elif num == 7:
            once(num)
            if wt != 2:
                raise Rejected("bad graph")
            graph = _graph(buf, x, y)
        elif num == 8:
            if wt != 2:
                raise Rejected("bad opset import")
            domain, version = "", None
            for n2, w2, x2, y2 in read_fields(buf, x, y):
                if n2 == 1:
                    domain = _text(buf, w2, x2, y2).decode("utf-8", errors="replace")
                elif n2 == 2 and w2 == 0:
                    version = _signed(x2)
                else:
                    raise Rejected("bad opset import field")
            if domain in opsets or version is None:
                raise Rejected(f"opset import for domain {domain!r} repeated or without version")
            opsets[domain] = version
        elif num == 14:
            _string_entry(buf, wt, x, y)
        elif num == 25:
            raise Rejected("model-local functions are not allowed in a head")
        elif num == 20:
            raise Rejected("training info is not allowed in a head")
        else:
            raise Rejected(f"model field {num} is not allowed in a head")
    if graph is None:
        raise Rejected("no graph")
    return graph, opsets
