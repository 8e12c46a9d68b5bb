"""Batch jobs through the engine (rs_assistant.engine.batch): the events, each task, resuming, cancelling and failures.

TileBackend (tests/engine/fakes.py) answers from the pixels, so every expected value is computed
from the rasters the tests burn.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import box, shape
from shapely.ops import unary_union

from rs_assistant.core.protocol import BatchRequest, ErrorCode, FeatureKind, Options, ProtocolError, Task
from rs_assistant.engine.batch import CACHE_ENV, LocalExecutor, plan_job, run_job
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import TILES_TOML, TileBackend, write_models_file

GRID = rasters.utm_transform()
FAILING = '\n[models.failing]\nbackend = "tests.engine.fakes:TileBackend"\nfail_after = 5\n'
SLOW = '\n[models.slowtiles]\nbackend = "tests.engine.fakes:TileBackend"\ndelay_s = 0.2\n'
#: Bright objects across the seams of a 64/16 grid over 200 x 160 pixels.
OBJECTS = [(40, 40, 70, 60), (100, 10, 112, 150), (140, 100, 190, 130)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch")
    shapes = unary_union([box(*rasters.pixel_extent(GRID, *o)) for o in OBJECTS])
    rasters.burn(folder / "objects.tif", shapes, width=200, height=160)
    before = np.full((3, 160, 200), 60, np.uint8)
    after = before.copy()
    after[:, 50:90, 30:150] = 200  # a 120 x 40 change across several seams
    rasters.write_raster(folder / "before.tif", before)
    rasters.write_raster(folder / "after.tif", after)
    colours = np.full((3, 160, 200), 90, np.uint8)
    colours[0, 110:150, 150:190] = 250  # a red patch inside one tile of a 64/16 grid (tile 11)
    colours[1:, 110:150, 150:190] = 20
    rasters.write_raster(folder / "colours.tif", colours)
    rasters.not_a_raster(folder / "text.tif")
    write_models_file(folder / "models.toml", extra=TILES_TOML + FAILING + SLOW)
    return folder


@pytest.fixture()
def engine(data) -> Engine:
    return Engine(Registry.from_file(data / "models.toml"))


def request(data: Path, task: Task = Task.SEGMENT, source: str = "objects.tif", **changes) -> BatchRequest:
    fields = {"task": task, "sources": (str(data / source),), "output_crs": rasters.UTM, "model": "tiles",
              "tile_size": 64, "overlap": 16, "batch_size": 3}  # fmt: skip
    fields.update(changes)
    return BatchRequest(**fields)


def events_of(kind: str, events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == kind]


def layer(events: list[dict]) -> list[dict]:
    """What the plugin writes: every tile's final features, then the merged ones."""
    return [f for e in events if e["event"] in ("tile", "merged") for f in e["features"]]


def canonical(features: list[dict]) -> list[str]:
    return sorted(
        json.dumps({"g": shape(f["geometry"]).normalize().wkt, "p": f["properties"]}, sort_keys=True) for f in features
    )


def test_a_job_for_model_auto_names_the_model_its_tasks_table_routes_it_to(data, tmp_path):
    models = tmp_path / "models.toml"
    models.write_text((data / "models.toml").read_text() + '\n[tasks]\nsegment = "tiles"\n')
    events = list(run_job(Engine(Registry.from_file(models)), request(data, model="auto")))
    assert events[0]["event"] == "start" and events[0]["model"] == "tiles"
    assert events[-1]["event"] == "done" and layer(events)


def test_a_segment_job_for_model_auto_chains_the_routed_ground_model_into_the_routed_segmenter(data, tmp_path):
    models = tmp_path / "models.toml"
    models.write_text((data / "models.toml").read_text() + '\n[tasks]\nground = "tiles"\nsegment = "seg"\n')
    events = list(run_job(Engine(Registry.from_file(models)), request(data, model="auto")))
    assert events[0]["model"] == "tiles + seg" and events[-1]["event"] == "done"
    assert layer(events) and all(f["properties"]["kind"] == "mask" for f in layer(events))


