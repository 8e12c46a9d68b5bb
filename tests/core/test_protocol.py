"""The wire protocol: validation with typed error codes and lossless JSON round-trips."""

from __future__ import annotations

import json

import pytest

from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    DeviceInfo,
    DeviceType,
    ErrorCode,
    Health,
    ImageRef,
    Message,
    Options,
    ProtocolError,
    Task,
    feature_collection,
)

EXTENT = (500000.0, 4000000.0, 500512.0, 4000512.0)


def image(**kw):
    return ImageRef(**{"extent": EXTENT, "crs": "EPSG:32633", "source": "/data/a.tif", **kw})


def request_dict(**kw):
    base = {
        "task": "ground",
        "model": "default",
        "prompt": "find the storage tanks",
        "images": [image().to_dict()],
        "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "output_crs": "EPSG:3857",
        "options": {"max_new_tokens": 64, "score_threshold": 0.5, "max_side": 512},
    }
    base.update(kw)
    return base


def test_request_round_trips_through_json():
    req = AnalyzeRequest.from_dict(request_dict())
    assert req.task is Task.GROUND
    assert req.images[0].extent == EXTENT
    assert req.history == (Message("user", "hi"), Message("assistant", "hello"))
    again = AnalyzeRequest.from_json(req.to_json())
    assert again == req
    assert json.loads(req.to_json())["options"]["max_side"] == 512


def test_png_image_round_trips():
    ref = ImageRef.from_png(b"\x89PNG fake", EXTENT, "EPSG:3857")
    assert ImageRef.from_dict(ref.to_dict()).png_bytes() == b"\x89PNG fake"


@pytest.mark.parametrize(
    "change, code",
    [
        ({"task": "paint"}, ErrorCode.UNKNOWN_TASK),
        ({"images": [{"crs": "EPSG:3857", "source": "/a.tif"}]}, ErrorCode.BAD_EXTENT),
        ({"images": [{"extent": [0, 0, 0, 10], "crs": "EPSG:3857", "source": "/a.tif"}]}, ErrorCode.BAD_EXTENT),
        ({"images": [{"extent": [0, 0, 1, "x"], "crs": "EPSG:3857", "source": "/a.tif"}]}, ErrorCode.BAD_EXTENT),
        ({"images": [{"extent": [0, 0, 1, 1], "crs": "not a crs", "source": "/a.tif"}]}, ErrorCode.BAD_CRS),
        ({"output_crs": "WGS84 please"}, ErrorCode.BAD_CRS),
        ({"task": "change"}, ErrorCode.BAD_IMAGE_COUNT),
        ({"images": []}, ErrorCode.BAD_IMAGE_COUNT),
        ({"images": [{"extent": [0, 0, 1, 1], "crs": "EPSG:3857"}]}, ErrorCode.INVALID_VALUE),
        ({"options": {"max_side": 100000}}, ErrorCode.REGION_TOO_LARGE),
        ({"prompt": "x" * 9000}, ErrorCode.PROMPT_TOO_LONG),
        ({"surprise": 1}, ErrorCode.BAD_REQUEST),
        ({"history": [{"role": "robot", "content": "x"}]}, ErrorCode.BAD_REQUEST),
    ],
)
def test_bad_requests_raise_typed_errors(change, code):
    with pytest.raises(ProtocolError) as err:
        AnalyzeRequest.from_dict(request_dict(**change))
    assert err.value.code is code
    assert err.value.message
    assert 400 <= err.value.http_status < 500


def test_change_needs_two_images_and_says_so():
    with pytest.raises(ProtocolError, match="before and the after"):
        AnalyzeRequest(task=Task.CHANGE, images=(image(),), output_crs="EPSG:3857")
    req = AnalyzeRequest(task="change", images=(image(), image(source="/data/b.tif")), output_crs="EPSG:3857")
    assert len(req.images) == 2


def test_non_json_body_is_a_bad_request():
    with pytest.raises(ProtocolError) as err:
        AnalyzeRequest.from_json(b"{not json")
    assert err.value.code is ErrorCode.BAD_REQUEST


def test_output_crs_defaults_to_first_image_crs():
    data = request_dict()
    del data["output_crs"]
    assert AnalyzeRequest.from_dict(data).output_crs == "EPSG:32633"


def test_response_round_trip_and_feature_checks():
    feat = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [1, 2]},
        "properties": {"kind": "point", "label": "tank", "score": 0.9},
    }
    resp = AnalyzeResponse(
        text="a tank", features=feature_collection([feat]), crs="EPSG:3857", model="default", request_id="r1"
    )
    assert AnalyzeResponse.from_json(resp.to_json()) == resp
    bad = dict(feat, properties={"kind": "blob", "label": "x", "score": 1})
    with pytest.raises(ProtocolError):
        AnalyzeResponse(text="", features=feature_collection([bad]), crs="EPSG:3857", model="m", request_id="r")


def test_held_back_detections_travel_and_old_engines_may_omit_them():
    feat = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [1, 2]},
        "properties": {"kind": "box", "label": "car", "score": 0.12},
    }
    resp = AnalyzeResponse(
        text="1 x car",
        features=feature_collection(),
        crs="EPSG:3857",
        model="default",
        request_id="r1",
        held_back=feature_collection([feat]),
    )
    again = AnalyzeResponse.from_json(resp.to_json())
    assert again == resp and again.held_back_list == [feat]
    old = resp.to_dict()
    del old["held_back"]  # an engine from before held_back
    assert AnalyzeResponse.from_dict(old).held_back is None and AnalyzeResponse.from_dict(old).held_back_list == []
    with pytest.raises(ProtocolError, match="held_back must be a GeoJSON FeatureCollection"):
        AnalyzeResponse.from_dict(dict(old, held_back=[feat]))


