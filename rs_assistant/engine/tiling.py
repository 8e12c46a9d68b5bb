"""The tile grid of a batch job: windows of ``tile_size`` pixels over the first source, stepping by ``tile_size -
overlap``.

Each tile also owns a *core* (its window with the overlaps split at their middle), so that the
cores of a grid partition the job's extent exactly: every map point belongs to one tile.

    grid = make_grid(request)        # validates the sources and the extent first
    for tile in grid.tiles(): grid.bounds(tile.window), grid.bounds(tile.core)

The grid lies on the first source's pixels at full resolution (a north-up raster is read window
by window without resampling); a rotated raster gets a north-up grid over its bounds at the
same pixel size, and its windows are warped onto it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import affine
import pyproj

from rs_assistant.core.protocol import BatchRequest, ErrorCode, ProtocolError
from rs_assistant.engine.crs import parse_crs
from rs_assistant.engine.imagery import RasterInfo, describe_raster
from rs_assistant.engine.sources import SourcePolicy

#: (col0, row0, col1, row1): a block of grid pixels, end-exclusive.
PixelBox = tuple[int, int, int, int]
Bounds = tuple[float, float, float, float]

#: Sides of a tile, in the order of :attr:`Tile.neighbours`.
SIDES = ("west", "north", "east", "south")
#: Offsets closer than this (in pixels) to a whole pixel count as that pixel when snapping the extent.
_SNAP = 1e-6


@dataclass(frozen=True)
class Tile:
    """One tile: its window (what the model sees), its core (what it owns) and its interior (what only it sees)."""

    id: int
    row: int
    col: int
    window: PixelBox
    core: PixelBox
    interior: PixelBox  # may be empty (col1 <= col0) where neighbours' windows cover the whole window
    neighbours: tuple[bool, bool, bool, bool]  # west, north, east, south


@dataclass(frozen=True)
class TileGrid:
    """The tiles over ``width`` x ``height`` grid pixels; ``transform`` maps grid pixels to ``crs``."""

    crs: str
    transform: affine.Affine
    width: int
    height: int
    tile_size: int
    overlap: int
    col_starts: tuple[int, ...]
    row_starts: tuple[int, ...]

    @property
    def cols(self) -> int:
        return len(self.col_starts)

    @property
    def rows(self) -> int:
        return len(self.row_starts)

    @property
    def count(self) -> int:
        return self.cols * self.rows

    @property
    def pixel_size(self) -> float:
        return abs(self.transform.a)

    @property
    def extent(self) -> Bounds:
        return self.bounds((0, 0, self.width, self.height))

    def bounds(self, box: PixelBox) -> Bounds:
        """Map bounds (xmin, ymin, xmax, ymax) in ``crs`` of a block of grid pixels."""
        col0, row0, col1, row1 = box
        x0, y0 = self.transform * (col0, row0)
        x1, y1 = self.transform * (col1, row1)
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def tile(self, tile_id: int) -> Tile:
        if not 0 <= tile_id < self.count:
            raise ProtocolError(
                ErrorCode.INVALID_VALUE, f"tile {tile_id} is not in the grid, which has tiles 0 to {self.count - 1}"
            )
        row, col = divmod(tile_id, self.cols)
        (c0, c1), (k0, k1), (i0, i1) = _span(self.col_starts, col, self.width, self.tile_size)
        (r0, r1), (l0, l1), (j0, j1) = _span(self.row_starts, row, self.height, self.tile_size)
        neighbours = (col > 0, row > 0, col < self.cols - 1, row < self.rows - 1)
        return Tile(tile_id, row, col, (c0, r0, c1, r1), (k0, l0, k1, l1), (i0, j0, i1, j1), neighbours)

    def tiles(self) -> Iterator[Tile]:
        """Every tile, row by row from the top left (ids 0, 1, ...)."""
        for tile_id in range(self.count):
            yield self.tile(tile_id)


def make_grid(request: BatchRequest, policy: SourcePolicy | None = None) -> TileGrid:
    """The grid of ``request``: SOURCE_NOT_FOUND / UNREADABLE_SOURCE / REMOTE_SOURCE_REFUSED for a bad source or one
    that ``policy`` (default: local files only) does not allow, EXTENT_OUTSIDE for an extent off the raster."""
    info = describe_raster(request.sources[0], policy)
    for other in request.sources[1:]:
        describe_raster(other, policy)
    transform, width, height = _full_grid(info)
    col0, row0, col1, row1 = 0, 0, width, height
    if request.extent is not None:
        col0, row0, col1, row1 = _extent_pixels(request, info, transform, width, height)
    transform = transform * affine.Affine.translation(col0, row0)
    width, height = col1 - col0, row1 - row0
    return TileGrid(
        crs=info.crs,
        transform=transform,
        width=width,
        height=height,
        tile_size=request.tile_size,
        overlap=request.overlap,
        col_starts=tile_starts(width, request.tile_size, request.overlap),
        row_starts=tile_starts(height, request.tile_size, request.overlap),
    )


def tile_starts(length: int, tile_size: int, overlap: int) -> tuple[int, ...]:
    """Where the windows along one axis start: every ``tile_size - overlap`` pixels, the last shifted to end at
    ``length``."""
    if length <= tile_size:
        return (0,)
    step = tile_size - overlap
    starts = list(range(0, length - tile_size, step))
    return tuple(starts + [length - tile_size])


def _span(starts: tuple[int, ...], index: int, length: int, tile_size: int) -> tuple[tuple[int, int], ...]:
    """Along one axis: the window, the core and the interior of tile ``index``."""
    ends = [min(s + tile_size, length) for s in starts]
    start, end = starts[index], ends[index]
    last = len(starts) - 1
    core0 = 0 if index == 0 else (start + ends[index - 1]) // 2
    core1 = length if index == last else (starts[index + 1] + end) // 2
    inner0 = start if index == 0 else ends[index - 1]
    inner1 = end if index == last else starts[index + 1]
    return (start, end), (core0, core1), (inner0, max(inner0, inner1))


def _full_grid(info: RasterInfo) -> tuple[affine.Affine, int, int]:
    """The raster's own pixel grid when north-up, else a north-up grid over its bounds at its pixel size."""
    t = info.transform
    if t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0:
        return t, info.width, info.height
    size = math.sqrt(abs(t.determinant))
    xmin, ymin, xmax, ymax = info.bounds
    return (
        affine.Affine(size, 0, xmin, 0, -size, ymax),
        max(1, math.ceil((xmax - xmin) / size)),
        max(1, math.ceil((ymax - ymin) / size)),
    )


