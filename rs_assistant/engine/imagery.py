"""Reads the region a request names, from a GDAL raster or a rendered PNG, into the RGB window a model sees.

Which rasters may be read is the caller's SourcePolicy (rs_assistant.engine.sources): every source
passes its check before GDAL sees the string (default: local files only, anywhere the user can read).

Only that region is read (rasterio windowed reads, a WarpedVRT when the request's CRS differs from
the raster's, overviews when the window is decimated to ``max_side``), and every window carries
the affine transform that rs_assistant.engine.geo uses to turn the model's pixels into map coordinates.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import affine
import numpy as np
import pyproj
import pyproj.exceptions
import rasterio
import rasterio.transform
import rasterio.windows
from PIL import Image, UnidentifiedImageError
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS as RioCRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from rs_assistant.core.protocol import ErrorCode, ImageRef, ProtocolError
from rs_assistant.engine.crs import parse_crs
from rs_assistant.engine.sources import SourcePolicy, default_policy, is_remote

log = logging.getLogger(__name__)

#: The most source pixels one read may pull (at the overview level GDAL will use).
MAX_SOURCE_PIXELS = 64_000_000
#: Percentiles that map non-8-bit data onto 0..255.
STRETCH_PERCENTILES = (2.0, 98.0)
#: At most this many valid values per band enter the percentile computation.
_STRETCH_SAMPLE = 1 << 18
#: Offsets closer than this to a whole pixel are read as whole pixels.
_PIXEL_SNAP = 1e-6

_COLOURS = ("red", "green", "blue")
_COLOUR_INTERP = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
#: Band description codes for red/green/blue (Sentinel-2 names), besides the colour words themselves.
_COLOUR_CODES = {"red": ("b4", "b04"), "green": ("b3", "b03"), "blue": ("b2", "b02")}
#: At most this many characters of GDAL's message about a local file enter an error message.
_GDAL_MESSAGE_CHARS = 300


@dataclass
class Window:
    """An RGB window and the grid it lies on: pixel (col, row) -> map coordinates in ``crs``."""

    array: np.ndarray  # H x W x 3 uint8 RGB, what the model sees
    transform: affine.Affine  # window pixel (col, row) -> map coordinates in `crs`
    crs: str  # the grid's CRS string as requested (e.g. "EPSG:3857")
    valid: np.ndarray | None = None  # H x W bool, False where nodata / outside the source; None: all valid

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def coverage(self) -> float:
        """The share (0..1) of the window's pixels that the source covers with data."""
        return 1.0 if self.valid is None or self.valid.size == 0 else float(self.valid.mean())

    @property
    def pixel_size_m(self) -> float | None:
        """The window's ground metres per pixel at its centre, or None when they cannot be computed.

        Geodesic, on the WGS 84 ellipsoid: the ground distance between the middles of the window's
        left and right edges (and of its top and bottom edges), transformed from the window's CRS to
        EPSG:4326, divided by the pixels between them; the mean of the two. So an EPSG:3857 window
        gets true ground metres, not Mercator metres (at 60 degrees north, half of them).
        """
        return _ground_pixel_size(self.crs, tuple(self.transform), self.width, self.height)


def _ground_pixel_size(crs: str, transform: tuple[float, ...], width: int, height: int) -> float | None:
    if width < 1 or height < 1:
        return None
    try:
        to_lonlat = _to_lonlat(crs)
    except (ProtocolError, pyproj.exceptions.ProjError, pyproj.exceptions.CRSError):
        return None
    grid = affine.Affine(*transform[:6])
    sizes = []
    for (c0, r0), (c1, r1), pixels in (
        ((0.0, height / 2), (float(width), height / 2), width),
        ((width / 2, 0.0), (width / 2, float(height)), height),
    ):
        (x0, y0), (x1, y1) = grid * (c0, r0), grid * (c1, r1)
        try:
            lons, lats = to_lonlat.transform([x0, x1], [y0, y1], errcheck=True)
        except pyproj.exceptions.ProjError:
            return None
        if not all(math.isfinite(v) for v in (*lons, *lats)):
            return None
        _, _, metres = _WGS84.inv(lons[0], lats[0], lons[1], lats[1])
        if math.isfinite(metres) and metres > 0:
            sizes.append(metres / pixels)
    return float(np.mean(sizes)) if sizes else None


_WGS84 = pyproj.Geod(ellps="WGS84")


