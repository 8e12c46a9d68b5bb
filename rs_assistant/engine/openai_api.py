"""OpenAI's chat-completions and models API over the engine: the request and response shapes, the parsing
and the answers (server.py registers the routes).

``POST /v1/chat/completions`` is the task ``chat`` on images sent as ``data:`` URLs (the engine fetches
nothing), or on none for the models that can chat without an image (backends rsa, qwen2_5_vl, openai;
others answer 422 ``bad_image_count`` saying so). What a request may hold is :class:`ChatCompletionRequest`,
which /openapi.json publishes and the route checks every body against (400 ``bad_request`` naming the field
in ``param``). Honoured as OpenAI's API reference describes them:

- ``messages``: roles system, developer (as system), user and assistant; content a string or parts
  (``text``; ``image_url`` in user messages, at most two images in all, ``detail`` "low" read at 512
  pixels; ``refusal`` in assistant messages); an assistant's ``content`` may be null. The last message is
  the user's question. Role ``tool`` (and an assistant's ``tool_calls``) are refused: the engine calls no tools.
- ``model`` (default ``default``; ``auto``: the models file's [tasks] model for chat), ``max_completion_tokens``
  or ``max_tokens`` (none: until the model ends its answer or its context is full, at most 4096 tokens),
  ``n`` (up to 8 answers), ``temperature`` (0, the default here, is greedy decoding: OpenAI's default of 1
  would make every answer a draw), ``top_p``, ``seed`` (answer i of n takes seed + i), ``stop`` (up to 4
  strings; the answer is cut before the first, finish_reason "stop"), ``stream`` with
  ``stream_options.include_usage``, ``user``, ``metadata`` (kept nowhere, as with ``store`` false).
- Accepted only with the value that asks for nothing: ``tools`` ([]), ``tool_choice`` ("none"),
  ``response_format`` ({"type": "text"}), ``logprobs`` (false), ``frequency_penalty`` and ``presence_penalty``
  (0), ``store`` (false), ``modalities`` (["text"]). Any other value, and ``functions``, ``function_call``,
  ``parallel_tool_calls``, ``logit_bias``, ``top_logprobs``, ``audio``, ``prediction``, ``reasoning_effort``,
  ``web_search_options``, ``service_tier`` or ``verbosity``, is a 400 naming the field and why. Other unknown
  fields are 400 too.

Answers report ``usage`` from the model's own tokenizer (prompt tokens include the image tokens; null for a
backend that does not count) and ``finish_reason`` "length" when the token limit (or the context) cut the
answer. A streamed answer is sent as it is generated (server-sent events of ``chat.completion.chunk``, one
piece per settled token or word, then a chunk with each answer's finish_reason, with include_usage a last
chunk with ``usage`` and no choices, then ``data: [DONE]``); a failure once streaming has begun is an event
``{"error": {...}}``. A prompt that leaves the model's context no room for an answer is refused with OpenAI's code
``context_length_exceeded`` (param ``messages``; status 422, as every schema-valid request that cannot be
answered here: 400 means the body breaks /openapi.json), found by the rsa backend without tokenizing more of
the conversation than the context holds (qwen2_5_vl refuses, untokenized, one too long for its context whatever
its tokens). Errors have OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

``GET /v1/models`` lists the models (OpenAI's ``data`` and the plugin's ``models``: the same entries), each
with ``created`` (its checkpoint folder's, else its models file's, else the engine's start time);
``GET /v1/models/{model}`` is one of them, 404 ``unknown_model`` otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Literal,
    Required,  # pydantic reads typing.TypedDict only from Python 3.12
)

import numpy as np
from fastapi.responses import Response, StreamingResponse
from PIL import Image
from pydantic import ConfigDict, with_config
from typing_extensions import TypedDict

from rs_assistant.core.protocol import ErrorCode, Message, ModelInfo, Options, ProtocolError, Role, Task
from rs_assistant.core.protocol.schema import Limits
from rs_assistant.engine.backends.decoding import Decoding
from rs_assistant.engine.imagery import decode_image_bytes
from rs_assistant.engine.service import ChatReply, Engine

log = logging.getLogger(__name__)

MAX_TOKENS = 4096  # the engine's ceiling on an answer (Options.max_new_tokens)
MAX_CHOICES = 8
MAX_STOPS = 4
LOW_DETAIL_SIDE = 512  # image_url.detail "low": the image is read at this longer side (OpenAI: 512 x 512)
DATA_URL_PATTERN = r"^data:image/[\w.+-]+;base64,"  # the engine fetches nothing: images come in the request

_FORBID = ConfigDict(extra="forbid")

# --- the request (its JSON Schema is in /openapi.json; the route holds every body to it) --------------------------


@with_config(_FORBID)
class TextPart(TypedDict):
    type: Literal["text"]
    text: str


@with_config(_FORBID)
class ImageURL(TypedDict, total=False):
    url: Required[Annotated[str, Limits(pattern=DATA_URL_PATTERN)]]  # data:image/<type>;base64,<data>
    detail: Literal["auto", "low", "high"]


@with_config(_FORBID)
class ImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: ImageURL


@with_config(_FORBID)
class RefusalPart(TypedDict):
    type: Literal["refusal"]
    refusal: str


@with_config(_FORBID)
class SystemMessage(TypedDict, total=False):
    role: Required[Literal["system", "developer"]]
    content: Required[str | list[TextPart]]
    name: str  # accepted; the models see no names


@with_config(_FORBID)
class UserMessage(TypedDict, total=False):
    role: Required[Literal["user"]]
    content: Required[str | list[TextPart | ImagePart]]
    name: str


@with_config(_FORBID)
class AssistantMessage(TypedDict, total=False):
    role: Required[Literal["assistant"]]
    content: str | list[TextPart | RefusalPart] | None  # null: empty (or the refusal)
    refusal: str | None
    name: str
    tool_calls: Annotated[list[Any], Limits(max_length=0)] | None  # a previous answer sent back: it called none
    function_call: None
    audio: None


@with_config(_FORBID)
class StreamOptions(TypedDict, total=False):
    include_usage: bool


@with_config(_FORBID)
class ResponseFormatText(TypedDict):
    type: Literal["text"]


@with_config(_FORBID)
class ChatCompletionRequest(TypedDict, total=False):
    """What ``POST /v1/chat/completions`` accepts (module docstring: what each field does)."""

    messages: Required[Annotated[list[SystemMessage | UserMessage | AssistantMessage], Limits(min_length=1)]]
    model: Annotated[str, Limits(min_length=1, max_length=200)]  # an engine model name; "default" when left out
    max_completion_tokens: Annotated[int, Limits(ge=1, le=MAX_TOKENS)] | None
    max_tokens: Annotated[int, Limits(ge=1, le=MAX_TOKENS)] | None
    n: Annotated[int, Limits(ge=1, le=MAX_CHOICES)] | None
    temperature: Annotated[float, Limits(ge=0.0, le=2.0)] | None
    top_p: Annotated[float, Limits(ge=0.0, le=1.0)] | None
    seed: Annotated[int, Limits(ge=-(2**63), le=2**64 - 1)] | None
    stop: (
        Annotated[str, Limits(min_length=1)]
        | Annotated[list[Annotated[str, Limits(min_length=1)]], Limits(max_length=MAX_STOPS)]
        | None
    )
    stream: bool | None
    stream_options: StreamOptions | None
    user: str | None
    metadata: dict[str, str] | None
    response_format: ResponseFormatText | None
    tools: Annotated[list[Any], Limits(max_length=0)] | None
    tool_choice: Literal["none"] | None
    logprobs: Literal[False] | None
    frequency_penalty: Literal[0] | None
    presence_penalty: Literal[0] | None
    store: Literal[False] | None
    modalities: list[Literal["text"]] | None


#: OpenAI request fields this engine cannot honour: field -> (whether a value asks for nothing, why not).
_REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (lambda v: v is None or v == [], "this engine calls no tools (functions)"),
    "tool_choice": (lambda v: v is None or v == "none", "this engine calls no tools (functions): only 'none'"),
    "parallel_tool_calls": (lambda v: False, "this engine calls no tools (functions)"),
    "functions": (lambda v: False, "this engine calls no functions"),
    "function_call": (lambda v: False, "this engine calls no functions"),
    "response_format": (
        lambda v: v is None or v == {"type": "text"},
        "answers are plain text: only {'type': 'text'} (no JSON mode or schema)",
    ),
    "logprobs": (lambda v: v is None or v is False, "this engine gives no log probabilities"),
    "top_logprobs": (lambda v: False, "this engine gives no log probabilities"),
    "logit_bias": (lambda v: False, "this engine does not bias tokens"),
    "frequency_penalty": (lambda v: v is None or v == 0, "this engine applies no frequency penalty: only 0"),
    "presence_penalty": (lambda v: v is None or v == 0, "this engine applies no presence penalty: only 0"),
    "audio": (lambda v: False, "this engine answers in text only"),
    "modalities": (
        lambda v: v is None or (isinstance(v, list) and all(m == "text" for m in v)),
        "this engine answers in text only: only ['text']",
    ),
    "prediction": (lambda v: False, "this engine takes no predicted output"),
    "reasoning_effort": (lambda v: False, "the engine's models do not reason in separate steps"),
    "web_search_options": (lambda v: False, "this engine does not search the web"),
    "service_tier": (lambda v: False, "this engine has one service tier"),
    "verbosity": (lambda v: False, "this engine does not tune its answers' verbosity"),
    "store": (lambda v: v is None or v is False, "this engine stores no completions"),
}


# --- the responses ---------------------------------------------------------------------------------------------------


class Usage(TypedDict):
    prompt_tokens: int  # what the model read, image tokens included (for n answers: once)
    completion_tokens: int  # what it wrote, all answers together
    total_tokens: int


class AssistantReply(TypedDict):
    role: Literal["assistant"]
    content: str
    refusal: None


class ChatCompletionChoice(TypedDict):
    index: int
    message: AssistantReply
    finish_reason: Literal["stop", "length"]
    logprobs: None


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str  # the model that answered (``auto`` resolved)
    choices: list[ChatCompletionChoice]
    usage: Usage | None  # null: the model's backend does not count tokens


class ChunkDelta(TypedDict, total=False):
    role: Literal["assistant"]  # in each answer's first chunk
    content: str


class ChunkChoice(TypedDict):
    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None
    logprobs: None


class ChatCompletionChunk(TypedDict, total=False):
    """One server-sent event of a streamed answer (``data: <this>``); the stream ends with ``data: [DONE]``."""

    id: Required[str]
    object: Required[Literal["chat.completion.chunk"]]
    created: Required[int]
    model: Required[str]
    choices: Required[list[ChunkChoice]]  # empty in the usage chunk
    usage: Usage | None  # with stream_options.include_usage: null, and the totals in the last chunk


class ModelEntry(TypedDict):
    id: str
    object: Literal["model"]
    created: int  # unix time: the checkpoint folder's, else the models file's, else the engine's start
    owned_by: str
    name: str
    backend: str
    tasks: list[str]
    loaded: bool


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelEntry]  # OpenAI's key
    models: list[ModelEntry]  # the same entries (the plugin's key)


#: The shapes /openapi.json documents (server._SCHEMAS takes them).
SCHEMAS: dict[str, Any] = {
    "ChatCompletionRequest": ChatCompletionRequest,
    "ChatCompletion": ChatCompletion,
    "ChatCompletionChunk": ChatCompletionChunk,
    "ModelEntry": ModelEntry,
    "ModelList": ModelList,
}


# --- parsing ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """A chat-completions request as the engine answers it."""

    model: str
    images: tuple[np.ndarray, ...]
    prompt: str
    history: tuple[Message, ...]
    options: Options
    n: int = 1
    decoding: Decoding = Decoding()
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def refuse_unsupported(body: Any) -> None:
    """400 naming the field for what the engine cannot do (tools, JSON mode, log probabilities, ...), with why;
    run before the schema check so that these get their reason rather than a bare "not a known field"."""
    if not isinstance(body, Mapping):
        return
    for name, (harmless, why) in _REFUSED.items():
        if name in body and not harmless(body[name]):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name}: {why}", name)
    messages = body.get("messages")
    for number, message in enumerate(messages if isinstance(messages, list) else ()):
        if not isinstance(message, Mapping):
            continue
        where = f"messages[{number}]"
        if message.get("role") in ("tool", "function"):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"{where}.role: a {message['role']!r} message answers a tool call, and this engine calls no tools",
                f"{where}.role",
            )
        for field in ("tool_calls", "function_call"):
            if message.get(field):
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"{where}.{field}: this engine calls no tools", f"{where}.{field}"
                )
        content = message.get("content")
        for index, part in enumerate(content if isinstance(content, list) else ()):
            if (
                isinstance(part, Mapping)
                and part.get("type") == "image_url"
                and isinstance(part.get("image_url"), Mapping)
            ):
                url = part["image_url"].get("url")
                if isinstance(url, str) and not re.match(DATA_URL_PATTERN, url):
                    shown = url[:40] + "..." if len(url) > 40 else url
                    param = f"{where}.content[{index}].image_url.url"
                    raise ProtocolError(
                        ErrorCode.BAD_REQUEST,
                        f"{param}: an image must be a data URL (data:image/png;base64,...), got {shown!r}; the engine "
                        "fetches nothing",
                        param,
                    )


def parse_request(body: Mapping[str, Any]) -> ChatRequest:
    """A body already valid by ChatCompletionRequest's schema -> ChatRequest (images decoded); 422 for what the
    schema cannot say (the last message must be the user's; at most two images; stream_options without stream)."""
    stream = bool(body.get("stream"))
    if body.get("stream_options") is not None and not stream:
        raise ProtocolError(ErrorCode.INVALID_VALUE, "stream_options is only for a streamed answer (stream: true)",
                            "stream_options")  # fmt: skip
    limits = {k: body.get(k) for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None}
    if len(set(limits.values())) > 1:
        raise ProtocolError(ErrorCode.INVALID_VALUE, "max_tokens and max_completion_tokens differ: give one",
                            "max_tokens")  # fmt: skip
    limit = next(iter(limits.values()), None)
    stop = body.get("stop")
    decoding = Decoding(
        temperature=float(body.get("temperature") or 0.0),
        top_p=float(body["top_p"]) if body.get("top_p") is not None else 1.0,
        seed=body.get("seed"),
        open_ended=limit is None,
    )
    turns, images = _messages(body["messages"])
    if turns[-1].role is not Role.USER:
        raise ProtocolError(
            ErrorCode.INVALID_VALUE, "the last message must be the user's (the question to answer)", "messages"
        )
    return ChatRequest(
        model=body.get("model") or "default",
        images=tuple(images),
        prompt=turns[-1].content,
        history=tuple(turns[:-1]),
        options=Options(max_new_tokens=MAX_TOKENS if limit is None else int(limit)),
        n=int(body.get("n") or 1),
        decoding=decoding,
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        stream=stream,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
    )


def _messages(messages: Sequence[Mapping[str, Any]]) -> tuple[list[Message], list[np.ndarray]]:
    """The conversation as engine messages (parts' texts joined by blank lines) and its images, decoded."""
    found = [
        (number, index)
        for number, message in enumerate(messages)
        if isinstance(message.get("content"), list)
        for index, part in enumerate(message["content"])
        if part.get("type") == "image_url"
    ]
    if len(found) > 2:
        raise ProtocolError(
            ErrorCode.BAD_IMAGE_COUNT,
            f"a chat takes at most two images (before, after), got {len(found)} image_url parts",
            "messages",
        )
    turns: list[Message] = []
    images: list[np.ndarray] = []
    for number, message in enumerate(messages):
        role = Role.SYSTEM if message["role"] == "developer" else Role(message["role"])
        content = message.get("content")
        if content is None:
            text = message.get("refusal") or ""
        elif isinstance(content, str):
            text = content
        else:
            texts = []
            for index, part in enumerate(content):
                if part["type"] == "image_url":
                    images.append(_image(part["image_url"], f"messages[{number}].content[{index}].image_url.url"))
                else:
                    texts.append(part["text"] if part["type"] == "text" else part["refusal"])
            text = "\n\n".join(texts)
        turns.append(Message(role=role, content=text))
    return turns, images


def _image(image_url: Mapping[str, Any], param: str) -> np.ndarray:
    data = image_url["url"].partition(",")[2]  # the schema checked the head: data:image/<type>;base64
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorCode.UNREADABLE_SOURCE, f"{param}: the image data URL is not valid base64",
                            param) from None  # fmt: skip
    try:
        image = decode_image_bytes(raw)
    except ProtocolError as exc:
        raise ProtocolError(exc.code, f"{param}: {exc.message}", param) from None
    side = LOW_DETAIL_SIDE if image_url.get("detail") == "low" else Options().max_side
    return _fit(image, side)


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (aspect kept) so that its longer side is at most ``max_side``, as /v1/analyze reads windows."""
    height, width = image.shape[:2]
    scale = max(height, width) / max_side
    if scale <= 1:
        return image
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


# --- answering -------------------------------------------------------------------------------------------------------

#: on_text(answer index, piece of text): called from the generating thread.
OnText = Callable[[int, str], None]


def answer(engine: Engine, chat: ChatRequest, cancel: threading.Event, on_text: OnText | None = None) -> ChatReply:
    """The engine's answers to ``chat`` (in a worker thread); errors in OpenAI's terms (context_length_exceeded,
    the field at fault in ``param``)."""
    try:
        return engine.chat(
            chat.model,
            chat.images,
            chat.prompt,
            chat.history,
            chat.options,
            cancel,
            n=chat.n,
            decoding=chat.decoding,
            stop=chat.stop,
            on_text=on_text,
        )
    except ProtocolError as exc:
        if exc.code is ErrorCode.PROMPT_TOO_LONG:
            raise ProtocolError(ErrorCode.CONTEXT_LENGTH_EXCEEDED, exc.message, "messages") from None
        if exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.INVALID_VALUE):  # valid by the schema: 422
            param = "messages" if exc.param in (None, "prompt", "history") else exc.param  # the engine's names
            raise ProtocolError(ErrorCode.INVALID_VALUE, exc.message, param) from None
        if exc.code is ErrorCode.UNKNOWN_MODEL and exc.param is None:
            exc.param = "model"
        raise


def completion(reply: ChatReply) -> ChatCompletion:
    """The ``chat.completion`` object of ``reply``."""
    return {
        "id": f"chatcmpl-{reply.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": a.text, "refusal": None},
                "finish_reason": a.finish_reason,  # type: ignore[typeddict-item]
                "logprobs": None,
            }
            for index, a in enumerate(reply.answers)
        ],
        "usage": _usage(reply),
    }


def _usage(reply: ChatReply) -> Usage | None:
    written = [a.completion_tokens for a in reply.answers]
    if reply.prompt_tokens is None or any(w is None for w in written):
        return None
    completion_tokens = sum(w for w in written if w is not None)
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": reply.prompt_tokens + completion_tokens,
    }


async def streamed(engine: Engine, chat: ChatRequest, run: Callable[[OnText], Awaitable[ChatReply]]) -> Response:
    """The answers as server-sent events while ``run(on_text)`` (the engine's answer in a worker) writes them.

    Nothing is sent before the model begins to write (its first, empty, piece) or the end: a request refused
    before it is answered (unknown model, context exceeded, ...) gets its ordinary JSON error and status.
    Once streaming, a client that leaves cancels ``run`` (whose worker stops at the next generation step),
    and an error is sent as an ``{"error": ...}`` event.
    """
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    def on_text(index: int, piece: str) -> None:
        loop.call_soon_threadsafe(pieces.put_nowait, (index, piece))

    task = asyncio.ensure_future(run(on_text))
    try:
        first = await _next_piece(task, pieces)
    except BaseException:
        task.cancel()
        raise
    if first is None:
        await task  # ended without text: its error, if any, is an ordinary JSON error
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": engine.registry.route(Task.CHAT, chat.model),
    }
    return StreamingResponse(
        _events(chat, head, task, pieces, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _next_piece(
    task: asyncio.Future[ChatReply], pieces: asyncio.Queue[tuple[int, str]]
) -> tuple[int, str] | None:
    """The next piece of text, or None once ``task`` has ended and every piece was taken."""
    if not pieces.empty():
        return pieces.get_nowait()
    if task.done():
        return None
    getter = asyncio.ensure_future(pieces.get())
    try:
        await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return pieces.get_nowait() if not pieces.empty() else None


async def _events(
    chat: ChatRequest,
    head: dict[str, Any],
    task: asyncio.Future[ChatReply],
    pieces: asyncio.Queue[tuple[int, str]],
    first: tuple[int, str] | None,
) -> AsyncIterator[bytes]:
    begun: set[int] = set()

    def event(choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        chunk: dict[str, Any] = {**head, "choices": choices}
        if chat.include_usage:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n"

    def delta(index: int, text: str | None, finish: str | None = None) -> dict[str, Any]:
        content: dict[str, Any] = {} if text is None else {"content": text}
        if index not in begun:
            begun.add(index)
            content = {"role": "assistant", "content": text or ""}
        return {"index": index, "delta": content, "finish_reason": finish, "logprobs": None}

    try:
        piece = first
        while piece is not None:
            index, text = piece
            if text or index not in begun:  # "": the answer has begun (its role chunk)
                yield event([delta(index, text)])
            piece = await _next_piece(task, pieces)
        try:
            reply = task.result()
        except ProtocolError as exc:
            yield b"data: " + json.dumps(exc.to_dict()).encode("utf-8") + b"\n\n"
            return
        except Exception:  # the engine's own failure, logged by it
            log.exception("a streamed chat failed")
            error = ProtocolError(ErrorCode.INTERNAL, "the engine failed on this request; its log has the details")
            yield b"data: " + json.dumps(error.to_dict()).encode("utf-8") + b"\n\n"
            return
        yield event([delta(index, None, a.finish_reason) for index, a in enumerate(reply.answers)])
        if chat.include_usage:
            yield event([], _usage(reply))
        yield b"data: [DONE]\n\n"
    finally:
        if not task.done():
            task.cancel()  # the client left: the worker sees the request's cancel Event at its next step


# --- models ----------------------------------------------------------------------------------------------------------


def model_entry(engine: Engine, info: ModelInfo, started: int) -> ModelEntry:
    """One model in OpenAI's shape plus the engine's own fields (name, backend, tasks, loaded)."""
    return {
        "id": info.name,
        "object": "model",
        "created": _created(engine, info.name, started),
        "owned_by": "rs_assistant",
        **info.to_dict(),  # type: ignore[typeddict-item]
    }


def model_list(engine: Engine, started: int) -> ModelList:
    entries = [model_entry(engine, info, started) for info in engine.models()]
    return {"object": "list", "data": entries, "models": entries}


def model_object(engine: Engine, model_id: str, started: int) -> ModelEntry:
    """The entry of ``model_id``; UNKNOWN_MODEL (404, param ``model``) when the engine has no such model."""
    for info in engine.models():
        if info.name == model_id:
            return model_entry(engine, info, started)
    raise ProtocolError(
        ErrorCode.UNKNOWN_MODEL,
        f"unknown model {model_id!r}; this engine has: {', '.join(engine.registry.names)}",
        "model",
    )


def _created(engine: Engine, name: str, started: int) -> int:
    spec = engine.registry.spec(name)
    for where in (spec.config.get("path"), None if spec.origin == "built in" else spec.origin):
        if where:
            try:
                return int(Path(str(where)).expanduser().stat().st_mtime)
            except OSError:
                continue
    return started
