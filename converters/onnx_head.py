"""Export a :class:`FoldedHead` as ``head.onnx`` (standard ONNX ops only, opset 17, no external data).

Inputs ``h_gate`` [1, d] and ``h_steer`` [1, d]; outputs ``gate_score`` [1], ``vector`` [1, d] and
``expert_weights`` [1, K] (DESIGN.md section 3). Built with ``onnx.helper`` directly rather than
``torch.onnx.export`` so the graph is exactly the folded math, small, and needs no torch.
"""

from __future__ import annotations

import numpy as np

from .head_params import GATE_EPS, FoldedHead

OPSET = 17


class GraphParts:
    """Nodes and float32 initializers of a head graph under construction; each node is named for its output.

    Shared by the folded and the unfolded exporter so both name and encode constants the same way.
    """

    def __init__(self, nodes: list | None = None, inits: list | None = None) -> None:  # type: ignore[type-arg]
        self.nodes = list(nodes or [])
        self.inits = list(inits or [])

    def const(self, name: str, value: np.ndarray | float) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def build_head_onnx(head: FoldedHead, *, doc: str = "") -> bytes:
    from onnx import numpy_helper

    d, k_exp, k_basis = head.n_embd, head.n_experts, head.basis_rank
    parts = GraphParts()
    inits, const, node = parts.inits, parts.const, parts.node

    # ---- gate
    g = head.gate
    if g.kind == "always":
        node("Constant", [], "gate_score", value=numpy_helper.from_array(np.ones(1, np.float32), "one"))
    elif g.kind == "logistic":
        assert g.weights is not None
        lin = node("MatMul", ["h_gate", const("gate_w", g.weights.reshape(d, 1))], "gate_lin")
        flat = node("Reshape", [lin, _shape(inits, "shape_1", [1])], "gate_lin_flat")
        logit = node("Add", [flat, const("gate_b", np.array([g.bias]))], "gate_logit")
        node("Sigmoid", [logit], "gate_score")
    else:
        assert g.mean is not None and g.components is not None
        c = node("Sub", ["h_gate", const("scs_mean", g.mean.reshape(1, d))], "scs_centred")
        z = node("MatMul", [c, const("scs_V", g.components)], "scs_coords")
        num = node("ReduceSumSquare", [z], "scs_num", axes=[1], keepdims=0)
        den0 = node("ReduceSumSquare", [c], "scs_den0", axes=[1], keepdims=0)
        den = node("Add", [den0, const("scs_eps", np.array([GATE_EPS]))], "scs_den")
        if g.kind == "scs":
            node("Div", [num, den], "gate_score")
        elif g.kind == "scs_logistic":
            assert g.weights is not None
            energy = node("Div", [num, den], "scs_energy")
            kg = g.components.shape[1]
            zl = node("MatMul", [z, const("gate_wz", g.weights[:kg].reshape(kg, 1))], "gate_zlin")
            zl_flat = node("Reshape", [zl, _shape(inits, "shape_1", [1])], "gate_zlin_flat")
            el = node("Mul", [energy, const("gate_we", np.array([g.weights[kg]]))], "gate_elin")
            s1 = node("Add", [zl_flat, el], "gate_sum")
            logit = node("Add", [s1, const("gate_b", np.array([g.bias]))], "gate_logit")
            node("Sigmoid", [logit], "gate_score")
        else:
            raise ValueError(f"unknown gate kind {g.kind!r}")

    # ---- MoSE: router over the expert bank + residual basis
    rl = node("MatMul", ["h_steer", const("router_w", head.router_w)], "router_lin")
    logits = node("Add", [rl, const("router_b", head.router_b.reshape(1, k_exp))], "router_logits")
    node("Softmax", [logits], "expert_weights", axis=-1)
    mix = node("MatMul", ["expert_weights", const("experts", head.experts)], "expert_mix")
    if k_basis:
        a1 = node("MatMul", ["h_steer", const("mlp_w1", head.mlp_w1)], "mlp_l1")
        a1b = node("Add", [a1, const("mlp_b1", head.mlp_b1.reshape(1, -1))], "mlp_l1b")
        r = node("Relu", [a1b], "mlp_relu")
        a2 = node("MatMul", [r, const("mlp_w2", head.mlp_w2)], "mlp_l2")
        beta = node("Add", [a2, const("mlp_b2", head.mlp_b2.reshape(1, -1))], "basis_coeffs")
        resid = node("MatMul", [beta, const("basis", head.basis)], "basis_mix")
        node("Add", [mix, resid], "vector")
    else:
        node("Identity", [mix], "vector")

    return finish_head_model(parts.nodes, inits, "finesteer_head", d, k_exp, doc)


def finish_head_model(nodes: list, inits: list, graph_name: str, d: int, k_exp: int,  # type: ignore[type-arg]
                      doc: str) -> bytes:
    """Wrap head nodes in the pack's fixed interface (DESIGN.md section 3), check and serialize them.

    Shared by the folded exporter and the unfolded one, so both always present the signature the runtime
    checks: inputs ``h_gate``/``h_steer`` [1, d]; outputs ``gate_score`` [1], ``vector`` [1, d],
    ``expert_weights`` [1, K].
    """
    import onnx
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info("h_gate", f32, [1, d]), helper.make_tensor_value_info("h_steer", f32, [1, d])],
        [
            helper.make_tensor_value_info("gate_score", f32, [1]),
            helper.make_tensor_value_info("vector", f32, [1, d]),
            helper.make_tensor_value_info("expert_weights", f32, [1, k_exp]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="finesteer-edge", doc_string=doc)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def _shape(inits: list, name: str, dims: list[int]) -> str:  # type: ignore[type-arg]
    from onnx import numpy_helper

    if not any(t.name == name for t in inits):
        inits.append(numpy_helper.from_array(np.asarray(dims, dtype=np.int64), name))
    return name
