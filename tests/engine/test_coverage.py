"""How much of the region the raster covers: the response's ``coverage`` and the ``mostly_outside`` refusal.

An extent of +-1e9 m around a 64 x 64 pixel raster once gave a caption of a black window (the raster
fills at most one of its 1024 x 1024 pixels): now it is refused with a message saying how much of
the region the raster covers, below ``options.min_coverage`` (default 5%).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from shapely.geometry import box

from rs_assistant.core.protocol import AnalyzeRequest, AnalyzeResponse, ErrorCode, ImageRef, Options, ProtocolError
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.server import create_app
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import serving, write_models_file

GRID = rasters.utm_transform()
FULL = rasters.pixel_extent(GRID, 0, 0, 64, 64)
SQUARE = box(*rasters.pixel_extent(GRID, 20, 10, 36, 26))
HUGE = (-1e9, -1e9, 1e9, 1e9)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("coverage")
    rasters.burn(folder / "burn.tif", SQUARE)
    rasters.burn(folder / "after.tif", SQUARE)
    write_models_file(folder / "models.toml")
    return folder


@pytest.fixture(scope="module")
def engine(data) -> Engine:
    return Engine(Registry.from_file(data / "models.toml"))


def ask(data: Path, extent: tuple[float, ...], task: str = "caption", **options: Any) -> AnalyzeRequest:
    images = [ImageRef(extent=extent, crs=rasters.UTM, source=str(data / "burn.tif"))]
    if task == "change":
        images.append(ImageRef(extent=extent, crs=rasters.UTM, source=str(data / "after.tif")))
    return AnalyzeRequest(
        task=task, model="echo", images=tuple(images), output_crs=rasters.UTM, options=Options(**options)
    )


def test_a_region_inside_the_raster_is_fully_covered(engine, data):
    response = engine.analyze(ask(data, FULL))
    assert response.coverage == (1.0,)
    assert AnalyzeResponse.from_dict(response.to_dict()).coverage == (1.0,)


def test_a_region_half_over_the_raster_reports_half_and_is_answered(engine, data):
    half = rasters.pixel_extent(GRID, 32, 0, 96, 64)  # the right half of the raster and as much beyond it
    response = engine.analyze(ask(data, half))
    (share,) = response.coverage
    assert share == pytest.approx(0.5, abs=0.02)
    assert response.to_dict()["coverage"] == [share]
    change = engine.analyze(ask(data, half, task="change"))
    assert len(change.coverage) == 2 and all(c == pytest.approx(0.5, abs=0.02) for c in change.coverage)


def test_a_region_the_raster_hardly_touches_is_refused_saying_how_much_it_covers(engine, data):
    with pytest.raises(ProtocolError) as caught:
        engine.analyze(ask(data, HUGE))
    error = caught.value
    assert error.code is ErrorCode.MOSTLY_OUTSIDE and error.http_status == 422
    assert "burn.tif" in error.message and "covers less than 0.01%" in error.message
    assert "min_coverage" in error.message and "the least is 5%" in error.message
    region = "[" + ", ".join(f"{v:.0f}" for v in HUGE) + "]"
    assert region in error.message  # whole metres, not 536246.8312958435
    edge = rasters.pixel_extent(GRID, 60, 0, 260, 64)  # 4 of 200 columns: 2%
    with pytest.raises(ProtocolError) as caught:
        engine.analyze(ask(data, edge))
    assert caught.value.code is ErrorCode.MOSTLY_OUTSIDE and "covers only 2%" in caught.value.message


def test_min_coverage_sets_the_threshold(engine, data):
    edge = rasters.pixel_extent(GRID, 60, 0, 260, 64)
    assert engine.analyze(ask(data, edge, min_coverage=0.01)).coverage[0] == pytest.approx(0.02, abs=0.005)
    tiny = engine.analyze(ask(data, HUGE, min_coverage=0.0)).coverage[0]
    assert 0.0 < tiny < 1e-4
    with pytest.raises(ProtocolError) as caught:
        engine.analyze(ask(data, rasters.pixel_extent(GRID, 32, 0, 96, 64), min_coverage=0.9))
    assert caught.value.code is ErrorCode.MOSTLY_OUTSIDE and "the least is 90%" in caught.value.message
    with pytest.raises(ProtocolError) as caught:
        Options(min_coverage=1.5)
    assert caught.value.code in (ErrorCode.BAD_REQUEST, ErrorCode.INVALID_VALUE)


def test_options_send_min_coverage_only_when_set():
    assert "min_coverage" not in Options().to_dict()  # engines that predate it would refuse the field
    assert Options.from_dict(Options(min_coverage=0.2).to_dict()).min_coverage == 0.2


@pytest.fixture(scope="module")
def client(engine) -> Iterator[httpx.Client]:
    with serving(create_app(engine, None)) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def test_over_http_the_refusal_is_a_422_mostly_outside_and_the_engine_keeps_answering(client, data):
    refused = client.post("/v1/analyze", json=ask(data, HUGE).to_dict())
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "mostly_outside"
    answered = client.post("/v1/analyze", json=ask(data, FULL).to_dict())
    assert answered.status_code == 200 and answered.json()["coverage"] == [1.0]
