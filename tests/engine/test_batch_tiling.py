"""The tile grid of batch jobs (rs_assistant.engine.tiling): cores partition the job, windows stay inside the raster."""

from __future__ import annotations

import itertools

import pytest

from rs_assistant.core.protocol import BatchRequest, ErrorCode, ProtocolError, Task
from rs_assistant.engine.tiling import make_grid, tile_starts
from tests.engine import rasters

GRID = rasters.utm_transform()


def request(path, **changes) -> BatchRequest:
    fields = {"task": Task.CAPTION, "sources": (str(path),), "output_crs": rasters.UTM, "tile_size": 64, "overlap": 16}
    fields.update(changes)
    return BatchRequest(**fields)


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap"),
    [(200, 160, 64, 16), (64, 64, 64, 0), (50, 300, 64, 32), (257, 129, 32, 7), (1000, 40, 128, 64)],
)
def test_cores_partition_the_raster_and_windows_stay_inside(tmp_path, width, height, tile, overlap):
    path = rasters.empty_raster(tmp_path / "r.tif", width, height)
    grid = make_grid(request(path, tile_size=tile, overlap=overlap))
    tiles = list(grid.tiles())
    assert [t.id for t in tiles] == list(range(grid.count)) == [t.row * grid.cols + t.col for t in tiles]
    covered = sum((c1 - c0) * (r1 - r0) for c0, r0, c1, r1 in (t.core for t in tiles))
    assert covered == width * height  # no gap ...
    for a, b in itertools.combinations(tiles, 2):  # ... and no overlap
        ax0, ay0, ax1, ay1 = a.core
        bx0, by0, bx1, by1 = b.core
        assert min(ax1, bx1) <= max(ax0, bx0) or min(ay1, by1) <= max(ay0, by0)
    for t in tiles:
        c0, r0, c1, r1 = t.window
        assert 0 <= c0 < c1 <= width and 0 <= r0 < r1 <= height
        assert c1 - c0 == min(tile, width) and r1 - r0 == min(tile, height)  # edge tiles are shifted, not cut
        k0, l0, k1, l1 = t.core
        assert c0 <= k0 < k1 <= c1 and r0 <= l0 < l1 <= r1


def test_tiles_step_by_tile_size_minus_overlap():
    assert tile_starts(200, 64, 16) == (0, 48, 96, 136)
    assert tile_starts(64, 64, 16) == (0,)
    assert tile_starts(30, 64, 16) == (0,)


def test_an_extent_in_another_crs_limits_the_grid_to_the_pixels_under_it(tmp_path):
    path = rasters.empty_raster(tmp_path / "r.tif", 400, 300)
    wanted = rasters.pixel_extent(GRID, 100.5, 50, 260, 170.2)
    import pyproj

    mercator = pyproj.Transformer.from_crs(rasters.UTM, rasters.MERCATOR, always_xy=True).transform_bounds(*wanted)
    grid = make_grid(request(path, extent=mercator, extent_crs=rasters.MERCATOR))
    x0, y0, x1, y1 = grid.extent
    assert x0 <= wanted[0] and y0 <= wanted[1] and x1 >= wanted[2] and y1 >= wanted[3]  # covers the extent
    assert (x1 - x0) / rasters.UTM_RES < 162 and (y1 - y0) / rasters.UTM_RES < 124  # ... and not much more
    assert (x0 - GRID.c) % rasters.UTM_RES == 0  # on the raster's pixels: windows are read without resampling


def test_an_extent_partly_outside_is_clipped_to_the_raster(tmp_path):
    path = rasters.empty_raster(tmp_path / "r.tif", 100, 100)
    grid = make_grid(request(path, extent=rasters.pixel_extent(GRID, 80, -50, 300, 20)))
    assert (grid.width, grid.height) == (20, 20)


def test_bad_sources_and_extents_are_refused_clearly(tmp_path):
    path = rasters.empty_raster(tmp_path / "r.tif", 100, 100)
    with pytest.raises(ProtocolError) as err:
        make_grid(request(path, extent=rasters.pixel_extent(GRID, 200, 200, 300, 300)))
    assert (
        err.value.code is ErrorCode.EXTENT_OUTSIDE
        and "does not overlap" in err.value.message
        and "r.tif" in err.value.message
    )
    with pytest.raises(ProtocolError) as err:
        make_grid(request(rasters.not_a_raster(tmp_path / "text.tif")))
    assert err.value.code is ErrorCode.UNREADABLE_SOURCE
    with pytest.raises(ProtocolError) as err:
        make_grid(request(tmp_path / "missing.tif"))
    assert err.value.code is ErrorCode.SOURCE_NOT_FOUND
    with pytest.raises(ProtocolError) as err:
        request(path, tile_size=BatchRequest.MAX_TILE_SIZE + 1)
    assert err.value.code is ErrorCode.REGION_TOO_LARGE and str(BatchRequest.MAX_TILE_SIZE) in err.value.message
