"""The HTTP server (rs_assistant.engine.server), served by uvicorn on 127.0.0.1 in a thread.

Every "bad input" of issue 3 is sent to one running server, each followed by a good request
that must still succeed.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch
from shapely.geometry import box

from rs_assistant.core.protocol import AnalyzeRequest, AnalyzeResponse, ImageRef, model_list_from_dict
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.server import create_app
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import describe, serving, write_models_file

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 256 * 1024
GRID = rasters.utm_transform()
FULL = rasters.pixel_extent(GRID, 0, 0, 64, 64)
SQUARE = box(*rasters.pixel_extent(GRID, 20, 10, 36, 26))
GLACIAL = '\n[models.glacial]\nbackend = "tests.engine.fakes:EchoBackend"\ndelay_s = 60\n'


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("server")
    rasters.burn(folder / "burn.tif", SQUARE)
    rasters.not_a_raster(folder / "text.tif")
    rasters.truncated_tiff(folder / "truncated.tif")
    rasters.empty_raster(folder / "huge.tif", 12000, 12000)
    write_models_file(folder / "models.toml", slow_s=0.4, extra=GLACIAL)
    return folder


@pytest.fixture(scope="module")
def engine(data) -> Engine:
    return Engine(Registry.from_file(data / "models.toml"))


@pytest.fixture(scope="module")
def url(engine) -> Iterator[str]:
    with serving(create_app(engine, TOKEN, max_body_bytes=MAX_BODY, request_timeout_s=30)) as base:
        yield base


@pytest.fixture()
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        yield c


def body(data: Path, **changes: Any) -> dict[str, Any]:
    """A good caption request on the burnt square raster, with ``changes`` applied."""
    out: dict[str, Any] = {
        "task": "caption",
        "model": "echo",
        "images": [{"source": str(data / "burn.tif"), "extent": list(FULL), "crs": rasters.UTM}],
        "output_crs": rasters.UTM,
    }
    image_changes = changes.pop("image", {})
    out["images"][0].update(image_changes)
    out.update(changes)
    return out


def assert_good_request_succeeds(client: httpx.Client, data: Path) -> None:
    response = client.post("/v1/analyze", json=body(data))
    assert response.status_code == 200, response.text
    assert AnalyzeResponse.from_dict(response.json()).text.startswith("64x64 image, mean colour")


def test_health_needs_no_token(url):
    response = httpx.get(f"{url}/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "version", "device", "device_info", "queue"} and body["status"] == "ok"
    assert body["device"].startswith("cpu")
    info = body["device_info"]
    assert info["type"] == "cpu" and info["dtype"] == "float32" and info["name"]
    assert info["torch"] == torch.__version__ and info["cuda"] == torch.version.cuda
    assert isinstance(info["warning"], str)
    assert info["memory_gb"] is None or info["memory_gb"] > 0


def test_models_lists_name_backend_tasks_loaded(client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    infos = {m.name: m for m in model_list_from_dict(response.json())}
    assert infos["echo"].backend == "tests.engine.fakes:EchoBackend"
    assert "segment" in {t.value for t in infos["echo"].tasks}
    assert response.json()["data"][0]["id"] == "echo"  # OpenAI's shape too


def test_analyze_ground_answers_geojson_in_the_output_crs(client, data):
    response = client.post("/v1/analyze", json=body(data, task="ground", prompt="tank", output_crs=rasters.WGS84))
    assert response.status_code == 200, response.text
    answer = AnalyzeResponse.from_dict(response.json())
    assert answer.crs == rasters.WGS84 and answer.model == "echo"
    (feature,) = answer.feature_list
    assert feature["properties"] == {"kind": "box", "label": "tank", "score": 0.9}
    lon, lat = feature["geometry"]["coordinates"][0][0]
    assert 14.9 < lon < 15.1 and 41.9 < lat < 42.1
    assert set(response.json()["timing_ms"]) == {"read", "infer", "post"}


BAD_INPUTS = [
    pytest.param(lambda d: body(d, task="dance"), 400, "bad_request", id="unknown task"),
    pytest.param(lambda d: body(d, model="gpt-7"), 404, "unknown_model", id="unknown model"),
    pytest.param(
        lambda d: body(d, task="classify", prompt="a, b"), 422, "unsupported_task", id="task the model does not do"
    ),
    pytest.param(
        lambda d: body(d, image={"source": str(d / "missing.tif")}), 404, "source_not_found", id="source missing"
    ),
    pytest.param(lambda d: body(d, image={"source": str(d / "text.tif")}), 422, "unreadable_source", id="not a raster"),
    pytest.param(
        lambda d: body(d, image={"source": str(d / "truncated.tif")}), 422, "unreadable_source", id="corrupt raster"
    ),
    pytest.param(lambda d: body(d, image={"extent": [0, 0, 100, 100]}), 422, "extent_outside", id="extent outside"),
    pytest.param(
        lambda d: body(d, image={"extent": [FULL[0], FULL[1], FULL[0], FULL[3]]}), 422, "bad_extent", id="zero area"
    ),
    pytest.param(lambda d: body(d, options={"max_side": 100_000}), 400, "bad_request", id="max_side over the limit"),
    pytest.param(
        lambda d: body(
            d, image={"source": str(d / "huge.tif"), "extent": list(rasters.pixel_extent(GRID, 0, 0, 12000, 12000))}
        ),
        413,
        "region_too_large",
        id="region too large to read",
    ),
    pytest.param(lambda d: body(d, image={"crs": "EPSG:999999"}), 422, "bad_crs", id="unknown image CRS"),
    pytest.param(lambda d: body(d, output_crs="not a crs"), 422, "bad_crs", id="malformed output CRS"),
    pytest.param(lambda d: body(d, task="change"), 422, "bad_image_count", id="one image for change"),
    pytest.param(lambda d: body(d, images="x"), 400, "bad_request", id="images not a list"),
    pytest.param(lambda d: body(d, colour="blue"), 400, "bad_request", id="unknown field"),
    pytest.param(lambda d: [1, 2], 400, "bad_request", id="not an object"),
]


@pytest.mark.parametrize(("make", "status", "code"), BAD_INPUTS)
def test_bad_input_gets_a_clear_error_and_the_engine_keeps_serving(client, data, make, status, code):
    response = client.post("/v1/analyze", json=make(data))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert_good_request_succeeds(client, data)


def test_the_region_limit_is_named(client, data):
    response = client.post("/v1/analyze", json=body(data, options={"max_side": 100_000}))
    assert "4096" in response.json()["error"]["message"]
    huge = rasters.pixel_extent(GRID, 0, 0, 12000, 12000)
    response = client.post(
        "/v1/analyze", json=body(data, image={"source": str(data / "huge.tif"), "extent": list(huge)})
    )
    assert "megapixels" in response.json()["error"]["message"]


def test_non_json_body_is_a_400(client, data):
    response = client.post("/v1/analyze", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"
    assert "not valid JSON" in response.json()["error"]["message"]
    assert_good_request_succeeds(client, data)


ROUTES = [
    ("GET", "/v1/models"),
    ("POST", "/v1/analyze"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/nowhere"),
]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["missing", "wrong", "basic"],
)
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_but_health_needs_the_token(url, client, data, headers, method, path):
    response = httpx.request(method, f"{url}{path}", headers=headers, json=body(data))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert_good_request_succeeds(client, data)


def test_a_body_over_the_limit_is_a_413(client, data):
    big = body(data, prompt="x" * (MAX_BODY + 10))
    response = client.post("/v1/analyze", json=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert str(MAX_BODY) in response.json()["error"]["message"]
    # Without a Content-Length (chunked), the limit holds while streaming.
    chunks = iter([json.dumps(big).encode()[i : i + 65536] for i in range(0, MAX_BODY + 70000, 65536)])
    response = client.post("/v1/analyze", content=chunks)
    assert response.status_code == 413
    assert_good_request_succeeds(client, data)


def test_unknown_route_is_a_json_404(client):
    response = client.get("/v2/everything")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_openapi_describes_the_protocol_dataclasses(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert {"/v1/health", "/v1/models", "/v1/analyze", "/v1/chat/completions"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert set(schemas["AnalyzeRequest"]["properties"]) == {f.name for f in dataclasses.fields(AnalyzeRequest)}
    assert set(schemas["ImageRef"]["properties"]) == {f.name for f in dataclasses.fields(ImageRef)}
    assert set(schemas["AnalyzeResponse"]["properties"]) == {f.name for f in dataclasses.fields(AnalyzeResponse)}
    analyze = document["paths"]["/v1/analyze"]["post"]
    assert analyze["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnalyzeRequest"
    }
    assert analyze["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnalyzeResponse"
    }
    assert document["paths"]["/v1/health"]["get"]["security"] == []
    refs = {m for m in json.dumps(document).split('"') if m.startswith("#/components/schemas/")}
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(schemas)  # every reference resolves


def test_two_concurrent_requests_to_one_model_are_queued(url, engine, data):
    statuses: list[int] = []

    def post() -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
            statuses.append(c.post("/v1/analyze", json=body(data, model="slow")).status_code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    slow = engine.registry.backend("slow")
    assert statuses == [200, 200]
    assert slow.max_active == 1 and slow.calls >= 2
    assert time.monotonic() - started >= 0.8


def test_a_client_that_disconnects_stops_its_generation(url, engine, client, data):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/analyze", headers=AUTH, json=body(data, model="glacial"), timeout=1.0)
    glacial = engine.registry.backend("glacial")
    deadline = time.monotonic() + 10
    while glacial.cancelled < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert glacial.cancelled == 1 and glacial.active == 0
    assert_good_request_succeeds(client, data)


def test_a_request_over_the_timeout_is_a_504_and_is_stopped(engine, data):
    glacial = engine.registry.backend("glacial")
    before = glacial.cancelled
    with serving(create_app(engine, TOKEN, request_timeout_s=0.5)) as base:
        started = time.monotonic()
        response = httpx.post(f"{base}/v1/analyze", headers=AUTH, json=body(data, model="glacial"), timeout=30)
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "timeout" and "0.5 s" in response.json()["error"]["message"]
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 10
        while glacial.cancelled == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert glacial.cancelled == before + 1
        good = httpx.post(f"{base}/v1/analyze", headers=AUTH, json=body(data), timeout=30)
        assert good.status_code == 200


# --- /v1/chat/completions with the official openai client --------------------------------------


def png_url(array: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(rasters.png_bytes(array)).decode()


def image_part(array: np.ndarray | None = None, url: str | None = None) -> dict[str, Any]:
    """An image_url content part: ``array`` as a PNG data URL, or ``url`` as given."""
    return {"type": "image_url", "image_url": {"url": url if array is None else png_url(array)}}


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    """``messages`` with one user message made of ``parts``."""
    return [{"role": "user", "content": list(parts)}]


@pytest.fixture()
def oai(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=30)


def test_the_openai_client_chats_with_an_image(oai):
    image = np.zeros((24, 40, 3), np.uint8)
    image[..., 2] = 200
    completion = oai.chat.completions.create(
        model="echo",
        messages=[
            {"role": "system", "content": "You look at satellite images."},
            *user({"type": "text", "text": "what is it?"}, image_part(image)),
        ],
        max_tokens=32,
    )
    assert completion.object == "chat.completion" and completion.model == "echo"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == f"{describe(image)}, 1 earlier message(s)"
    assert completion.choices[0].finish_reason == "stop"


def test_the_openai_client_streams(oai):
    image = np.full((10, 10, 3), 77, np.uint8)
    stream = oai.chat.completions.create(
        model="echo",
        messages=user(image_part(image), {"type": "text", "text": "hi"}),
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == f"{describe(image)}, 0 earlier message(s)"


def test_the_openai_client_lists_models(oai):
    assert [m.id for m in oai.models.list()][:2] == ["echo", "seg"]


def test_the_openai_client_sees_our_errors(oai, client, data):
    with pytest.raises(openai.UnprocessableEntityError) as error:  # echo answers about images only
        oai.chat.completions.create(model="echo", messages=[{"role": "user", "content": "no image here"}])
    assert error.value.body["code"] == "bad_image_count" and error.value.body["param"] == "messages"
    assert "cannot chat without an image" in error.value.message
    with pytest.raises(openai.BadRequestError, match="data URL"):
        oai.chat.completions.create(model="echo", messages=user(image_part(url="https://example.com/a.png")))
    with pytest.raises(openai.NotFoundError, match="unknown model 'gpt-7'"):
        oai.chat.completions.create(model="gpt-7", messages=user(image_part(np.zeros((4, 4, 3), np.uint8))))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(oai.base_url), api_key="wrong", max_retries=0).models.list()
    assert_good_request_succeeds(client, data)


def test_chat_completions_refuses_bad_shapes(client):
    image = image_part(np.zeros((4, 4, 3), np.uint8))
    cases = [
        ({"messages": []}, "bad_request"),
        ({"messages": [*user(image), {"role": "assistant", "content": "x"}]}, "invalid_value"),
        ({"messages": [{"role": "robot", "content": [image]}]}, "bad_request"),
        ({"messages": user({"type": "audio"})}, "bad_request"),
        ({"messages": user(image, image, image)}, "bad_image_count"),
        ({"messages": user(image_part(url="data:image/png;base64,@@"))}, "unreadable_source"),  # not base64
        ({"messages": user(image_part(url="data:image/png;base64,AAAA"))}, "unreadable_source"),  # not an image
    ]
    for payload, code in cases:
        response = client.post("/v1/chat/completions", json={"model": "echo", **payload})
        assert response.status_code in (400, 422), (payload, response.text)
        assert response.json()["error"]["code"] == code, (payload, response.text)
