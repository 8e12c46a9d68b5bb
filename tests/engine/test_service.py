"""The request service (rs_assistant.engine.service): real rasters, fake backends, answers in map coordinates."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely
from shapely.geometry import box, shape
from shapely.ops import transform as shapely_transform

from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    ErrorCode,
    ImageRef,
    Message,
    Options,
    ProtocolError,
)
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import BACKGROUND_SCORE, BRIGHT_SCORE, write_models_file

GRID = rasters.utm_transform()
#: The bright square burnt into the test raster: pixels [20, 36) x [10, 26) of a 64 x 64 raster.
SQUARE = box(*rasters.pixel_extent(GRID, 20, 10, 36, 26))
FULL = rasters.pixel_extent(GRID, 0, 0, 64, 64)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("service")
    rasters.burn(folder / "before.tif", SQUARE)
    rasters.burn(folder / "after.tif", SQUARE.union(box(*rasters.pixel_extent(GRID, 40, 40, 50, 50))))
    write_models_file(folder / "models.toml", slow_s=0.3)
    return folder


@pytest.fixture()
def engine(data) -> Engine:
    return Engine(Registry.from_file(data / "models.toml"))


def request(data: Path, task: str = "caption", model: str = "echo", **kwargs) -> AnalyzeRequest:
    images = kwargs.pop("images", None) or (
        ImageRef(extent=kwargs.pop("extent", FULL), crs=rasters.UTM, source=str(data / "before.tif")),
    )
    return AnalyzeRequest(
        task=task, model=model, images=images, output_crs=kwargs.pop("output_crs", rasters.UTM), **kwargs
    )


def test_caption_describes_the_window_that_was_read(engine, data):
    response = engine.analyze(request(data, extent=rasters.pixel_extent(GRID, 0, 0, 32, 16)))
    # 32 x 16 pixels; the square covers columns 20-31 of rows 10-15: 72 of 512 pixels at 220, the rest 30.
    mean = round((72 * rasters.INSIDE + 440 * rasters.OUTSIDE) / 512)
    assert response.text == f"32x16 image, mean colour ({mean}, {mean}, {mean})"
    assert response.model == "echo" and response.crs == rasters.UTM
    assert response.features == {"type": "FeatureCollection", "features": []}
    assert len(response.request_id) == 32
    assert all(v >= 0 for v in response.timing_ms.to_dict().values())


def test_ground_answers_in_map_coordinates_in_two_crss(engine, data):
    utm = engine.analyze(request(data, "ground", prompt="tank"))
    (feature,) = utm.feature_list
    assert feature["properties"] == {"kind": "box", "label": "tank", "score": BRIGHT_SCORE}
    assert shape(feature["geometry"]).symmetric_difference(SQUARE).area < 1e-6

    mercator = engine.analyze(request(data, "ground", prompt="tank", output_crs=rasters.MERCATOR))
    assert mercator.crs == rasters.MERCATOR
    to_mercator = pyproj.Transformer.from_crs(rasters.UTM, rasters.MERCATOR, always_xy=True).transform
    expected = shapely_transform(to_mercator, shapely.segmentize(SQUARE, 1.0))
    got = shape(mercator.feature_list[0]["geometry"])
    assert got.symmetric_difference(expected).area / expected.area < 1e-4


def test_score_threshold_filters_detections(engine, data):
    default = engine.analyze(request(data, "ground"))
    assert [f["properties"]["label"] for f in default.feature_list] == ["bright"]
    # the one under the threshold is not drawn but sent back, for the dock's "show 1 more below 0.3"
    assert [(f["properties"]["label"], f["properties"]["score"]) for f in default.held_back_list] == [
        ("background", BACKGROUND_SCORE)
    ]
    assert "not drawn" not in default.text
    low = engine.analyze(request(data, "ground", options=Options(score_threshold=0.05)))
    assert [f["properties"]["score"] for f in low.feature_list] == [BRIGHT_SCORE, BACKGROUND_SCORE]
    assert low.held_back_list == []
    high = engine.analyze(request(data, "ground", options=Options(score_threshold=0.95)))
    assert high.feature_list == [] and len(high.held_back_list) == 2
    wire = AnalyzeResponse.from_json(high.to_json())  # survives the wire
    assert [
        shape(f["geometry"]).equals(shape(g["geometry"])) for f, g in zip(wire.held_back_list, high.held_back_list)
    ] == [True, True]


def test_segment_chains_a_grounding_model_into_its_segmenter(engine, data):
    response = engine.analyze(request(data, "segment", prompt="roof", options=Options(score_threshold=0.05)))
    segmenter = engine.registry.backend("seg")
    # Only the boxes over the threshold were segmented: the square and the background.
    assert segmenter.boxes_seen == [(20.0, 10.0, 36.0, 26.0), (0.0, 0.0, 64.0, 64.0)]
    kinds = [(f["properties"]["kind"], f["properties"]["label"]) for f in response.feature_list]
    assert kinds == [("mask", "roof"), ("mask", "background")]
    for feature in response.feature_list:
        assert shape(feature["geometry"]).symmetric_difference(SQUARE).area < 1e-6


def test_auto_segment_chains_the_ground_model_into_a_box_segmenter_chosen_for_segment(data, tmp_path):
    """[tasks] ground = a grounding model, segment = SAM-like: "auto" finds the boxes, then masks them."""
    models = write_models_file(tmp_path / "models.toml", extra='\n[tasks]\nground = "slow"\nsegment = "seg"\n')
    engine = Engine(Registry.from_file(models))
    response = engine.analyze(
        request(data, "segment", model="auto", prompt="roof", options=Options(score_threshold=0.05))
    )
    assert response.model == "slow + seg"  # the answer names both models
    assert engine.registry.backend("seg").boxes_seen == [(20.0, 10.0, 36.0, 26.0), (0.0, 0.0, 64.0, 64.0)]
    assert [f["properties"]["label"] for f in response.feature_list] == ["roof", "background"]
    assert shape(response.feature_list[0]["geometry"]).symmetric_difference(SQUARE).area < 1e-6
    # asked by name, the segmenter answers alone (one mask of the whole window); without a ground route, too
    alone = engine.analyze(request(data, "segment", model="seg", prompt="roof"))
    assert alone.model == "seg" and len(engine.registry.backend("seg").boxes_seen) == 3
    unrouted = Engine(Registry.from_file(write_models_file(tmp_path / "m2.toml", extra='\n[tasks]\nsegment = "seg"\n')))
    assert unrouted.analyze(request(data, "segment", model="auto", prompt="roof")).model == "seg"


def test_change_reads_the_pair_and_maps_the_changed_pixels(engine, data):
    before, after = (ImageRef(extent=FULL, crs=rasters.UTM, source=str(data / n)) for n in ("before.tif", "after.tif"))
    response = engine.analyze(request(data, "change", images=(before, after)))
    assert response.text == "100 changed pixel(s)"
    (feature,) = response.feature_list
    assert feature["properties"]["kind"] == "change"
    assert shape(feature["geometry"]).symmetric_difference(box(*rasters.pixel_extent(GRID, 40, 40, 50, 50))).area < 1e-6


def test_chat_without_geometry(engine):
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 90
    reply = engine.chat(
        "echo", [image], "what is this?", history=(Message("user", "hi"), Message("assistant", "hello"))
    )
    assert reply.text == "30x20 image, mean colour (90, 0, 0), 2 earlier message(s)"
    assert reply.model == "echo" and reply.timing_ms.infer >= 0


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda d: request(d, model="gpt-7"), ErrorCode.UNKNOWN_MODEL),
        (lambda d: request(d, "classify", prompt="a, b"), ErrorCode.UNSUPPORTED_TASK),
        (lambda d: request(d, output_crs="EPSG:999999"), ErrorCode.BAD_CRS),
        (
            lambda d: request(d, images=(ImageRef(extent=FULL, crs="EPSG:999999", source=str(d / "before.tif")),)),
            ErrorCode.BAD_CRS,
        ),
        (
            lambda d: request(d, images=(ImageRef(extent=FULL, crs=rasters.UTM, source=str(d / "nope.tif")),)),
            ErrorCode.SOURCE_NOT_FOUND,
        ),
        (lambda d: request(d, extent=(0, 0, 10, 10)), ErrorCode.EXTENT_OUTSIDE),
        (lambda d: request(d, model="broken"), ErrorCode.MODEL_LOAD_FAILED),
    ],
)
def test_bad_requests_raise_typed_errors(engine, data, make, code):
    with pytest.raises(ProtocolError) as error:
        engine.analyze(make(data))
    assert error.value.code is code
    assert engine.analyze(request(data)).text.startswith("64x64 image")


def test_the_task_is_checked_before_any_pixel_is_read(engine, data):
    missing = (ImageRef(extent=FULL, crs=rasters.UTM, source=str(data / "nope.tif")),)
    with pytest.raises(ProtocolError) as error:
        engine.analyze(request(data, "classify", prompt="a, b", images=missing))
    assert error.value.code is ErrorCode.UNSUPPORTED_TASK
    assert "model 'echo'" in error.value.message and "does not do 'classify'" in error.value.message


def test_an_engine_bug_becomes_internal_with_a_safe_message(engine, data, caplog):
    with pytest.raises(ProtocolError) as error:
        engine.analyze(request(data, model="buggy"))
    assert error.value.code is ErrorCode.INTERNAL
    assert "/secret/path" not in error.value.message and "ValueError" in error.value.message
    assert "/secret/path" in caplog.text  # the traceback is in the log
    assert engine.analyze(request(data)).text.startswith("64x64 image")


def test_a_failed_load_is_retried_on_the_next_request(engine, data):
    for _ in range(2):
        with pytest.raises(ProtocolError, match="model 'broken' .* failed to load: RuntimeError: weights are corrupt"):
            engine.analyze(request(data, model="broken"))
    assert not engine.registry.backend("broken").loaded


def test_requests_to_one_model_are_queued(engine, data):
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(engine.analyze(request(data, model="slow")).text))
        for _ in range(2)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    slow = engine.registry.backend("slow")
    assert len(results) == 2 and slow.calls == 2
    assert slow.max_active == 1
    assert time.monotonic() - started >= 0.6


def test_cancel_stops_a_running_request_and_a_queued_one(engine, data):
    cancel = threading.Event()
    errors: list[ProtocolError] = []

    def call(event: threading.Event) -> None:
        try:
            engine.analyze(request(data, model="slow"), event)
        except ProtocolError as exc:
            errors.append(exc)

    slow = engine.registry.backend("slow")
    first = threading.Thread(target=call, args=(cancel,))
    second = threading.Thread(target=call, args=(cancel,))
    first.start()
    deadline = time.monotonic() + 10
    while slow.active == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    second.start()  # waits for the model behind the first
    time.sleep(0.05)
    cancel.set()
    first.join(5)
    second.join(5)
    assert [e.code for e in errors] == [ErrorCode.CANCELLED, ErrorCode.CANCELLED]
    assert slow.cancelled == 1 and slow.calls == 1  # the queued one never reached the model
    assert engine.analyze(request(data, model="slow")).text.startswith("64x64")


def test_a_request_cancelled_before_it_starts_reads_nothing(engine, data):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ProtocolError) as error:
        engine.analyze(request(data), cancel)
    assert error.value.code is ErrorCode.CANCELLED
    assert engine.registry.backend("echo").calls == 0


def test_models_and_health(engine):
    infos = {m.name: m for m in engine.models()}
    assert set(infos) == {"echo", "seg", "slow", "broken", "buggy", "ranking", "default"}
    assert infos["default"].backend == "rsa"  # built in, listed without a models file entry
    health = engine.health()
    assert health.status == "ok" and health.device.startswith("cpu")


def test_detections_on_other_images_use_their_own_window_and_keep_their_order(engine, data):
    """retrieve: each detection names its image (properties['image']) and is placed on that image's window."""
    dark, bright = rasters.pixel_extent(GRID, 0, 32, 32, 64), rasters.pixel_extent(GRID, 16, 4, 40, 28)
    images = tuple(ImageRef(extent=e, crs=rasters.UTM, source=str(data / "before.tif")) for e in (dark, bright))
    response = engine.analyze(request(data, "retrieve", model="ranking", prompt="roofs", images=images))
    got = [
        (f["properties"]["image"], f["properties"]["rank"], shape(f["geometry"]).bounds) for f in response.feature_list
    ]
    assert got == [(1, 1, box(*bright).bounds), (0, 2, box(*dark).bounds)]
    # ranked, not thresholded: the dark tile's score is far under the default threshold
    assert response.feature_list[1]["properties"]["score"] < Options().score_threshold
