"""The engine's HTTP face: FastAPI routes over an Engine, run by uvicorn on a socket bound first.

    python -m rs_assistant.engine serve --port 0 --token-file ~/.config/rs_assistant/engine.token

Routes (docs/architecture.md): ``GET /v1/health`` (no token), ``GET /v1/models``, ``POST /v1/analyze``,
``POST /v1/route`` (which task a free-text turn asks for: rs_assistant.engine.router),
``POST /v1/batch`` (a whole-layer job streamed back as NDJSON events), ``GET /openapi.json`` and the
OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models/{id}`` (their shapes, parsing and
answers: rs_assistant.engine.openai_api). Every route but health needs ``Authorization: Bearer <token>``.
Every error is ``{"error": {"code", "message", "type", "param"}}`` with the status of protocol.HTTP_STATUS.

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
import dataclasses
import functools
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
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
    ProtocolError,
    Queue,
    RouteRequest,
    RouteResult,
)
from rs_assistant.core.protocol.schema import MAX_DEPTH, depth
from rs_assistant.core.protocol.schema import check as check_schema
from rs_assistant.engine import openai_api
from rs_assistant.engine.batch import JobPlan, plan_job, stream_job
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


class ErrorDetail(TypedDict):
    code: str  # stable (protocol.ErrorCode)
    message: str  # for people
    type: str  # OpenAI's kind: invalid_request_error, authentication_error, not_found_error, rate_limit_error, ...
    param: str | None  # the request field at fault, when one is


class Error(TypedDict):
    error: ErrorDetail


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
    "ModelList": openai_api.ModelList,
    "ModelEntry": openai_api.ModelEntry,
    "BatchRequest": BatchRequest,
    "BatchEventLine": BatchEventLine,
    "Health": Health,
    "Error": Error,
    "ChatCompletionRequest": openai_api.ChatCompletionRequest,
    "ChatCompletion": openai_api.ChatCompletion,
    "ChatCompletionChunk": openai_api.ChatCompletionChunk,
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

    started = int(time.time())  # the models' "created" when nothing better is known (openai_api)

    @app.get("/v1/models", summary="The models this engine can answer with", responses=_responses("ModelList"))
    async def models() -> Response:
        found = await asyncio.get_running_loop().run_in_executor(executor, openai_api.model_list, engine, started)
        return JSONResponse(found)

    @app.get("/v1/models/{model_id:path}", summary="One model (404 for a model the engine does not have)",
             responses=_responses("ModelEntry"))  # fmt: skip
    async def model(model_id: str) -> Response:
        loop = asyncio.get_running_loop()
        return JSONResponse(await loop.run_in_executor(executor, openai_api.model_object, engine, model_id, started))

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
        stream = _batch_stream(request, executor, engine, plan, entry, queue)
        # the place is also given back after the response (idempotent), should the stream never start
        return StreamingResponse(
            stream, media_type="application/x-ndjson", background=BackgroundTask(queue.leave, entry)
        )

    @app.post(
        "/v1/chat/completions",
        summary="OpenAI-compatible chat (task chat) on images sent as data URLs, or on none; streams "
        "server-sent ChatCompletionChunk events with stream: true (rs_assistant/engine/openai_api.py)",
        openapi_extra=_request_body("ChatCompletionRequest"),
        responses=_with_stream(_responses("ChatCompletion"), "ChatCompletionChunk"),
    )
    async def chat_completions(request: Request) -> Response:
        body = await _read_json(request, max_body_bytes)
        openai_api.refuse_unsupported(body)  # with the reason, before the schema's "not a known field"
        check_schema(body, schemas()["ChatCompletionRequest"], schemas())
        chat = await asyncio.get_running_loop().run_in_executor(executor, openai_api.parse_request, body)

        def run(on_text: openai_api.OnText | None = None) -> Awaitable[ChatReply]:
            work = functools.partial(openai_api.answer, engine, chat, on_text=on_text)  # work(cancel)
            return in_worker(request, work, "chat", chat.model)

        if chat.stream:
            return await openai_api.streamed(engine, chat, run)
        return JSONResponse(openai_api.completion(await run()))

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
                retry = max(1, min(600, math.ceil(typical)))  # a place frees when a request ends
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
        busy_threads = self.engine.busy_threads()  # thread idents
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


# --- /openapi.json -----------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _request_body(schema: str) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": _ref(schema)}
    if schema in _EXAMPLES:
        content["examples"] = {name: {"value": value} for name, value in _EXAMPLES[schema].items()}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def _example_png() -> str:
    """A 32 x 32 PNG (a bright square on dark ground), base64: the image of the documented examples."""
    pixels = np.full((32, 32, 3), 40, np.uint8)
    pixels[8:24, 8:24] = 220
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_EXAMPLE_IMAGE = {"png_base64": _example_png(), "extent": [500000, 4649000, 500320, 4649320], "crs": "EPSG:32633"}

#: Requests shown in /openapi.json (and sent by the api test tier): each answerable as it stands.
_EXAMPLES: dict[str, dict[str, Any]] = {
    "AnalyzeRequest": {
        "caption": {"task": "caption", "images": [_EXAMPLE_IMAGE], "output_crs": "EPSG:32633"},
        "find": {
            "task": "ground",
            "prompt": "buildings",
            "images": [_EXAMPLE_IMAGE],
            "output_crs": "EPSG:4326",
            "options": {"score_threshold": 0.3},
        },
        "chat": {
            "task": "chat",
            "prompt": "what is in the middle?",
            "history": [{"role": "user", "content": "describe the image"}, {"role": "assistant", "content": "a roof"}],
            "images": [_EXAMPLE_IMAGE],
            "output_crs": "EPSG:32633",
        },
    },
    "RouteRequest": {"count": {"prompt": "how many cars are there?", "images": 1, "model": "auto"}},
}


def _responses(schema: str, media_type: str = "application/json") -> dict[int | str, dict[str, Any]]:
    error = {"application/json": {"schema": _ref("Error")}}
    success = "Success" if media_type == "application/json" else f"Success: a stream of {schema} objects, one per line"
    return {
        200: {"description": success, "content": {media_type: {"schema": _ref(schema)}}},
        "4XX": {"description": "The caller's mistake (bad input, unknown model, missing token, ...)", "content": error},
        "5XX": {"description": "The engine's own fault, or a timeout", "content": error},
    }


def _with_stream(responses: dict[int | str, dict[str, Any]], chunk: str) -> dict[int | str, dict[str, Any]]:
    """``responses`` whose 200 may also be a ``text/event-stream`` of ``chunk`` objects (``data: <chunk>`` events)."""
    success = dict(responses[200])
    success["content"] = {**success["content"], "text/event-stream": {"schema": _ref(chunk)}}
    success["description"] = f"{success['description']}; with stream: true, server-sent {chunk} events"
    return {**responses, 200: success}


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


def socket_url(sock: socket.socket, https: bool = False) -> str:
    """``http://HOST:PORT`` (``https://`` with TLS) of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    scheme = "https" if https else "http"
    return f"{scheme}://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{scheme}://{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this computer only (127.0.0.0/8, ::1, localhost)."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


class Server(uvicorn.Server):
    """uvicorn serving ``app`` on an already bound socket; ``on_ready()`` once it accepts requests. With
    ``ssl_certfile`` and ``ssl_keyfile`` (PEM) it serves HTTPS."""

    def __init__(
        self,
        app: ASGIApp,
        sock: socket.socket,
        on_ready: Callable[[], None] | None = None,
        ssl_certfile: str | Path | None = None,
        ssl_keyfile: str | Path | None = None,
    ):
        super().__init__(
            uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=5,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
            )
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


#: A token shorter than this could be guessed: the engine refuses to start with it.
MIN_TOKEN_CHARS = 16


def load_or_create_token(path: str | Path) -> str:
    """The token in ``path``; a new random one written there (mode 0600) if the file is absent or empty.
    ValueError for a token shorter than MIN_TOKEN_CHARS."""
    path = Path(path).expanduser()
    if path.is_file():
        token = path.read_text(encoding="utf-8").strip()
        if token and len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"the token in {path} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} (or empty the "
                f"file and the engine writes a random one)"
            )
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
