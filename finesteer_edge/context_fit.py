"""What of a conversation goes into the context window: a turn's ``context_policy``.

Apart from :class:`~finesteer_edge.steered.SteeredLlama` because it is arithmetic over messages and token
counts (the renderer is passed in): which exchanges may be left out, how few to leave out, and the overflow
error. The caller's messages are never changed; :func:`drop_oldest_turns` trims a kept history the way
``context_policy="drop_oldest"`` rendered it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import ContextOverflowError
from .llama.chat_template import Message
from .vocab import ContextPolicy


def fit_prompt(render: Callable[[Sequence[Message]], list[int]], messages: list[dict[str, str]], max_tokens: int,
               n_ctx: int, policy: ContextPolicy) -> tuple[list[int], int]:
    """Prompt tokens of ``messages`` (``render``: conversation -> prompt tokens) under ``policy``, and how many
    oldest exchanges were left out.

    Only renders and tokenizes: the KV cache is untouched until the prompt is known to fit, so an overflow
    (raised by the caller, :func:`check_context`) leaves the instance exactly as it was. ``drop_oldest``
    leaves out exchanges until the prompt fits with room for ``min(max_tokens, n_ctx // 2)`` new tokens.
    """
    tokens = render(messages)
    room = max(1, min(max_tokens, n_ctx // 2))
    n_max = len(_exchanges(messages)) if policy == "drop_oldest" else 0
    if len(tokens) + room <= n_ctx or n_max == 0:
        return tokens, 0
    # Fewest exchanges to drop: binary search (the prompt shrinks as more are dropped), so a long
    # history costs O(log n) renders per turn rather than one per dropped exchange.
    tried: dict[int, list[int]] = {}

    def fits(k: int) -> bool:
        tried[k] = render(drop_oldest_turns(messages, k))
        return len(tried[k]) + room <= n_ctx

    if not fits(n_max):
        return tried[n_max], n_max  # the shortest possible; may still overflow (raised by the caller)
    lo, hi = 1, n_max
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    if lo not in tried:
        fits(lo)
    return tried[lo], lo


def _exchanges(messages: Sequence[Message]) -> list[list[int]]:
    """Indices of the droppable exchanges, oldest first: each starts at a user message (or is whatever
    non-system messages precede the first one) and runs up to the next user message. System messages
    and the last exchange (the turn being answered) are never among them."""
    groups: list[list[int]] = []
    for i, m in enumerate(messages):
        if m["role"] == "system":
            continue
        if m["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append(i)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    return [g for g in groups if last_user is None or g[-1] < last_user][: max(0, len(groups) - 1)]


def drop_oldest_turns(messages: Sequence[Message], n: int) -> list[dict[str, str]]:
    """``messages`` without its ``n`` oldest user/assistant exchanges, as ``context_policy="drop_oldest"``
    renders them (use it with ``GenerationResult.dropped_turns`` to trim a kept history the same way)."""
    drop = {i for g in _exchanges(messages)[:n] for i in g}
    return [dict(m) for i, m in enumerate(messages) if i not in drop]


def check_context(tokens: list[int], n_ctx: int) -> None:
    """Raise :class:`ContextOverflowError` unless the prompt leaves room for one generated token."""
    if len(tokens) + 1 > n_ctx:
        raise ContextOverflowError(
            f"the prompt is {len(tokens)} tokens but the context holds {n_ctx} (one more is needed to "
            f"generate); shorten the conversation, /reset, or raise n_ctx"
        )
