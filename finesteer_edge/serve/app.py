"""The routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``.

Each generation request resolves its steering (400 if it cannot be honoured), waits for a slot (503
when the queue is full), and runs its turn in a thread (:mod:`.turn`). Errors raised before the first
piece (prompt over the context, ...) become a 4xx JSON body; a stream has then not started yet, so a
client never gets a 200 for a request that failed. ``/v1/completions`` sends the prompt as one user turn
through the model's chat template: the gate is calibrated on chat turns, and the runtime is turn-based.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ContextOverflowError, FinesteerError, PackError
from ..llama.chat_template import ChatTemplateError
from ..result import GenerationResult
from . import schemas
from .engine import Engine
from .errors import (
    APIError,
    BodyTooLarge,
    api_error_handler,
    http_error_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from .schemas import ChatCompletionRequest, CompletionRequest
from .steering import resolve
from .turn import DONE, ClientGone, Turn

log = logging.getLogger("finesteer_edge.serve")


class Guard:
    """Pure ASGI middleware: the API key (``Authorization: Bearer``) and the body size limit."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope["path"] != "/health":
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.api_key.encode()):
                msg = "missing or wrong API key: send the header 'Authorization: Bearer <key>' (--api-key)"
                await APIError(401, msg, code="invalid_api_key").response()(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await APIError(413, str(BodyTooLarge(self.max_body).detail),
                           code="request_too_large").response()(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, counted, send)


def as_api_error(exc: BaseException) -> APIError:
    """A failed turn's exception -> the error the client sees (4xx for everything the request caused)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ChatTemplateError):
        return APIError(400, str(exc), param="messages", code="chat_template_error")
    if isinstance(exc, PackError):
        return APIError(400, f"steering failed for this request: {exc}", param="steering", code="steering_failed")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc), code="invalid_request")
    if isinstance(exc, FinesteerError):
        return APIError(500, str(exc), code="internal_error")
    log.error("turn failed", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")


def create_app(engine: Engine) -> FastAPI:
    active: set[Turn] = set()
    stats: dict[str, Any] = {"turns": 0, "cancelled": 0, "last_cancelled": None}

    def ended(turn: Turn) -> None:  # runs in the turn's thread, after its slot is back
        stats["turns"] += 1
        if turn.cancelled:
            stats["cancelled"] += 1
            stats["last_cancelled"] = {"pieces": turn.pieces, "pieces_after_cancel": turn.pieces_after_cancel}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for t in list(active):  # stop running turns before their contexts are freed
            t.cancel.set()
        for t in list(active):
            t.join(timeout=30)

    app = FastAPI(title="finesteer-edge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.add_exception_handler(APIError, api_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_middleware(Guard, api_key=engine.config.api_key, max_body=engine.config.max_body_bytes)

    async def start(req: schemas._Sampling, messages: list[dict[str, str]], request: Request) -> tuple[Turn, object]:
        choice = resolve(req.steering, req.steering_given, engine.defaults, engine.packs, engine.failed)  # type: ignore[arg-type]
        limit = req.token_limit()  # type: ignore[attr-defined]
        sampling = dict(max_tokens=engine.config.n_ctx if limit is None else limit, temperature=req.temperature,
                        top_p=req.top_p, top_k=req.top_k, min_p=req.min_p, seed=req.seed, stop=req.stops())
        slot = await engine.pool.acquire()
        turn = Turn(engine.pool, slot, choice, messages, sampling, engine.packs, on_end=ended)
        active.add(turn)
        turn.watch(request)  # a client that leaves cancels the turn (a stream's: until it starts, then sse-starlette)
        try:
            first = await turn.next()
        except BaseException:
            drop(turn)
            raise
        if isinstance(first, BaseException):
            drop(turn)
            raise as_api_error(first)
        return turn, first

    def drop(turn: Turn) -> None:
        """The route is done with ``turn``: stop it if it still runs and stop watching its client."""
        turn.cancel.set()
        turn.unwatch()
        active.discard(turn)

    async def finish(turn: Turn, first: object) -> GenerationResult:
        item = first
        try:
            while not isinstance(item, GenerationResult):
                if isinstance(item, BaseException):
                    raise as_api_error(item)
                item = await turn.next()  # ClientGone when the client disconnects (the turn is cancelled)
            return item
        finally:
            drop(turn)

    def stream(turn: Turn, first: object, chunk: Callable[..., dict[str, Any]], rid: str, opening: list[Any],
               include_usage: bool) -> EventSourceResponse:
        created = int(time.time())
        model = engine.model_id
        turn.unwatch()  # sse-starlette watches the connection from here on and cancels events() on a disconnect

        async def events() -> AsyncIterator[dict[str, str]]:
            item = first
            try:
                for head in opening:
                    yield {"data": json.dumps(chunk(rid, model, created, head))}
                while item is not DONE:
                    if isinstance(item, BaseException):
                        yield {"data": json.dumps(as_api_error(item).body())}
                        return
                    if isinstance(item, GenerationResult):
                        finish = schemas.FINISH.get(item.finish_reason, "stop")
                        tail = {} if chunk is schemas.chat_chunk else ""
                        yield {"data": json.dumps(chunk(rid, model, created, tail, finish, steering=turn.steering))}
                        if include_usage:
                            yield {"data": json.dumps({**chunk(rid, model, created, tail), "choices": [],
                                                       "usage": schemas.usage(item)})}
                    else:
                        piece = {"content": item} if chunk is schemas.chat_chunk else item
                        yield {"data": json.dumps(chunk(rid, model, created, piece))}
                    item = await turn.next()
                yield {"data": "[DONE]"}
            finally:  # also on disconnect (sse-starlette cancels us): stop the turn within a token
                drop(turn)

        return EventSourceResponse(events(), ping=15, headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        try:
            turn, first = await start(req, req.conversation(), request)
            rid = schemas.new_id("chatcmpl")
            if req.stream:
                return stream(turn, first, schemas.chat_chunk, rid, [{"role": "assistant", "content": ""}],
                              req.include_usage)
            result = await finish(turn, first)
            return schemas.chat_response(rid, engine.model_id, result, turn.steering or {})
        except ClientGone:
            return JSONResponse({}, status_code=499)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        try:
            turn, first = await start(req, [{"role": "user", "content": req.text()}], request)
            rid = schemas.new_id("cmpl")
            if req.stream:
                return stream(turn, first, schemas.text_chunk, rid, [], req.include_usage)
            result = await finish(turn, first)
            return schemas.text_response(rid, engine.model_id, result, turn.steering or {})
        except ClientGone:
            return JSONResponse({}, status_code=499)

    def model_card() -> dict[str, Any]:
        return {"id": engine.model_id, "object": "model", "created": int(engine.config.model_path.stat().st_mtime),
                "owned_by": "finesteer-edge", "packs": sorted(engine.packs)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != engine.model_id:
            raise APIError(404, f"model {model_id!r} not found (this server has {engine.model_id!r})",
                           param="model", code="model_not_found")
        return model_card()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        d = engine.defaults
        packs = {name: {"threshold": p.manifest.tau, "mode": p.manifest.mode, "path": str(p.path)}
                 for name, p in engine.packs.items()}
        return {
            "status": "ok", "model": engine.model_id,
            "slots": {"total": len(engine.pool.slots), "idle": engine.pool.idle, "waiting": engine.pool.waiting},
            "packs": packs, "unavailable_packs": engine.failed, "stats": stats,
            "defaults": {"packs": list(d.packs), "strength": d.strength, "mode": d.mode, "gate": d.gate,
                         "vector": d.vector},
        }
    return app
