"""The engine's HTTP face: FastAPI routes over an Engine, run by uvicorn on a socket bound first.

    python -m rs_assistant.engine serve --port 0 --token-file ~/.config/rs_assistant/engine.token

Routes (docs/architecture.md): ``GET /v1/health`` (no token), ``GET /v1/models``, ``POST /v1/analyze``,
``POST /v1/route`` (which task a free-text turn asks for: rs_assistant.engine.router),
``POST /v1/batch`` (a whole-layer job streamed back as NDJSON events), ``GET /openapi.json`` and the
OpenAI-compatible ``POST /v1/chat/completions``. Every route but
health needs ``Authorization: Bearer <token>``. Every error is ``{"error": {"code", "message"}}``
with the status of protocol.HTTP_STATUS.

Inference runs on worker threads. While it runs, the route polls the client: a client that
disconnects, or a request that outlives ``request_timeout_s`` (504), sets the request's cancel
Event, which the model's backend checks between generation steps.

``/v1/batch`` checks the job (model, task, sources, extent) before it answers: a mistake is an
ordinary JSON error with its 4xx status. Then it streams ``application/x-ndjson``, one event per
line as it happens (protocol.BatchEvent); a failure mid-job is an ``error`` event. A job takes the
model's lock per batch of tiles, so /v1/analyze requests to the same model interleave with it; it
has no overall deadline, and a client that disconnects cancels it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image
from pydantic import TypeAdapter
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from Python 3.12

from rs_assistant import __version__
from rs_assistant.core.paths import user_config_dir
from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    BatchRequest,
    BusyRequest,
    ErrorCode,
    Health,
    Message,
    Options,
    ProtocolError,
    Queue,
    Role,
    RouteRequest,
    RouteResult,
    model_list_to_dict,
)
from rs_assistant.core.protocol.schema import MAX_DEPTH, depth
from rs_assistant.core.protocol.schema import check as check_schema
from rs_assistant.engine.batch import JobPlan, plan_job, stream_job
from rs_assistant.engine.imagery import decode_image_bytes
from rs_assistant.engine.router import classes_for, route
from rs_assistant.engine.service import ChatReply, Engine

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_WORKERS = 8
#: Requests waiting for a model or being answered (batch jobs included); one more gets 429 busy.
DEFAULT_MAX_QUEUE = 32
HEALTH_PATH = "/v1/health"
#: How often a running request checks for a disconnected client and for its deadline.
POLL_S = 0.05

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,(?P<data>.*)$", re.DOTALL)


# --- the OpenAI-compatible shapes (documentation in /openapi.json and the builders' types) -------


class ChatContentPart(TypedDict, total=False):
    type: Literal["text", "image_url"]
    text: str
    image_url: dict[str, str]  # {"url": "data:image/png;base64,..."}


class ChatMessage(TypedDict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ChatContentPart]


class ChatCompletionRequest(TypedDict, total=False):
    model: str  # an engine model name; "default" when left out
    messages: list[ChatMessage]
    max_tokens: int
    max_completion_tokens: int
    stream: bool


class ChatChoice(TypedDict):
    index: int
    message: dict[str, str]
    finish_reason: str


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, int]


class ErrorDetail(TypedDict):
    code: str
    message: str


class Error(TypedDict):
    error: ErrorDetail


class ModelEntry(TypedDict):
    id: str
    object: Literal["model"]
    owned_by: str
    name: str
    backend: str
    tasks: list[str]
    loaded: bool


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelEntry]  # OpenAI's key
    models: list[ModelEntry]  # the same entries


class BatchEventLine(TypedDict, total=False):
    """One line of the /v1/batch stream; which fields it has depends on ``event`` (protocol.BatchEvent)."""

    event: Literal["start", "tile", "merged", "ranked", "done", "error"]
    job_id: str  # start
    tiles: int  # start: tiles in the grid
    todo: int  # start, tile: tiles this run does
    crs: str  # start: the CRS of every feature
    tile_size: int  # start
    overlap: int  # start
    tile: int  # tile: its id
    done: int  # tile: tiles done so far in this run
    text: str  # tile: its caption (may be empty)
    features: Any  # tile, merged, ranked: a list of GeoJSON features; done: how many the job wrote
    pending: list[dict[str, Any]]  # tile: seam pieces, final only after merged (keep them to resume)
    tiles_done: int  # done
    timing_ms: dict[str, float]  # done: read, infer, post
    error: ErrorDetail  # error


_SCHEMAS: dict[str, Any] = {
    "AnalyzeRequest": AnalyzeRequest,
    "AnalyzeResponse": AnalyzeResponse,
    "ModelList": ModelList,
    "BatchRequest": BatchRequest,
    "BatchEventLine": BatchEventLine,
    "Health": Health,
    "Error": Error,
    "ChatCompletionRequest": ChatCompletionRequest,
    "ChatCompletion": ChatCompletion,
    "RouteRequest": RouteRequest,
    "RouteResult": RouteResult,
}


# --- the app -----------------------------------------------------------------------------------


def create_app(
    engine: Engine,
    token: str | None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    workers: int = DEFAULT_WORKERS,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> FastAPI:
    """The FastAPI app serving ``engine``; ``token`` None turns the bearer check off (embedding, tests)."""
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsa-infer")
    queue = _Queue(engine, max_queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="RS Assistant engine",
        version=__version__,
        description="Talk to remote-sensing imagery: answers in text and in GeoJSON in the CRS you ask for.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    if token is not None:
        app.add_middleware(_BearerToken, token=token)

    async def in_worker(
        request: Request, work: Callable[[threading.Event], T], task: str = "chat", model: str = "default"
    ) -> T:
        with queue.admit(request.url.path, task, model) as entry:
            return await _run_cancellable(request, executor, entry.working(work), request_timeout_s)

    def schemas() -> Mapping[str, Any]:
        return app.openapi()["components"]["schemas"]

    async def read_body(request: Request, schema: str) -> Any:
        """The body, valid by ``schema`` in /openapi.json (400 naming the field otherwise)."""
        body = await _read_json(request, max_body_bytes)
        check_schema(body, schemas()[schema], schemas())
        return body

    @app.exception_handler(ProtocolError)
    async def protocol_error(_: Request, exc: ProtocolError) -> Response:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.BAD_REQUEST
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        # a 405 keeps its Allow header (the methods the path answers), as HTTP requires
        return JSONResponse(ProtocolError(code, message).to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error_response(
            ProtocolError(ErrorCode.INTERNAL, "the engine failed on this request; its log has the details")
        )

    @app.get(HEALTH_PATH, summary="Status, version and device (no token needed)", responses=_responses("Health"))
    async def health() -> Response:
        return JSONResponse(dataclasses.replace(engine.health(), queue=queue.state()).to_dict())

    @app.get("/v1/models", summary="The models this engine can answer with", responses=_responses("ModelList"))
    async def models() -> Response:
        infos = await asyncio.get_running_loop().run_in_executor(executor, engine.models)
        return JSONResponse(model_list_to_dict(infos))

    @app.post(
        "/v1/analyze",
        summary="Answer a task on a map region: text and GeoJSON features in output_crs",
        openapi_extra=_request_body("AnalyzeRequest"),
        responses=_responses("AnalyzeResponse"),
    )
    async def analyze(request: Request) -> Response:
        analyze_request = AnalyzeRequest.from_dict(await read_body(request, "AnalyzeRequest"))
        response = await in_worker(
            request,
            lambda cancel: engine.analyze(analyze_request, cancel),
            analyze_request.task.value,
            analyze_request.model,
        )
        return JSONResponse(response.to_dict())

    @app.post(
        "/v1/batch",
        summary="Run a task over a whole raster, tile by tile; streams NDJSON events (start, tile..., merged, "
        "ranked, done)",
        openapi_extra=_request_body("BatchRequest"),
        responses=_responses("BatchEventLine", media_type="application/x-ndjson"),
    )
    async def batch(request: Request) -> Response:
        batch_request = BatchRequest.from_dict(await read_body(request, "BatchRequest"))
        plan = await asyncio.get_running_loop().run_in_executor(executor, plan_job, engine, batch_request)
        entry = queue.enter(request.url.path, batch_request.task.value, batch_request.model)  # left when the job ends
        try:
            stream = _batch_stream(request, executor, engine, plan, entry, queue)
        except BaseException:
            queue.leave(entry)
            raise
        # the place is also given back after the response (idempotent), should the stream never start
        return StreamingResponse(
            stream, media_type="application/x-ndjson", background=BackgroundTask(queue.leave, entry)
        )

    @app.post(
        "/v1/chat/completions",
        summary="OpenAI-compatible chat on images sent as data URLs (task chat)",
        openapi_extra=_request_body("ChatCompletionRequest"),
        responses=_responses("ChatCompletion"),
    )
    async def chat_completions(request: Request) -> Response:
        body = await _read_json(request, max_body_bytes)
        model, images, prompt, history, options, stream = _parse_chat(body)
        reply = await in_worker(request, lambda cancel: engine.chat(model, images, prompt, history, options, cancel))
        if stream:
            return StreamingResponse(_chat_stream(reply), media_type="text/event-stream")
        return JSONResponse(_chat_completion(reply))

    @app.post(
        "/v1/route",
        summary="Which task a free-text turn asks for (caption, ground, segment, change, count, retrieve, chat) and "
        "its prompt",
        openapi_extra=_request_body("RouteRequest"),
        responses=_responses("RouteResult"),
    )
    async def route_turn(request: Request) -> Response:
        route_request = RouteRequest.from_dict(await read_body(request, "RouteRequest"))
        classes = classes_for(engine.registry, route_request.model)  # reads a config.json at most once per model
        return JSONResponse(route(route_request, classes).to_dict())

    return app


class _BearerToken:
    """Pure ASGI middleware: 401 (error JSON) unless ``Authorization: Bearer <token>``; health is open."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != HEALTH_PATH and not self._authorized(scope):
            headers = dict(scope["headers"])
            reason = (
                "wrong bearer token"
                if b"authorization" in headers
                else "missing 'Authorization: Bearer <token>' header"
            )
            error = ProtocolError(ErrorCode.UNAUTHORIZED, f"{reason}; the token is in the engine's token file")
            response = _error_response(error)
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False


