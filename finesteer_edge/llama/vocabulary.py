"""Text <-> token ids through the model's llama.cpp vocabulary.

A mixin of :class:`~finesteer_edge.llama.session.LlamaSession`, so callers keep writing ``session.tokenize``
and ``session.piece``; apart from the session because it needs the vocabulary only: nothing here touches a
context, its KV cache or its control vector.
"""

from __future__ import annotations

import ctypes

import llama_cpp

from ..errors import ModelFileError
from ..model_info import ModelInfo


class VocabularyMixin:
    """Tokenize and detokenize; the host sets ``_vocab`` (the model's ``llama_vocab``), ``n_vocab`` and ``info``."""

    _vocab: llama_cpp.llama_vocab_p
    n_vocab: int
    info: ModelInfo

    @property
    def bos(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    @property
    def eos(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self._vocab))

    @property
    def add_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self._vocab, raw, len(raw), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self._vocab, raw, len(raw), buf, n_max, add_special, parse_special)
        if n < 0:  # pragma: no cover - llama.cpp contract
            raise RuntimeError("tokenization failed")
        ids = list(buf[:n])
        if any(not 0 <= t < self.n_vocab for t in ids):
            # Some tokenizers (e.g. RWKV's) return -1 for text their vocabulary cannot spell; decoding
            # that would fail deep in llama_decode, so it is the model file's error, reported here.
            raise ModelFileError(f"{self.info.path.name}: its tokenizer produced invalid token ids for this text")
        return ids

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """Bytes of one token (may be part of a UTF-8 character)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

