"""Request models (pydantic) and response shapes of the OpenAI-compatible API.

Unknown top-level fields are ignored, as OpenAI-compatible servers do, because desktop apps send
fields of newer API versions. The ``steering`` extension is strict (``extra="forbid"``): a misspelt
key there must be an error, not a request that is silently steered differently from what was asked.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..result import GenerationResult
from ..vocab import GatePolicy, Mode, VectorSource


class SteeringRequest(BaseModel):
    """``"steering": {...}`` in a request body (``extra_body`` in the openai client)."""

    model_config = ConfigDict(extra="forbid")

    packs: list[str] | None = Field(None, description="Packs to apply (names from /v1/models); [] = none.")
    strength: float | None = Field(None, allow_inf_nan=False)
    mode: Mode | None = None
    gate: GatePolicy | None = None
    vector: VectorSource | None = None
    threshold: float | None = Field(None, allow_inf_nan=False, ge=0.0,
                                    description="Gate threshold for every requested pack; default: each pack's tau.")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """Text content; OpenAI's list-of-parts form is joined (only ``text`` parts are supported)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text" or part.text is None:
                from .errors import APIError

                raise APIError(400, f"content part of type {part.type!r} is not supported (text only)",
                               param="messages", code="unsupported_content")
        return "".join(p.text or "" for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(40, ge=0, description="llama.cpp extension")
    min_p: float = Field(0.05, ge=0.0, le=1.0, allow_inf_nan=False, description="llama.cpp extension")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    steering: SteeringRequest | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop strings")
        return v

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s)

    @property
    def steering_given(self) -> bool:
        """True when the body has a ``steering`` key (``null`` = steering off); False: the defaults."""
        return "steering" in self.model_fields_set

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)

    def conversation(self) -> list[dict[str, str]]:
        """Messages for the chat template (``developer`` is OpenAI's newer name for ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        return self.max_tokens


# ---------------------------------------------------------------------- responses
FINISH = {"stop": "stop", "length": "length", "context": "length"}
"""GenerationResult.finish_reason -> OpenAI's (a full context is reported as ``length``)."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(result: GenerationResult) -> dict[str, Any]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.tokens,
            "total_tokens": result.prompt_tokens + result.tokens}


def chat_response(rid: str, model: str, result: GenerationResult, steering: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": FINISH.get(result.finish_reason, "stop"), "logprobs": None}],
        "usage": usage(result), "steering": steering,
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None,
               **extra: Any) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}


def text_response(rid: str, model: str, result: GenerationResult, steering: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": result.text, "finish_reason": FINISH.get(result.finish_reason, "stop"),
                     "logprobs": None}],
        "usage": usage(result), "steering": steering,
    }


def text_chunk(rid: str, model: str, created: int, text: str, finish: str | None = None,
               **extra: Any) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}], **extra}