def _error_response(exc: ProtocolError) -> JSONResponse:
    retry = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


class _Entry:
    """One admitted request: what it asks and, while a worker thread runs it, that thread."""

    def __init__(self, route: str, task: str, model: str):
        self.route, self.task, self.model = route, task, model
        self.started = time.monotonic()
        self.thread: int | None = None

    def working(self, work: Callable[[threading.Event], T]) -> Callable[[threading.Event], T]:
        """``work`` noting the worker thread that runs it (so that /v1/health can tell waiting from busy)."""

        def run(cancel: threading.Event) -> T:
            self.thread = threading.get_ident()
            try:
                return work(cancel)
            finally:
                self.thread = None

        return run


class _Queue:
    """The requests admitted to the models (analyze, chat, batch jobs). Beyond ``limit`` of them a request is
    refused at once with 429 busy and a Retry-After estimated from the recent requests' durations."""

    def __init__(self, engine: Engine, limit: int):
        self.engine = engine
        self.limit = max(1, limit)
        self.entries: list[_Entry] = []
        self.durations: deque[float] = deque(maxlen=20)
        self.lock = threading.Lock()

    def enter(self, route: str, task: str, model: str) -> _Entry:
        with self.lock:
            if len(self.entries) >= self.limit:
                typical = sorted(self.durations)[len(self.durations) // 2] if self.durations else 1.0
                retry = max(1, min(600, round(typical * (len(self.entries) - self.limit + 1) + 0.5)))
                error = ProtocolError(
                    ErrorCode.BUSY,
                    f"the engine is answering or holding {len(self.entries)} requests (its limit); retry in about "
                    f"{retry} s",
                )
                error.retry_after_s = retry  # type: ignore[attr-defined]
                raise error
            entry = _Entry(route, task, model)
            self.entries.append(entry)
            return entry

    def leave(self, entry: _Entry) -> None:
        with self.lock:
            if entry in self.entries:
                self.entries.remove(entry)
                self.durations.append(time.monotonic() - entry.started)

    @contextmanager
    def admit(self, route: str, task: str, model: str) -> Iterator[_Entry]:
        entry = self.enter(route, task, model)
        try:
            yield entry
        finally:
            self.leave(entry)

    def state(self) -> Queue:
        busy_threads = self.engine.busy_threads()
        now = time.monotonic()
        with self.lock:
            entries = list(self.entries)
        busy = [e for e in entries if e.thread is not None and e.thread in busy_threads]
        return Queue(
            waiting=len(entries) - len(busy),
            limit=self.limit,
            busy=tuple(BusyRequest(e.route, e.task, e.model, now - e.started) for e in busy),
        )


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing (413) a body over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    too_deep = ProtocolError(ErrorCode.BAD_REQUEST, f"the body nests lists or objects more than {MAX_DEPTH} deep")
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise too_deep from None
    if depth(body) > MAX_DEPTH:
        raise too_deep
    return body


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"the body has {'at least ' if size <= limit else ''}{size} bytes; the limit is {limit} bytes",
    )


