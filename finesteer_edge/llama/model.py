"""Loaded GGUF weights, shared by the contexts (sessions) made on them.

Apart from the session because the weights outlive any one context: a server's slots make one
:class:`~finesteer_edge.llama.session.LlamaSession` each on one ``LlamaModel``, and the weights are freed
only when the last of them is closed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import llama_cpp

from ..errors import ModelFileError
from ..model_info import ModelInfo, read_model_info
from . import bindings


class LlamaModel:
    """Loaded GGUF weights and vocabulary, shared by any number of contexts (sessions).

    A server with N slots loads the weights once and makes N sessions on them, each with its own KV
    cache and control vector. Sessions keep a reference, so the weights live until the last of them
    and this object are gone (or :meth:`close` is called after the sessions are closed).
    """

    def __init__(self, model_path: str | Path) -> None:
        self.info: ModelInfo = read_model_info(model_path)
        bindings.backend_init()
        self._model = None
        mparams = llama_cpp.llama_model_default_params()
        model = llama_cpp.llama_model_load_from_file(str(self.info.path).encode(), mparams)
        if not model:
            raise ModelFileError(f"llama.cpp could not load {self.info.path} (unsupported or corrupt GGUF)")
        self._model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_embd = int(llama_cpp.llama_model_n_embd(model))
        self.n_layer = int(llama_cpp.llama_model_n_layer(model))
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        self._users = 0
        self._close_requested = False

    def acquire(self) -> None:
        """A session starts using the weights."""
        if self._model is None or self._close_requested:
            raise RuntimeError("the shared model has been closed")
        self._users += 1

    def release(self) -> None:
        """A session stopped using the weights; frees them if close() was asked for meanwhile."""
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._close_requested:
            self._free()

    @property
    def handle(self) -> llama_cpp.llama_model_p:
        if self._model is None:
            raise RuntimeError("this model has been closed")
        return self._model

    @property
    def closed(self) -> bool:
        return self._model is None

    def close(self) -> None:
        """Free the weights now, or when the last session using them closes (never under a live context)."""
        self._close_requested = True
        if self._users == 0:
            self._free()

    def _free(self) -> None:
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down llama_cpp
            self._free()