def test_a_job_streams_start_tiles_merged_done(engine, data):
    events = list(run_job(engine, request(data)))
    assert [e["event"] for e in events] == ["start"] + ["tile"] * 12 + ["merged", "done"]
    start, done = events[0], events[-1]
    assert start["tiles"] == start["todo"] == 12 and start["crs"] == rasters.UTM
    assert (start["tile_size"], start["overlap"]) == (64, 16) and start["job_id"]
    tiles = events_of("tile", events)
    assert [t["done"] for t in tiles] == list(range(1, 13)) and {t["todo"] for t in tiles} == {12}
    assert sorted(t["tile"] for t in tiles) == list(range(12))
    assert all(f["properties"]["tile"] == t["tile"] for t in tiles for f in t["features"] + t["pending"])
    assert done["tiles_done"] == 12 and done["features"] == len(layer(events)) == 3
    assert set(done["timing_ms"]) == {"read", "infer", "post"}
    assert engine.registry.backend("tiles").batch_sizes == [3, 3, 3, 3]  # one model call per batch of tiles


def test_batch_size_0_leaves_it_to_the_model(engine, data, tmp_path):
    events = list(run_job(engine, request(data, batch_size=0)))  # TileBackend keeps the backends' default, 4
    assert events[0]["batch_size"] == 4 and engine.registry.backend("tiles").batch_sizes == [4, 4, 4]
    models = tmp_path / "models.toml"
    write_models_file(
        models,
        extra=TILES_TOML.replace(
            'backend = "tests.engine.fakes:TileBackend"',
            'backend = "tests.engine.fakes:TileBackend"\ntile_batch_size = 5',
        ),
    )
    own = Engine(Registry.from_file(models))
    events = list(run_job(own, request(data, batch_size=0)))
    assert events[0]["batch_size"] == 5 and own.registry.backend("tiles").batch_sizes == [5, 5, 2]
    events = list(run_job(own, request(data, batch_size=6)))  # the request's own size wins
    assert events[0]["batch_size"] == 6 and own.registry.backend("tiles").batch_sizes[3:] == [6, 6]


def test_a_bad_tile_batch_size_in_the_models_file_is_a_clear_error(data, tmp_path):
    models = tmp_path / "models.toml"
    write_models_file(
        models,
        extra=TILES_TOML.replace(
            'backend = "tests.engine.fakes:TileBackend"',
            'backend = "tests.engine.fakes:TileBackend"\ntile_batch_size = "many"',
        ),
    )
    events = list(run_job(Engine(Registry.from_file(models)), request(data, batch_size=0)))
    assert [e["event"] for e in events] == ["error"] and "tile_batch_size" in events[0]["error"]["message"]
    assert list(run_job(Engine(Registry.from_file(models)), request(data, batch_size=2)))[-1]["event"] == "done"


def test_caption_gives_one_tile_polygon_per_tile_with_its_text(engine, data):
    events = list(run_job(engine, request(data, Task.CAPTION, batch_size=5)))
    tiles = [f for f in layer(events) if f["properties"]["kind"] == FeatureKind.TILE.value]
    assert len(tiles) == 12 and events_of("merged", events)[0]["features"] == []
    assert all(f["properties"]["text"].startswith(("64x64 image, mean colour",)) for f in tiles)
    union = unary_union([shape(f["geometry"]) for f in tiles])
    assert union.area == pytest.approx(200 * 160 * rasters.UTM_RES**2)  # the tiles cover the raster ...
    assert sum(shape(f["geometry"]).area for f in tiles) == pytest.approx(union.area)  # ... without overlapping


