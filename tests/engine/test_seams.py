"""Objects that cross tile seams (rs_assistant.engine.seams) come out of a batch job as one feature each, of the
right size.

The rasters are burnt with rectangles and a disc placed across tile borders; TileBackend segments
the bright pixels and boxes each bright blob of the window it is given.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from shapely.geometry import Point, box, shape
from shapely.ops import unary_union

from rs_assistant.core.protocol import BatchRequest, FeatureKind, Task
from rs_assistant.engine.batch import plan_job, run_job, run_tiles
from rs_assistant.engine.geo import polygonize_mask
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.seams import from_pending, merge
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import TILES_TOML, write_models_file

GRID = rasters.utm_transform()
PIXEL_AREA = rasters.UTM_RES**2
WIDTH, HEIGHT = 220, 180
#: Objects in pixel blocks (col0, row0, col1, row1), placed across the seams of the grids below, and a disc.
RECTANGLES = [(40, 50, 70, 58), (100, 10, 112, 170), (150, 90, 215, 130), (5, 140, 60, 176)]
DISC = Point(*(GRID * (150, 60))).buffer(14 * rasters.UTM_RES)
GRIDS = [(64, 16), (48, 0), (100, 30), (64, 32)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("seams")
    shapes = [box(*rasters.pixel_extent(GRID, *r)) for r in RECTANGLES] + [DISC]
    rasters.burn(folder / "objects.tif", unary_union(shapes), width=WIDTH, height=HEIGHT)
    write_models_file(folder / "models.toml", extra=TILES_TOML)
    return folder


@pytest.fixture(scope="module")
def engine(data) -> Engine:
    return Engine(Registry.from_file(data / "models.toml"))


def objects(data: Path) -> list[tuple[tuple[float, float, float, float], float, float]]:
    """Each burnt object's (bounds, area of its pixels, area of its outline as one window's analysis draws it)."""
    with rasterio.open(data / "objects.tif") as src:
        bright = src.read(1) >= 128
    outlines = shapely.get_parts(polygonize_mask(bright, GRID))
    found = []
    for geom, _ in rasterio.features.shapes(bright.astype(np.uint8), mask=bright, transform=GRID, connectivity=4):
        polygon = shape(geom)
        (outline,) = [o for o in outlines if o.intersects(polygon)]
        found.append((polygon.bounds, polygon.area, outline.area))
    return sorted(found)


def job(engine: Engine, data: Path, task: Task, tile: int, overlap: int, **changes) -> list[dict]:
    fields = {"task": task, "sources": (str(data / "objects.tif"),), "output_crs": rasters.UTM, "model": "tiles",
              "tile_size": tile, "overlap": overlap, "batch_size": 3}  # fmt: skip
    fields.update(changes)
    return list(run_job(engine, BatchRequest(**fields)))


def final_features(events: list[dict]) -> list[dict]:
    assert events[-1]["event"] == "done", events[-1]
    out = [f for e in events if e["event"] == "tile" for f in e["features"]]
    out += [f for e in events if e["event"] == "merged" for f in e["features"]]
    return [f for f in out if f["properties"]["kind"] != FeatureKind.TILE.value]


@pytest.mark.parametrize(("tile", "overlap"), GRIDS)
def test_masks_across_seams_come_out_as_one_polygon_of_the_right_area(engine, data, tile, overlap):
    features = final_features(job(engine, data, Task.SEGMENT, tile, overlap))
    got = sorted((shape(f["geometry"]).bounds, shape(f["geometry"]).area) for f in features)
    want = objects(data)
    assert len(got) == len(want) == 5
    assert all(shape(f["geometry"]).geom_type == "Polygon" for f in features)
    for (bounds, area), (want_bounds, pixels, outline) in zip(got, want):
        assert bounds == pytest.approx(want_bounds, abs=1e-6)
        assert area == pytest.approx(
            outline, abs=8 * PIXEL_AREA
        )  # as if the whole raster were one window (each piece is simplified on its own)
        assert area == pytest.approx(pixels, rel=0.02)  # outlines are simplified by 1 px (the disc)
    rectangles = [a for b, a in got if (b[2] - b[0]) * (b[3] - b[1]) == pytest.approx(a)]
    assert len(rectangles) == 4  # pixel-exact rectangles keep their exact area across every seam


@pytest.mark.parametrize(("tile", "overlap"), GRIDS)
def test_boxes_across_seams_come_out_once_each(engine, data, tile, overlap):
    features = final_features(job(engine, data, Task.GROUND, tile, overlap, prompt="object"))
    got = sorted(tuple(round(v, 6) for v in shape(f["geometry"]).bounds) for f in features)
    want = sorted(tuple(round(v, 6) for v in bounds) for bounds, _, _ in objects(data))
    assert got == want
    assert {f["properties"]["label"] for f in features} == {"object"}
    assert all(f["properties"]["kind"] == "box" and f["properties"]["score"] == 0.9 for f in features)


def test_merged_pieces_name_every_tile_they_came_from(engine, data):
    events = job(engine, data, Task.SEGMENT, 64, 16)
    (merged,) = [e for e in events if e["event"] == "merged"]
    tall = [f for f in merged["features"] if shape(f["geometry"]).bounds[3] - shape(f["geometry"]).bounds[1] > 1000]
    (column,) = tall  # the 12 x 160 pixel rectangle crosses every row of tiles
    tiles = [int(t) for t in column["properties"]["tiles"].split(",")]
    assert len(tiles) >= 3 and column["properties"]["tile"] == min(tiles)


def test_merging_does_not_depend_on_the_order_tiles_finish(engine, data):
    request = BatchRequest(
        task=Task.SEGMENT,
        sources=(str(data / "objects.tif"),),
        output_crs=rasters.UTM,
        model="tiles",
        tile_size=48,
        overlap=8,
    )
    plan = plan_job(engine, request)
    outputs = run_tiles(engine, request, list(plan.works()))
    pieces = [from_pending(p, plan.grid) for o in outputs for p in o.pending]
    reference = [(p.label, p.tile, p.geometry.wkb) for p in merge(pieces, plan.grid)]
    for seed in range(3):
        random.Random(seed).shuffle(pieces)
        assert [(p.label, p.tile, p.geometry.wkb) for p in merge(pieces, plan.grid)] == reference


def test_features_in_another_crs_are_reprojected_after_merging(engine, data):
    features = final_features(job(engine, data, Task.SEGMENT, 64, 16, output_crs=rasters.WGS84))
    assert len(features) == 5
    for feature in features:
        lon, lat = shape(feature["geometry"]).centroid.coords[0]
        assert 14.9 < lon < 15.1 and 41.9 < lat < 42.1
        assert shapely.is_valid(shape(feature["geometry"]))
