"""Where a scene lies on Earth: a UTM zone, an origin near a real place, and the pixel size.

Origins are drawn around a list of populated or farmed places on land, jittered by tens of
kilometres, and expressed in that place's WGS 84 / UTM zone (EPSG:326xx north, 327xx south).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from pyproj import Transformer

from training.data.synthetic.layout import GSD_RANGE

PLACES: tuple[tuple[str, float, float], ...] = (
    ("Iowa", -93.6, 42.0),
    ("Sacramento Valley", -121.6, 38.7),
    ("Fort Worth", -97.3, 32.7),
    ("Ontario", -79.6, 43.6),
    ("Mexico City", -99.1, 19.4),
    ("Sao Paulo", -46.7, -23.5),
    ("Pampas", -60.6, -34.6),
    ("Santiago", -70.7, -33.5),
    ("Paris basin", 2.2, 48.7),
    ("Hamburg", 10.0, 53.5),
    ("Brandenburg", 13.2, 52.4),
    ("Castile", -3.8, 40.4),
    ("Po valley", 10.5, 45.1),
    ("Great Hungarian Plain", 19.8, 47.1),
    ("Kyiv", 30.5, 50.4),
    ("Moscow", 37.6, 55.7),
    ("Nile delta", 31.0, 30.6),
    ("Lagos", 3.4, 6.6),
    ("Nairobi", 36.8, -1.3),
    ("Highveld", 28.0, -26.2),
    ("Punjab", 75.8, 30.9),
    ("North China Plain", 116.4, 39.6),
    ("Kanto", 139.6, 35.8),
    ("Gyeonggi", 127.0, 37.4),
    ("Western Sydney", 150.9, -33.8),
    ("Victoria", 144.9, -37.7),
    ("Rotterdam", 4.4, 51.9),
    ("Dubai", 55.3, 25.1),
)


@dataclass(frozen=True)
class Place:
    """A scene's georeference: ``crs`` (e.g. "EPSG:32632"), affine ``transform`` and ``gsd``."""

    name: str
    crs: str
    transform: Affine
    gsd: float


def draw_gsd(rng: np.random.Generator) -> float:
    """A pixel size in metres, log-uniform over :data:`GSD_RANGE`, rounded to centimetres."""
    low, high = GSD_RANGE
    return round(math.exp(rng.uniform(math.log(low), math.log(high))), 2)


def utm_epsg(lon: float, lat: float) -> int:
    """The EPSG code of the WGS 84 / UTM zone holding (lon, lat)."""
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


@functools.lru_cache(maxsize=64)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


def draw_place(rng: np.random.Generator, size: int, gsd: float | None = None) -> Place:
    """A georeference for a ``size`` x ``size`` scene; ``gsd`` is drawn when not given."""
    gsd = draw_gsd(rng) if gsd is None else float(gsd)
    if not GSD_RANGE[0] * 0.5 <= gsd <= GSD_RANGE[1] * 2:
        raise ValueError(f"gsd {gsd} m is outside the supported {GSD_RANGE[0] * 0.5}..{GSD_RANGE[1] * 2} m")
    name, lon, lat = PLACES[int(rng.integers(len(PLACES)))]
    lon += float(rng.uniform(-0.3, 0.3))
    lat += float(rng.uniform(-0.3, 0.3))
    epsg = utm_epsg(lon, lat)
    easting, northing = _to_utm(epsg).transform(lon, lat)
    west = math.floor(easting - size * gsd / 2)
    north = math.floor(northing + size * gsd / 2)
    return Place(name, f"EPSG:{epsg}", Affine(gsd, 0.0, float(west), 0.0, -gsd, float(north)), gsd)