def test_change_merges_change_polygons_and_captions_every_tile(engine, data):
    events = list(run_job(engine, BatchRequest(task=Task.CHANGE, sources=(str(data / "before.tif"), str(data / "after.tif")),
                                               output_crs=rasters.UTM, model="tiles", tile_size=64, overlap=16)))  # fmt: skip
    features = layer(events)
    changes = [f for f in features if f["properties"]["kind"] == "change"]
    (change,) = changes
    assert shape(change["geometry"]).area == pytest.approx(120 * 40 * rasters.UTM_RES**2)
    texts = [f["properties"]["text"] for f in features if f["properties"]["kind"] == "tile"]
    assert len(texts) == 12 and sum(int(t.split()[0]) for t in texts) > 0
    assert "0 changed pixel(s)" in texts  # tiles away from the change say so


def test_search_ranks_the_tile_with_the_described_content_first_and_reuses_embeddings(
    engine, data, tmp_path, monkeypatch
):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    backend = engine.registry.backend("tiles")
    search = request(data, Task.RETRIEVE, "colours.tif", prompt="a red roof", options=Options(top_k=3))
    events = list(run_job(engine, search))
    (ranked,) = events_of("ranked", events)
    assert [f["properties"]["rank"] for f in ranked["features"]] == [1, 2, 3]
    best = ranked["features"][0]
    assert best["properties"]["tile"] == 11 and best["properties"]["kind"] == "tile"
    assert shape(best["geometry"]).intersects(box(*rasters.pixel_extent(GRID, 150, 110, 190, 150)))
    scores = [f["properties"]["score"] for f in ranked["features"]]
    assert scores == sorted(scores, reverse=True)
    assert backend.embedded == 12 and events[-1]["features"] == 3
    again = list(run_job(engine, request(data, Task.RETRIEVE, "colours.tif", prompt="something green")))
    assert again[-1]["event"] == "done" and backend.embedded == 12  # the second search read no pixels for the model
    assert events_of("ranked", again)[0]["features"][0]["properties"]["tile"] != 11


def test_new_weights_under_the_same_model_name_are_not_served_old_embeddings(data, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    weights = tmp_path / "checkpoint"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"first")
    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.tiles]\nbackend = "tests.engine.fakes:TileBackend"\npath = "{weights}"\n', encoding="utf-8"
    )
    engine = Engine(Registry.from_file(models))
    backend = engine.registry.backend("tiles")
    search = request(data, Task.RETRIEVE, "colours.tif", prompt="a red roof")
    list(run_job(engine, search))
    list(run_job(engine, search))
    assert backend.embedded == 12  # the same weights: the second search reuses the embeddings
    (weights / "model.safetensors").write_bytes(b"retrained")
    list(run_job(engine, search))
    assert backend.embedded == 24  # new weights behind the same name: every tile embedded again


def test_a_resumed_job_gives_the_same_layer_as_an_uninterrupted_one(engine, data):
    whole = list(run_job(engine, request(data, Task.GROUND, batch_size=2)))
    cancel = threading.Event()
    first: list[dict] = []
    for event in run_job(engine, request(data, Task.GROUND, batch_size=2), cancel):
        first.append(event)
        if event["event"] == "tile" and event["done"] == 5:
            cancel.set()  # between batches: the job stops after this batch
    assert first[-1]["event"] == "error" and first[-1]["error"]["code"] == "cancelled"
    streamed = events_of("tile", first)
    assert 5 <= len(streamed) < 12
    resumed = list(
        run_job(
            engine,
            request(
                data,
                Task.GROUND,
                batch_size=2,
                skip_tiles=tuple(e["tile"] for e in streamed),
                pending=tuple(p for e in streamed for p in e["pending"]),
            ),
        )  # fmt: skip
    )
    assert resumed[0]["todo"] == 12 - len(streamed)
    assert canonical(layer(first[:-1]) + layer(resumed)) == canonical(layer(whole))
    assert len(layer(whole)) == 3