@functools.lru_cache(maxsize=32)
def _to_lonlat(crs: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(parse_crs(crs), pyproj.CRS.from_epsg(4326), always_xy=True)


@dataclass(frozen=True)
class _Grid:
    """The output pixel grid: ``width`` x ``height`` pixels of ``transform`` in ``crs``."""

    crs: str
    transform: affine.Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        x0, y0 = self.transform * (0, 0)
        x1, y1 = self.transform * (self.width, self.height)
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


#: What a reader returns: data (bands, h, w), valid (h, w) and the grid pixels (col0, row0, col1, row1) they fill.
_Block = tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]


def read_image(
    ref: ImageRef, max_side: int = 1024, datasets: DatasetCache | None = None, policy: SourcePolicy | None = None
) -> Window:
    """The window ``ref.extent`` (in ``ref.crs``), at the source's resolution but at most ``max_side`` pixels a side.

    ``datasets`` keeps the source open between reads (tiled batch jobs read hundreds of windows of one file).
    ``policy``: where the source may be (default: local files only).
    """
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    with _opened(ref, datasets, policy) as src:
        grid = _grid_for(src, ref, max_side)
        return _read(src, grid, ref)


def read_pair(
    before: ImageRef,
    after: ImageRef,
    max_side: int = 1024,
    datasets: DatasetCache | None = None,
    policy: SourcePolicy | None = None,
) -> tuple[Window, Window]:
    """Before and after on the before window's grid (same transform, size and CRS), so they are pixel-aligned.

    The after image's own extent only matters for a PNG (it places the picture); a raster is read under the before grid.
    """
    first = read_image(before, max_side, datasets, policy)
    grid = _Grid(first.crs, first.transform, first.width, first.height)
    with _opened(after, datasets, policy) as src:
        second = _read(src, grid, after)
    return first, second


@dataclass(frozen=True)
class RasterInfo:
    """What a batch job needs to know of a raster before reading it: its grid and CRS."""

    source: str
    crs: str  # "EPSG:N" when the CRS has a code, else WKT
    transform: affine.Affine
    width: int
    height: int
    count: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = zip(*(self.transform * (c, r) for c in (0, self.width) for r in (0, self.height)))
        return (min(xs), min(ys), max(xs), max(ys))


def describe_raster(source: str, policy: SourcePolicy | None = None) -> RasterInfo:
    """The grid of a raster; the same errors as a read (SOURCE_NOT_FOUND, UNREADABLE_SOURCE, REMOTE_SOURCE_REFUSED)."""
    ref = ImageRef(extent=(0, 0, 1, 1), crs="EPSG:4326", source=source)
    with _opened(ref, None, policy) as src:
        epsg = src.crs.to_epsg()
        crs = f"EPSG:{epsg}" if epsg and _same_crs(src, f"EPSG:{epsg}") else src.crs.to_wkt()
        return RasterInfo(source, crs, src.transform, src.width, src.height, src.count)


