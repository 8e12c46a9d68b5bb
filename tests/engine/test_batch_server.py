"""POST /v1/batch through the real client (rs_assistant.core.client) against a server in a thread, and the ``batch``
command.

The job streams NDJSON events as it runs; mistakes are ordinary 4xx JSON errors before the stream
starts; a failure mid-job is an error event; a client that goes away cancels the job.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from shapely.geometry import box, shape
from shapely.ops import unary_union

from rs_assistant.core.client import EngineClient
from rs_assistant.core.protocol import AnalyzeRequest, BatchRequest, ErrorCode, ImageRef, ProtocolError, Task
from rs_assistant.engine.__main__ import main
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.server import create_app
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import TILES_TOML, serving, write_models_file

TOKEN = "batch-token"
GRID = rasters.utm_transform()
OBJECTS = [(40, 40, 70, 60), (100, 10, 112, 150)]
EXTRA = (
    '\n[models.failing]\nbackend = "tests.engine.fakes:TileBackend"\nfail_after = 4\n'
    '[models.slowtiles]\nbackend = "tests.engine.fakes:TileBackend"\ndelay_s = 0.3\n'
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch-server")
    rasters.burn(
        folder / "objects.tif",
        unary_union([box(*rasters.pixel_extent(GRID, *o)) for o in OBJECTS]),
        width=200,
        height=160,
    )
    rasters.not_a_raster(folder / "text.tif")
    write_models_file(folder / "models.toml", extra=TILES_TOML + EXTRA)
    return folder


@pytest.fixture(scope="module")
def engine(data) -> Engine:
    return Engine(Registry.from_file(data / "models.toml"))


@pytest.fixture(scope="module")
def url(engine) -> Iterator[str]:
    with serving(create_app(engine, TOKEN)) as base:
        yield base


@pytest.fixture()
def client(url) -> EngineClient:
    return EngineClient(url, token=TOKEN, timeout=10)


def job(data: Path, **changes) -> BatchRequest:
    fields = {"task": Task.SEGMENT, "sources": (str(data / "objects.tif"),), "output_crs": rasters.UTM, "model": "tiles",
              "tile_size": 64, "overlap": 16, "batch_size": 4}  # fmt: skip
    fields.update(changes)
    return BatchRequest(**fields)


def test_the_client_receives_every_event_and_returns_done(client, data):
    events: list[dict] = []
    done = client.batch(job(data), events.append)
    assert [e["event"] for e in events] == ["start"] + ["tile"] * 12 + ["merged", "done"]
    assert done == events[-1] and done["tiles_done"] == 12
    features = [f for e in events if e["event"] in ("tile", "merged") for f in e["features"]]
    assert len(features) == done["features"] == 2
    areas = sorted(shape(f["geometry"]).area / rasters.UTM_RES**2 for f in features)
    assert areas == [30 * 20, 12 * 140]


def test_events_arrive_while_the_job_runs(client, data):
    arrivals: list[float] = []
    started = time.monotonic()
    client.batch(job(data, model="slowtiles", batch_size=4), lambda e: arrivals.append(time.monotonic() - started))
    first_tile, last = arrivals[1], arrivals[-1]
    assert first_tile < last - 0.4  # the first batch's tiles came two batches (0.3 s each) before the end


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"sources": ("TEXT",)}, ErrorCode.UNREADABLE_SOURCE),
        ({"extent": rasters.pixel_extent(GRID, 400, 400, 500, 500)}, ErrorCode.EXTENT_OUTSIDE),
        ({"model": "nope"}, ErrorCode.UNKNOWN_MODEL),
    ],
)
def test_mistakes_are_refused_before_the_stream_starts(client, url, data, changes, code):
    if changes.get("sources") == ("TEXT",):
        changes["sources"] = (str(data / "text.tif"),)
    events: list[dict] = []
    with pytest.raises(ProtocolError) as err:
        client.batch(job(data, **changes), events.append)
    assert err.value.code is code and events == []
    response = httpx.post(
        f"{url}/v1/batch", json=job(data, **changes).to_dict(), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == err.value.http_status and 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")


def test_a_tile_size_over_the_schema_limit_is_a_400_naming_it(url, data):
    body = job(data).to_dict() | {"tile_size": BatchRequest.MAX_TILE_SIZE * 2}
    response = httpx.post(f"{url}/v1/batch", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "bad_request" and error["param"] == "tile_size"
    assert f"between 32 and {BatchRequest.MAX_TILE_SIZE}" in error["message"]


def test_the_route_needs_the_token(url, data):
    response = httpx.post(f"{url}/v1/batch", json=job(data).to_dict())
    assert response.status_code == 401


def test_a_model_failing_mid_job_raises_after_the_tiles_already_streamed(client, data):
    events: list[dict] = []
    with pytest.raises(ProtocolError) as err:
        client.batch(job(data, model="failing", batch_size=2), events.append)
    assert err.value.code is ErrorCode.INTERNAL
    assert [e["event"] for e in events] == ["start"] + ["tile"] * 4


def test_cancelling_the_client_stops_the_job_on_the_engine(client, engine, data):
    backend = engine.registry.backend("slowtiles")

    def on_event(event: dict) -> None:
        if event["event"] == "tile":
            threading.Thread(target=client.cancel).start()

    before = backend.batches
    with pytest.raises(ProtocolError) as err:
        client.batch(job(data, model="slowtiles", batch_size=2), on_event)
    assert err.value.code is ErrorCode.CANCELLED
    time.sleep(1.0)
    assert backend.batches - before <= 3  # of 6: the engine noticed the client had gone


def test_a_job_right_after_a_cancelled_one_reads_its_raster(url, data):
    """A cancelled job's end must not close rasters the next job is reading (it once did, now and
    then: 'Dataset is closed'); each round cancels a slow job, then runs a full one at once."""
    for _ in range(4):
        first = EngineClient(url, token=TOKEN, timeout=10)
        seen = []

        def on_event(event: dict, client: EngineClient = first, seen: list = seen) -> None:
            seen.append(event["event"])
            if seen.count("tile") == 2:
                client.cancel()

        with pytest.raises(ProtocolError) as err:
            first.batch(job(data, model="slowtiles", batch_size=1), on_event)
        assert err.value.code is ErrorCode.CANCELLED
        done = EngineClient(url, token=TOKEN, timeout=10).batch(job(data, batch_size=1), lambda e: None)
        assert done["tiles_done"] == 12


def test_analyze_is_not_blocked_for_the_whole_job(client, url, data):
    result: dict = {}
    runner = threading.Thread(
        target=lambda: result.update(done=client.batch(job(data, model="slowtiles", batch_size=2), lambda e: None))
    )
    runner.start()
    time.sleep(0.4)
    other = EngineClient(url, token=TOKEN, timeout=10)
    ref = ImageRef(extent=rasters.pixel_extent(GRID, 0, 0, 64, 64), crs=rasters.UTM, source=str(data / "objects.tif"))
    started = time.monotonic()
    answer = other.analyze(AnalyzeRequest(task=Task.CAPTION, model="slowtiles", images=(ref,), output_crs=rasters.UTM))
    waited = time.monotonic() - started
    assert answer.text.startswith("64x64 image") and runner.is_alive()  # answered while the job still runs
    assert waited < 1.5
    runner.join(20)
    assert result["done"]["tiles_done"] == 12


def test_openapi_documents_the_stream(url):
    document = httpx.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    route = document["paths"]["/v1/batch"]["post"]
    assert "application/x-ndjson" in route["responses"]["200"]["content"]
    assert route["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/BatchRequest")
    assert "tile_size" in document["components"]["schemas"]["BatchRequest"]["properties"]
    assert "event" in document["components"]["schemas"]["BatchEventLine"]["properties"]


# --- python -m rs_assistant.engine batch --------------------------------------------------------


def test_the_batch_command_prints_ndjson_events(capsys, data):
    code = main(["batch", "--task", "ground", "--image", str(data / "objects.tif"), "--prompt", "roof", "--model", "tiles",
                 "--models", str(data / "models.toml"), "--tile-size", "64", "--overlap", "16"])  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and lines[0]["event"] == "start" and lines[-1]["event"] == "done"
    boxes = [f for e in lines if e["event"] in ("tile", "merged") for f in e["features"]]
    assert len(boxes) == 2 and {f["properties"]["label"] for f in boxes} == {"roof"}


def test_the_batch_command_writes_geojson_lines(capsys, data, tmp_path):
    out = tmp_path / "found.geojsonl"
    code = main(["batch", "--task", "segment", "--image", str(data / "objects.tif"), "--model", "tiles", "--crs", rasters.WGS84,
                 "--models", str(data / "models.toml"), "--tile-size", "64", "--output", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    features = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and captured.out == "" and "2 feature(s) written" in captured.err
    assert len(features) == 2 and all(f["type"] == "Feature" for f in features)
    lon, lat = shape(features[0]["geometry"]).centroid.coords[0]
    assert 14.9 < lon < 15.1 and 41.9 < lat < 42.1


def test_the_batch_command_exits_2_on_bad_input(capsys, data):
    code = main(["batch", "--task", "segment", "--image", str(data / "objects.tif"), "--extent", "0,0,1,1",
                 "--model", "tiles", "--models", str(data / "models.toml")])  # fmt: skip
    error = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 2 and error["error"]["code"] == "extent_outside"
