"""An HTTP client for the engine, on the standard library only (runs inside QGIS's Python).

    client = EngineClient("http://127.0.0.1:8765", token="...", timeout=60)
    client.health(); client.models(); client.analyze(request)

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
from dataclasses import dataclass
from typing import Any

from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    ErrorCode,
    Health,
    ModelInfo,
    ProtocolError,
    model_list_from_dict,
)

log = logging.getLogger(__name__)


@dataclass
class _Call:
    connection: http.client.HTTPConnection
    cancelled: bool = False


class EngineClient:
    def __init__(self, url: str, token: str = "", timeout: float = 120.0):
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
            return Health(status=str(data["status"]), version=str(data.get("version", "")), device=str(data.get("device", "")))
        except (KeyError, TypeError):
            raise ProtocolError(ErrorCode.ENGINE_UNREACHABLE, f"{self.url} did not answer like an RS Assistant engine") from None

    def models(self) -> list[ModelInfo]:
        return model_list_from_dict(self._call("GET", "/v1/models"))

    def analyze(self, request: AnalyzeRequest) -> AnalyzeResponse:
        return AnalyzeResponse.from_dict(self._call("POST", "/v1/analyze", body=request.to_json()))

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
    def _call(self, method: str, path: str, body: str | None = None, auth: bool = True, timeout: float | None = None) -> Any:
        call = _Call(http.client.HTTPConnection(self._host, self._port, timeout=timeout or self.timeout))
        with self._lock:
            self._active.append(call)
        try:
            status, payload = self._exchange(call, method, self._prefix + path, body, auth)
        finally:
            with self._lock:
                self._active.remove(call)
            call.connection.close()
        return self._decode(status, payload)

    def _exchange(self, call: _Call, method: str, path: str, body: str | None, auth: bool) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if auth and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            call.connection.connect()
            if call.cancelled:
                raise ProtocolError(ErrorCode.CANCELLED, "request cancelled")
            call.connection.request(method, path, body=body.encode("utf-8") if body is not None else None, headers=headers)
            response = call.connection.getresponse()
            payload = response.read()
        except ProtocolError:
            raise
        except (TimeoutError, socket.timeout):
            if call.cancelled:
                raise ProtocolError(ErrorCode.CANCELLED, "request cancelled") from None
            raise ProtocolError(ErrorCode.TIMEOUT, f"the engine did not answer within {call.connection.timeout:g} s") from None
        except ConnectionRefusedError:
            raise ProtocolError(ErrorCode.ENGINE_UNREACHABLE, f"no engine is listening at {self.url}") from None
        except (OSError, http.client.HTTPException) as exc:
            if call.cancelled:
                raise ProtocolError(ErrorCode.CANCELLED, "request cancelled") from None
            raise ProtocolError(ErrorCode.ENGINE_UNREACHABLE, f"lost the connection to the engine at {self.url}: {exc}") from None
        if call.cancelled:
            raise ProtocolError(ErrorCode.CANCELLED, "request cancelled")
        return response.status, payload

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