async def _run_cancellable(
    request: Request, executor: ThreadPoolExecutor, work: Callable[[threading.Event], T], timeout_s: float
) -> T:
    """``work(cancel)`` on a worker thread; sets ``cancel`` if the client leaves or time runs out."""
    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(executor, work, cancel)
    deadline = loop.time() + timeout_s
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=POLL_S)
            if done:
                return future.result()
            if await request.is_disconnected():
                cancel.set()
                log.info("%s %s: the client disconnected; cancelling", request.method, request.url.path)
                raise ProtocolError(ErrorCode.CANCELLED, "the client disconnected")
            if loop.time() >= deadline:
                cancel.set()
                log.warning("%s %s: still running after %g s; cancelling", request.method, request.url.path, timeout_s)
                raise ProtocolError(ErrorCode.TIMEOUT, f"the request took longer than {timeout_s:g} s and was stopped")
    except asyncio.CancelledError:
        cancel.set()
        raise
    finally:
        if not future.done():
            future.cancel()  # still queued for a worker: it will not start; running: it sees `cancel`


# --- /v1/batch ---------------------------------------------------------------------------------


async def _batch_stream(
    request: Request, pool: ThreadPoolExecutor, engine: Engine, plan: JobPlan, entry: _Entry, queue: _Queue
) -> AsyncIterator[bytes]:
    """The job's events as NDJSON lines, each sent as soon as it exists; a client that leaves cancels the job.
    The job holds its place in ``queue`` until it ends."""
    cancel = threading.Event()
    events = stream_job(engine, plan, cancel)
    loop = asyncio.get_running_loop()
    step = entry.working(lambda _cancel: next(events, None))
    try:
        while True:
            future = loop.run_in_executor(pool, step, cancel)
            while not (await asyncio.wait({future}, timeout=POLL_S))[0]:
                if await request.is_disconnected():
                    log.info("batch job %s: the client disconnected; cancelling", plan.job_id)
                    cancel.set()
                    return
            event = future.result()
            if event is None:
                return
            yield (json.dumps(event) + "\n").encode("utf-8")
    finally:
        cancel.set()  # the job's thread stops at its next check (no-op once the job has ended)
        queue.leave(entry)


