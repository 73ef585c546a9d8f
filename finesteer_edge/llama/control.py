"""Setting and clearing the control vector of a llama.cpp context.

Apart from the session because the call itself differs across llama-cpp-python versions (bindings.py finds
it) and is made on either of a session's two contexts (generation, tap): the session decides when and
with which vector, this module only how.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from . import bindings

ControlArgs = tuple[np.ndarray, int, int]
"""A control vector as llama.cpp takes it: the full (n_layer - 1, n_embd) float32 buffer, first and last layer."""


class ControlVectorSetter:
    """llama.cpp's control-vector call for a model of width ``n_embd``, resolved once per session; ``name``
    says which llama.cpp function it is (``LlamaSession.cvec_api``)."""

    def __init__(self, n_embd: int) -> None:
        self.n_embd = n_embd
        self.name, self._fn = bindings.cvec_setter()

    def __call__(self, ctx: llama_cpp.llama_context_p, args: ControlArgs | None) -> None:
        """Set (``args`` = buffer, first, last layer) or clear (None) the control vector of ``ctx``."""
        if args is None:
            rc = self._fn(ctx, None, 0, self.n_embd, -1, -1)
            if rc != 0:  # pragma: no cover - clearing cannot fail in llama.cpp
                raise RuntimeError(f"{self.name} could not clear the control vector")
            return
        buf, lo, hi = args
        rc = self._fn(ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size, self.n_embd, lo, hi)
        if rc != 0:
            raise RuntimeError(f"{self.name} rejected the control vector (code {rc})")


def control_buffer(n_layer: int, n_embd: int, vectors: dict[int, np.ndarray]) -> ControlArgs:
    """Full cvec buffer with ``vectors[layer]`` in place, and the layer range to enable."""
    buf = np.zeros((n_layer - 1, n_embd), dtype=np.float32)
    for layer, v in vectors.items():
        buf[layer - 1] += v
    layers = sorted(vectors)
    return buf, layers[0], layers[-1]