class DatasetCache:
    """Datasets kept open between reads, for one thread (rasterio datasets are not thread-safe).

    A file that changed on disk (size or modification time) is opened again; at most ``size`` stay open.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._open: dict[str, tuple[tuple[int, int], DatasetReader]] = {}

    def get(self, source: str) -> DatasetReader | None:
        entry = self._open.get(source)
        if entry is None:
            return None
        if entry[0] != _stamp(source):
            self._drop(source)
            return None
        return entry[1]

    def put(self, source: str, dataset: DatasetReader) -> None:
        if len(self._open) >= self.size:
            self._drop(next(iter(self._open)))
        self._open[source] = (_stamp(source), dataset)

    def close(self) -> None:
        for source in list(self._open):
            self._drop(source)

    def _drop(self, source: str) -> None:
        _, dataset = self._open.pop(source)
        dataset.close()


def _stamp(source: str) -> tuple[int, int]:
    try:
        info = os.stat(source)
    except OSError:
        return (-1, -1)
    return (info.st_size, info.st_mtime_ns)


def decode_image_bytes(data: bytes) -> np.ndarray:
    """PNG/JPEG (or any Pillow-readable) bytes -> H x W x 3 uint8 RGB."""
    return _decode(data)[0]


# --- opening -----------------------------------------------------------------------------------


@contextmanager
def _opened(
    ref: ImageRef, datasets: DatasetCache | None = None, policy: SourcePolicy | None = None
) -> Iterator[DatasetReader]:
    """The georeferenced dataset behind ``ref``, its source checked against ``policy`` before GDAL sees it; every
    GDAL failure inside the block becomes UNREADABLE_SOURCE."""
    parse_crs(ref.crs)
    name = _describe(ref)
    try:
        if ref.png_base64 is not None:
            opener = _open_png(ref)
        else:
            path = (policy or default_policy()).check(ref.source or "")
            opener = _open_cached(path, datasets) if datasets is not None else _open_source(path)
        with opener as src:
            if src.crs is None:
                raise ProtocolError(
                    ErrorCode.UNREADABLE_SOURCE, f"{name} has no coordinate reference system; georeference it first"
                )
            yield src
    except (RasterioError, CPLE_BaseError) as exc:
        if ref.source is not None and is_remote(ref.source):
            # A remote server's words (e.g. "Failed to connect to 127.0.0.1 port 9") would make the engine a port
            # scanner: they go to the log only.
            log.info("reading %s failed: %s", name, _gdal_message(exc))
            raise ProtocolError(
                ErrorCode.UNREADABLE_SOURCE,
                f"cannot read {name} as a raster (a remote or virtual source; the engine's log says why)",
            ) from None
        log.debug("reading %s failed", name, exc_info=True)
        raise ProtocolError(
            ErrorCode.UNREADABLE_SOURCE, f"cannot read {name} as a raster: {_gdal_message(exc)[:_GDAL_MESSAGE_CHARS]}"
        ) from None


@contextmanager
def _open_source(path: str) -> Iterator[DatasetReader]:
    """``path`` (checked by the caller's SourcePolicy) opened for the block."""
    with rasterio.open(path) as src:
        yield src


@contextmanager
def _open_cached(path: str, datasets: DatasetCache) -> Iterator[DatasetReader]:
    """``path`` (checked by the caller's SourcePolicy) from ``datasets``, opened (and kept there) on first use; left
    open after the block."""
    src = datasets.get(path)
    if src is None:
        src = rasterio.open(path)
        datasets.put(path, src)
    yield src


@contextmanager
def _open_png(ref: ImageRef) -> Iterator[DatasetReader]:
    """The PNG as an in-memory GeoTIFF spread over ``ref.extent`` in ``ref.crs`` (alpha as its mask)."""
    rgb, alpha = _decode(ref.png_bytes())
    height, width = rgb.shape[:2]
    bands = [rgb[..., i] for i in range(3)] + ([] if alpha is None else [alpha])
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": len(bands),
        "dtype": "uint8",
        "crs": _rio_crs(ref.crs),
        "transform": rasterio.transform.from_bounds(*ref.extent, width, height),
        "photometric": "RGB",
    }
    if alpha is not None:
        profile["alpha"] = "YES"
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(np.stack(bands))
        with mem.open() as src:
            yield src


