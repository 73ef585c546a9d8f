"""Read the residual stream of the last prompt token at chosen layers while llama.cpp prefills.

Two mechanisms, chosen per context (DESIGN.md section 4):

``layer_inp`` (preferred): llama.cpp's experimental ``llama_set_embeddings_layer_inp`` copies the input
of block N+1, which is exactly ``l_out-N``, into the output buffer on every decode. It is enabled once
when the context is made, so it costs no scheduler re-reserve per turn and no per-node Python call;
the copy of a few KB per decode is the whole price. Only architectures whose graph builder records
layer inputs support it (enabling it on others aborts inside llama.cpp), hence the allow-list.

``cb_eval``: a Python graph-evaluation callback that grabs ``l_out-N``. It works on every architecture
that names its block outputs, but llama.cpp calls it for every graph node of every decode of the context
it was created with (the pointer is fixed at context creation), ~2-4 us per node, so decode in that context
slows by ~9%. The session therefore gives it a context of its own (``tap_context``, session.py): only the
unsteered capturing prefills run there, and with ``stop_after`` the callback ends the graph right after
the highest tap layer (returning false from the data call makes the scheduler stop computing), so such a
prefill computes blocks 0..max(tap layers) only. Generation runs in a second context without callback.
"""

from __future__ import annotations

import ctypes
from typing import Protocol

import llama_cpp
import numpy as np

from ..architectures import LAYER_INP_ARCHITECTURES
from . import bindings

__all__ = ["LAYER_INP_ARCHITECTURES", "CbEvalTap", "HiddenTap", "LayerInpTap"]


class HiddenTap(Protocol):
    method: str
    layers: tuple[int, ...]

    def start(self, all_rows: bool = False, span: tuple[int, int] | None = None) -> None:
        """A prefill begins: forget earlier captures; with ``all_rows`` keep every token's state; with ``span``
        ([start, end) positions among this prefill's tokens) pool the states of those tokens."""

    def after_decode(self, n_tokens: int) -> None:
        """One ``llama_decode`` of ``n_tokens`` finished."""

    def stop(self) -> None:
        """The prefill is over (also after an error)."""

    def last(self, layer: int) -> np.ndarray:
        """Hidden state (n_embd,) of the last token of the last prefill, at ``layer``."""

    def rows(self, layer: int) -> np.ndarray:
        """Hidden states (n_tokens, n_embd) of every token of the last ``all_rows`` prefill."""

    def span_mean(self, layer: int) -> np.ndarray:
        """Mean state (n_embd,) over the ``span`` tokens of the last prefill, at ``layer``."""

    def span_last(self, layer: int) -> np.ndarray:
        """State (n_embd,) of the ``span``'s last token in the last prefill, at ``layer``."""


class _Captures:
    """Per-layer storage shared by both taps: the last row, all rows when asked, and a pooled span.

    The span is pooled as the rows stream by (a running float64 sum), so a gate that reads the mean over the
    user message costs O(n_embd) memory per layer however long the prompt.
    """

    def __init__(self, layers: tuple[int, ...], n_embd: int) -> None:
        self.layers = tuple(sorted(set(layers)))  # a layer named twice is one capture (it was a missing-tensor error)
        self._n_embd = n_embd
        self._last: dict[int, np.ndarray] = {}
        self._rows: dict[int, list[np.ndarray]] = {}
        self._all = False
        self._span: tuple[int, int] | None = None
        self._pos: dict[int, int] = {}
        self._sum: dict[int, np.ndarray] = {}
        self._span_last: dict[int, np.ndarray] = {}

    def start(self, all_rows: bool = False, span: tuple[int, int] | None = None) -> None:
        self._last.clear()
        self._rows = {layer: [] for layer in self.layers}
        self._all = all_rows
        if span is not None and not 0 <= span[0] < span[1]:
            raise ValueError(f"bad token span {span}")
        self._span = span
        self._pos = dict.fromkeys(self.layers, 0)
        self._sum = {layer: np.zeros(self._n_embd) for layer in self.layers} if span else {}
        self._span_last = {}

    def _wants_rows(self, layer: int, n: int) -> bool:
        """Whether the next ``n`` rows at ``layer`` overlap the span (then all of them are needed)."""
        if self._span is None:
            return False
        p = self._pos[layer]
        return p < self._span[1] and p + n > self._span[0]

    def _store(self, layer: int, rows: np.ndarray, n_rows: int | None = None) -> None:
        """``rows`` is (n, n_embd) and may alias llama.cpp memory: copy what is kept. ``n_rows``: how many
        positions this decode covered when only its last row was fetched (the span was not in it)."""
        self._last[layer] = rows[-1].copy()
        if self._all:
            self._rows[layer].append(rows.copy())
        n = len(rows) if n_rows is None else n_rows
        if self._span is not None:
            p = self._pos[layer]
            a, b = max(self._span[0], p), min(self._span[1], p + n)
            if a < b:
                if n_rows is not None and n_rows != len(rows):
                    raise RuntimeError("the tap fetched one row of a decode that holds the span")
                self._sum[layer] += rows[a - p:b - p].sum(0, dtype=np.float64)
                if b == self._span[1]:
                    self._span_last[layer] = rows[b - 1 - p].copy()
        self._pos[layer] = self._pos.get(layer, 0) + n

    def last(self, layer: int) -> np.ndarray:
        return self._last[layer]

    def rows(self, layer: int) -> np.ndarray:
        if not self._all:
            raise RuntimeError("the last prefill did not capture all rows")
        parts = self._rows[layer]
        return np.concatenate(parts) if parts else np.zeros((0, self._n_embd), np.float32)

    def _check_span(self, layer: int) -> tuple[int, int]:
        if self._span is None:
            raise RuntimeError("the last prefill pooled no token span")
        if self._pos.get(layer, 0) < self._span[1]:
            raise RuntimeError(f"the last prefill ended before the token span {self._span} at layer {layer}")
        return self._span

    def span_mean(self, layer: int) -> np.ndarray:
        a, b = self._check_span(layer)
        return (self._sum[layer] / (b - a)).astype(np.float32)

    def span_last(self, layer: int) -> np.ndarray:
        self._check_span(layer)
        return self._span_last[layer]


