"""What a pack's gate (and its MoSE head) reads from a prefill: the last prompt token's state, or a pooled state
of the last user message (``manifest.gate_feature`` / ``head_feature``, vocabulary in :mod:`finesteer_edge.vocab`).

One home for the span and the pooling, because three places must compute the same feature: ``extract`` (the
training rows), the runtime (:class:`~finesteer_edge.steered.SteeredLlama`) and the torch reference
(``evaluation/fidelity.py``). Why pool over the user message (issue 10): the last prompt token sits after the
assistant header, so its state mixes the request with whatever came before it (system prompt, earlier
exchanges); the user message's own tokens carried harm across data sources and conversation shapes better
(docs/GATE_CEILING.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .vocab import GATE_FEATURES, SPAN_GATE_FEATURES, check_choice

if TYPE_CHECKING:
    from .llama.chat_template import ChatTemplate, Message
    from .llama.session import LlamaSession
    from .pack.manifest import Manifest


def user_span(template: ChatTemplate, session: LlamaSession, messages: Sequence[Message],
              n_tokens: int) -> tuple[int, int]:
    """[start, end) token positions of the last user message's content in the rendered prompt.

    Found by rendering, locating the content's characters and tokenizing the text before it and up to its
    end (chat templates put a special token or newline around the content, so the boundaries do not merge);
    clipped to the prompt and never empty. A template that rewrites the content so that it cannot be found
    gives the last prompt token alone (the ``last`` feature).
    """
    text = template.render(messages, add_generation_prompt=True)
    content = str(messages[-1]["content"]).strip()
    pos = text.rfind(content) if content else -1
    if pos < 0:
        return n_tokens - 1, n_tokens
    bos = 1 if session.add_bos and not text.startswith(session.token_text(session.bos)) else 0
    start = bos + len(session.tokenize(text[:pos], add_special=False, parse_special=True))
    end = bos + len(session.tokenize(text[: pos + len(content)], add_special=False, parse_special=True))
    end = min(max(end, 1), n_tokens)
    return min(start, end - 1), end


def pool(rows: np.ndarray, span: tuple[int, int], feature: str) -> np.ndarray:
    """The feature from every prompt token's state (n_tokens, d): for extraction and the torch reference, which
    hold all rows; the runtime pools the same way while it prefills (``taps._Captures``)."""
    check_choice(feature, GATE_FEATURES, "gate feature")
    a, b = span
    if feature == "last":
        return rows[-1]
    if feature == "user_end":
        return rows[b - 1]
    return (rows[a:b].sum(0, dtype=np.float64) / (b - a)).astype(np.float32)


def needs_span(manifests: Sequence[Manifest]) -> bool:
    """Whether any of these packs' gates or heads reads a user-message span (the prefill must pool it)."""
    return any(m.gate_feature in SPAN_GATE_FEATURES or m.head_feature in SPAN_GATE_FEATURES for m in manifests)


def _state(session: LlamaSession, layer: int, feature: str) -> np.ndarray:
    """``feature`` at ``layer`` from the session's last capturing prefill."""
    if feature in SPAN_GATE_FEATURES:
        return session.hidden_span(layer, feature)
    return session.hidden(layer)


def gate_state(session: LlamaSession, manifest: Manifest) -> np.ndarray:
    """The state the pack's gate reads, from the session's last capturing prefill."""
    return _state(session, manifest.gate_layer, manifest.gate_feature)


def head_state(session: LlamaSession, manifest: Manifest) -> np.ndarray:
    """The state the pack's MoSE head reads (``manifest.head_feature`` at its layer), from the same prefill."""
    return _state(session, manifest.head_layer, manifest.head_feature)