# --- /v1/chat/completions ----------------------------------------------------------------------


def _parse_chat(body: Any) -> tuple[str, list[np.ndarray], str, tuple[Message, ...], Options, bool]:
    """(model, images, prompt, history, options, stream) from an OpenAI chat.completions request."""
    if not isinstance(body, Mapping):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the body must be a JSON object with 'messages'")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'messages' must be a non-empty list")
    model = body.get("model") or "default"
    if not isinstance(model, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'model' must be a string")
    turns: list[Message] = []
    images: list[np.ndarray] = []
    for number, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"messages[{number}] must be an object with role and content")
        role = "system" if message.get("role") == "developer" else message.get("role")
        text, found = _message_parts(message.get("content"), number)
        turns.append(Message(role=role, content=text))
        images.extend(found)
    if turns[-1].role is not Role.USER:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the last message must be the user's")
    if not 1 <= len(images) <= 2:
        raise ProtocolError(
            ErrorCode.BAD_IMAGE_COUNT,
            f"chat takes one or two images (content parts of type image_url with data: URLs), got {len(images)}",
        )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    options = Options() if max_tokens is None else Options(max_new_tokens=max_tokens)
    return model, images, turns[-1].content, tuple(turns[:-1]), options, bool(body.get("stream", False))


def _message_parts(content: Any, number: int) -> tuple[str, list[np.ndarray]]:
    """The text (parts joined by blank lines) and the decoded images of one message's content."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"messages[{number}].content must be a string or a list of parts")
    texts: list[str] = []
    images: list[np.ndarray] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            images.append(_decode_data_url(url, number))
        else:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"messages[{number}]: content parts must be {{type: text, text}} or "
                "{type: image_url, image_url: {url}}",
            )
    return "\n\n".join(texts), images


def _decode_data_url(url: Any, number: int) -> np.ndarray:
    match = _DATA_URL.match(url) if isinstance(url, str) else None
    if match is None:
        shown = url[:40] + "..." if isinstance(url, str) and len(url) > 40 else url
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"messages[{number}]: image_url must be a data URL (data:image/png;base64,...), got {shown!r}; the "
            f"engine fetches nothing",
        )
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            ErrorCode.UNREADABLE_SOURCE, f"messages[{number}]: the image data URL is not valid base64"
        ) from None
    return _fit(decode_image_bytes(data), Options().max_side)


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (aspect kept) so that its longer side is at most ``max_side``, as /v1/analyze reads windows."""
    height, width = image.shape[:2]
    scale = max(height, width) / max_side
    if scale <= 1:
        return image
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _chat_completion(reply: ChatReply) -> ChatCompletion:
    return {
        "id": f"chatcmpl-{reply.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


async def _chat_stream(reply: ChatReply) -> AsyncIterator[bytes]:
    """The finished reply as OpenAI server-sent events: one content chunk, a stop chunk, [DONE]."""
    head = {
        "id": f"chatcmpl-{reply.request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": reply.model,
    }
    deltas = [({"role": "assistant", "content": reply.text}, None), ({}, "stop")]
    for delta, finish in deltas:
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


# --- /openapi.json -----------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _request_body(schema: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}}


def _responses(schema: str, media_type: str = "application/json") -> dict[int | str, dict[str, Any]]:
    error = {"application/json": {"schema": _ref("Error")}}
    success = "Success" if media_type == "application/json" else f"Success: a stream of {schema} objects, one per line"
    return {
        200: {"description": success, "content": {media_type: {"schema": _ref(schema)}}},
        "4XX": {"description": "The caller's mistake (bad input, unknown model, missing token, ...)", "content": error},
        "5XX": {"description": "The engine's own fault, or a timeout", "content": error},
    }


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus schemas generated from the protocol dataclasses themselves."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, kind in _SCHEMAS.items():
            schema = TypeAdapter(kind).json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
        document["paths"][HEALTH_PATH]["get"]["security"] = []
        app.openapi_schema = document
    return app.openapi_schema


# --- running: socket, server, token ------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: a free one), bound before the server starts."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    if os.name != "nt":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def socket_url(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


class Server(uvicorn.Server):
    """uvicorn serving ``app`` on an already bound socket; ``on_ready()`` once it accepts requests."""

    def __init__(self, app: ASGIApp, sock: socket.socket, on_ready: Callable[[], None] | None = None):
        super().__init__(
            uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
        )
        self.sock = sock
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()

    def run_on_socket(self) -> None:
        """Serve until SIGINT/SIGTERM (in the main thread) or ``should_exit``."""
        self.run(sockets=[self.sock])


def default_token_file() -> Path:
    """Where ``serve`` keeps its token when no --token-file is given (the user's config folder)."""
    return user_config_dir() / "engine.token"


def load_or_create_token(path: str | Path) -> str:
    """The token in ``path``; a new random one written there (mode 0600) if the file is absent or empty."""
    path = Path(path).expanduser()
    if path.is_file():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            if os.name != "nt" and path.stat().st_mode & 0o077:
                log.warning("token file %s can be read by other users; chmod 600 it", path)
            return token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o600)
    with open(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    if os.name != "nt":
        os.chmod(path, 0o600)  # an existing empty file keeps its old mode through os.open
    log.info("wrote a new token to %s", path)
    return token