def test_the_model_failing_mid_job_ends_the_stream_with_an_error_and_keeps_what_was_sent(engine, data):
    events = list(run_job(engine, request(data, model="failing", batch_size=2)))
    assert events[-1]["event"] == "error"
    assert events[-1]["error"]["code"] == "internal" and "batch job" in events[-1]["error"]["message"]
    assert "fail_after" not in events[-1]["error"]["message"]  # the model's own message stays in the log
    assert len(events_of("tile", events)) == 4  # two batches of two made it
    assert all(shape(f["geometry"]).is_valid for f in layer(events))


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"source": "text.tif"}, ErrorCode.UNREADABLE_SOURCE),
        ({"source": "missing.tif"}, ErrorCode.SOURCE_NOT_FOUND),
        ({"extent": rasters.pixel_extent(GRID, 500, 500, 600, 600)}, ErrorCode.EXTENT_OUTSIDE),
        ({"model": "nope"}, ErrorCode.UNKNOWN_MODEL),
        ({"model": "ranking", "task": Task.CAPTION}, ErrorCode.UNSUPPORTED_TASK),
        ({"model": "echo", "task": Task.RETRIEVE, "prompt": "x"}, ErrorCode.UNSUPPORTED_TASK),  # no image embeddings
        ({"pending": ({"type": "Feature", "geometry": None, "properties": {"tile": 3}},)}, ErrorCode.INVALID_VALUE),
    ],
)
def test_bad_jobs_are_refused_before_anything_is_streamed(engine, data, changes, code):
    events = list(run_job(engine, request(data, **changes)))
    (error,) = events
    assert error["event"] == "error" and error["error"]["code"] == code.value
    with pytest.raises(ProtocolError) as err:
        plan_job(engine, request(data, **changes))
    assert err.value.code is code


def test_segment_runs_through_the_segmenter_of_a_grounding_model(engine, data):
    events = list(run_job(engine, request(data, model="echo", prompt="building")))
    masks = [f for f in layer(events) if f["properties"]["kind"] == "mask"]
    assert events[-1]["event"] == "done" and masks and {f["properties"]["label"] for f in masks} == {"building"}


def test_a_cancelled_job_stops_its_model_call(engine, data):
    cancel = threading.Event()
    timer = threading.Timer(0.1, cancel.set)
    timer.start()
    events = list(run_job(LocalExecutor(engine), request(data, model="slowtiles"), cancel))
    error = events[-1]["error"]
    assert events[-1]["event"] == "error" and error["code"] == "cancelled" and error["message"]
    assert len(events_of("tile", events)) <= 3


def test_skip_tiles_outside_the_grid_are_ignored(engine, data):
    events = list(run_job(engine, request(data, skip_tiles=(0, 1, 999))))
    assert events[0]["todo"] == 10 and events[-1]["tiles_done"] == 10


