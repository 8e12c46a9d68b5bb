"""An HTTP client for the engine, on the standard library only (runs inside QGIS's Python).

    client = EngineClient("http://127.0.0.1:8765", token="...", timeout=60)
    client.health(); client.models(); client.analyze(request)
    client.route("how many cars are there?", history, images=1)  # -> RouteResult(intent=count, prompt="cars", ...)
    done = client.batch(batch_request, on_event=print)    # a whole-layer job, event by event

Every failure is a :class:`ProtocolError`: the engine's error JSON keeps its code, a refused
or lost connection is ``ENGINE_UNREACHABLE``, a socket timeout is ``TIMEOUT``, and a call that
:meth:`EngineClient.cancel` interrupted (from any thread) is ``CANCELLED``.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    BatchEvent,
    BatchRequest,
    ErrorCode,
    Health,
    Message,
    ModelInfo,
    ProtocolError,
    RouteRequest,
    RouteResult,
    model_list_from_dict,
)

log = logging.getLogger(__name__)


@dataclass
class _Call:
    connection: http.client.HTTPConnection
    cancelled: bool = False


class EngineClient:
    def __init__(self, url: str, token: str = "", timeout: float = 120.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"engine URL must look like http://127.0.0.1:8765, got {url!r}")
        if timeout <= 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"timeout must be positive, got {timeout!r}")
        self.url = url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._token = token
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._active: list[_Call] = []

    # --- routes ---------------------------------------------------------------------------------
    def health(self, timeout: float | None = None) -> Health:
        data = self._call("GET", "/v1/health", auth=False, timeout=timeout)
        try:
            return Health.from_dict(data)
        except ProtocolError as exc:
            raise ProtocolError(
                ErrorCode.ENGINE_UNREACHABLE, f"{self.url} did not answer like an RS Assistant engine ({exc.message})"
            ) from None

    def models(self) -> list[ModelInfo]:
        return model_list_from_dict(self._call("GET", "/v1/models"))

    def analyze(self, request: AnalyzeRequest) -> AnalyzeResponse:
        return AnalyzeResponse.from_dict(self._call("POST", "/v1/analyze", body=request.to_json()))

    def route(self, prompt: str, history: Sequence[Message] = (), images: int = 1, model: str = "auto") -> RouteResult:
        """Which task a free-text turn asks for (``POST /v1/route``); ``images`` 2 when a before and an after are
        chosen, ``model`` the model the person chose (its class list is checked). An engine older than the
        route answers NOT_FOUND."""
        request = RouteRequest(prompt, tuple(history), images, model)
        return RouteResult.from_dict(self._call("POST", "/v1/route", body=request.to_json()))

    def batch(self, request: BatchRequest, on_event: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Run a whole-layer job: ``on_event`` gets each streamed event (start, tile..., merged, ranked); returns
        ``done``.

        The timeout applies to each line, not to the whole job: a job may run for hours as long as
        the engine finishes a batch of tiles within the timeout. An ``error`` event raises its
        ProtocolError; what ``on_event`` received before stays valid (resume with ``skip_tiles`` and ``pending``).
        """
        with self._connection() as call:
            with self._mapped_errors(call):
                response = self._send(
                    call, "POST", self._prefix + "/v1/batch", request.to_json(), True, "application/x-ndjson"
                )
                payload = response.read() if response.status >= 400 else b""
            if response.status >= 400:
                return self._decode(response.status, payload)
            while True:
                with self._mapped_errors(call):
                    line = response.readline()
                if call.cancelled:
                    raise ProtocolError(ErrorCode.CANCELLED, "request cancelled")
                if not line:
                    raise ProtocolError(
                        ErrorCode.ENGINE_UNREACHABLE,
                        f"the engine at {self.url} ended the job's stream before it was done",
                    )
                event = self._event(line)
                if event is None:
                    continue
                if event.get("event") == BatchEvent.ERROR.value:
                    raise ProtocolError.from_dict(event)
                on_event(event)
                if event.get("event") == BatchEvent.DONE.value:
                    return event

    def cancel(self) -> None:
        """Interrupts every call in flight on this client; they raise ``CANCELLED``. Thread-safe."""
        with self._lock:
            calls = list(self._active)
        for call in calls:
            call.cancelled = True
            sock = call.connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed
        if calls:
            log.info("cancelled %d engine call(s)", len(calls))

    # --- plumbing -------------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, body: str | None = None, auth: bool = True, timeout: float | None = None
    ) -> Any:
        with self._connection(timeout) as call:
            with self._mapped_errors(call):
                response = self._send(call, method, self._prefix + path, body, auth)
                payload = response.read()
            if call.cancelled:
                raise ProtocolError(ErrorCode.CANCELLED, "request cancelled")
        return self._decode(response.status, payload)

    @contextmanager
    def _connection(self, timeout: float | None = None) -> Iterator[_Call]:
        """A new connection, registered so that :meth:`cancel` can interrupt it; closed afterwards."""
        call = _Call(http.client.HTTPConnection(self._host, self._port, timeout=timeout or self.timeout))
        with self._lock:
            self._active.append(call)
        try:
            yield call
        finally:
            with self._lock:
                self._active.remove(call)
            call.connection.close()

    def _send(
        self, call: _Call, method: str, path: str, body: str | None, auth: bool, accept: str = "application/json"
    ) -> http.client.HTTPResponse:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if auth and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        call.connection.connect()
        if call.cancelled:
            raise ProtocolError(ErrorCode.CANCELLED, "request cancelled")
        call.connection.request(method, path, body=body.encode("utf-8") if body is not None else None, headers=headers)
        return call.connection.getresponse()

    @contextmanager
    def _mapped_errors(self, call: _Call) -> Iterator[None]:
        """Socket and HTTP failures as ProtocolErrors: TIMEOUT, ENGINE_UNREACHABLE, or CANCELLED after
        :meth:`cancel`."""
        try:
            yield
        except ProtocolError:
            raise
        except TimeoutError:
            if call.cancelled:
                raise ProtocolError(ErrorCode.CANCELLED, "request cancelled") from None
            raise ProtocolError(
                ErrorCode.TIMEOUT, f"the engine did not answer within {call.connection.timeout:g} s"
            ) from None
        except ConnectionRefusedError:
            raise ProtocolError(ErrorCode.ENGINE_UNREACHABLE, f"no engine is listening at {self.url}") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if call.cancelled:
                raise ProtocolError(ErrorCode.CANCELLED, "request cancelled") from None
            raise ProtocolError(
                ErrorCode.ENGINE_UNREACHABLE, f"lost the connection to the engine at {self.url}: {exc}"
            ) from None

    def _event(self, line: bytes) -> dict[str, Any] | None:
        """One NDJSON line of a job's stream; None for a blank line."""
        if not line.strip():
            return None
        try:
            event = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            event = None
        if not isinstance(event, dict) or "event" not in event:
            raise ProtocolError(
                ErrorCode.ENGINE_UNREACHABLE, f"{self.url} streamed a line that is not a job event: {line[:200]!r}"
            )
        return event

    def _decode(self, status: int, payload: bytes) -> Any:
        try:
            data = json.loads(payload) if payload else {}
        except (ValueError, UnicodeDecodeError):
            data = None
        if status >= 400:
            if isinstance(data, dict) and "error" in data:
                raise ProtocolError.from_dict(data)
            code = ErrorCode.INTERNAL if status >= 500 else ErrorCode.BAD_REQUEST
            raise ProtocolError(code, f"engine answered HTTP {status}: {payload[:300].decode('utf-8', 'replace')}")
        if data is None:
            raise ProtocolError(ErrorCode.ENGINE_UNREACHABLE, f"{self.url} answered something that is not JSON")
        return data
