"""The head check on hand-built protobuf bytes: the wire reader (``pack/onnx_wire.py``) and the checker
(``pack/onnx_check.py``), without the ``onnx`` package.

A minimal valid head (``h_gate [1, d] @ W -> y``) is written field by field here, so each refusal below
differs from an accepted model in exactly one place. onnxruntime loads and runs the valid bytes, so they
are a real model and not one only our reader likes.
"""

from __future__ import annotations

import struct

import numpy as np
import onnxruntime as ort
import pytest

from finesteer_edge.errors import PackFormatError
from finesteer_edge.pack.onnx_check import MAX_VALUE_ELEMENTS, check_head_onnx
from finesteer_edge.pack.onnx_wire import MAX_NODES, MAX_TEXT, Rejected, read_fields, read_model, read_varint

D = 4


# ------------------------------------------------------------------------------------------ a tiny encoder
def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def vfield(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def lfield(num: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return varint(num << 3 | 2) + varint(len(data)) + data


def value_info(name: str, dims: list[int]) -> bytes:
    shape = b"".join(lfield(1, vfield(1, d)) for d in dims)  # TensorShapeProto.dim { dim_value }
    tensor_type = vfield(1, 1) + lfield(2, shape)  # elem_type FLOAT, shape
    return lfield(1, name) + lfield(2, lfield(1, tensor_type))  # name, type { tensor_type }


DTYPES = {np.dtype(np.float32): 1, np.dtype(np.int64): 7, np.dtype(np.float64): 11}


def tensor(name: str, arr: np.ndarray, *, raw: bytes | None = None, extra: bytes = b"") -> bytes:
    """TensorProto: dims, data_type, name, raw_data (``raw`` overrides the array's bytes)."""
    dims = b"".join(vfield(1, d) for d in arr.shape)
    data = arr.tobytes() if raw is None else raw
    return dims + vfield(2, DTYPES[arr.dtype]) + lfield(8, name) + lfield(9, data) + extra


def node(op: str, inputs: list[str], outputs: list[str], *, domain: str = "", extra: bytes = b"") -> bytes:
    body = b"".join(lfield(1, i) for i in inputs) + b"".join(lfield(2, o) for o in outputs) + lfield(4, op)
    return body + (lfield(7, domain) if domain else b"") + extra


def graph(nodes: list[bytes] | None = None, inits: list[bytes] | None = None, *, extra: bytes = b"") -> bytes:
    w = np.arange(D * 2, dtype=np.float32).reshape(D, 2) / 10
    nodes = [node("MatMul", ["h_gate", "W"], ["y"])] if nodes is None else nodes
    inits = [tensor("W", w)] if inits is None else inits
    return (b"".join(lfield(1, n) for n in nodes) + lfield(2, "head") + b"".join(lfield(5, t) for t in inits)
            + lfield(11, value_info("h_gate", [1, D])) + lfield(12, value_info("y", [1, 2])) + extra)


def model(g: bytes | None = None, *, opsets: tuple[tuple[str, int], ...] = (("", 17),), ir: int = 8,
          extra: bytes = b"") -> bytes:
    """ir_version, opset imports, then the graph last: any strict prefix lacks a complete graph."""
    ops = b"".join(lfield(8, (lfield(1, dom) if dom else b"") + vfield(2, v)) for dom, v in opsets)
    return vfield(1, ir) + ops + extra + lfield(7, graph() if g is None else g)


def refused(data: bytes, match: str) -> None:
    with pytest.raises(PackFormatError, match=match):
        check_head_onnx(data, D)


# ------------------------------------------------------------------------------------------ the reader
def test_varint_and_fields_decode_the_wire_format() -> None:
    buf = memoryview(varint(300) + b"\xff")
    assert read_varint(buf, 0, len(buf)) == (300, 2)
    msg = vfield(1, 150) + lfield(2, b"abc") + varint(3 << 3 | 5) + struct.pack("<f", 1.5)
    fields = list(read_fields(memoryview(msg), 0, len(msg)))
    assert [(num, wt) for num, wt, _, _ in fields] == [(1, 0), (2, 2), (3, 5)]
    assert fields[0][2] == 150 and msg[fields[1][2] : fields[1][3]] == b"abc"
    assert struct.unpack_from("<f", msg, fields[2][2])[0] == 1.5


@pytest.mark.parametrize(("data", "match"), [
    (b"\x80" * 11, "longer than 10 bytes"),
    (b"\x08", "truncated varint"),
    (b"\x00\x01", "field number 0"),
    (varint(1 << 3 | 3), "unsupported wire type 3"),
    (varint(1 << 3 | 2) + varint(5) + b"ab", "runs past its message"),
    (varint(1 << 3 | 1) + b"1234", "truncated fixed64"),
])
def test_reader_refuses_malformed_wire_data(data: bytes, match: str) -> None:
    with pytest.raises(Rejected, match=match):
        list(read_fields(memoryview(data), 0, len(data)))


def test_reader_returns_the_graph_and_opsets() -> None:
    g, opsets = read_model(memoryview(model()))
    assert opsets == {"": 17}
    assert [n.op for n in g.nodes] == ["MatMul"] and g.nodes[0].inputs == [b"h_gate", b"W"]
    assert g.inputs == [b"h_gate"] and g.outputs == [b"y"]
    assert g.inits[b"W"].dims == (D, 2)


# ------------------------------------------------------------------------------------------ the checker
def test_minimal_valid_head_is_accepted_and_is_a_real_model() -> None:
    data = model()
    check_head_onnx(data, D)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    h = np.ones((1, D), np.float32)
    (y,) = sess.run(None, {"h_gate": h})
    np.testing.assert_allclose(y, h @ (np.arange(D * 2, dtype=np.float32).reshape(D, 2) / 10), rtol=1e-6)


def test_every_truncation_is_refused() -> None:
    data = model()
    for cut in range(len(data)):
        with pytest.raises(PackFormatError):
            check_head_onnx(data[:cut], D)


def test_oversized_inputs_are_refused() -> None:
    refused(model(extra=lfield(6, "x" * (MAX_TEXT + 1))), "over the .*-byte limit")  # doc_string
    nodes = [node("Identity", ["h_gate"], [f"v{i}"]) for i in range(MAX_NODES + 1)]
    refused(model(graph(nodes)), f"more than {MAX_NODES} nodes")
    col, row = np.ones((8192, 1), np.float32), np.ones((1, 4096), np.float32)
    assert MAX_VALUE_ELEMENTS < 8192 * 4096
    big = graph([node("Add", ["col", "row"], ["y"])], [tensor("col", col), tensor("row", row)])
    refused(model(big), "element limit")
    lying = tensor("W", np.ones((D, 2), np.float32), raw=b"\0" * 4)  # dims say 8 values, the data holds 1
    refused(model(graph(inits=[lying])), "do not match the data present")


@pytest.mark.parametrize(("g", "opsets", "match"), [
    (graph([node("Loop", ["h_gate"], ["y"])]), (("", 17),), "op 'Loop' is not allowed"),
    (graph([node("Foo", ["h_gate"], ["y"])]), (("", 17),), "op 'Foo' is not allowed"),
    (graph([node("Gelu", ["h_gate"], ["y"], domain="com.microsoft")]), (("", 17), ("com.microsoft", 1)),
     "non-standard operator domains"),
    (graph([node("Relu", ["h_gate"], ["y"], domain="evil")]), (("", 17),), "from domain 'evil'"),
    (graph([node("Relu", ["h_gate"], ["y"], extra=lfield(5, lfield(1, "body") + lfield(6, b"")))]), (("", 17),),
     "sub-graph attribute"),
    (graph(), (("", 99),), "opset 99 is outside"),
    (graph([node("Relu", ["nothing"], ["y"])]), (("", 17),), "before it is defined"),
])
def test_unknown_or_unsafe_ops_are_refused(g: bytes, opsets: tuple[tuple[str, int], ...], match: str) -> None:
    refused(model(g, opsets=opsets), match)


def test_external_data_is_refused() -> None:
    w = np.ones((D, 2), np.float32)
    location = lfield(13, lfield(1, "location") + lfield(2, "/etc/passwd"))
    refused(model(graph(inits=[tensor("W", w, extra=location)])), "external data")
    refused(model(graph(inits=[tensor("W", w, extra=vfield(14, 1))])), "external data")  # data_location EXTERNAL


def test_structural_tricks_are_refused() -> None:
    data = model()
    refused(data + lfield(7, graph()), "field 7 appears twice")  # a second graph protobuf would merge
    refused(model(extra=lfield(25, b"")), "model-local functions")
    refused(model(graph(extra=lfield(15, b""))), "sparse initializers")
    refused(model(ir=2), "bad ir_version")
    refused(model(graph(inits=[tensor("W", np.ones((D, 2), np.float64))])), "not float32 or int64")
