"""Issue 23: nothing a caller sends may produce a 5xx or hold the engine longer than the work it asked for.

Bounded inputs refused before any work (the model is never called), the document and the validator agreeing,
the queue (429 with Retry-After, /v1/health's view of it), and serving: short tokens, TLS, the warning when
the engine listens beyond this computer without TLS.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from shapely.geometry import box

from rs_assistant.core.protocol import Options
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.server import create_app
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import serving, write_models_file
from tests.engine.test_cli import engine_command

TOKEN = "hardening-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FULL = rasters.pixel_extent(rasters.utm_transform(), 0, 0, 64, 64)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hardening")
    rasters.burn(folder / "burn.tif", box(*rasters.pixel_extent(rasters.utm_transform(), 20, 10, 36, 26)))
    write_models_file(folder / "models.toml", slow_s=1.5)
    return folder


@pytest.fixture(scope="module")
def engine(data) -> Engine:
    return Engine(Registry.from_file(data / "models.toml"))


@pytest.fixture(scope="module")
def url(engine) -> Iterator[str]:
    # the default body limit (64 MB): what a caller meets on a real engine
    with serving(create_app(engine, TOKEN, request_timeout_s=30, max_queue=2)) as base:
        yield base


@pytest.fixture()
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        yield c


def caption(data: Path, model: str = "echo", **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task": "caption",
        "model": model,
        "images": [{"source": str(data / "burn.tif"), "extent": list(FULL), "crs": rasters.UTM}],
        "output_crs": rasters.UTM,
    }
    out.update(changes)
    return out


def job(data: Path, **changes: Any) -> dict[str, Any]:
    return {
        "task": "caption",
        "model": "echo",
        "sources": [str(data / "burn.tif")],
        "output_crs": rasters.UTM,
    } | changes


def calls(engine: Engine, model: str = "echo") -> int:
    return engine.registry.backend(model).calls  # type: ignore[attr-defined]


def refused(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "type", "param"} and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    return error


def test_a_huge_conversation_is_refused_before_the_model_sees_it(client, engine, data):
    before = calls(engine)
    history = [{"role": "user", "content": "x" * 400}] * 15_000  # 6 MB: the review's 60 MB body, scaled down
    error = refused(client.post("/v1/analyze", json=caption(data, task="chat", history=history)), 400, "history")
    assert "15000 items; the limit is 100" in error["message"]
    long_message = [{"role": "user", "content": "y" * 9000}]
    error = refused(client.post("/v1/analyze", json=caption(data, task="chat", history=long_message)), 400)
    assert error["param"] == "history[0].content" and "the limit is 8000" in error["message"]
    assert calls(engine) == before  # no model time spent on either
    assert client.post("/v1/analyze", json=caption(data)).status_code == 200


@pytest.mark.parametrize(
    "route, body, param",
    [
        ("/v1/analyze", lambda d: caption(d, options={"labels": None}), "options.labels"),
        ("/v1/analyze", lambda d: caption(d, options={"labels": False}), "options.labels"),
        ("/v1/analyze", lambda d: caption(d, options={"labels": 0}), "options.labels"),
        ("/v1/batch", lambda d: job(d, options={"labels": None}), "options.labels"),
        ("/v1/batch", lambda d: job(d, sources=None), "sources"),
        ("/v1/analyze", lambda d: caption(d, options={"max_side": False}), "options.max_side"),
        ("/v1/analyze", lambda d: caption(d, output_crs=""), "output_crs"),
        ("/v1/batch", lambda d: job(d, sources=[]), "sources"),
        ("/v1/analyze", lambda d: caption(d, history=None), "history"),
        ("/v1/analyze", lambda d: caption(d, prompt=None), "prompt"),
        ("/v1/route", lambda d: {"prompt": "find cars", "images": True}, "images"),
    ],
)
def test_values_of_the_wrong_type_are_refused_naming_the_field(client, data, route, body, param):
    response = client.post(route, json=body(data))
    if body(data).get("sources") == []:  # an empty list breaks a bound: the bound's own code (422)
        assert refused(response, 422, param)["code"] == "bad_image_count"
    else:
        assert refused(response, 400, param)["code"] == "bad_request"


def test_string_numbers_are_refused_not_converted(client, data):
    extent = [str(v) for v in FULL]
    payload = caption(data)
    payload["images"][0]["extent"] = extent
    error = refused(client.post("/v1/analyze", json=payload), 400, "images[0].extent[0]")
    assert "must be a number" in error["message"]


def test_an_infinite_number_and_a_deep_body_are_400s_and_the_engine_keeps_serving(client, data):
    text = json.dumps(caption(data)).replace('"caption"', '"caption", "options": {"max_side": 1e999}')
    refused(client.post("/v1/analyze", content=text, headers={"Content-Type": "application/json"}), 400)
    deep = "[" * 100_000 + "]" * 100_000
    error = refused(client.post("/v1/analyze", content=deep), 400)
    assert "more than 32 deep" in error["message"]
    error = refused(client.post("/v1/batch", content='{"a":' * 50 + "1" + "}" * 50), 400)
    assert "more than 32 deep" in error["message"]
    assert client.post("/v1/analyze", json=caption(data)).status_code == 200


def test_what_the_document_forbids_the_engine_refuses(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["AnalyzeRequest"]
    assert request["additionalProperties"] is False
    assert request["properties"]["output_crs"]["minLength"] == 1
    assert request["properties"]["history"]["maxItems"] == 100
    options = schemas["Options"]["properties"]
    assert (options["max_side"]["minimum"], options["max_side"]["maximum"]) == (16, Options.MAX_SIDE_LIMIT)
    assert schemas["BatchRequest"]["properties"]["sources"]["minItems"] == 1


def test_an_undeclared_method_gets_405_with_allow(client):
    response = client.delete("/v1/analyze")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_beyond_the_queue_limit_a_request_gets_429_with_retry_after(url, client, engine, data):
    slow = engine.registry.backend("slow")
    results: list[int] = []

    def ask() -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as own:
            results.append(own.post("/v1/analyze", json=caption(data, model="slow")).status_code)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while slow.active == 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.02)
    queue = httpx.get(f"{url}/v1/health").json()["queue"]  # the health check needs no token
    assert queue["limit"] == 2 and queue["waiting"] == 1 and len(queue["busy"]) == 1
    assert queue["busy"][0] | {"seconds": 0} == {
        "route": "/v1/analyze",
        "task": "caption",
        "model": "slow",
        "seconds": 0,
    }
    third = client.post("/v1/analyze", json=caption(data))
    error = refused_busy(third)
    assert "retry in about" in error["message"]
    for thread in threads:
        thread.join(30)
    assert results == [200, 200]
    after = httpx.get(f"{url}/v1/health").json()["queue"]
    assert after == {"waiting": 0, "limit": 2, "busy": []}
    assert client.post("/v1/analyze", json=caption(data)).status_code == 200


def refused_busy(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "busy" and error["type"] == "rate_limit_error"
    return error


def _serve(*args: str, timeout: float = 60) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        engine_command("serve", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("READY ") or not line:
            break
    return process, line.strip()


def test_serving_beyond_this_computer_without_tls_warns(tmp_path):
    models = write_models_file(tmp_path / "models.toml")
    process, ready = _serve("--models", str(models), "--token-file", str(tmp_path / "t"), "--host", "0.0.0.0")
    try:
        assert ready.startswith("READY http://0.0.0.0:")
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "without TLS" in err and "reverse proxy" in err


def test_serve_speaks_https_with_a_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    models = write_models_file(tmp_path / "models.toml")
    token = tmp_path / "t"
    process, ready = _serve(
        "--models", str(models), "--token-file", str(token), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)
    )
    try:
        assert ready.startswith("READY https://127.0.0.1:")
        base = ready.split()[1]
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
        assert httpx.get(f"{base}/v1/models", headers=headers, verify=str(cert)).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(base.replace("https:", "http:") + "/v1/health", timeout=5)  # no clear-text answer
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "without TLS" not in err