def _gdal_message(exc: BaseException) -> str:
    """The GDAL error behind a rasterio exception ("Read failed. See previous exception" names none)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc).strip() or type(exc).__name__


@functools.lru_cache(maxsize=64)
def _rio_crs(crs: str) -> RioCRS:
    return RioCRS.from_wkt(parse_crs(crs).to_wkt())


def _describe(ref: ImageRef) -> str:
    return repr(ref.source) if ref.source else "the PNG image"


# --- the grid ----------------------------------------------------------------------------------


def _grid_for(src: DatasetReader, ref: ImageRef, max_side: int) -> _Grid:
    """The grid over ``ref.extent`` at the source's resolution there, shrunk so its longer side is at most
    ``max_side``."""
    under = _pixel_bbox(src, ref.extent, ref.crs, _describe(ref))
    width, height = max(1, round(under.width)), max(1, round(under.height))
    scale = max(width, height) / max_side
    if scale > 1:
        width, height = max(1, round(width / scale)), max(1, round(height / scale))
    xmin, ymin, xmax, ymax = ref.extent
    transform = affine.Affine((xmax - xmin) / width, 0, xmin, 0, -(ymax - ymin) / height, ymax)
    return _Grid(ref.crs, transform, width, height)


def _pixel_bbox(src: DatasetReader, bounds: Sequence[float], crs: str, name: str) -> rasterio.windows.Window:
    """The (fractional, unclipped) source pixels under ``bounds`` given in ``crs``."""
    original = bounds
    if not _same_crs(src, crs):
        try:
            bounds = transform_bounds(_rio_crs(crs), src.crs, *bounds, densify_pts=21)
        except (RasterioError, CPLE_BaseError) as exc:
            raise ProtocolError(
                ErrorCode.BAD_CRS, f"cannot transform the extent from {crs} to the CRS of {name}: {exc}"
            ) from None
        if not all(math.isfinite(v) for v in bounds):
            raise ProtocolError(
                ErrorCode.BAD_EXTENT,
                f"the extent {_fmt(original)} ({crs}) lies outside the area that the CRS of {name} "
                f"({_crs_name(src.crs)}) can represent",
            )
    xmin, ymin, xmax, ymax = bounds
    inverse = ~src.transform
    corners = [inverse * (x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
    cols, rows = [c for c, _ in corners], [r for _, r in corners]
    return rasterio.windows.Window(min(cols), min(rows), max(cols) - min(cols), max(rows) - min(rows))


def _same_crs(src: DatasetReader, crs: str) -> bool:
    return bool(src.crs == _rio_crs(crs))


def _north_up(transform: affine.Affine) -> bool:
    return transform.b == 0 and transform.d == 0 and transform.a > 0 and transform.e < 0


# --- the read ----------------------------------------------------------------------------------


def _read(src: DatasetReader, grid: _Grid, ref: ImageRef) -> Window:
    """Read ``grid`` from ``src``: where the source does not cover it the window stays black and invalid."""
    started = time.perf_counter()
    name = _describe(ref)
    bands = _select_bands(src, ref.bands, name)
    unique = sorted(set(bands))
    palette = len(unique) == 1 and src.colorinterp[unique[0] - 1] == ColorInterp.palette
    resampling = Resampling.nearest if palette else Resampling.bilinear
    direct = _same_crs(src, grid.crs) and _north_up(src.transform)
    reader = _read_direct if direct else _read_warped
    data, valid, (c0, r0, c1, r1) = reader(src, grid, unique, resampling, name)
    channels = [data[unique.index(b)] for b in bands]
    block = _palette_rgb(src, channels[0]) if palette else _to_rgb(channels, valid)
    block[~valid] = 0
    array = np.zeros((grid.height, grid.width, 3), np.uint8)
    array[r0:r1, c0:c1] = block
    mask = np.zeros((grid.height, grid.width), bool)
    mask[r0:r1, c0:c1] = valid
    log.debug(
        "read %s %s -> %dx%d %s (bands %s) in %.1f ms",
        name, "window" if direct else "warped", grid.width, grid.height, grid.crs, bands,
        (time.perf_counter() - started) * 1000,
    )  # fmt: skip
    return Window(array=array, transform=grid.transform, crs=grid.crs, valid=mask)


def _read_direct(src: DatasetReader, grid: _Grid, bands: list[int], resampling: Resampling, name: str) -> _Block:
    """Windowed read of the grid's part inside ``src`` (same CRS); GDAL picks the overview for ``out_shape``."""
    span = _overlap(src, grid, name)
    c0, r0, c1, r1 = span
    window = _source_window(src, grid, span)
    if window is None:
        raise _outside(grid, src, name)
    shape = (r1 - r0, c1 - c0)
    decimation = min(window.width / shape[1], window.height / shape[0])
    level = _overview(src, bands[0], decimation)[0]
    _check_budget(window.width * window.height / level**2, name)
    data = src.read(bands, window=window, out_shape=(len(bands), *shape), resampling=resampling)
    valid = _valid(
        src,
        bands,
        data,
        lambda: src.read_masks(bands[0], window=window, out_shape=shape, resampling=Resampling.nearest),
    )
    return data, valid, span


def _read_warped(src: DatasetReader, grid: _Grid, bands: list[int], resampling: Resampling, name: str) -> _Block:
    """Warp ``src`` onto the grid (WarpedVRT), from the overview level that matches the decimation."""
    under = _pixel_bbox(src, grid.bounds, grid.crs, name)
    inside = _clip(under, src)
    if inside is None:
        raise _outside(grid, src, name)
    decimation = math.sqrt(under.width * under.height / (grid.width * grid.height))
    level, index = _overview(src, bands[0], decimation)
    _check_budget(inside.width * inside.height / level**2, name)
    with ExitStack() as stack:
        source = src if index is None else stack.enter_context(rasterio.open(src.name, overview_level=index))
        has_alpha = ColorInterp.alpha in src.colorinterp
        try:
            vrt = WarpedVRT(
                source, crs=_rio_crs(grid.crs), transform=grid.transform, width=grid.width, height=grid.height,
                resampling=resampling, add_alpha=not has_alpha,
            )  # fmt: skip
        except (RasterioError, CPLE_BaseError) as exc:
            raise ProtocolError(
                ErrorCode.BAD_CRS, f"cannot reproject {name} from {src.crs} to {grid.crs}: {exc}"
            ) from None
        with vrt:
            data = vrt.read(bands)
            valid = _valid(vrt, bands, data, lambda: vrt.read_masks(bands[0]))
    if not valid.any():
        raise _outside(grid, src, name)
    return data, valid, (0, 0, grid.width, grid.height)


