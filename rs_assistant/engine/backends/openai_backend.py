"""``openai`` backend: any OpenAI-compatible chat server (vLLM, Ollama, llama.cpp, another RS Assistant engine).

Models file::

    [models.remote]
    backend = "openai"
    url = "http://127.0.0.1:8000/v1"        # the API root (``base_url`` is accepted too)
    model = "Qwen/Qwen2-VL-7B-Instruct"     # optional: the server's first model otherwise
    api_key_file = "~/.config/vllm.key"     # or api_key = "..."; neither: no Authorization header
    box_convention = "0-1000"               # how the remote model writes boxes: 0-1000, 0-100, 0-1, pixels
    timeout_s = 300                         # optional, per HTTP request

Tasks: ``chat`` and ``caption`` (the reply is the text), ``ground`` (the model is asked for a JSON
list of ``{"label", "bbox_2d": [x0, y0, x1, y1]}`` in ``box_convention``, stated in the prompt; the
boxes are converted to pixels of the window). Windows travel as PNG data URLs; a chat may have none.
A chat's decoding (temperature, top_p, seed), stop strings and length limit are the server's to honour:
they are sent on (without a length limit when the request set none). Answers are streamed
(server-sent events, asking for the server's token counts with ``stream_options.include_usage``) so
that a cancelled request, or a stop string, closes the connection, which makes vLLM and this engine
stop generating; each piece goes on to the call's watch as it arrives. A server that answers without
streaming works too, and one that refuses ``stream_options`` is asked again without it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError, Task
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult, Detection
from rs_assistant.engine.backends.boxes import parse_qwen2_boxes, parse_qwen25_boxes, target_phrase
from rs_assistant.engine.backends.decoding import LENGTH, STOP

log = logging.getLogger(__name__)

#: box_convention -> (the full-scale coordinate, how the prompt states it); None: absolute pixels.
CONVENTIONS: dict[str, tuple[float | None, str]] = {
    "0-1000": (
        1000.0,
        "integers from 0 to 1000 relative to the image: (0, 0) is the top-left corner, (1000, 1000) the bottom-right",
    ),
    "0-100": (
        100.0,
        "numbers from 0 to 100 relative to the image: (0, 0) is the top-left corner, (100, 100) the bottom-right",
    ),
    "0-1": (1.0, "fractions from 0 to 1 relative to the image: (0, 0) is the top-left corner, (1, 1) the bottom-right"),
    "pixels": (None, "absolute pixel coordinates in this {width}x{height} image: (0, 0) is the top-left corner"),
}
DEFAULT_CONVENTION = "0-1000"
DEFAULT_TIMEOUT_S = 300.0
CAPTION_PROMPT = "Describe this remote-sensing image in a few sentences: land cover, notable objects and their layout."
GROUND_PROMPT = (
    "Find every {target} in the image. Answer only with a JSON list, one item per object: "
    '[{{"label": "<what it is>", "bbox_2d": [x0, y0, x1, y1]}}], where the coordinates are {convention}. '
    "Answer [] if there is none."
)


class OpenAIBackend(Backend):
    name = "openai"
    tasks = frozenset({Task.CHAT, Task.CAPTION, Task.GROUND})
    chat_without_images = True
    samples = True

    client: httpx.Client
    remote_model: str
    convention: str

    def load(self) -> None:
        url = str(self.config.get("url") or self.config.get("base_url") or "")
        if not re.match(r"^https?://", url):
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': 'url' must be the server's http(s) API root, got {url!r}",
            )
        self.convention = str(self.config.get("box_convention", DEFAULT_CONVENTION))
        if self.convention not in CONVENTIONS:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': box_convention {self.convention!r} is not one of {', '.join(CONVENTIONS)}",
            )
        headers = {"Authorization": f"Bearer {key}"} if (key := self._api_key()) else {}
        timeout = float(self.config.get("timeout_s", DEFAULT_TIMEOUT_S))
        self.url = url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.url + "/", headers=headers, timeout=httpx.Timeout(timeout, connect=10.0)
        )
        self.remote_model = str(self.config.get("model") or self._first_model())
        log.info("model '%s': OpenAI-compatible server %s, model %s", self.model_name, self.url, self.remote_model)

    def run(self, call: BackendCall) -> BackendResult:
        self.check_task(call.task)
        self.ensure_loaded()
        if not call.images and call.task is not Task.CHAT:
            raise ProtocolError(ErrorCode.BAD_IMAGE_COUNT, f"{call.task.value} needs an image")
        height, width = call.images[0].shape[:2] if call.images else (0, 0)
        if call.task is Task.GROUND:
            target = target_phrase(call.prompt) or "object"
            prompt = GROUND_PROMPT.format(
                target=target, convention=CONVENTIONS[self.convention][1].format(width=width, height=height)
            )
        elif call.task is Task.CAPTION:
            prompt = f"{CAPTION_PROMPT} {call.prompt}".strip()
        else:
            prompt = call.prompt.strip() or CAPTION_PROMPT
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in call.images
        ]
        content.append({"type": "text", "text": prompt})
        messages = [{"role": m.role.value, "content": m.content} for m in call.history]
        messages.append({"role": "user", "content": content})
        reply = self._complete(messages, call)
        if call.task is not Task.GROUND:
            return reply
        boxes = parse_boxes(reply.text, self.convention, width, height, default_label=target)
        detections = [Detection(FeatureKind.BOX, label, 1.0, box=box) for label, box in boxes]
        return BackendResult(text=f"{len(detections)} found", detections=detections)

    # --- HTTP ------------------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        if self.config.get("api_key"):
            return str(self.config["api_key"])
        key_file = self.config.get("api_key_file")
        if not key_file:
            return None
        path = Path(str(key_file)).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED, f"model '{self.model_name}': cannot read api_key_file {path}: {exc}"
            ) from None

    def _first_model(self) -> str:
        data = self._json(self._send("GET", "models"))
        entries = data.get("data") if isinstance(data, dict) else None
        if not entries or not isinstance(entries[0], dict) or "id" not in entries[0]:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': {self.url}/models lists no model; set 'model' in the models file",
            )
        return str(entries[0]["id"])

    def _complete(self, messages: list[dict[str, Any]], call: BackendCall) -> BackendResult:
        """The server's answer: its text, token counts (when it gives them) and finish reason."""
        decoding = call.decoding
        body: dict[str, Any] = {
            "model": self.remote_model,
            "messages": messages,
            "temperature": decoding.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if not decoding.open_ended:
            body["max_tokens"] = call.options.max_new_tokens
        if not decoding.greedy and decoding.top_p < 1.0:
            body["top_p"] = decoding.top_p
        if decoding.seed is not None:
            body["seed"] = decoding.seed
        if call.watch.stop:
            body["stop"] = list(call.watch.stop[:4])
        try:
            return self._completion(body, call)
        except ProtocolError as exc:
            if "stream_options" not in exc.message:
                raise
            del body["stream_options"]  # a server that does not know it: ask without it
            return self._completion(body, call)

    def _completion(self, body: dict[str, Any], call: BackendCall) -> BackendResult:
        with self._stream("POST", "chat/completions", body) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                response.read()
                data = self._json(response)
                return BackendResult(_message_text(data), **_accounting(data))
            parts: list[str] = []
            found: dict[str, Any] = {}
            for data in _events(response.iter_lines()):
                if call.cancel.is_set():
                    raise ProtocolError(ErrorCode.CANCELLED, "the request was cancelled")
                found.update(_accounting(data))
                for choice in data.get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
                if call.watch.wants_updates and call.watch.update("".join(parts)):
                    found["finish_reason"] = STOP
                    break  # a stop string: leaving closes the connection, which stops the server
            return BackendResult("".join(parts), **found)

    def _send(self, method: str, path: str) -> httpx.Response:
        with self._stream(method, path, None) as response:
            response.read()
            return response

    @contextmanager
    def _stream(self, method: str, path: str, body: dict[str, Any] | None) -> Iterator[httpx.Response]:
        """A streaming response; connection problems and error statuses become ProtocolErrors naming the server."""
        where = f"model '{self.model_name}': {self.url}"
        try:
            with self.client.stream(method, path, json=body) as response:
                if response.status_code >= 400:
                    raise self._failure(response)
                yield response
        except httpx.TimeoutException:
            raise ProtocolError(ErrorCode.TIMEOUT, f"{where} did not answer in time") from None
        except httpx.ConnectError as exc:
            raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"{where} cannot be reached: {exc}") from None
        except httpx.HTTPError as exc:
            raise ProtocolError(ErrorCode.INTERNAL, f"{where} failed: {type(exc).__name__}: {exc}") from None

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ProtocolError(
                ErrorCode.INTERNAL,
                f"model '{self.model_name}': {response.request.url} answered something that is not JSON",
            ) from None

    def _failure(self, response: httpx.Response) -> ProtocolError:
        response.read()
        try:
            detail = response.json().get("error", {})
            message = detail.get("message") if isinstance(detail, dict) else str(detail)
        except (ValueError, AttributeError):
            message = response.text[:300]
        where = f"model '{self.model_name}': {response.request.url} answered {response.status_code}: {message}"
        if response.status_code in (401, 403):
            return ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"{where} (check api_key / api_key_file)")
        if response.status_code == 404:
            return ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"{where} (check 'url' and 'model')")
        return ProtocolError(ErrorCode.INTERNAL, where)


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of ``data:`` lines of a server-sent event stream, up to ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            yield json.loads(payload)
        except ValueError:
            log.warning("skipping a stream event that is not JSON: %.200s", payload)


