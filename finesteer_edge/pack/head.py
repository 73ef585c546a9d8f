"""Run the steering head (``head.onnx``) with onnxruntime on one query.

The head is a few small matrix products: one intra-op thread is fastest (no pool wake-ups) and keeps
llama.cpp's threads undisturbed. The model is loaded from the bytes we already checksummed, never from
a path, so the file cannot change between verification and use. Loading from bytes alone does not stop
onnxruntime from reading external-data files relative to the working directory, so the bytes first pass
:func:`~finesteer_edge.pack.onnx_check.check_head_onnx` (standard ops only, no external data, bounded
shapes), and only then reach onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PackFormatError
from .onnx_check import check_head_onnx

INPUTS = ("h_gate", "h_steer")
OUTPUTS = ("gate_score", "vector", "expert_weights")


@dataclass(frozen=True)
class HeadOutput:
    gate_score: float
    vector: np.ndarray
    """(n_embd,) float32, already scaled by the pack's alpha."""
    expert_weights: np.ndarray
    """(K,) mixture weights over the expert bank."""


class HeadRunner:
    def __init__(self, model_bytes: bytes, n_embd: int, n_experts: int, *, name: str = "head.onnx") -> None:
        import onnxruntime as ort

        check_head_onnx(model_bytes, n_embd, name=name)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # onnxruntime's C++ logger writes to stderr; every failure it logs also comes back as an exception
        # that we turn into one PackFormatError, so fatal-only keeps the CLI's error to one line.
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._sess = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception zoo for bad models
            raise PackFormatError(f"{name} is not a loadable ONNX model: {_short(exc)}") from exc
        # onnxruntime's Python wrapper keeps the serialized model next to its parsed initializers, only to
        # rebuild the session if providers change (we never do): dropping it halves the head's resident
        # memory (measured at d=4096: 140 -> 75 MiB, docs/BENCHMARKS.md).
        if hasattr(self._sess, "_model_bytes"):
            self._sess._model_bytes = None
        self._run_opts = ort.RunOptions()
        self._run_opts.log_severity_level = 4
        self.n_embd = n_embd
        self.n_experts = n_experts
        self._check_signature(name)
        # Prove it runs and yields the documented shapes before anyone relies on it.
        self.run(np.zeros(n_embd, np.float32) + 1e-3, np.zeros(n_embd, np.float32) + 1e-3)

    def _check_signature(self, name: str) -> None:
        ins = {i.name: i for i in self._sess.get_inputs()}
        outs = {o.name: o for o in self._sess.get_outputs()}
        if set(ins) != set(INPUTS):
            raise PackFormatError(f"{name}: inputs are {sorted(ins)}, expected {list(INPUTS)}")
        if not set(OUTPUTS) <= set(outs):
            raise PackFormatError(f"{name}: outputs are {sorted(outs)}, expected {list(OUTPUTS)}")
        for i in ins.values():
            if i.type != "tensor(float)":
                raise PackFormatError(f"{name}: input {i.name} must be float32, is {i.type}")
            shape = list(i.shape)
            width_ok = len(shape) == 2 and (shape[1] == self.n_embd or not isinstance(shape[1], int))
            if not width_ok:
                raise PackFormatError(f"{name}: input {i.name} has shape {shape}, expected [1, {self.n_embd}]")

    def run(self, h_gate: np.ndarray, h_steer: np.ndarray) -> HeadOutput:
        feeds = {
            "h_gate": np.ascontiguousarray(h_gate, dtype=np.float32).reshape(1, self.n_embd),
            "h_steer": np.ascontiguousarray(h_steer, dtype=np.float32).reshape(1, self.n_embd),
        }
        try:
            score, vector, weights = self._sess.run(list(OUTPUTS), feeds, self._run_opts)
        except Exception as exc:
            raise PackFormatError(f"head.onnx failed to run: {_short(exc)}") from exc
        score = np.asarray(score, dtype=np.float32).reshape(-1)
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        if score.size != 1 or vector.size != self.n_embd or weights.size != self.n_experts:
            raise PackFormatError(
                f"head.onnx returned shapes {score.size}/{vector.size}/{weights.size}, "
                f"expected 1/{self.n_embd}/{self.n_experts}"
            )
        if not (np.isfinite(score).all() and np.isfinite(vector).all() and np.isfinite(weights).all()):
            raise PackFormatError("head.onnx produced NaN or Inf; refusing to steer with it")
        return HeadOutput(gate_score=float(score[0]), vector=vector, expert_weights=weights)


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    text = msg[0] if msg else type(exc).__name__
    return text[:300] + ("..." if len(text) > 300 else "")