def _valid(ds: DatasetReader, bands: list[int], data: np.ndarray, read_mask: Callable[[], np.ndarray]) -> np.ndarray:
    """Where ``data`` is valid: GDAL's mask (nodata, alpha or mask band) and finite values."""
    flags = ds.mask_flag_enums[bands[0] - 1]
    if MaskFlags.all_valid in flags:
        valid = np.ones(data.shape[1:], bool)
    elif MaskFlags.nodata in flags:
        valid = np.any([band != ds.nodatavals[b - 1] for band, b in zip(data, bands)], axis=0)
    else:
        valid = read_mask() > 0
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return valid


def _overlap(src: DatasetReader, grid: _Grid, name: str) -> tuple[int, int, int, int]:
    """The grid pixels (col0, row0, col1, row1) that ``src`` covers; EXTENT_OUTSIDE when there are none."""
    gx0, gy0, gx1, gy1 = grid.bounds
    dx0, dy0, dx1, dy1 = src.bounds
    x0, y0, x1, y1 = max(gx0, dx0), max(gy0, dy0), min(gx1, dx1), min(gy1, dy1)
    if x0 >= x1 or y0 >= y1:
        raise _outside(grid, src, name)
    inverse = ~grid.transform
    col0, row0 = inverse * (x0, y1)
    col1, row1 = inverse * (x1, y0)
    c0, c1 = _pixel_span(col0, col1, grid.width)
    r0, r1 = _pixel_span(row0, row1, grid.height)
    return c0, r0, c1, r1


def _outside(grid: _Grid, src: DatasetReader, name: str) -> ProtocolError:
    return ProtocolError(
        ErrorCode.EXTENT_OUTSIDE,
        f"the requested extent {_fmt(grid.bounds)} ({grid.crs}) does not overlap {name}, "
        f"whose extent is {_fmt(src.bounds)} ({_crs_name(src.crs)})",
    )


