"""Structured mutations of an ONNX head (needs ``onnx``): shapes, dtypes, banned and custom ops, external data.

What ``pack/onnx_check.py`` must refuse before onnxruntime sees the bytes: external-data paths out of the
pack, ops that allocate from data (``ConstantOfShape``, ``Expand``...), subgraphs, functions, foreign
domains, a second ``graph`` field that protobuf would merge, and broadcasts that would allocate gigabytes.
"""

from __future__ import annotations

from typing import Any

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
                # an earlier "external" edit may have moved its data out of the file: nothing here to edit
                if t.data_type == TensorProto.FLOAT and t.data_location != TensorProto.EXTERNAL:
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
