"""Render conversations with the model's chat template (GGUF ``tokenizer.chat_template``, or one chosen).

Templates are Jinja2 written for HF transformers; they run here in Jinja's immutable sandbox with the
same helpers transformers offers (``raise_exception``, ``strftime_now``, a ``tojson`` that keeps
non-ASCII), because a template is data from a downloaded file and must not reach Python internals.

Base models have no template, and a few templates use Jinja our renderer cannot run. For those the
caller chooses (``chat_template=`` / ``--chat-template NAME|FILE``): a built-in (``BUILTIN_TEMPLATES``:
chatml, llama3, gemma, phi3, plain) or a Jinja file. Without a choice, such a model falls back to
``plain`` (a single user turn as is, longer chats as "role: text" lines) with a warning on stderr,
never silently: a model steered with the wrong prompt format is steered on the wrong hidden states.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import FinesteerError

log = logging.getLogger("finesteer_edge")

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


# Built-in templates, each with its family's system-prompt rule. Gemma has no system role: its template
# folds the system prompt into the first user turn. The others give it its own turn.
BUILTIN_TEMPLATES: dict[str, str | None] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim }}"
        "{{ '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
        "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
        "{% for message in turns %}"
        "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
        "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim }}"
        "{{ '<end_of_turn>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "phi3": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    "plain": None,
}


class ChatTemplate:
    """A compiled chat template; ``source`` None renders ``plain``. ``name`` says where it came from."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "", name: str = "") -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name or ("gguf" if source else "plain")
        self._template = _compile(source) if source else None

    @classmethod
    def for_model(cls, gguf_template: str | None, choice: str | None = None, *, model_name: str = "the model",
                  bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        """The template a model runs with: ``choice`` (a built-in name, a Jinja file, or Jinja source) if
        given, else the GGUF's own; a missing or uncompilable GGUF template falls back to plain, loudly."""
        kw = dict(bos_token=bos_token, eos_token=eos_token)
        if choice is not None:
            source, name = resolve_template_choice(choice)
            return cls(source, name=name, **kw)  # type: ignore[arg-type]
        hint = f"choose one with chat_template= / --chat-template NAME|FILE ({', '.join(BUILTIN_TEMPLATES)})"
        if gguf_template:
            try:
                return cls(gguf_template, name="gguf", **kw)  # type: ignore[arg-type]
            except ChatTemplateError as exc:
                reason = f"its chat template cannot be rendered here ({exc})"
        else:
            reason = "it has no chat template (tokenizer.chat_template)"
        _warn(f"{model_name}: {reason}; prompts are sent as PLAIN text (a single user turn as is, longer chats "
              f"as 'role: text' lines); {hint}")
        return cls(None, name="plain (fallback)", **kw)  # type: ignore[arg-type]

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
            raise ChatTemplateError(
                f"the {self.name} chat template failed: {exc} (choose another with chat_template= / "
                f"--chat-template NAME|FILE: {', '.join(BUILTIN_TEMPLATES)})"
            ) from exc


def resolve_template_choice(choice: str) -> tuple[str | None, str]:
    """``choice`` -> (Jinja source or None for plain, a name for messages)."""
    if choice in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[choice], choice
    if "{{" in choice or "{%" in choice:
        return choice, "custom"
    path = Path(choice).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), path.name
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatTemplateError(f"cannot read chat template file {path}: {exc}") from exc
    raise ChatTemplateError(
        f"unknown chat template {choice!r}: use a built-in name ({', '.join(BUILTIN_TEMPLATES)}) or a Jinja file"
    )


def _warn(msg: str) -> None:
    log.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=4)


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