def _accounting(data: Any) -> dict[str, Any]:
    """``prompt_tokens``, ``completion_tokens`` and ``finish_reason`` from a response or stream chunk, as far as it
    gives them (a finish reason other than length is STOP: the engine answers no tool calls)."""
    found: dict[str, Any] = {}
    usage = data.get("usage") if isinstance(data, dict) else None
    if isinstance(usage, dict):
        for key in ("prompt_tokens", "completion_tokens"):
            if isinstance(usage.get(key), int) and not isinstance(usage.get(key), bool):
                found[key] = usage[key]
    for choice in (data.get("choices") if isinstance(data, dict) else None) or []:
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if reason:
            found["finish_reason"] = LENGTH if reason == "length" else STOP
    return found


def _message_text(data: Any) -> str:
    try:
        return str(data["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        raise ProtocolError(
            ErrorCode.INTERNAL, f"the server's answer has no choices[0].message.content: {str(data)[:300]}"
        ) from None


def png_data_url(image: np.ndarray) -> str:
    """An H x W x 3 uint8 array as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_boxes(
    text: str, convention: str, width: int, height: int, default_label: str = "object"
) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(label, box in window pixels) for every box in a reply written in ``convention``.

    Reads ``{"label", "bbox_2d": [x0, y0, x1, y1]}`` JSON (code fence or not) or bare
    ``[x0, y0, x1, y1]`` lists (boxes.parse_qwen25_boxes, whose scaling from the model's frame
    to the window covers every convention here), and for 0-1000 also Qwen2-VL's box tokens.
    Boxes are clamped to the window; those with no area inside it are dropped.
    """
    scale, _ = CONVENTIONS[convention]
    frame = (width, height) if scale is None else (scale, scale)
    found = parse_qwen25_boxes(text, (width, height), frame)
    if not found and convention == "0-1000":
        found = parse_qwen2_boxes(text, (width, height))
    return [(parsed.label or default_label, parsed.box) for parsed in found]
