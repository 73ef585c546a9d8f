"""Static check of ``head.onnx`` before onnxruntime sees it: what a shared pack's head may contain.

onnxruntime will happily run more than a steering head needs, and some of it is unsafe for a file
users download: a model loaded from bytes may still read *external data* files relative to the current
working directory; contrib ops (``com.microsoft``) and other domains are not standard ONNX; control
flow (``Loop``, ``If``, ``Scan``) can spin; and shape-computing ops (``ConstantOfShape``, ``Expand``,
``Tile``, ...) or plain broadcasting between two initializers can ask for gigabytes at session start.
The runtime imports no ``onnx`` package, so the protobuf wire format is read by ``onnx_wire.py``, with
bounds, and this module accepts only:

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

import numpy as np

from ..errors import PackFormatError
from .onnx_wire import MAX_RANK, Attr, Graph, Node, Rejected, read_model

MAX_VALUE_ELEMENTS = 1 << 24
"""64 MiB of float32 per intermediate value; a d=8192 head needs ~8k elements per value."""
MAX_MACS = 1 << 32
"""Total multiply-accumulates of MatMul/Gemm per run (a d=8192 head with a d x d MLP needs ~2**27)."""
MIN_OPSET, MAX_OPSET = 7, 30

_UNARY = frozenset({"Identity", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal",
                    "Erf", "Softmax", "LogSoftmax"})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})
_REDUCE = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2"})
ALLOWED_OPS = _UNARY | _BROADCAST | _REDUCE | {"Constant", "MatMul", "Gemm", "Reshape", "Transpose", "Flatten"}


# ---------------------------------------------------------------------------------------------- shapes
def _broadcast(shapes: list[tuple[int, ...]], what: str) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise Rejected(f"{what}: shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _matmul(a: tuple[int, ...], b: tuple[int, ...], what: str) -> tuple[tuple[int, ...], int]:
    if not a or not b:
        raise Rejected(f"{what}: MatMul of a scalar")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise Rejected(f"{what}: MatMul shapes {a} x {b} do not match")
    batch = _broadcast([a2[:-2], b2[:-2]], what) if len(a2) > 2 or len(b2) > 2 else ()
    out = (*batch, *((a2[-2],) if len(a) > 1 else ()), *((b2[-1],) if len(b) > 1 else ()))
    return out, math.prod(batch) * a2[-2] * a2[-1] * b2[-1]


def _axis(ax: int, rank: int, what: str) -> int:
    if not -rank <= ax < max(rank, 1):
        raise Rejected(f"{what}: axis {ax} out of range for rank {rank}")
    return ax % max(rank, 1)


def _infer(g: Graph, opset: int, n_embd: int) -> None:
    shapes: dict[bytes, tuple[int, ...]] = {}
    consts: dict[bytes, np.ndarray] = {}
    for name in g.inputs:
        if name in shapes or name in g.inits:
            raise Rejected(f"graph input {name.decode('utf-8', 'replace')!r} defined twice")
        shapes[name] = (1, n_embd)
    for name, t in g.inits.items():
        shapes[name] = t.dims
        if t.values is not None:
            consts[name] = t.values
    macs = 0
    for i, node in enumerate(g.nodes):
        what = f"node {i} ({node.op})"
        if node.domain not in ("", "ai.onnx"):
            raise Rejected(f"{what} is from domain {node.domain!r}; a head uses standard ONNX ops only")
        if node.op not in ALLOWED_OPS:
            allowed = ", ".join(sorted(ALLOWED_OPS))
            raise Rejected(f"{what}: op {node.op!r} is not allowed in a head (allowed: {allowed})")
        if len(node.outputs) != 1 or not node.outputs[0]:
            raise Rejected(f"{what} must have exactly one output")
        ins: list[tuple[int, ...] | None] = []
        for name in node.inputs:
            if not name:
                ins.append(None)
                continue
            if name not in shapes:
                raise Rejected(f"{what} reads {name.decode('utf-8', 'replace')!r} before it is defined")
            ins.append(shapes[name])
        shape, value, cost = _node_shape(node, ins, [consts.get(n) for n in node.inputs], opset, what)
        macs += cost
        if macs > MAX_MACS:
            raise Rejected(f"the head needs more than {MAX_MACS} multiply-adds per run")
        if math.prod(shape) > MAX_VALUE_ELEMENTS or len(shape) > MAX_RANK:
            raise Rejected(f"{what} produces a {shape} value, over the {MAX_VALUE_ELEMENTS}-element limit")
        out = node.outputs[0]
        if out in shapes:
            raise Rejected(f"{what} redefines {out.decode('utf-8', 'replace')!r}")
        shapes[out] = shape
        if value is not None:
            consts[out] = value
    for name in g.outputs:
        if name not in shapes:
            raise Rejected(f"graph output {name.decode('utf-8', 'replace')!r} is never computed")


def _node_shape(node: Node, ins: list[tuple[int, ...] | None], vals: list[np.ndarray | None], opset: int,
                what: str) -> tuple[tuple[int, ...], np.ndarray | None, int]:
    op, at = node.op, node.attrs

    def need(n_min: int, n_max: int) -> list[tuple[int, ...]]:
        present = [s for s in ins if s is not None]
        if not n_min <= len(ins) <= n_max or len(present) < n_min or any(s is None for s in ins[:n_min]):
            raise Rejected(f"{what}: wrong number of inputs")
        return present

    if op == "Constant":
        need(0, 0)
        if len(at) != 1:
            raise Rejected(f"{what}: a Constant needs exactly one value attribute")
        key, a = next(iter(at.items()))
        if key == "value" and a.t is not None:
            return a.t.dims, a.t.values, 0
        if key in ("value_float", "value_int"):
            return (), (np.asarray(a.i, np.int64) if key == "value_int" else None), 0
        if key == "value_ints":
            return (len(a.ints),), np.asarray(a.ints, np.int64), 0
        if key == "value_floats":
            return (a.floats_n,), None, 0
        raise Rejected(f"{what}: Constant attribute {key!r} is not allowed")
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
            raise Rejected(f"{what}: Gemm needs 2-D inputs")
        if at.get("transA", Attr()).i:
            a = a[::-1]
        if at.get("transB", Attr()).i:
            b = b[::-1]
        shape, cost = _matmul(a, b, what)
        if len(present) == 3 and _broadcast([present[2], shape], what) != shape:
            raise Rejected(f"{what}: Gemm bias does not broadcast to {shape}")
        return shape, None, cost
    if op == "Reshape":
        data, target = need(2, 2)
        spec = vals[1]
        if spec is None or spec.ndim != 1:
            raise Rejected(f"{what}: the target shape must be a constant 1-D int64 tensor")
        allow_zero = at.get("allowzero", Attr()).i
        dims = [int(d) for d in spec]
        out = []
        for j, d in enumerate(dims):
            if d == 0 and not allow_zero:
                if j >= len(data):
                    raise Rejected(f"{what}: bad 0 in the target shape")
                out.append(data[j])
            else:
                out.append(d)
        n = math.prod(data)
        if out.count(-1) > 1 or any(d < -1 for d in out):
            raise Rejected(f"{what}: bad target shape {dims}")
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            if known == 0 or n % known:
                raise Rejected(f"{what}: cannot reshape {data} to {dims}")
            out[out.index(-1)] = n // known
        if math.prod(out) != n:
            raise Rejected(f"{what}: cannot reshape {data} to {dims}")
        return tuple(out), None, 0
    if op == "Transpose":
        (data,) = need(1, 1)
        perm = at["perm"].ints if "perm" in at else list(range(len(data)))[::-1]
        if sorted(perm) != list(range(len(data))):
            raise Rejected(f"{what}: bad permutation {perm}")
        return tuple(data[p] for p in perm), None, 0
    if op == "Flatten":
        (data,) = need(1, 1)
        ax = at.get("axis", Attr(i=1)).i
        if not -len(data) <= ax <= len(data):
            raise Rejected(f"{what}: axis {ax} out of range")
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
                raise Rejected(f"{what}: reduce axes must be a constant 1-D int64 tensor")
            axes = [int(x) for x in spec]
        else:
            axes = []
        keep = at.get("keepdims", Attr(i=1)).i
        if not axes:
            if at.get("noop_with_empty_axes", Attr()).i:
                return data, None, 0
            axes = list(range(len(data)))
        norm = {_axis(x, len(data), what) for x in axes}
        out = tuple((1 if keep else None) if j in norm else d for j, d in enumerate(data))
        return tuple(d for d in out if d is not None), None, 0
    raise Rejected(f"{what}: op {op!r} is not allowed")  # pragma: no cover - ALLOWED_OPS is checked first


# ---------------------------------------------------------------------------------------------- entry point
def check_head_onnx(data: bytes, n_embd: int, *, name: str = "head.onnx") -> None:
    """Refuse a head that is more than a bounded, standard-ops ONNX graph (see the module docstring)."""
    try:
        graph, opsets = read_model(memoryview(data))
        if set(opsets) - {"", "ai.onnx"}:
            others = sorted(set(opsets) - {"", "ai.onnx"})
            raise Rejected(f"imports non-standard operator domains {others}; a head uses standard ONNX ops only")
        if len(opsets) != 1:
            raise Rejected("needs exactly one opset import, for the default ONNX domain")
        opset = next(iter(opsets.values()))
        if not MIN_OPSET <= opset <= MAX_OPSET:
            raise Rejected(f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}")
        _infer(graph, opset, n_embd)
    except Rejected as exc:
        raise PackFormatError(f"{name} is not an acceptable steering head: {exc}") from None
    except RecursionError:  # pragma: no cover - nesting is bounded by the message structure
        raise PackFormatError(f"{name} is nested too deeply") from None