def test_pixel_sizes_travel_and_old_engines_may_omit_them():
    resp = AnalyzeResponse(
        text="a pond",
        features=feature_collection(),
        crs="EPSG:3857",
        model="default",
        request_id="r1",
        pixel_size_m=0.1,
        model_pixel_size_m=0.5,
    )
    data = resp.to_dict()
    assert data["pixel_size_m"] == 0.1 and data["model_pixel_size_m"] == 0.5
    assert AnalyzeResponse.from_json(resp.to_json()) == resp
    fed_as_read = AnalyzeResponse.from_dict(dict(data, model_pixel_size_m=None))
    assert fed_as_read.pixel_size_m == 0.1 and fed_as_read.model_pixel_size_m is None
    assert "model_pixel_size_m" not in fed_as_read.to_dict()
    old = {k: v for k, v in data.items() if k not in ("pixel_size_m", "model_pixel_size_m")}  # an older engine
    again = AnalyzeResponse.from_dict(old)
    assert again.pixel_size_m is None and again.model_pixel_size_m is None
    assert "pixel_size_m" not in again.to_dict()
    for bad in (0, -1.0, "wide", float("nan"), True):
        with pytest.raises(ProtocolError, match="pixel_size_m"):
            AnalyzeResponse.from_dict(dict(data, pixel_size_m=bad))


def test_land_cover_travels_as_pairs_and_old_engines_may_omit_it():
    resp = AnalyzeResponse("a suburb", feature_collection(), "EPSG:3857", "default", "r1",
                           land_cover=[("grass areas", 0.444), ("roads", 0.139)])  # fmt: skip
    data = json.loads(resp.to_json())
    assert data["land_cover"] == [["grass areas", 0.444], ["roads", 0.139]]
    assert AnalyzeResponse.from_dict(data) == resp
    assert resp.land_cover == (("grass areas", 0.444), ("roads", 0.139))
    old = {k: v for k, v in data.items() if k != "land_cover"}  # an older engine, or a task without it
    older = AnalyzeResponse.from_dict(old)
    assert older.land_cover is None and "land_cover" not in older.to_dict()
    for bad in ([["roads", 1.5]], [["roads"]], "roads", [[None, 0.2]]):
        with pytest.raises(ProtocolError, match="land_cover"):
            AnalyzeResponse.from_dict(dict(data, land_cover=bad))


def test_error_body_becomes_typed_error_on_the_client():
    body = ProtocolError(ErrorCode.EXTENT_OUTSIDE, "extent is outside the raster").to_dict()
    with pytest.raises(ProtocolError) as err:
        AnalyzeResponse.from_dict(body)
    assert err.value.code is ErrorCode.EXTENT_OUTSIDE
    assert ProtocolError.from_dict({"error": {"code": "nonsense", "message": "m"}}).code is ErrorCode.INTERNAL


def test_options_validate_ranges():
    assert Options.from_dict({"labels": ["a", "b"]}).labels == ("a", "b")
    with pytest.raises(ProtocolError):
        Options(score_threshold=2)
    with pytest.raises(ProtocolError):
        Options.from_dict({"max_new_tokens": "lots"})


CPU_WITH_GPU_UNUSED = {
    "type": "cpu",
    "name": "AMD EPYC 7763",
    "memory_gb": 31.3,
    "dtype": "float32",
    "torch": "2.5.1+cpu",
    "cuda": None,
    "warning": "An NVIDIA GPU is present but this engine's torch is a CPU-only build.",
}


def test_health_with_device_info_round_trips_through_json():
    health = Health.from_dict(
        json.loads(
            json.dumps(
                {"status": "ok", "version": "0.2.0", "device": "cpu (float32)", "device_info": CPU_WITH_GPU_UNUSED}
            )
        )
    )
    assert health.device_info.type is DeviceType.CPU and health.device_info.cuda is None
    assert health.device_info.warning.startswith("An NVIDIA GPU is present")
    assert health.to_dict()["device_info"] == CPU_WITH_GPU_UNUSED
    assert Health.from_dict(health.to_dict()) == health


def test_health_of_an_engine_without_device_info_still_parses():
    health = Health.from_dict({"status": "ok", "version": "0.1.0", "device": "cpu (float32)"})
    assert health.device_info is None and "device_info" not in health.to_dict()


@pytest.mark.parametrize(
    "change",
    [{"type": "tpu"}, {"memory_gb": -1}, {"memory_gb": "lots"}, {"name": None}, {"cuda": 12.4}],
)
def test_malformed_device_info_is_refused_with_the_field_named(change):
    with pytest.raises(ProtocolError) as err:
        DeviceInfo.from_dict({**CPU_WITH_GPU_UNUSED, **change})
    assert err.value.code is ErrorCode.INTERNAL
    assert next(iter(change)) in err.value.message or "tpu" in err.value.message


def test_device_info_without_memory_or_warning():
    info = DeviceInfo.from_dict({"type": "mps", "name": "arm", "dtype": "float16", "torch": "2.5.1"})
    assert info.memory_gb is None and info.warning == "" and info.cuda is None
    with pytest.raises(ProtocolError) as err:
        DeviceInfo.from_dict({"type": "cpu"})
    assert "dtype" in err.value.message and "torch" in err.value.message
