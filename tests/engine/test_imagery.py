"""Reading the requested window of a raster or PNG: pixels, grids, bands, stretch, pairs and bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
import rasterio.shutil
import shapely
from PIL import Image
from rasterio.enums import ColorInterp
from shapely.geometry import box

from rs_assistant.core.protocol import ErrorCode, ImageRef, ProtocolError
from rs_assistant.engine import imagery
from rs_assistant.engine.imagery import decode_image_bytes, read_image, read_pair
from tests.engine import rasters

UTM_T = rasters.utm_transform()


def ref_for(path: Path, col0: float, row0: float, col1: float, row1: float, **kwargs) -> ImageRef:
    """An ImageRef for the pixel block [col0, col1) x [row0, row1) of the default UTM grid."""
    return ImageRef(
        extent=rasters.pixel_extent(UTM_T, col0, row0, col1, row1), crs=rasters.UTM, source=str(path), **kwargs
    )


def bright_rows(channel: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero((channel == 255).all(axis=1))
    return int(rows[0]), int(rows[-1]) + 1


def centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


# --- windows and grids -------------------------------------------------------------------------


def test_windowed_read_returns_exactly_the_window_pixels(tmp_path):
    path = rasters.rgb_uint8(tmp_path / "rgb.tif")
    window = read_image(ref_for(path, 10, 5, 30, 25))
    assert window.array.shape == (20, 20, 3) and window.array.dtype == np.uint8
    np.testing.assert_array_equal(window.array, rasters.pattern(48, 64)[:, 5:25, 10:30].transpose(1, 2, 0))
    assert window.transform.almost_equals(UTM_T * UTM_T.translation(10, 5))
    assert window.crs == rasters.UTM and (window.width, window.height) == (20, 20)
    assert window.valid.all()


@pytest.mark.parametrize("driver", ["COG", "JP2OpenJPEG", "VRT"])
def test_other_gdal_formats_read_the_same_pixels(tmp_path, driver):
    tif = rasters.rgb_uint8(tmp_path / "rgb.tif")
    target = tmp_path / f"rgb.{driver.lower()}"
    options = {"REVERSIBLE": "YES", "QUALITY": "100"} if driver == "JP2OpenJPEG" else {}
    rasterio.shutil.copy(tif, target, driver=driver, **options)
    window = read_image(ref_for(target, 10, 5, 30, 25))
    np.testing.assert_array_equal(window.array, rasters.pattern(48, 64)[:, 5:25, 10:30].transpose(1, 2, 0))


def test_one_band_is_replicated_to_rgb(tmp_path):
    path = rasters.gray_uint8(tmp_path / "gray.tif")
    window = read_image(ref_for(path, 0, 0, 64, 48))
    for channel in range(3):
        np.testing.assert_array_equal(window.array[..., channel], rasters.pattern(48, 64, 1)[0])


def test_a_paletted_band_goes_through_its_colour_table(tmp_path):
    data = np.zeros((1, 8, 8), np.uint8)
    data[0, :, 4:] = 1
    path = rasters.write_raster(tmp_path / "classes.tif", data, photometric="PALETTE")
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 0, 255, 255)})
    window = read_image(ref_for(path, 0, 0, 8, 8))
    assert (window.array[:, :4] == (255, 0, 0)).all() and (window.array[:, 4:] == (0, 0, 255)).all()


def test_decimated_window_keeps_aspect_and_covers_the_extent(tmp_path):
    path = rasters.rgb_uint8(tmp_path / "rgb.tif")
    window = read_image(ref_for(path, 0, 0, 64, 48), max_side=32)
    assert (window.width, window.height) == (32, 24)
    assert window.transform.almost_equals(rasters.utm_transform(res=20.0))


def test_decimated_read_is_served_from_the_overview(tmp_path):
    path = rasters.with_overview_marker(tmp_path / "ovr.tif", size=256, factor=4, base=10, overview=200)
    assert np.unique(read_image(ref_for(path, 0, 0, 256, 256), max_side=64).array).tolist() == [200]
    assert np.unique(read_image(ref_for(path, 0, 0, 256, 256), max_side=256).array).tolist() == [10]
    # A reprojected read of the same region goes through the warped VRT's overviews too.
    mercator = pyproj.Transformer.from_crs(rasters.UTM, rasters.MERCATOR, always_xy=True)
    extent = mercator.transform_bounds(*rasters.pixel_extent(UTM_T, 64, 64, 192, 192))
    warped = read_image(ImageRef(extent=extent, crs=rasters.MERCATOR, source=str(path)), max_side=32)
    assert np.unique(warped.array[warped.valid]).tolist() == [200]


def test_decimated_read_matches_the_internal_overview(tmp_path):
    path = rasters.write_raster(tmp_path / "ovr.tif", rasters.pattern(64, 64), overviews=(2, 4))
    with rasterio.open(path, overview_level=1) as level:  # the factor-4 overview, 16 x 16
        overview = level.read().transpose(1, 2, 0)
    window = read_image(ref_for(path, 0, 0, 64, 64), max_side=16)
    np.testing.assert_array_equal(window.array, overview)


def test_window_partly_outside_is_black_and_invalid_there(tmp_path):
    path = rasters.rgb_uint8(tmp_path / "rgb.tif")
    window = read_image(ref_for(path, -10, 40, 30, 60))
    assert window.array.shape == (20, 40, 3)
    assert not window.valid[:, :10].any() and not window.valid[8:].any()
    assert (window.array[~window.valid] == 0).all()
    np.testing.assert_array_equal(window.array[:8, 10:], rasters.pattern(48, 64)[:, 40:48, 0:30].transpose(1, 2, 0))


def test_read_in_another_crs_lands_the_feature_in_the_right_place(tmp_path):
    square = box(500_200, 4_649_400, 500_360, 4_649_560)  # 16 x 16 pixels of the UTM grid
    path = rasters.burn(tmp_path / "marker.tif", square)
    to_mercator = pyproj.Transformer.from_crs(rasters.UTM, rasters.MERCATOR, always_xy=True)
    x0, y0, x1, y1 = to_mercator.transform_bounds(*rasters.pixel_extent(UTM_T, 0, 0, 64, 64))
    extent = (x0 - 100, y0 - 100, x1 + 100, y1 + 100)  # a margin of about 7 pixels outside the raster
    window = read_image(ImageRef(extent=extent, crs=rasters.MERCATOR, source=str(path)))
    assert window.crs == rasters.MERCATOR
    inside = window.array[..., 0] > (rasters.INSIDE + rasters.OUTSIDE) / 2
    centre_x, centre_y = window.transform * tuple(centroid(inside))
    expected_x, expected_y = to_mercator.transform(*square.centroid.coords[0])
    pixel = window.transform.a
    assert abs(centre_x - expected_x) < pixel and abs(centre_y - expected_y) < pixel
    expected_area = shapely.transform(
        shapely.segmentize(square, 10), lambda xy: np.column_stack(to_mercator.transform(*xy.T))
    ).area
    assert inside.sum() * pixel * abs(window.transform.e) == pytest.approx(expected_area, rel=0.15)
    # Outside the warped source footprint the window is invalid and black, inside it is valid.
    border = np.ones(window.valid.shape, bool)
    border[5:-5, 5:-5] = False
    assert not window.valid[border].any() and (window.array[border] == 0).all()
    assert window.valid[9:-9, 9:-9].all()


# --- pairs -------------------------------------------------------------------------------------


def test_read_pair_puts_the_after_image_on_the_before_grid(tmp_path):
    square = box(500_200, 4_649_400, 500_360, 4_649_560)
    before = rasters.burn(tmp_path / "before.tif", square)
    to_mercator = pyproj.Transformer.from_crs(rasters.UTM, rasters.MERCATOR, always_xy=True)
    square_mercator = shapely.transform(
        shapely.segmentize(square, 5), lambda xy: np.column_stack(to_mercator.transform(*xy.T))
    )
    after = rasters.burn(
        tmp_path / "after.tif",
        square_mercator,
        crs=rasters.MERCATOR,
        transform=rasters.mercator_transform(res=9.0),
        width=100,
        height=100,
    )
    after_ref = ImageRef(extent=(0, 0, 1, 1), crs=rasters.MERCATOR, source=str(after))
    for max_side in (1024, 32):
        first, second = read_pair(ref_for(before, 0, 0, 64, 64), after_ref, max_side=max_side)
        assert second.transform == first.transform and second.crs == first.crs == rasters.UTM
        assert second.array.shape == first.array.shape == (min(64, max_side), min(64, max_side), 3)
        threshold = (rasters.INSIDE + rasters.OUTSIDE) / 2
        a, b = first.array[..., 0] > threshold, second.array[..., 0] > threshold
        assert (a & b).sum() / (a | b).sum() > 0.9
        assert np.abs(centroid(a) - centroid(b)).max() < 0.25


def test_read_pair_of_pngs_resamples_the_after_image(tmp_path):
    extent, crs = (0.0, 0.0, 400.0, 300.0), rasters.MERCATOR
    small = np.zeros((30, 40, 3), np.uint8)
    small[10:20, 10:20] = 200
    large = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    first, second = read_pair(
        ImageRef.from_png(rasters.png_bytes(small), extent, crs),
        ImageRef.from_png(rasters.png_bytes(large), extent, crs),
    )
    assert second.array.shape == first.array.shape == (30, 40, 3)
    np.testing.assert_allclose(second.array[..., 0], first.array[..., 0], atol=100)
    assert (second.array[12:18, 12:18] == 200).all() and (second.array[:8] == 0).all()


# --- PNG sources -------------------------------------------------------------------------------


def test_png_source_is_mapped_onto_its_extent(tmp_path):
    picture = rasters.pattern(30, 40).transpose(1, 2, 0)
    extent = (1000.0, 2000.0, 1400.0, 2600.0)
    window = read_image(ImageRef.from_png(rasters.png_bytes(picture), extent, rasters.MERCATOR))
    np.testing.assert_array_equal(window.array, picture)
    assert window.transform * (0, 0) == pytest.approx((1000.0, 2600.0))
    assert window.transform * (40, 30) == pytest.approx((1400.0, 2000.0))
    assert window.crs == rasters.MERCATOR and window.valid.all()


def test_png_alpha_becomes_the_valid_mask_and_max_side_applies(tmp_path):
    rgba = np.full((64, 32, 4), 120, np.uint8)
    rgba[:, :16, 3] = 0
    rgba[:, 16:, 3] = 255
    window = read_image(ImageRef.from_png(rasters.png_bytes(rgba), (0, 0, 32, 64), rasters.MERCATOR), max_side=16)
    assert (window.width, window.height) == (8, 16)
    assert not window.valid[:, :3].any() and window.valid[:, 5:].all()


def test_decode_image_bytes_gives_rgb_uint8():
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    decoded = decode_image_bytes(rasters.png_bytes(rgba))
    assert decoded.shape == (5, 7, 3) and decoded.dtype == np.uint8 and (decoded[..., 0] == 255).all()
    jpeg = decode_image_bytes(rasters.png_bytes(np.full((16, 16, 3), 90, np.uint8), fmt="JPEG"))
    assert jpeg.shape == (16, 16, 3) and abs(int(jpeg.mean()) - 90) <= 2


# --- bands, stretch and nodata -----------------------------------------------------------------


def test_uint16_is_stretched_between_percentiles_without_nodata(tmp_path):
    path = rasters.ramp_uint16(tmp_path / "ramp.tif", width=100, nodata=65535)
    window = read_image(ref_for(path, 0, 0, 100, 10))
    row = window.array[0, :, 0].astype(int)
    assert row[0] == 0 and row[89] == 255 and (np.diff(row[:90]) >= 0).all()
    # 900 valid values, ten of each column value: the 2nd and 98th percentiles fall on columns 1 and 88.
    lo, hi = 1010, 1880
    assert row[1] == 0 and row[88] == 255  # the 2 % at either end are clipped
    assert row[10] == pytest.approx((1100 - lo) / (hi - lo) * 255, abs=1)
    assert not window.valid[:, 90:].any() and window.valid[:, :90].all()
    assert (window.array[:, 90:] == 0).all()


def test_float_nodata_and_nan_are_masked_and_excluded(tmp_path):
    path = rasters.float_with_nodata(tmp_path / "float.tif")
    window = read_image(ref_for(path, 0, 0, 40, 40))
    assert not window.valid[:10].any() and not window.valid[20, 20]
    assert window.valid[10:20].all()
    row = window.array[30, :, 0]
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row.astype(int)) >= 0).all()
    assert (window.array[:10] == 0).all()


def test_red_green_blue_are_picked_from_band_descriptions(tmp_path):
    path = rasters.sentinel2_uint16(tmp_path / "s2.tif")  # B2, B3, B4, B8, B11: bright stripe i in band i
    window = read_image(ref_for(path, 0, 0, 32, 40))
    assert [bright_rows(window.array[..., c]) for c in range(3)] == [(16, 24), (8, 16), (0, 8)]


def test_explicit_bands_win(tmp_path):
    path = rasters.sentinel2_uint16(tmp_path / "s2.tif")
    window = read_image(ref_for(path, 0, 0, 32, 40, bands=(4, 3, 2)))
    assert [bright_rows(window.array[..., c]) for c in range(3)] == [(24, 32), (16, 24), (8, 16)]
    single = read_image(ref_for(path, 0, 0, 32, 40, bands=(5,)))
    assert [bright_rows(single.array[..., c]) for c in range(3)] == [(32, 40)] * 3


def test_undescribed_multiband_falls_back_to_the_first_three_bands(tmp_path):
    path = rasters.sentinel2_uint16(tmp_path / "s2.tif", described=False)
    window = read_image(ref_for(path, 0, 0, 32, 40))
    assert [bright_rows(window.array[..., c]) for c in range(3)] == [(0, 8), (8, 16), (16, 24)]


def test_colour_interpretation_picks_rgb_and_alpha_masks(tmp_path):
    data = np.zeros((4, 8, 8), np.uint8)
    data[0], data[1], data[2] = 10, 20, 30
    data[3, :, 4:] = 255
    path = rasters.write_raster(tmp_path / "rgba.tif", data, photometric="RGB", alpha="YES")
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    window = read_image(ref_for(path, 0, 0, 8, 8))
    assert (window.array[:, 4:] == (10, 20, 30)).all()
    assert not window.valid[:, :4].any() and (window.array[:, :4] == 0).all()


@pytest.mark.parametrize(
    "name, value",
    [
        ("B04 (665 nm)", "red"),
        ("Red", "red"),
        ("green", "green"),
        ("B2", "blue"),
        ("Red Edge 1", None),
        ("B8A", None),
        (None, None),
    ],
)
def test_band_description_colours(name, value):
    assert imagery._colour_of(name) == value


# --- bad input ---------------------------------------------------------------------------------


def expect_error(code: ErrorCode, ref: ImageRef, *words: str, max_side: int = 1024) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        read_image(ref, max_side=max_side)
    assert info.value.code is code, info.value.message
    for word in words:
        assert word in info.value.message
    assert "Traceback" not in info.value.message
    return info.value


def test_missing_source(tmp_path):
    expect_error(ErrorCode.SOURCE_NOT_FOUND, ref_for(tmp_path / "nope.tif", 0, 0, 8, 8), "nope.tif", "does not exist")


def test_not_a_raster_corrupt_or_folder(tmp_path):
    text = rasters.not_a_raster(tmp_path / "notes.tif")
    expect_error(ErrorCode.UNREADABLE_SOURCE, ref_for(text, 0, 0, 8, 8), "notes.tif", "not recognized")
    truncated = rasters.truncated_tiff(tmp_path / "cut.tif")
    expect_error(ErrorCode.UNREADABLE_SOURCE, ref_for(truncated, 0, 0, 256, 256), "cut.tif")
    expect_error(ErrorCode.UNREADABLE_SOURCE, ref_for(tmp_path, 0, 0, 8, 8), "folder")
    garbage = ImageRef(extent=(0, 0, 1, 1), crs=rasters.MERCATOR, png_base64="aGVsbG8=")
    expect_error(ErrorCode.UNREADABLE_SOURCE, garbage, "decode")
    with pytest.raises(ProtocolError) as info:
        decode_image_bytes(b"hello")
    assert info.value.code is ErrorCode.UNREADABLE_SOURCE


def test_extent_outside_names_both_extents(tmp_path):
    path = rasters.rgb_uint8(tmp_path / "rgb.tif")
    error = expect_error(ErrorCode.EXTENT_OUTSIDE, ref_for(path, 100, 0, 120, 20), "rgb.tif")
    assert "[501000, 4649800, 501200, 4650000]" in error.message  # the request
    assert "[500000, 4649520, 500640, 4650000]" in error.message  # the raster


def test_unknown_crs(tmp_path):
    path = rasters.rgb_uint8(tmp_path / "rgb.tif")
    expect_error(ErrorCode.BAD_CRS, ImageRef(extent=(0, 0, 1, 1), crs="EPSG:999999", source=str(path)), "EPSG:999999")


def test_raster_without_crs(tmp_path):
    path = rasters.write_raster(tmp_path / "plain.tif", rasters.pattern(8, 8), crs=None)
    expect_error(ErrorCode.UNREADABLE_SOURCE, ref_for(path, 0, 0, 8, 8), "plain.tif", "no coordinate reference system")


def test_extent_the_raster_crs_cannot_represent(tmp_path):
    orthographic = "+proj=ortho +lat_0=0 +lon_0=0 +datum=WGS84"  # one hemisphere only
    path = rasters.rgb_uint8(tmp_path / "ortho.tif", crs=orthographic, transform=rasters.utm_transform(origin=(0, 0)))
    far_side = ImageRef(extent=(170, 10, 171, 11), crs=rasters.WGS84, source=str(path))
    expect_error(ErrorCode.BAD_EXTENT, far_side, "[170, 10, 171, 11]", "ortho.tif")


def test_region_too_large_is_refused_with_the_limit_named(tmp_path):
    path = rasters.empty_raster(tmp_path / "big.tif", 16384, 8192)  # 134 megapixels, no overviews
    expect_error(ErrorCode.REGION_TOO_LARGE, ref_for(path, 0, 0, 16384, 8192), "64 megapixels", "overviews")
    mercator = pyproj.Transformer.from_crs(rasters.UTM, rasters.MERCATOR, always_xy=True)
    extent = mercator.transform_bounds(*rasters.pixel_extent(UTM_T, 0, 0, 16384, 8192))
    expect_error(
        ErrorCode.REGION_TOO_LARGE, ImageRef(extent=extent, crs=rasters.MERCATOR, source=str(path)), "64 megapixels"
    )
    assert read_image(ref_for(path, 4000, 4000, 4512, 4512)).array.shape == (512, 512, 3)


def test_explicit_band_beyond_the_raster(tmp_path):
    path = rasters.rgb_uint8(tmp_path / "rgb.tif")
    expect_error(ErrorCode.INVALID_VALUE, ref_for(path, 0, 0, 8, 8, bands=(1, 2, 7)), "[7]", "3 band")


def test_pair_with_after_outside_the_before_window(tmp_path):
    before = rasters.rgb_uint8(tmp_path / "before.tif")
    after = rasters.rgb_uint8(tmp_path / "after.tif", transform=rasters.utm_transform(origin=(600_000, 4_650_000)))
    with pytest.raises(ProtocolError) as info:
        read_pair(ref_for(before, 0, 0, 64, 48), ref_for(after, 0, 0, 64, 48))
    assert info.value.code is ErrorCode.EXTENT_OUTSIDE and "after.tif" in info.value.message


def test_png_too_large_is_refused():
    buffer = io.BytesIO()
    Image.new("1", (8192, 8192)).save(buffer, format="PNG")  # 67 megapixels in 8 kB
    ref = ImageRef.from_png(buffer.getvalue(), (0, 0, 1, 1), rasters.MERCATOR)
    expect_error(ErrorCode.REGION_TOO_LARGE, ref, "8192x8192", "64 megapixels")
