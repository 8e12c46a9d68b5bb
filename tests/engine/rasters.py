"""Small rasters for the engine's tests, written by the tests themselves into a folder they give (tmp_path).

Every writer returns the path it wrote; pixel values follow the patterns documented on each
function, so a test can compute what a read must return. Reuse them from any engine test:

    from tests.engine import rasters
    path = rasters.rgb_uint8(tmp_path / "rgb.tif")          # 64 x 48, UTM 33N, 10 m pixels
    ref = ImageRef(extent=rasters.pixel_extent(rasters.utm_transform(), 10, 5, 30, 25),
                   crs=rasters.UTM, source=str(path))

Grids: unless told otherwise a raster lies in UTM zone 33N (EPSG:32633) with its upper-left corner
at UTM_ORIGIN (about 42.0 N, 15.0 E) and UTM_RES (10 m) pixels; mercator_transform() gives a grid
in EPSG:3857 over the same ground.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyproj
import rasterio
import rasterio.features
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from shapely.geometry.base import BaseGeometry

UTM = "EPSG:32633"
MERCATOR = "EPSG:3857"
WGS84 = "EPSG:4326"
#: Upper-left corner (easting, northing) of the default UTM grid.
UTM_ORIGIN = (500_000.0, 4_650_000.0)
UTM_RES = 10.0
#: Band descriptions of sentinel2_uint16(): blue, green, red, near and short-wave infrared.
SENTINEL2_DESCRIPTIONS = ("B2", "B3", "B4", "B8", "B11")
#: Background and foreground values of burn().
OUTSIDE, INSIDE = 30, 220


def utm_transform(res: float = UTM_RES, origin: tuple[float, float] = UTM_ORIGIN) -> Affine:
    """North-up UTM grid: pixel (col, row) -> (origin_x + col * res, origin_y - row * res)."""
    return Affine(res, 0, origin[0], 0, -res, origin[1])


def mercator_transform(res: float = 12.0) -> Affine:
    """North-up EPSG:3857 grid whose upper-left corner is UTM_ORIGIN transformed to EPSG:3857."""
    x, y = pyproj.Transformer.from_crs(UTM, MERCATOR, always_xy=True).transform(*UTM_ORIGIN)
    return Affine(res, 0, x, 0, -res, y)


def pixel_extent(
    transform: Affine, col0: float, row0: float, col1: float, row1: float
) -> tuple[float, float, float, float]:
    """[xmin, ymin, xmax, ymax] of the pixel block [col0, col1) x [row0, row1) of a north-up grid."""
    x0, y0 = transform * (col0, row0)
    x1, y1 = transform * (col1, row1)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def pattern(height: int, width: int, bands: int = 3) -> np.ndarray:
    """uint8 (bands, height, width): value[b, r, c] = (7 r + 3 c + 85 b) mod 256; any one-pixel shift changes it."""
    b, r, c = np.indices((bands, height, width))
    return ((7 * r + 3 * c + 85 * b) % 256).astype(np.uint8)


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str = UTM,
    transform: Affine | None = None,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    colorinterp: Sequence[ColorInterp] | None = None,
    overviews: Sequence[int] = (),
    driver: str = "GTiff",
    **creation: object,
) -> Path:
    """Write ``data`` (bands, height, width) as a raster; ``overviews`` builds internal overviews (average).

    ``creation`` passes GDAL creation options (tiled=True, blockxsize=256, compress="deflate", ...).
    """
    count, height, width = data.shape
    profile = {
        "driver": driver,
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype,
        "crs": crs,
        "transform": transform or utm_transform(),
        "nodata": nodata,
        **creation,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
        if colorinterp:
            dst.colorinterp = tuple(colorinterp)
        if overviews:
            dst.build_overviews(list(overviews), Resampling.average)
    return Path(path)


def rgb_uint8(path: Path, width: int = 64, height: int = 48, **kwargs: object) -> Path:
    """3-band uint8 pattern(height, width) on the UTM grid (or ``crs``/``transform`` given)."""
    return write_raster(path, pattern(height, width, 3), **kwargs)


def gray_uint8(path: Path, width: int = 64, height: int = 48, **kwargs: object) -> Path:
    """1-band uint8 pattern(height, width, 1): band 0 of the pattern."""
    return write_raster(path, pattern(height, width, 1), **kwargs)


def sentinel2_uint16(path: Path, width: int = 32, height: int = 40, described: bool = True) -> Path:
    """5-band uint16, band descriptions SENTINEL2_DESCRIPTIONS (unless ``described`` is False).

    Band i (0-based) is 3000 in the stripe of rows [8 i, 8 i + 8) and 100 elsewhere, so the
    bright stripe of an output channel tells which band it came from.
    """
    data = np.full((5, height, width), 100, np.uint16)
    for i in range(5):
        data[i, 8 * i : 8 * i + 8] = 3000
    return write_raster(path, data, descriptions=SENTINEL2_DESCRIPTIONS if described else None)


def ramp_uint16(path: Path, width: int = 100, height: int = 10, nodata: int | None = 65535) -> Path:
    """1-band uint16: value 1000 + 10 c in column c; the last 10 columns are ``nodata`` (when given)."""
    data = np.broadcast_to(1000 + 10 * np.arange(width, dtype=np.uint16), (1, height, width)).copy()
    if nodata is not None:
        data[:, :, -10:] = nodata
    return write_raster(path, data, nodata=nodata)


def float_with_nodata(path: Path, width: int = 40, height: int = 40, nodata: float = -9999.0) -> Path:
    """1-band float32: value c / (width - 1) in column c; rows [0, 10) are ``nodata`` and pixel (20, 20) is NaN."""
    data = np.broadcast_to(np.linspace(0, 1, width, dtype=np.float32), (1, height, width)).copy()
    data[:, :10] = nodata
    data[:, 20, 20] = np.nan
    return write_raster(path, data, nodata=nodata)


def with_overview_marker(path: Path, size: int = 256, factor: int = 4, base: int = 10, overview: int = 200) -> Path:
    """1-band uint8, ``size`` square, all ``base``; its external overview (path.ovr) at ``factor`` is all ``overview``.

    A decimated read that returns ``overview`` values was served from the overview, not the full resolution.
    """
    write_raster(path, np.full((1, size, size), base, np.uint8))
    small = size // factor
    write_raster(
        Path(f"{path}.ovr"), np.full((1, small, small), overview, np.uint8), transform=utm_transform(UTM_RES * factor)
    )
    return Path(path)


def burn(
    path: Path,
    shape: BaseGeometry,
    *,
    crs: str = UTM,
    transform: Affine | None = None,
    width: int = 64,
    height: int = 64,
    bands: int = 3,
) -> Path:
    """uint8 raster, INSIDE within ``shape`` (given in ``crs``, pixel centres inside) and OUTSIDE elsewhere."""
    transform = transform or utm_transform()
    burnt = rasterio.features.rasterize(
        [(shape, INSIDE)], out_shape=(height, width), transform=transform, fill=OUTSIDE, dtype="uint8"
    )
    return write_raster(path, np.repeat(burnt[None], bands, axis=0), crs=crs, transform=transform)


def empty_raster(path: Path, width: int, height: int, *, crs: str = UTM, transform: Affine | None = None) -> Path:
    """A tiled, sparse uint8 3-band raster of any size that takes a few kB: no block is ever written (reads give 0)."""
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform or utm_transform(),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "sparse_ok": True,
    }
    with rasterio.open(path, "w", **profile):
        pass
    return Path(path)


def truncated_tiff(path: Path) -> Path:
    """A GeoTIFF cut short: its header opens but its pixels cannot be read."""
    full = rgb_uint8(Path(f"{path}.full.tif"), width=256, height=256, compress="deflate", tiled=True)
    data = full.read_bytes()
    Path(path).write_bytes(data[: len(data) // 3])
    full.unlink()
    return Path(path)


def not_a_raster(path: Path) -> Path:
    """A text file named like a raster."""
    Path(path).write_text("this is not a raster\n")
    return Path(path)


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encode an H x W x 3 (RGB) or H x W x 4 (RGBA) uint8 array with Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()
