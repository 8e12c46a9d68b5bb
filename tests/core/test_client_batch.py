"""EngineClient.batch against a standard-library server that streams NDJSON job events like the engine."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rs_assistant.core.client import EngineClient
from rs_assistant.core.protocol import BatchRequest, ErrorCode, ProtocolError, Task

TOKEN = "s3cret"
START = {"event": "start", "job_id": "j1", "tiles": 3, "todo": 3, "crs": "EPSG:3857", "tile_size": 512, "overlap": 64}
DONE = {"event": "done", "tiles_done": 3, "features": 0, "timing_ms": {"read": 1.0, "infer": 2.0, "post": 0.5}}


def tile(n: int) -> dict:
    return {"event": "tile", "tile": n, "done": n + 1, "todo": 3, "text": f"tile {n}", "features": [], "pending": []}


class PlayJob(BaseHTTPRequestHandler):
    """POST /v1/batch: the prompt picks the behaviour (normal, slow, error, cut, garbage, refused)."""

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}" or self.path != "/v1/batch":
            return self._json(401, {"error": {"code": "unauthorized", "message": "wrong token"}})
        prompt = body["prompt"]
        if prompt == "refused":
            return self._json(422, {"error": {"code": "extent_outside", "message": "the extent is off the raster"}})
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        lines = [START, tile(0), tile(1), tile(2), {"event": "merged", "features": []}, DONE]
        if prompt == "error":
            lines = [START, tile(0), {"event": "error", "error": {"code": "internal", "message": "the model broke"}}]
        elif prompt == "cut":
            lines = [START, tile(0)]
        elif prompt == "garbage":
            lines = [START, "<html>oops</html>"]
        for line in lines:
            if prompt in ("slow", "cancel"):
                time.sleep(0.4)
            self.wfile.write((line if isinstance(line, str) else json.dumps(line)).encode() + b"\n")
            if line is START:
                self.wfile.write(b"\n")  # a blank line is skipped
            self.wfile.flush()

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), PlayJob)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def job(prompt: str = "") -> BatchRequest:
    return BatchRequest(task=Task.CAPTION, sources=("/data/a.tif",), output_crs="EPSG:3857", prompt=prompt)


def test_every_event_reaches_the_callback_and_done_is_returned(url):
    events: list[dict] = []
    done = EngineClient(url, token=TOKEN).batch(job(), events.append)
    assert done == DONE
    assert [e["event"] for e in events] == ["start", "tile", "tile", "tile", "merged", "done"]


def test_the_timeout_applies_per_line_not_to_the_whole_job(url):
    events: list[dict] = []
    started = time.monotonic()
    EngineClient(url, token=TOKEN, timeout=1.0).batch(job("slow"), events.append)
    assert time.monotonic() - started > 2.0 and len(events) == 6  # 2.4 s in all, 0.4 s per line


def test_an_error_event_raises_after_the_events_before_it(url):
    events: list[dict] = []
    with pytest.raises(ProtocolError) as err:
        EngineClient(url, token=TOKEN).batch(job("error"), events.append)
    assert err.value.code is ErrorCode.INTERNAL and err.value.message == "the model broke"
    assert [e["event"] for e in events] == ["start", "tile"]


@pytest.mark.parametrize(
    ("prompt", "token", "code"),
    [("refused", TOKEN, ErrorCode.EXTENT_OUTSIDE), ("", "wrong", ErrorCode.UNAUTHORIZED),
     ("cut", TOKEN, ErrorCode.ENGINE_UNREACHABLE), ("garbage", TOKEN, ErrorCode.ENGINE_UNREACHABLE)],
)  # fmt: skip
def test_refusals_and_broken_streams_are_protocol_errors(url, prompt, token, code):
    with pytest.raises(ProtocolError) as err:
        EngineClient(url, token=token).batch(job(prompt), lambda e: None)
    assert err.value.code is code


def test_cancel_interrupts_a_running_job(url):
    client = EngineClient(url, token=TOKEN)
    threading.Timer(0.6, client.cancel).start()
    events: list[dict] = []
    with pytest.raises(ProtocolError) as err:
        client.batch(job("cancel"), events.append)
    assert err.value.code is ErrorCode.CANCELLED and len(events) < 6


def test_nothing_listening_is_engine_unreachable():
    with pytest.raises(ProtocolError) as err:
        EngineClient("http://127.0.0.1:9", token=TOKEN).batch(job(), lambda e: None)
    assert err.value.code is ErrorCode.ENGINE_UNREACHABLE


def test_batch_size_defaults_to_the_models_own_and_is_checked():
    job = BatchRequest.from_dict({"task": "segment", "sources": ["a.tif"], "output_crs": "EPSG:3857"})
    assert job.batch_size == 0 == BatchRequest(Task.SEGMENT, ("a.tif",), "EPSG:3857").batch_size  # 0: the model's own
    assert BatchRequest.from_dict(job.to_dict()) == job
    for wrong in (-1, BatchRequest.MAX_BATCH_SIZE + 1):
        with pytest.raises(ProtocolError) as caught:
            BatchRequest(Task.SEGMENT, ("a.tif",), "EPSG:3857", batch_size=wrong)
        assert caught.value.code is ErrorCode.BAD_REQUEST and "0: the model's own" in caught.value.message