def _crs_name(crs: RioCRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


def _pixel_span(start: float, stop: float, size: int) -> tuple[int, int]:
    """Whole pixels [a, b) nearest to [start, stop) within [0, size); a sliver gives the one pixel it starts in."""
    a, b = math.floor(start + 0.5), math.floor(stop + 0.5)
    if b <= a:
        a, b = math.floor(start), math.floor(start) + 1
    a = min(max(a, 0), size - 1)
    return a, min(max(b, a + 1), size)


def _source_window(src: DatasetReader, grid: _Grid, span: tuple[int, int, int, int]) -> rasterio.windows.Window | None:
    """The (fractional) window of ``src`` under the grid pixels ``span``, clipped to ``src``."""
    c0, r0, c1, r1 = span
    x0, y0 = grid.transform * (c0, r1)
    x1, y1 = grid.transform * (c1, r0)
    window = rasterio.windows.from_bounds(x0, y0, x1, y1, src.transform)
    values = [round(v) if abs(v - round(v)) < _PIXEL_SNAP else v for v in window.flatten()]
    return _clip(rasterio.windows.Window(*values), src)


def _clip(window: rasterio.windows.Window, src: DatasetReader) -> rasterio.windows.Window | None:
    """``window`` clipped to the raster, or None when they do not overlap."""
    col0, row0 = max(window.col_off, 0), max(window.row_off, 0)
    col1, row1 = min(window.col_off + window.width, src.width), min(window.row_off + window.height, src.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0)


def _overview(src: DatasetReader, band: int, decimation: float) -> tuple[int, int | None]:
    """The overview factor (1: full resolution) and its index for reading ``decimation`` source pixels per output
    pixel."""
    factors = src.overviews(band)
    usable = [i for i, f in enumerate(factors) if f <= decimation]
    if not usable:
        return 1, None
    index = max(usable, key=lambda i: factors[i])
    return factors[index], index


def _check_budget(pixels: float, name: str) -> None:
    """REGION_TOO_LARGE when a read would pull more than MAX_SOURCE_PIXELS source pixels."""
    if pixels > MAX_SOURCE_PIXELS:
        raise ProtocolError(
            ErrorCode.REGION_TOO_LARGE,
            f"reading this region of {name} would pull {pixels / 1e6:.0f} megapixels; the limit is "
            f"{MAX_SOURCE_PIXELS / 1e6:.0f} megapixels. Choose a smaller region or build overviews (gdaladdo).",
        )


# --- bands and 8-bit conversion ----------------------------------------------------------------


def _select_bands(src: DatasetReader, explicit: Sequence[int] | None, name: str) -> tuple[int, int, int]:
    """Band numbers for red, green, blue: explicit, else colour interpretation, else descriptions."""
    if explicit:
        bad = [b for b in explicit if b > src.count]
        if bad:
            raise ProtocolError(ErrorCode.INVALID_VALUE, f"band(s) {bad} requested but {name} has {src.count} band(s)")
        return (explicit[0],) * 3 if len(explicit) == 1 else (explicit[0], explicit[1], explicit[2])
    colour_bands = [i for i, ci in enumerate(src.colorinterp, start=1) if ci != ColorInterp.alpha]
    if len(colour_bands) < 3:
        return (colour_bands[0],) * 3
    by_interp = _first_of_each({_COLOUR_INTERP.get(src.colorinterp[i - 1]): i for i in reversed(colour_bands)})
    if by_interp:
        return by_interp
    by_description = _first_of_each({_colour_of(src.descriptions[i - 1]): i for i in reversed(colour_bands)})
    if by_description:
        return by_description
    if len(colour_bands) > 3:
        log.warning("%s: no red/green/blue band found by colour or description; using bands %s", name, colour_bands[:3])
    return (colour_bands[0], colour_bands[1], colour_bands[2])


def _first_of_each(found: dict[str | None, int]) -> tuple[int, int, int] | None:
    if all(c in found for c in _COLOURS):
        return (found["red"], found["green"], found["blue"])
    return None


def _colour_of(description: str | None) -> str | None:
    """'red'/'green'/'blue' for a band description such as 'Red', 'B4' or 'B04 (665 nm)'; None otherwise."""
    tokens = re.findall(r"[a-z0-9]+", (description or "").lower())
    if not tokens or "edge" in tokens:
        return None
    for colour in _COLOURS:
        if colour in tokens or tokens[0] in _COLOUR_CODES[colour]:
            return colour
    return None


def _to_rgb(channels: Sequence[np.ndarray], valid: np.ndarray) -> np.ndarray:
    """Stack three bands as uint8: 8-bit data as is, anything else stretched between percentiles."""
    if all(c.dtype == np.uint8 for c in channels):
        return np.stack(channels, axis=-1)
    return np.stack([_stretch(c, valid) for c in channels], axis=-1)


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Map the STRETCH_PERCENTILES of the valid values onto 0 and 255."""
    values = band[valid]
    if values.size == 0:
        return np.zeros(band.shape, np.uint8)
    sample = values[:: max(1, values.size // _STRETCH_SAMPLE)]
    lo, hi = np.percentile(sample.astype(np.float64), STRETCH_PERCENTILES)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = (band.astype(np.float32) - np.float32(lo)) * np.float32(scale)
    out[~valid] = 0
    return np.clip(out, 0, 255).round().astype(np.uint8)


def _palette_rgb(src: DatasetReader, indices: np.ndarray) -> np.ndarray:
    """A paletted band through its colour table."""
    lut = np.zeros((max(256, int(indices.max()) + 1), 3), np.uint8)
    for index, rgba in src.colormap(1).items():
        if index < len(lut):
            lut[index] = rgba[:3]
    return lut[indices]


def _decode(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 and, when the image has transparency, its alpha channel."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise ProtocolError(
                    ErrorCode.REGION_TOO_LARGE,
                    f"the image is {image.width}x{image.height} pixels; the limit is {MAX_SOURCE_PIXELS / 1e6:.0f} "
                    f"megapixels",
                )
            has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
            rgba = np.asarray(image.convert("RGBA"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ProtocolError(ErrorCode.UNREADABLE_SOURCE, f"cannot decode the image: {exc}") from None
    return np.ascontiguousarray(rgba[..., :3]), (rgba[..., 3].copy() if has_alpha else None)


def _fmt(bounds: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.10g}" for v in bounds) + "]"