MEMORY_SCRIPT = """
import json, sys, tracemalloc
from rs_assistant.core.protocol import BatchRequest
from rs_assistant.engine.batch import run_job
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
engine = Engine(Registry.from_file(sys.argv[2]))
request = BatchRequest(task="caption", sources=(sys.argv[1],), output_crs="EPSG:32633", model="tiles",
                       tile_size=2048, overlap=0, batch_size=2)
tracemalloc.start()
tiles = sum(1 for e in run_job(engine, request) if e["event"] == "tile")
print(json.dumps({"tiles": tiles, "peak": tracemalloc.get_traced_memory()[1]}))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_raster(data, tmp_path):
    """A 20000 x 20000 raster (1.2 GB of pixels, a few kB on disk) needs no more memory than a 5000 x 5000 one."""
    peaks = {}
    for side in (5000, 20000):
        path = rasters.empty_raster(tmp_path / f"{side}.tif", side, side)
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(path), str(data / "models.toml")],
            capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[2], check=True,
        )  # fmt: skip
        peaks[side] = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks[5000]["tiles"] == 9 and peaks[20000]["tiles"] == 100
    assert peaks[20000]["peak"] <= 1.5 * peaks[5000]["peak"]
    assert peaks[20000]["peak"] < 200e6  # two 2048 x 2048 windows at a time, not the 1.2 GB raster


@pytest.mark.parametrize(
    ("task", "source", "prompt"),
    [(Task.SEGMENT, "objects.tif", ""), (Task.CHANGE, "before.tif", ""), (Task.RETRIEVE, "colours.tif", "a red roof")],
)
def test_reading_ahead_gives_what_reading_batch_by_batch_gives(
    engine, data, tmp_path, monkeypatch, task, source, prompt
):
    """LocalExecutor(read_ahead=N) reads the next batches on its reader thread while the model works: same events."""
    sources = (str(data / source),) + ((str(data / "after.tif"),) if task is Task.CHANGE else ())
    job = request(data, task, source, sources=sources, prompt=prompt, batch_size=2)
    runs = {}
    for read_ahead in (0, 1, 3):
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / f"cache{read_ahead}"))  # a search embeds every tile each time
        executor = LocalExecutor(engine, read_ahead=read_ahead)
        events = list(run_job(executor, job))
        executor.close()  # the caller's executor: run_job leaves it open
        assert events[-1]["event"] == "done" and executor._reader is None and not executor.datasets._open
        runs[read_ahead] = events
    for events in runs.values():
        assert [(e["event"], e.get("tile")) for e in events] == [(e["event"], e.get("tile")) for e in runs[0]]
        assert canonical(layer(events)) == canonical(layer(runs[0]))
        assert canonical([f for e in events_of("ranked", events) for f in e["features"]]) == canonical(
            [f for e in events_of("ranked", runs[0]) for f in e["features"]]
        )


def test_a_read_failing_ahead_of_the_model_ends_the_job_after_the_batches_before_it(engine, data, monkeypatch):
    from rs_assistant.engine import batch

    read = batch._read

    def failing(request, work, *rest):
        if work.id >= 4:
            raise ProtocolError(ErrorCode.UNREADABLE_SOURCE, "the disk went away")
        return read(request, work, *rest)

    monkeypatch.setattr(batch, "_read", failing)
    events = list(run_job(LocalExecutor(engine, read_ahead=2), request(data, batch_size=2)))
    assert events[-1]["event"] == "error" and events[-1]["error"]["code"] == "unreadable_source"
    assert [e["tile"] for e in events_of("tile", events)] == [0, 1, 2, 3]


class OutOfMemoryTiles(TileBackend):
    """TileBackend on a GPU that fits ``fits`` tiles per forward pass: a larger batch runs out of memory."""

    def run_batch(self, calls):
        return self.in_batches(calls, self._fitting)

    def _fitting(self, calls):
        if len(calls) > int(self.config["fits"]):
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(calls)} tiles")
        return super().run_batch(calls)


def test_a_batch_too_large_for_the_gpu_is_reduced_and_the_job_says_so(data, tmp_path):
    models = tmp_path / "models.toml"
    write_models_file(models, extra=f'\n[models.small_gpu]\nbackend = "{__name__}:OutOfMemoryTiles"\nfits = 3\n')
    engine = Engine(Registry.from_file(models))
    events = list(run_job(engine, request(data, model="small_gpu", batch_size=6)))
    tiles = [e for e in events if e["event"] == "tile"]
    assert events[-1]["event"] == "done" and events[-1]["tiles_done"] == 12  # the job finished, every tile answered
    told = [e for e in tiles if "notice" in e]
    assert len(told) == 1 and told[0]["batch_size"] == 3  # said once, when it happened (6 halved to 3)
    assert "6 tiles per model call did not fit in the GPU's memory" in told[0]["notice"]
    assert set(engine.registry.backend("small_gpu").batch_sizes) == {3}  # 12 tiles: batches of 6, each run as 3 + 3
