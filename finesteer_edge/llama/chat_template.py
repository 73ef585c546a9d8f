"""Render conversations with the model's own chat template (GGUF ``tokenizer.chat_template``).

Templates are Jinja2 written for HF transformers; they run here in Jinja's immutable sandbox with the
same helpers transformers offers (``raise_exception``, ``strftime_now``, a ``tojson`` that keeps
non-ASCII), because a template is data from a downloaded file and must not reach Python internals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ..errors import FinesteerError

Message = Mapping[str, Any]
VALID_ROLES = frozenset({"system", "user", "assistant", "tool"})


class ChatTemplateError(FinesteerError):
    """The model's chat template failed to render these messages."""


def normalize_messages(prompt_or_messages: str | Sequence[Message]) -> list[dict[str, str]]:
    """A bare string is one user turn; messages are checked for role and text content."""
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    out = []
    for i, m in enumerate(prompt_or_messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a mapping with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in VALID_ROLES:
            raise ValueError(f"message {i}: unknown role {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string")
        out.append({"role": str(role), "content": content})
    if not out:
        raise ValueError("no messages")
    return out


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = _compile(source) if source else None

    @property
    def available(self) -> bool:
        return self._template is not None

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        if self._template is None:
            return _plain(messages, add_generation_prompt)
        try:
            return str(self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            ))
        except Exception as exc:  # jinja raises many types; all mean "this template cannot do it"
            raise ChatTemplateError(f"the model's chat template failed: {exc}") from exc


def _plain(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """No template in the GGUF: one user turn is sent as is; longer chats as 'role: text' lines."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return str(messages[0]["content"])
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant:" if add_generation_prompt else "")


def _compile(source: str):  # type: ignore[no-untyped-def]
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc
