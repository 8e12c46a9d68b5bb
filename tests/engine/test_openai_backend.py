"""The ``openai`` backend: box conventions on known strings, and end to end against this engine's own
/v1/chat/completions."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from shapely.geometry import box, shape

from rs_assistant.core.protocol import AnalyzeRequest, ErrorCode, ImageRef, Message, ProtocolError
from rs_assistant.engine.backends.openai_backend import parse_boxes, png_data_url
from rs_assistant.engine.imagery import decode_image_bytes
from rs_assistant.engine.registry import ModelSpec, Registry
from rs_assistant.engine.server import create_app, load_or_create_token
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import serving, write_models_file

GRID = rasters.utm_transform()
FULL = rasters.pixel_extent(GRID, 0, 0, 64, 64)
SQUARE = box(*rasters.pixel_extent(GRID, 20, 10, 36, 26))


@pytest.mark.parametrize(
    ("text", "convention", "expected"),
    [
        ('[{"label": "tank", "bbox_2d": [100, 200, 300, 400]}]', "0-1000", [("tank", (20.0, 10.0, 60.0, 20.0))]),
        ('```json\n[{"bbox_2d": [10, 20, 30, 40]}]\n```', "0-100", [("thing", (20.0, 10.0, 60.0, 20.0))]),
        ('{"label": "a", "bbox_2d": [0.1, 0.2, 0.3, 0.4]}', "0-1", [("a", (20.0, 10.0, 60.0, 20.0))]),
        (
            "[10, 5, 50, 25] and [0, 0, 300, 300]",
            "pixels",
            [("thing", (10.0, 5.0, 50.0, 25.0)), ("thing", (0.0, 0.0, 200.0, 50.0))],
        ),
        (
            "<|object_ref_start|>ship<|object_ref_end|><|box_start|>(500,0),(1000,1000)<|box_end|>",
            "0-1000",
            [("ship", (100.0, 0.0, 200.0, 50.0))],
        ),
        ('[{"label": "b", "bbox_2d": [300, 400, 100, 200]}]', "0-1000", [("b", (20.0, 10.0, 60.0, 20.0))]),
        ('[{"label": "outside", "bbox_2d": [1200, 1200, 1500, 1500]}]', "0-1000", []),
        ("I see no tanks here.", "0-1000", []),
        ("[]", "0-1000", []),
    ],
)
def test_parse_boxes_converts_each_convention_to_window_pixels(text, convention, expected):
    assert parse_boxes(text, convention, width=200, height=50, default_label="thing") == expected


def test_png_data_urls_round_trip_exactly():
    image = rasters.pattern(13, 17).transpose(1, 2, 0).copy()
    url = png_data_url(image)
    assert url.startswith("data:image/png;base64,")
    assert (decode_image_bytes(base64.b64decode(url.split(",", 1)[1])) == image).all()


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """This engine serving the echo model; yields (API root, token file, data folder)."""
    folder = tmp_path_factory.mktemp("openai")
    rasters.burn(folder / "burn.tif", SQUARE)
    write_models_file(folder / "models.toml")
    token_file = folder / "token"
    token = load_or_create_token(token_file)
    with serving(create_app(Engine(Registry.from_file(folder / "models.toml")), token)) as url:
        yield f"{url}/v1", token_file, folder


def engine_for(config: dict) -> Engine:
    return Engine(Registry({"remote": ModelSpec("remote", "openai", config)}))


def analyze(engine: Engine, folder: Path, task: str, prompt: str = "", **kwargs) -> object:
    image = ImageRef(extent=FULL, crs=rasters.UTM, source=str(folder / "burn.tif"))
    return engine.analyze(
        AnalyzeRequest(task=task, model="remote", prompt=prompt, images=(image,), output_crs=rasters.UTM, **kwargs)
    )


def test_caption_and_chat_through_our_own_chat_completions(remote):
    url, token_file, folder = remote
    engine = engine_for({"url": url, "model": "echo", "api_key_file": str(token_file)})
    mean = round((256 * rasters.INSIDE + (4096 - 256) * rasters.OUTSIDE) / 4096)
    assert (
        analyze(engine, folder, "caption").text
        == f"64x64 image, mean colour ({mean}, {mean}, {mean}), 0 earlier message(s)"
    )
    history = (Message("user", "hello"), Message("assistant", "hi"))
    assert analyze(engine, folder, "chat", "and now?", history=history).text.endswith(", 2 earlier message(s)")


def test_ground_through_our_own_chat_completions_lands_on_the_square(remote):
    url, token_file, folder = remote
    engine = engine_for({"base_url": url, "model": "echo", "api_key": token_file.read_text().strip()})
    response = analyze(engine, folder, "ground", "Find all the storage tanks.")
    (feature,) = response.feature_list
    assert feature["properties"]["kind"] == "box" and feature["properties"]["label"] == "bright"
    # The echo model answers in 0-1000, rounded: within a fraction of a pixel (10 m) of the square.
    assert shape(feature["geometry"]).symmetric_difference(SQUARE).area < 0.1 * SQUARE.area
    assert all(abs(a - b) < 5 for a, b in zip(shape(feature["geometry"]).bounds, SQUARE.bounds))


def test_the_remote_model_defaults_to_the_servers_first(remote):
    url, token_file, folder = remote
    engine = engine_for({"url": url, "api_key_file": str(token_file)})
    assert analyze(engine, folder, "caption").text.startswith("64x64 image")
    assert engine.registry.backend("remote").remote_model == "echo"


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"model": "echo"}, "'url' must be the server's http(s) API root"),
        ({"url": "ftp://x", "model": "echo"}, "'url' must be the server's http(s) API root"),
        ({"url": "{url}", "model": "echo", "box_convention": "0-7"}, "box_convention '0-7'"),
        ({"url": "{url}", "model": "echo", "api_key": "wrong"}, "answered 401"),
        ({"url": "{url}", "model": "echo", "api_key_file": "/no/such/key"}, "cannot read api_key_file /no/such/key"),
        ({"url": "{url}", "model": "gpt-7", "api_key_file": "{token}"}, "answered 404"),
        ({"url": "http://127.0.0.1:9/v1", "model": "echo"}, "cannot be reached"),
    ],
)
def test_misconfiguration_is_a_clear_model_load_error(remote, config, fragment):
    url, token_file, folder = remote
    config = {k: v.format(url=url, token=token_file) for k, v in config.items()}
    with pytest.raises(ProtocolError) as error:
        analyze(engine_for(config), folder, "caption")
    assert error.value.code is ErrorCode.MODEL_LOAD_FAILED, error.value.message
    assert fragment in error.value.message


def test_the_remote_servers_own_errors_are_named(remote):
    url, token_file, folder = remote
    engine = engine_for({"url": url, "model": "seg", "api_key_file": str(token_file)})  # seg does not chat
    with pytest.raises(ProtocolError) as error:
        analyze(engine, folder, "caption")
    assert error.value.code is ErrorCode.INTERNAL
    assert "answered 422" in error.value.message and "does not do 'chat'" in error.value.message


def test_tasks_the_backend_does_not_do_are_refused(remote):
    url, token_file, folder = remote
    engine = engine_for({"url": url, "model": "echo", "api_key_file": str(token_file)})
    with pytest.raises(ProtocolError) as error:
        analyze(engine, folder, "classify", "a, b")
    assert error.value.code is ErrorCode.UNSUPPORTED_TASK
