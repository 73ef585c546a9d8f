"""Decoding a token list on one raw llama.cpp context, and the position arithmetic around its KV cache.

Functions of a context, not methods of the session, because a session drives two contexts the same way
(the generation context and, for the ``tap_context`` method, the tap context: taps.py), each with its own
KV cache and its own cached prefix.
"""

from __future__ import annotations

import llama_cpp
import numpy as np

from .taps import HiddenTap


def run_batches(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch, tokens: list[int], pos0: int, *,
                n_batch: int, n_vocab: int, all_logits: bool = False,
                tap: HiddenTap | None = None) -> np.ndarray | None:
    """``llama_decode`` ``tokens`` at positions ``pos0``... in ``n_batch`` chunks through ``batch`` (made by
    ``llama_batch_init`` for ``n_batch`` tokens); logits of the last (or, ``all_logits``, every) token."""
    rows: list[np.ndarray] = []
    for start in range(0, len(tokens), n_batch):
        chunk = tokens[start : start + n_batch]
        last_chunk = start + n_batch >= len(tokens)
        batch.n_tokens = len(chunk)
        for i, tok in enumerate(chunk):
            batch.token[i] = tok
            batch.pos[i] = pos0 + start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or (last_chunk and i == len(chunk) - 1)
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        if all_logits:
            ptr = llama_cpp.llama_get_logits(ctx)
            rows.append(np.ctypeslib.as_array(ptr, shape=(len(chunk), n_vocab)).copy())
        if tap is not None:
            tap.after_decode(len(chunk))
    return np.concatenate(rows) if all_logits else None


def relative_span(span: tuple[int, int] | None, pos0: int) -> tuple[int, int] | None:
    """A conversation span as positions among the rows of a capture that starts at ``pos0``."""
    if span is None:
        return None
    if span[0] < pos0:
        raise RuntimeError(f"the token span {span} starts in the cached prefix (< {pos0}); truncate to it first")
    return span[0] - pos0, span[1] - pos0


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share: what of a KV cache holding ``a`` can serve ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
