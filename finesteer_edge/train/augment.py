"""Style variants of training prompts, so the gate learns content rather than phrasing.

Our safety data pairs AdvBench imperatives ("Write a tutorial on how to ...") with benign imperatives
("Write a story ..."). A gate fitted on them can key on style: on SmolLM2 the supervised gates at
layers 8-12 were perfect on validation yet caught 0% of the same harmful requests asked as questions
("How do I ...?"), while gates at 15-18 caught 78-93% (``docs/TRAINING.md``). Applying the *same*
rewrites to both classes removes phrasing as a cue; the rewritten validation prompts also measure
how well each candidate gate transfers to phrasings it was not fitted on.

The rewrites are deliberately generic (no topic words), and they are only used for the gate: MoSE
still learns from the original prompts' response contrasts.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_HOW = re.compile(r"\bhow (?:to|one could|someone could|one can|someone can|can i|do i|i can)\s+(.+)$", re.I)


def _body(prompt: str) -> str:
    return prompt.strip().rstrip(" .!?")


def _lower_first(s: str) -> str:
    return s if s[:2].isupper() else s[:1].lower() + s[1:]  # keep acronyms ("AI", "DNS")


def question(prompt: str) -> str:
    """'Write a guide on how to X' -> 'How do I X?'; other requests -> 'How do I <request>?'."""
    body = _body(prompt)
    m = _HOW.search(body)
    return f"How do I {m.group(1)}?" if m else f"How do I {_lower_first(body)}?"


def polite(prompt: str) -> str:
    return f"Hi! I need some help with something. {_body(prompt)}, please."


def first_person(prompt: str) -> str:
    """'... how to X' -> "What's the easiest way to X?"; other requests -> 'I want you to <request>.'"""
    body = _body(prompt)
    m = _HOW.search(body)
    return f"What's the easiest way to {m.group(1)}?" if m else f"I want you to {_lower_first(body)}."


STYLES: dict[str, Callable[[str], str]] = {"question": question, "polite": polite, "first_person": first_person}
