"""The engine client against a small standard-library HTTP server that plays the engine."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rs_assistant.core.client import EngineClient
from rs_assistant.core.protocol import (
    AnalyzeRequest,
    DeviceType,
    ErrorCode,
    ImageRef,
    ProtocolError,
    Task,
    feature_collection,
)

TOKEN = "s3cret"
BOX = {
    "type": "Feature",
    "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
    "properties": {"kind": "box", "label": "tank", "score": 0.9},
}


class PlayEngine(BaseHTTPRequestHandler):
    """Routes like the engine's; the prompt picks the behaviour of /v1/analyze."""

    seen: list[dict] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: object) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {"error": {"code": "unauthorized", "message": "missing or wrong token"}})
            return False
        return True

    def do_GET(self):  # noqa: N802
        if self.path == "/v1/health":
            self._send(
                200,
                {
                    "status": "ok",
                    "version": "0.1.0",
                    "device": "cuda (NVIDIA H100, bfloat16)",
                    "device_info": {
                        "type": "cuda",
                        "name": "NVIDIA H100",
                        "memory_gb": 79.1,
                        "dtype": "bfloat16",
                        "torch": "2.5.1",
                        "cuda": "12.4",
                        "warning": "",
                    },
                },
            )
        elif self.path == "/v1/models" and self._authorised():
            self._send(
                200,
                {"models": [{"name": "default", "backend": "echo", "tasks": ["caption", "ground"], "loaded": True}]},
            )

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        PlayEngine.seen.append(body)
        if not self._authorised():
            return
        prompt = body["prompt"]
        if prompt == "slow":
            time.sleep(3)
        if prompt == "outside":
            self._send(422, {"error": {"code": "extent_outside", "message": "extent is outside the raster"}})
        elif prompt == "garbage":
            self._send(502, b"<html>bad gateway</html>")
        else:
            self._send(
                200,
                {
                    "text": "one tank",
                    "features": feature_collection([BOX]),
                    "crs": body["output_crs"],
                    "model": body["model"],
                    "request_id": "r1",
                    "timing_ms": {"read": 1, "infer": 2, "post": 3},
                },
            )


@pytest.fixture(scope="module")
def engine_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), PlayEngine)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def request(prompt: str = "tanks") -> AnalyzeRequest:
    image = ImageRef(extent=(0, 0, 10, 10), crs="EPSG:32633", source="/data/a.tif")
    return AnalyzeRequest(task=Task.GROUND, images=(image,), output_crs="EPSG:3857", prompt=prompt)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_models_and_analyze(engine_url):
    client = EngineClient(engine_url, TOKEN, timeout=5)
    health = client.health()
    assert health.device == "cuda (NVIDIA H100, bfloat16)"
    assert health.device_info.type is DeviceType.CUDA and health.device_info.name == "NVIDIA H100"
    assert health.device_info.memory_gb == 79.1 and health.device_info.cuda == "12.4" and not health.device_info.warning
    assert [m.name for m in client.models()] == ["default"]
    response = client.analyze(request())
    assert response.text == "one tank" and response.crs == "EPSG:3857"
    assert response.feature_list[0]["properties"]["label"] == "tank"
    assert PlayEngine.seen[-1]["images"][0]["source"] == "/data/a.tif"


def test_health_needs_no_token_but_the_rest_does(engine_url):
    client = EngineClient(engine_url, "wrong", timeout=5)
    assert client.health().status == "ok"
    with pytest.raises(ProtocolError) as err:
        client.models()
    assert err.value.code is ErrorCode.UNAUTHORIZED


def test_engine_error_json_keeps_its_code(engine_url):
    with pytest.raises(ProtocolError) as err:
        EngineClient(engine_url, TOKEN, timeout=5).analyze(request("outside"))
    assert err.value.code is ErrorCode.EXTENT_OUTSIDE
    assert "outside" in err.value.message


def test_a_non_json_error_is_an_internal_error(engine_url):
    with pytest.raises(ProtocolError) as err:
        EngineClient(engine_url, TOKEN, timeout=5).analyze(request("garbage"))
    assert err.value.code is ErrorCode.INTERNAL and "502" in err.value.message


def test_refused_connection_is_unreachable():
    with pytest.raises(ProtocolError) as err:
        EngineClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=2).health()
    assert err.value.code is ErrorCode.ENGINE_UNREACHABLE


def test_slow_engine_times_out(engine_url):
    started = time.monotonic()
    with pytest.raises(ProtocolError) as err:
        EngineClient(engine_url, TOKEN, timeout=0.5).analyze(request("slow"))
    assert err.value.code is ErrorCode.TIMEOUT
    assert time.monotonic() - started < 2.5


def test_cancel_from_another_thread(engine_url):
    client = EngineClient(engine_url, TOKEN, timeout=10)
    threading.Timer(0.3, client.cancel).start()
    started = time.monotonic()
    with pytest.raises(ProtocolError) as err:
        client.analyze(request("slow"))
    assert err.value.code is ErrorCode.CANCELLED
    assert time.monotonic() - started < 2.5
    assert client.analyze(request()).text == "one tank"  # the client is usable again


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "https://x", ""])
def test_bad_url(url):
    with pytest.raises(ProtocolError):
        EngineClient(url)