class LayerInpTap(_Captures):
    method = "layer_inp"

    def __init__(self, ctx: llama_cpp.llama_context_p, layers: tuple[int, ...], n_embd: int) -> None:
        super().__init__(layers, n_embd)
        api = bindings.layer_inp_api()
        if api is None:
            raise RuntimeError("llama_set_embeddings_layer_inp is not exported by this llama.cpp")
        self._api = api
        self._ctx = ctx
        for layer in self.layers:
            api.set(ctx, layer + 1, True)  # layer_inp[N+1] == l_out-N

    def after_decode(self, n_tokens: int) -> None:
        for layer in self.layers:
            ptr = self._api.get(self._ctx, layer + 1)
            if not ptr:
                raise RuntimeError(f"llama.cpp returned no layer input for layer {layer}")
            self._store(layer, np.ctypeslib.as_array(ptr, shape=(n_tokens, self._n_embd)))

    def stop(self) -> None:
        pass


class CbEvalTap(_Captures):
    """Grabs ``l_out-N`` through ``cb_eval``. Build it before the context; pass ``.callback`` in."""

    method = "cb_eval"

    def __init__(self, layers: tuple[int, ...], n_embd: int, *, stop_after: bool = False) -> None:
        super().__init__(layers, n_embd)
        self.method = "tap_context" if stop_after else "cb_eval"
        api = bindings.ggml_api()
        if api is None:
            raise RuntimeError("ggml tensor accessors not found next to llama_cpp")
        self._api = api
        self._want = {f"l_out-{n}".encode(): n for n in layers}
        # The context only serves taps: stop the graph after the highest tap layer's output.
        self._stop = f"l_out-{max(layers)}".encode() if stop_after else None
        self._seen: set[int] = set()
        self.capturing = False
        self.calls = 0
        """How often llama.cpp called the callback (benchmarks: calls per generated token)."""
        self.error: str | None = None
        # Keep the CFUNCTYPE object alive for the context's whole life.
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    def _on_node(self, tensor: int, ask: bool, user_data: int) -> bool:
        self.calls += 1
        if not self.capturing and self._stop is None:
            return not ask  # ask: "no, not this node"; data call: "continue"
        name = self._api.get_name(tensor)
        layer = self._want.get(name) if self.capturing else None
        if ask:
            return layer is not None or name == self._stop
        if layer is None:
            return name != self._stop  # false after the last tap layer: the scheduler stops the graph
        self._seen.add(layer)
        nrows = self._api.nrows(tensor)
        nbytes = self._api.nbytes(tensor)
        if self._api.get_type(tensor) != 0 or nrows <= 0 or nbytes != nrows * self._n_embd * 4:
            self.error = f"unexpected l_out-{layer} tensor (type/shape)"
            return True
        if self._all or self._wants_rows(layer, nrows):
            buf = np.empty((nrows, self._n_embd), np.float32)
            self._api.tensor_get(tensor, buf.ctypes.data_as(ctypes.c_void_p), 0, nbytes)
            self._store(layer, buf)
        else:  # only the last row: the last ubatch's last token is the prompt's last token
            buf = np.empty((1, self._n_embd), np.float32)
            self._api.tensor_get(tensor, buf.ctypes.data_as(ctypes.c_void_p), (nrows - 1) * self._n_embd * 4,
                                 self._n_embd * 4)
            self._store(layer, buf, n_rows=nrows)
        return name != self._stop

    def start(self, all_rows: bool = False, span: tuple[int, int] | None = None) -> None:
        super().start(all_rows, span)
        self.error = None
        self.capturing = True
        self._seen = set()

    def stop(self) -> None:
        self.capturing = False

    def after_decode(self, n_tokens: int) -> None:
        if self.error:
            raise RuntimeError(self.error)
        if self.capturing and len(self._seen) < len(self.layers):
            missing = sorted(set(self.layers) - self._seen)
            raise RuntimeError(
                f"the llama.cpp graph produced no l_out-{missing[0]} tensor: this architecture's graph does not "
                "name its block outputs, so its hidden states cannot be read (unsupported architecture)"
            )
        self._seen = set()