def _extent_pixels(
    request: BatchRequest, info: RasterInfo, transform: affine.Affine, width: int, height: int
) -> PixelBox:
    """The whole grid pixels under ``request.extent``, clipped to the raster; EXTENT_OUTSIDE when none are."""
    assert request.extent is not None
    extent_crs = request.extent_crs or info.crs
    bounds = _to_crs(request.extent, extent_crs, info.crs, info.source)
    inverse = ~transform
    cols, rows = zip(*(inverse * (x, y) for x in (bounds[0], bounds[2]) for y in (bounds[1], bounds[3])))
    col0, col1 = max(0, _floor(min(cols))), min(width, _ceil(max(cols)))
    row0, row1 = max(0, _floor(min(rows))), min(height, _ceil(max(rows)))
    if col1 <= col0 or row1 <= row0:
        raster = ", ".join(f"{v:.10g}" for v in info.bounds)
        wanted = ", ".join(f"{v:.10g}" for v in request.extent)
        raise ProtocolError(
            ErrorCode.EXTENT_OUTSIDE,
            f"the job's extent [{wanted}] ({extent_crs}) does not overlap {info.source!r}, whose extent is "
            f"[{raster}] ({_short(info.crs)})",
        )
    return col0, row0, col1, row1


def _to_crs(bounds: Bounds, src: str, dst: str, name: str) -> Bounds:
    source, target = parse_crs(src), parse_crs(dst)
    if source == target:
        return bounds
    try:
        out = pyproj.Transformer.from_crs(source, target, always_xy=True).transform_bounds(*bounds, densify_pts=21)
    except pyproj.exceptions.ProjError as exc:
        raise ProtocolError(
            ErrorCode.BAD_CRS, f"cannot transform the extent from {src} to the CRS of {name!r}: {exc}"
        ) from None
    if not all(math.isfinite(v) for v in out):
        raise ProtocolError(
            ErrorCode.BAD_EXTENT, f"the extent ({src}) lies outside the area that the CRS of {name!r} can represent"
        )
    return tuple(out)  # type: ignore[return-value]


def _floor(value: float) -> int:
    return math.floor(value + _SNAP)


def _ceil(value: float) -> int:
    return math.ceil(value - _SNAP)


def _short(crs: str) -> str:
    return crs if len(crs) < 40 else crs[:37] + "..."
