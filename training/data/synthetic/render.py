"""Drawing a rasterised layout as an aerial-looking RGB image (numpy, scipy and Pillow).

Per pixel: a base colour from the feature on top (by class, style, season, the scene's soil and a
random tone), modulated by fractal textures; structure per class computed from the feature's
geometry (crop rows and tramlines, two-tone gable and four-facet hip roofs with eaves and ridges,
lobed or conical tree crowns, natural forest as individual crowns of several species
(``canopy.py``), tank rims and floating-roof shadows, car glass, roofs and bonnets, painted road
and parking lines, mowing stripes, a water depth gradient, sand ripples and stones on sandy and
rocky soil); cast shadows swept from every building, tank, tree, vehicle and forest edge away
from the sun by its height; then sky and sun light (warmer and weaker when the sun is low),
exposure, white balance, the sensor's colour response, haze, vignetting, the sensor's blur,
sharpening, colour resolution and noise, and a JPEG round trip (``looks.py``).

Everything is vectorised over pixels; the only Python loops run over features to build lookup
tables and shadow polygons.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry.base import BaseGeometry

from training.data.synthetic import canopy, looks
from training.data.synthetic.classes import ObjectClass
from training.data.synthetic.graph import Feature, Layout
from training.data.synthetic.labels import Labels, burn
from training.data.synthetic.looks import PLAIN, Look
from training.data.synthetic.textures import Textures

log = logging.getLogger(__name__)

C = ObjectClass
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Conditions:
    """How one acquisition looks: sun position, light, atmosphere and sensor."""

    sun_azimuth: float
    """Degrees clockwise from north of the direction the sun shines from."""
    sun_elevation: float
    ambient: float
    exposure: float
    white_balance: RGB
    haze: float
    gamma: float
    vignette: float
    blur: float
    noise: float
    noise_seed: int
    look: Look = PLAIN
    """Sensor colour response and sharpness, extra haze and JPEG compression."""


SUN_ELEVATION = (12.0, 75.0)
"""Range of sun elevations drawn (degrees): low suns cast shadows several times an object's height."""


def draw_conditions(rng: np.random.Generator, look_rng: np.random.Generator | None = None) -> Conditions:
    """Random but plausible acquisition conditions; the look is drawn from ``look_rng`` (plain without it).

    ``rng`` gives the same number of draws whatever the look, so the streams that share it
    (a pair's change stream) draw the same edits."""
    conditions = Conditions(
        sun_azimuth=float(rng.uniform(90, 270) if rng.uniform() < 0.85 else rng.uniform(0, 360)),
        sun_elevation=float(rng.uniform(*SUN_ELEVATION)),
        ambient=float(rng.uniform(0.3, 0.45)),
        exposure=float(rng.uniform(0.9, 1.12)),
        white_balance=(float(rng.uniform(0.95, 1.05)), 1.0, float(rng.uniform(0.93, 1.07))),
        haze=float(rng.uniform(0.0, 0.12)),
        gamma=float(rng.uniform(0.9, 1.1)),
        vignette=float(rng.uniform(0.0, 0.12)),
        blur=float(rng.uniform(0.45, 0.85)),
        noise=float(rng.uniform(0.8, 2.6)),
        noise_seed=int(rng.integers(0, 2**31)),
    )
    return conditions if look_rng is None else replace(conditions, look=looks.draw_look(look_rng))


def sun_vector(conditions: Conditions) -> np.ndarray:
    """Unit vector towards the sun in scene axes (x east, y south, z up)."""
    a, e = math.radians(conditions.sun_azimuth), math.radians(conditions.sun_elevation)
    return np.array([math.sin(a) * math.cos(e), -math.cos(a) * math.cos(e), math.sin(e)])


# --------------------------------------------------------------------------------------------
# Colours (sRGB-like, 0..1): a base and a secondary colour that textures mix in

VEGETATION = {
    "spring": {
        "grass": ((0.37, 0.50, 0.25), (0.46, 0.52, 0.31)),
        "deciduous": ((0.27, 0.42, 0.17), (0.36, 0.48, 0.20)),
        "ground": ((0.47, 0.48, 0.33), (0.55, 0.48, 0.38)),
    },
    "summer": {
        "grass": ((0.33, 0.45, 0.20), (0.50, 0.50, 0.30)),
        "deciduous": ((0.19, 0.31, 0.13), (0.27, 0.37, 0.15)),
        "ground": ((0.50, 0.49, 0.35), (0.58, 0.51, 0.40)),
    },
    "autumn": {
        "grass": ((0.42, 0.45, 0.24), (0.55, 0.50, 0.33)),
        "deciduous": ((0.52, 0.35, 0.15), (0.42, 0.40, 0.16)),
        "ground": ((0.52, 0.48, 0.36), (0.56, 0.47, 0.37)),
    },
    "winter": {
        "grass": ((0.45, 0.45, 0.36), (0.52, 0.49, 0.40)),
        "deciduous": ((0.36, 0.32, 0.28), (0.42, 0.38, 0.33)),
        "ground": ((0.49, 0.46, 0.38), (0.55, 0.49, 0.40)),
    },
}
DUSTY = ((0.53, 0.51, 0.46), (0.60, 0.55, 0.47))
"""Bare ground between buildings in towns and industry."""
CONIFER = ((0.11, 0.21, 0.13), (0.15, 0.25, 0.15))
CROP_COLOURS: dict[str, dict[str, tuple[RGB, RGB, float]]] = {
    # crop style -> season -> (plant colour, soil colour, row visibility 0..1)
    "young crop": {"spring": ((0.38, 0.55, 0.22), (0.50, 0.40, 0.30), 0.8)},
    "ploughed": {s: ((0.47, 0.37, 0.28), (0.36, 0.28, 0.21), 0.6) for s in ("spring", "autumn", "winter")},
    "green": {s: ((0.30, 0.48, 0.18), (0.40, 0.45, 0.24), 0.25) for s in ("spring", "summer", "autumn")},
    "wheat": {"summer": ((0.78, 0.68, 0.42), (0.70, 0.60, 0.38), 0.15)},
    "maize": {
        "summer": ((0.22, 0.40, 0.15), (0.42, 0.36, 0.26), 0.55),
        "autumn": ((0.62, 0.56, 0.36), (0.48, 0.40, 0.30), 0.45),
    },
    "stubble": {s: ((0.74, 0.66, 0.47), (0.60, 0.52, 0.38), 0.4) for s in ("summer", "autumn", "winter")},
    "winter crop": {"winter": ((0.38, 0.47, 0.26), (0.46, 0.39, 0.30), 0.7)},
}
ROOF_COLOURS: dict[str, RGB] = {
    "red": (0.64, 0.31, 0.23),
    "brown": (0.46, 0.33, 0.26),
    "dark grey": (0.30, 0.30, 0.32),
    "light grey": (0.68, 0.68, 0.66),
    "white": (0.86, 0.86, 0.84),
    "blue": (0.36, 0.47, 0.62),
    "green": (0.36, 0.46, 0.38),
}
VEHICLE_COLOURS: dict[str, RGB] = {
    "white": (0.90, 0.90, 0.90),
    "black": (0.08, 0.08, 0.09),
    "silver": (0.66, 0.67, 0.69),
    "grey": (0.40, 0.40, 0.42),
    "red": (0.66, 0.12, 0.11),
    "blue": (0.15, 0.26, 0.55),
    "yellow": (0.85, 0.72, 0.15),
}
TANK_COLOURS: dict[str, RGB] = {
    "white": (0.88, 0.88, 0.86),
    "light grey": (0.68, 0.69, 0.69),
    "green": (0.40, 0.50, 0.40),
}
SURFACES: dict[str, RGB] = {"asphalt": (0.30, 0.30, 0.31), "concrete": (0.62, 0.61, 0.58), "dirt": (0.56, 0.48, 0.38)}
SOILS: dict[str, dict[str, RGB]] = {
    # scene soil -> bare soil style -> colour ("" is the secondary colour textures mix in)
    "loam": {"dusty": (0.66, 0.58, 0.46), "dark": (0.45, 0.37, 0.29), "": (0.58, 0.49, 0.38)},
    "sandy": {"dusty": (0.80, 0.73, 0.58), "dark": (0.67, 0.58, 0.44), "": (0.75, 0.67, 0.51)},
    "rocky": {"dusty": (0.64, 0.61, 0.56), "dark": (0.45, 0.42, 0.38), "": (0.56, 0.53, 0.48)},
}
SOIL_SHOWS: dict[str, dict[str, float]] = {
    # scene soil -> theme -> how much the soil colours the bare ground between objects (0..1)
    "loam": {},
    "sandy": {"urban": 0.25, "suburban": 0.3, "industrial": 0.3, "rural": 0.45, "natural": 0.65},
    "rocky": {"urban": 0.2, "suburban": 0.25, "industrial": 0.25, "rural": 0.35, "natural": 0.55},
}
WATER: dict[str, RGB] = {"clear": (0.07, 0.16, 0.21), "murky": (0.15, 0.21, 0.17), "": (0.10, 0.18, 0.22)}
POOL: RGB = (0.30, 0.68, 0.76)

TEXTURE_AMPLITUDE: dict[ObjectClass, tuple[float, float, float, float]] = {
    # (fine, mid, coarse, mix of the secondary colour)
    C.BACKGROUND: (0.07, 0.05, 0.07, 0.45),
    C.GRASS: (0.07, 0.05, 0.08, 0.6),
    C.BARE_SOIL: (0.06, 0.07, 0.09, 0.5),
    C.CROP: (0.04, 0.03, 0.06, 0.0),
    C.FOREST: (0.06, 0.05, 0.07, 0.5),
    C.TREE: (0.08, 0.0, 0.04, 0.3),
    C.WATER: (0.01, 0.03, 0.08, 0.0),
    C.ROAD: (0.05, 0.025, 0.04, 0.0),
    C.PARKING_LOT: (0.05, 0.02, 0.03, 0.0),
    C.BUILDING: (0.025, 0.015, 0.02, 0.0),
    C.STORAGE_TANK: (0.015, 0.01, 0.02, 0.0),
    C.VEHICLE: (0.02, 0.0, 0.0, 0.0),
}


def _jitter(rgb: RGB, tone: float, spread: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(rgb) * (1.0 + spread * (2.0 * tone - 1.0)), 0.0, 1.0)


def _mix(a: RGB, b: RGB, w: float) -> RGB:
    return (a[0] + (b[0] - a[0]) * w, a[1] + (b[1] - a[1]) * w, a[2] + (b[2] - a[2]) * w)


def _ground(layout: Layout) -> tuple[RGB, RGB]:
    """Base and secondary colour of the bare ground between objects (class 0)."""
    base, second = DUSTY if layout.theme in ("urban", "industrial") else VEGETATION[layout.season]["ground"]
    w = SOIL_SHOWS[layout.soil].get(layout.theme, 0.0)
    soil = SOILS[layout.soil]
    return _mix(base, soil[""], w), _mix(second, soil["dusty"], w)


def _colours(f: Feature, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Base and secondary colour of one feature."""
    season = layout.season
    veg = VEGETATION[season]
    soil = SOILS[layout.soil]
    if f.cls == C.GRASS:
        base, second = veg["grass"]
        if f.kind == "meadow" and layout.soil != "loam":  # dry grass over sand or stones
            second = _mix(second, soil[""], 0.6 if layout.theme == "natural" else 0.35)
    elif f.cls in (C.TREE, C.FOREST):
        base, second = CONIFER if f.style == "conifer" else veg["deciduous"]
        if f.style == "mixed":
            second = CONIFER[0]
    elif f.cls == C.CROP:
        seasons = CROP_COLOURS[f.style]
        base, second, _ = seasons.get(season, next(iter(seasons.values())))
        if layout.soil != "loam":
            second = _mix(second, soil[""], 0.3)
    elif f.cls == C.BUILDING:
        base = second = ROOF_COLOURS[f.style]
    elif f.cls == C.VEHICLE:
        base = second = VEHICLE_COLOURS[f.style]
    elif f.cls == C.STORAGE_TANK:
        base = second = TANK_COLOURS[f.style]
    elif f.cls in (C.ROAD, C.PARKING_LOT):
        base = second = SURFACES[f.style]
        if f.style == "dirt":
            base = second = _mix(SURFACES["dirt"], soil["dusty"], 0.5)
    elif f.cls == C.WATER:
        base = second = POOL if f.kind == "pool" else WATER[f.style]
    else:
        base, second = soil.get(f.style, soil[""]), soil[""]
    spread = 0.05 if f.cls in (C.WATER, C.CROP) else 0.1
    return _jitter(base, f.tone, spread), _jitter(second, 1.0 - f.tone, spread)


# --------------------------------------------------------------------------------------------
# The renderer


@dataclass(frozen=True, eq=False)
class _Canvas:
    """Per-pixel working state shared by the class painters.

    ``albedo`` (RGB) is what the surface reflects; ``direct`` scales the sunlight it receives
    relative to flat open ground (facets, domes, self-shadowing).
    """

    layout: Layout
    labels: Labels
    conditions: Conditions
    textures: Textures
    sun: np.ndarray
    base: np.ndarray
    second: np.ndarray
    albedo: np.ndarray
    direct: np.ndarray

    @property
    def ppm(self) -> float:
        return 1.0 / self.layout.gsd

    def pixels(self, cls: ObjectClass) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flat indices, painted-feature indices and pixel-centre x, y of every pixel of ``cls``."""
        flat = np.flatnonzero(self.labels.class_map == cls)
        y, x = np.divmod(flat, self.layout.size)
        return flat, self.labels.index.ravel()[flat], x.astype(np.float32) + 0.5, y.astype(np.float32) + 0.5

    def table(self, values: dict[int, float], default: float = 0.0) -> np.ndarray:
        """A lookup table over painted features (1-based; entry 0 is the bare ground)."""
        out = np.full(len(self.labels.painted) + 1, default, dtype=np.float32)
        for i, v in values.items():
            out[i] = v
        return out

    def features(self, cls: ObjectClass) -> list[tuple[int, Feature]]:
        return [(i, f) for i, f in enumerate(self.labels.painted, start=1) if f.cls == cls]

    def scale_albedo(self, flat: np.ndarray, factor: np.ndarray) -> None:
        self.albedo.reshape(-1, 3)[flat] *= factor[:, None]

    def scale_direct(self, flat: np.ndarray, factor: np.ndarray) -> None:
        self.direct.ravel()[flat] *= factor


def render(layout: Layout, labels: Labels, conditions: Conditions, textures: Textures) -> np.ndarray:
    """The RGB image (uint8, shape (size, size, 3)) of a rasterised layout."""
    painted = labels.painted
    base = np.zeros((len(painted) + 1, 3), dtype=np.float32)
    second = np.zeros_like(base)
    base[0], second[0] = (np.asarray(c) for c in _ground(layout))
    for i, f in enumerate(painted, start=1):
        base[i], second[i] = _colours(f, layout)
    index, classes = labels.index, labels.class_map
    amp = np.array([TEXTURE_AMPLITUDE[C(c)] for c in range(len(C))], dtype=np.float32)[classes]
    ppm = 1.0 / layout.gsd
    mix = np.clip(0.5 + 0.7 * textures.fractal("mix", 60 * ppm) * amp[..., 3], 0.0, 1.0)
    albedo = base[index] + (second[index] - base[index]) * mix[..., None]
    albedo *= (
        1.0
        + amp[..., 0] * textures.white("fine")
        + amp[..., 1] * textures.fractal("mid", 4 * ppm)
        + amp[..., 2] * textures.fractal("coarse", 30 * ppm)
    )[..., None]
    canvas = _Canvas(
        layout,
        labels,
        conditions,
        textures,
        sun_vector(conditions),
        base,
        second,
        albedo,
        np.ones(index.shape, dtype=np.float32),
    )
    for painter in (_crops, _water, _soil, _surfaces, _roofs, _tanks, _trees, _forest, _vehicles, _marks):
        painter(canvas)
    return _expose(canvas, 1.0 - _shadows(canvas))


def _crops(cv: _Canvas) -> None:
    flat, idx, x, y = cv.pixels(C.CROP)
    if not flat.size:
        return
    crops = cv.features(C.CROP)
    angle = cv.table({i: f.rows[0] for i, f in crops})[idx]
    spacing = cv.table({i: f.rows[1] for i, f in crops}, 1.0)[idx]
    visible = cv.table({i: _row_visibility(f, cv.layout.season) for i, f in crops})[idx]
    along = x * np.cos(angle) + y * np.sin(angle)
    rows = 0.5 + 0.5 * np.cos(2 * np.pi * along / spacing)
    visible *= np.abs(np.sinc(1.0 / spacing))  # rows finer than a pixel average out, as a sensor would
    weight = (1.0 - visible * (1.0 - rows**0.7))[:, None]
    albedo = cv.albedo.reshape(-1, 3)
    albedo[flat] = albedo[flat] * weight + cv.second[idx] * (1.0 - weight)
    tram = np.abs((along / cv.ppm) % 18.0 - 9.0) < max(0.35, 0.5 / cv.ppm)
    streak_m = 2.5
    streaks = cv.textures.rng("crop-streaks").uniform(-1.0, 1.0, 4096)
    streak = np.interp((along / cv.ppm / streak_m) % 4096, np.arange(4096), streaks)
    patches = cv.textures.fractal("crop", 12 * cv.ppm).ravel()[flat]
    cv.scale_albedo(flat, np.where(tram, 0.88, 1.0) * (1.0 + 0.04 * patches + 0.035 * streak))


def _row_visibility(f: Feature, season: str) -> float:
    seasons = CROP_COLOURS[f.style]
    return seasons.get(season, next(iter(seasons.values())))[2]


def _water(cv: _Canvas) -> None:
    water = cv.labels.class_map == C.WATER
    if not water.any():
        return
    flat = np.flatnonzero(water)
    mask = water.astype(np.float32)
    deep = _smooth(mask, 15.0 * cv.ppm).ravel()[flat]
    shore = np.clip(1.0 - _smooth(mask, 2.5 * cv.ppm).ravel()[flat], 0.0, 1.0) ** 1.5
    y, x = np.divmod(flat, cv.layout.size)
    gx, gy = cv.textures.rng("water-gradient").normal(size=2) / cv.layout.size
    gradient = 1.0 + 0.12 * np.clip(gx * x + gy * y, -1, 1)
    ripple = 1.0 + 0.02 * cv.textures.fractal("ripple", 1.5 * cv.ppm, octaves=2).ravel()[flat]
    albedo = cv.albedo.reshape(-1, 3)
    albedo[flat] = albedo[flat] * (gradient * (1.15 - 0.35 * deep) * ripple)[:, None] + shore[:, None] * np.array(
        [0.14, 0.13, 0.08], dtype=np.float32
    )
    cv.scale_direct(flat, np.full(flat.shape, 0.6, dtype=np.float32))


def _soil_density(cv: _Canvas) -> np.ndarray:
    """Per painted feature (entry 0: the bare ground), how much of the scene's soil shows (0..1)."""
    shows = SOIL_SHOWS[cv.layout.soil].get(cv.layout.theme, 0.0)
    values: dict[int, float] = {}
    for i, f in enumerate(cv.labels.painted, start=1):
        if f.cls == C.BARE_SOIL:
            values[i] = 1.0
        elif f.cls == C.ROAD and f.style == "dirt":
            values[i] = 0.5
        elif f.cls == C.GRASS and f.kind == "meadow" and cv.layout.soil != "loam":
            values[i] = 0.3 if cv.layout.theme == "natural" else 0.12
    table = cv.table(values)
    table[0] = shows
    return table


def _soil(cv: _Canvas) -> None:
    """Sand ripples and dunes, stones and boulders, or clods, where the scene's soil shows."""
    density = _soil_density(cv)[cv.labels.index.ravel()]
    flat = np.flatnonzero(density > 0)
    if not flat.size:
        return
    density = density[flat]
    y, x = np.divmod(flat, cv.layout.size)
    x, y = x.astype(np.float32) + 0.5, y.astype(np.float32) + 0.5
    ppm, soil = cv.ppm, cv.layout.soil
    if soil == "sandy":
        rng = cv.textures.rng("sand")
        angle, wavelength = rng.uniform(0, np.pi), rng.uniform(0.35, 0.8) * ppm
        warp = cv.textures.fractal("sand-warp", 3.0 * ppm, octaves=2).ravel()[flat]
        along = x * np.cos(angle) + y * np.sin(angle) + 0.6 * wavelength * warp
        ripples = np.cos(2 * np.pi * along / wavelength) * abs(np.sinc(1.0 / wavelength))
        dunes = cv.textures.fractal("dunes", 20.0 * ppm, octaves=3)
        gy, gx = np.gradient(dunes)
        sx, sy, _ = cv.sun
        relief = (gx.ravel()[flat] * sx + gy.ravel()[flat] * sy) * 20.0 * ppm * 0.05
        cv.scale_albedo(flat, 1.0 + density * (0.05 * ripples))
        cv.scale_direct(flat, np.clip(1.0 + density * relief, 0.7, 1.3))
        return
    if soil == "rocky":
        sx, sy, sz = cv.sun
        gravel = cv.textures.white("gravel").ravel()[flat]
        cv.scale_albedo(flat, 1.0 + (0.04 + 0.08 * _detail(cv)) * density * np.clip(gravel, -2.5, 2.5))
        for name, spacing_m, chance, size_range in (
            ("stones", 0.7, 0.7, (0.2, 0.75)),
            ("boulders", 4.0, 0.1, (0.3, 0.75)),
        ):
            spacing = spacing_m * ppm
            if spacing < 3.0:
                if name == "stones":  # unresolved: darker mottling where stones and their shadows gather
                    mottle = cv.textures.fractal("pebbles", 1.5, octaves=2).ravel()[flat]
                    cv.scale_albedo(flat, 1.0 - 0.06 * density * np.clip(mottle, 0.0, 2.5))
                continue
            _stones(cv, flat, x, y, density * chance, spacing, size_range, name, (sx, sy, sz))
        return
    if _detail(cv) > 0:  # loam: clods and crumbs
        clods = cv.textures.fractal("clods", 0.3 * ppm, octaves=2).ravel()[flat]
        cv.scale_albedo(flat, 1.0 + 0.07 * _detail(cv) * density * clods)


def _stones(
    cv: _Canvas,
    flat: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    chance: np.ndarray,
    spacing: float,
    size_range: tuple[float, float],
    name: str,
    sun: tuple[float, float, float],
) -> None:
    """One stone per grid cell (where drawn), a lit dome with a short shadow away from the sun."""
    ox, oy = cv.textures.origin()
    tx, ty = x + ox, y + oy
    n = int((cv.layout.size + 2 * cv.textures.pad) / spacing) + 2
    cells = cv.textures.rng(name).uniform(0.0, 1.0, (n, n, 4)).astype(np.float32)
    gx, gy = (np.floor(tx / spacing).astype(np.int64), np.floor(ty / spacing).astype(np.int64))
    c = cells[np.clip(gy, 0, n - 1), np.clip(gx, 0, n - 1)]
    r = (size_range[0] + (size_range[1] - size_range[0]) * c[:, 2]) * 0.5 * spacing
    cx = (gx + 0.5 + (c[:, 0] - 0.5) * (1.0 - 2.0 * r / spacing)) * spacing
    cy = (gy + 0.5 + (c[:, 1] - 0.5) * (1.0 - 2.0 * r / spacing)) * spacing
    present = c[:, 3] < chance
    rough = 1.0 + 0.35 * cv.textures.fractal(f"{name}-outline", max(0.25 * spacing, 1.5), octaves=2).ravel()[flat]
    dx, dy = (tx - cx) / r, (ty - cy) / r
    stone = present & (dx * dx + dy * dy < rough * rough)
    sx, sy, sz = sun
    horizontal = max(math.hypot(sx, sy), 1e-6)
    reach = min(1.6, 0.6 * horizontal / max(sz, 1e-3))  # shadow length in radii
    sdx, sdy = dx + reach * sx / horizontal, dy + reach * sy / horizontal
    shadow = present & ~stone & (sdx * sdx + sdy * sdy < rough * rough)
    tone = 0.8 + 0.4 * c[:, 2] + 0.1 * (c[:, 0] - 0.5)
    grey = np.float32([0.56, 0.55, 0.52])
    albedo = cv.albedo.reshape(-1, 3)
    albedo[flat[stone]] = (albedo[flat[stone]] * 0.55 + grey * 0.45) * tone[stone][:, None]
    bulge = np.clip(dx / rough, -1, 1), np.clip(dy / rough, -1, 1)
    light = np.where(stone, _dome(cv, *bulge, 0.6), np.where(shadow, 0.35, 1.0))
    cv.scale_direct(flat, light.astype(np.float32))


def _surfaces(cv: _Canvas) -> None:
    """Mowing stripes on lawns and parks, patched asphalt (details that show at fine pixel sizes)."""
    ppm = cv.ppm
    if ppm < 2.0:
        return
    flat, idx, x, y = cv.pixels(C.GRASS)
    if flat.size:
        mown = cv.table({i: 1.0 for i, f in cv.features(C.GRASS) if f.kind in ("lawn", "park")})[idx] > 0
        angle = cv.table({i: f.tone * np.pi for i, f in cv.features(C.GRASS)})[idx]
        along = (x * np.cos(angle) + y * np.sin(angle)) / (1.0 * ppm)
        stripes = np.where(np.floor(along) % 2 == 0, 1.04, 0.96)
        cv.scale_albedo(flat, np.where(mown, stripes, 1.0).astype(np.float32))
    for cls in (C.ROAD, C.PARKING_LOT):
        flat, idx, _, _ = cv.pixels(cls)
        if not flat.size:
            continue
        paved = cv.table({i: 1.0 for i, f in cv.features(cls) if f.style == "asphalt"})[idx] > 0
        patches = cv.textures.fractal("asphalt-patches", 3.0 * ppm, octaves=2).ravel()[flat]
        grit = cv.textures.white("asphalt-grit").ravel()[flat]
        factor = np.where(patches > 1.3, 0.88, 1.0) * (1.0 + 0.05 * _detail(cv) * grit)
        cv.scale_albedo(flat, np.where(paved, factor, 1.0).astype(np.float32))


def _roofs(cv: _Canvas) -> None:
    wings = [(r, f.roof, f.kind == "warehouse") for _, f in cv.features(C.BUILDING) for r in f.rects]
    owners = [f for _, f in cv.features(C.BUILDING) for _ in f.rects]
    flat, _, x, y = cv.pixels(C.BUILDING)
    if not flat.size or not wings:
        return
    wing_map = burn([(r.polygon(), k) for k, (r, _, _) in enumerate(wings, start=1)], cv.layout.size, "int32")
    w = wing_map.ravel()[flat]
    table = np.zeros((len(wings) + 1, 7), dtype=np.float32)
    for k, (r, roof, metal) in enumerate(wings, start=1):
        table[k] = (r.cx, r.cy, r.angle, r.half_len, r.half_wid, {"flat": 0, "gable": 1, "hip": 2}[roof], metal)
    cx, cy, angle, hl, hw, kind, _ = table[w].T
    ca, sa = np.cos(angle), np.sin(angle)
    u = (x - cx) * ca + (y - cy) * sa
    v = -(x - cx) * sa + (y - cy) * ca
    end = (kind == 2) & (np.abs(u) - (hl - hw) > np.abs(v))
    # Horizontal direction of each facet's outward normal: across the ridge, or along it at hip ends.
    nx = np.where(end, np.sign(u) * ca, -np.sign(v) * sa)
    ny = np.where(end, np.sign(u) * sa, np.sign(v) * ca)
    pitch = math.radians(32)
    sx, sy, sz = cv.sun
    lambert = np.maximum(0.0, math.sin(pitch) * (nx * sx + ny * sy) + math.cos(pitch) * sz) / sz
    pitched = (kind > 0) & (w > 0)
    cv.scale_direct(flat, np.where(pitched, lambert, 1.0))
    ppm = cv.ppm
    edge = np.minimum(hl - np.abs(u), hw - np.abs(v))
    factor = np.where(~pitched & (w > 0) & (edge < max(0.6 * ppm, 1.0)), 0.8, 1.0)
    factor *= np.where(pitched & ~end & (np.abs(v) < max(0.2 * ppm, 0.5)), 0.9, 1.0)
    if ppm >= 2.4:
        across = np.where(end, np.abs(u) - (hl - hw), np.abs(v))
        factor *= np.where(pitched, 1.0 + 0.05 * np.sin(2 * np.pi * across / (0.33 * ppm)), 1.0)
    factor *= 1.0 + 0.03 * cv.textures.fractal("roof", 2.5 * ppm).ravel()[flat]
    metal = table[w, 6] > 0
    if ppm >= 1.5 and metal.any():
        seams = np.abs((v / ppm) % 7.5 - 3.75) > 3.75 - max(0.12, 0.5 / ppm)
        ribs = 1.0 + (0.04 * np.sin(2 * np.pi * u / (0.9 * ppm)) if ppm >= 2.5 else 0.0)
        factor *= np.where(metal, np.where(seams, 0.88, 1.0) * ribs, 1.0)
    if ppm >= 2.0:  # gutters along the eaves
        factor *= np.where(pitched & ~end & (edge < max(0.22 * ppm, 0.6)), 0.82, 1.0)
    if ppm >= 5.0:  # staggered tile joints along each course
        course = np.floor(np.where(end, np.abs(u) - (hl - hw), np.abs(v)) / (0.33 * ppm))
        along = np.where(end, v, u) / (0.24 * ppm) + 0.5 * (course % 2)
        factor *= np.where(pitched & ~metal & (np.abs(along % 1.0 - 0.5) > 0.4), 0.93, 1.0)
        factor *= 1.0 + 0.06 * cv.textures.fractal("roof-stains", 1.5 * ppm).ravel()[flat] * pitched
    cv.scale_albedo(flat, factor)
    if ppm >= 3.0:
        _roof_items(cv, flat, w, u, v, pitched, [(r, f.key, f.kind) for (r, _, _), f in zip(wings, owners)])


ROOF_ITEMS = {
    # kind -> (colour, half length m, half width m)
    "solar": ((0.09, 0.11, 0.17), (1.6, 3.5), (0.9, 1.8)),
    "skylight": ((0.16, 0.18, 0.21), (0.4, 0.6), (0.35, 0.5)),
    "chimney": ((0.42, 0.27, 0.22), (0.3, 0.45), (0.25, 0.35)),
    "vent": ((0.55, 0.55, 0.55), (0.15, 0.25), (0.15, 0.25)),
}


def _roof_items(
    cv: _Canvas, flat: np.ndarray, w: np.ndarray, u: np.ndarray, v: np.ndarray, pitched: np.ndarray, wings: list
) -> None:
    """Solar panels, skylights, chimneys and vents on pitched roofs, seeded per building (the same on both dates)."""
    ppm = cv.ppm
    items: list[tuple[int, float, float, float, float, int]] = []
    names = list(ROOF_ITEMS)
    for k, (rect, key, kind) in enumerate(wings, start=1):
        if kind not in ("house", "barn", "apartment block") or rect.half_wid < 2.0 * ppm:
            continue
        rng = cv.textures.rng(f"roof-items-{key}-{k}")
        for _ in range(int(rng.integers(0, 4))):
            name = names[int(rng.choice(len(names), p=[0.25, 0.3, 0.3, 0.15]))]
            _, hl_m, hw_m = ROOF_ITEMS[name]
            hu, hv = rng.uniform(*hl_m) * ppm, rng.uniform(*hw_m) * ppm
            room_u, room_v = rect.half_len - hu - 0.5 * ppm, rect.half_wid - hv - 0.5 * ppm
            if room_u <= 0 or room_v <= 0.3 * ppm:
                continue
            side = 1.0 if rng.uniform() < 0.5 else -1.0
            u0 = rng.uniform(-room_u, room_u)
            v0 = side * (hv + 0.3 * ppm + rng.uniform(0, max(room_v - hv - 0.3 * ppm, 0.0)))
            items.append((k, u0, v0, hu, hv, names.index(name)))
    if not items:
        return
    albedo = cv.albedo.reshape(-1, 3)
    for k, u0, v0, hu, hv, item in items:
        on = (w == k) & pitched & (np.abs(u - u0) < hu) & (np.abs(v - v0) < hv)
        if not on.any():
            continue
        colour = np.asarray(ROOF_ITEMS[names[item]][0], dtype=np.float32)
        du, dv = (u[on] - u0) / hu, (v[on] - v0) / hv
        if names[item] == "solar":  # cells with light frames
            grid = (np.abs(((u[on] - u0) / ppm) % 1.0 - 0.5) > 0.46) | (
                np.abs(((v[on] - v0) / ppm) % 0.85 - 0.42) > 0.39
            )
            shade = np.where(grid, 2.8, 1.0)
        else:
            shade = np.where((np.abs(du) > 0.8) | (np.abs(dv) > 0.8), 1.3, 1.0)
        albedo[flat[on]] = colour * shade[:, None]


def _disc_table(cv: _Canvas, cls: ObjectClass) -> np.ndarray:
    table = np.zeros((len(cv.labels.painted) + 1, 4), dtype=np.float32)
    table[:, 2] = 1.0
    for i, f in cv.features(cls):
        d = f.discs[0]
        table[i] = (d.cx, d.cy, max(d.r, 0.5), 1.0 if f.roof == "floating" else 0.0)
    return table


def _dome(cv: _Canvas, dx: np.ndarray, dy: np.ndarray, bulge: float) -> np.ndarray:
    """Relative sunlight on a dome, at unit-radius offsets (dx, dy) from its centre."""
    d2 = np.clip(dx * dx + dy * dy, 0.0, 1.0)
    nz = np.sqrt(1.0 - bulge * bulge * d2)
    sx, sy, sz = cv.sun
    return np.maximum(0.0, bulge * (dx * sx + dy * sy) + nz * sz) / sz


def _tanks(cv: _Canvas) -> None:
    flat, idx, x, y = cv.pixels(C.STORAGE_TANK)
    if not flat.size:
        return
    cx, cy, r, floating = _disc_table(cv, C.STORAGE_TANK)[idx].T
    dx, dy = (x - cx) / r, (y - cy) / r
    d = np.hypot(dx, dy)
    inner = np.maximum(r - max(0.7 * cv.ppm, 1.0), 0.5)
    sx, sy, sz = cv.sun
    horizontal = math.hypot(sx, sy)
    wall = 2.5 * cv.ppm * horizontal / sz
    towards_x, towards_y = x - cx + wall * sx / horizontal, y - cy + wall * sy / horizontal
    deck = d * r < inner
    in_shadow = deck & (np.hypot(towards_x, towards_y) > inner)
    is_floating = floating > 0
    rim_line = d * r > r - max(0.35 * cv.ppm, 0.8)
    cv.scale_direct(flat, np.where(is_floating, np.where(in_shadow, 0.0, 1.0), _dome(cv, dx, dy, 0.18)))
    cv.scale_albedo(flat, np.where(is_floating, np.where(deck, 0.8, 1.05), np.where(rim_line, 0.8, 1.0 - 0.06 * d)))


def _trees(cv: _Canvas) -> None:
    """Single crowns: lobed domes of leaf clumps (broadleaves) or starred cones (conifers)."""
    flat, idx, x, y = cv.pixels(C.TREE)
    if not flat.size:
        return
    cx, cy, r, _ = _disc_table(cv, C.TREE)[idx].T
    conifer = cv.table({i: 1.0 for i, f in cv.features(C.TREE) if f.style == "conifer"})[idx] > 0
    dx, dy = (x - cx) / r, (y - cy) / r
    d = np.clip(np.hypot(dx, dy), 0.0, 1.0)
    clumps = cv.textures.fractal("leaves", 0.8 * cv.ppm, octaves=2).ravel()[flat]
    fine = cv.textures.fractal("leaves-fine", 0.3 * cv.ppm, octaves=2).ravel()[flat] if _detail(cv) > 0 else 0.0
    needles = cv.textures.fractal("needles", 0.25 * cv.ppm, octaves=2).ravel()[flat]
    angle = np.arctan2(dy, dx)
    phase = (cx * 0.37 + cy * 0.61) % (2 * np.pi)
    branches = 0.5 + 0.5 * np.cos(9.0 * angle + phase)
    cone = _slope_light(cv, dx / np.maximum(d, 1e-3), dy / np.maximum(d, 1e-3), np.full_like(d, 0.8))
    cv.scale_direct(flat, np.where(conifer, cone * (1.0 - 0.45 * branches * d), _dome(cv, dx, dy, 0.75)))
    leafy = (1.0 - 0.35 * d**3) * (1.0 + 0.12 * clumps + 0.1 * _detail(cv) * fine)
    spiky = (1.0 - 0.25 * d**2) * (1.0 + 0.1 * needles) * (1.0 - 0.25 * branches * d)
    cv.scale_albedo(flat, np.where(conifer, spiky, leafy))


def _detail(cv: _Canvas) -> float:
    """0 at 0.5 m pixels and coarser, 1 at 0.15 m and finer: how much sub-metre detail shows."""
    return float(np.clip((cv.ppm - 2.0) / 4.7, 0.0, 1.0))


def _slope_light(cv: _Canvas, ux: np.ndarray, uy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Relative sunlight on a surface tilted by ``slope`` (sine of its angle) outwards along (ux, uy)."""
    sx, sy, sz = cv.sun
    nz = np.sqrt(np.clip(1.0 - slope * slope, 0.0, 1.0))
    return np.maximum(0.0, slope * (ux * sx + uy * sy) + nz * sz) / sz


def _forest(cv: _Canvas) -> None:
    """Individual crowns of several species over a dark forest floor (``canopy.py``)."""
    flat, idx, x, y = cv.pixels(C.FOREST)
    if not flat.size:
        return
    ids = {name: k for k, name in enumerate(canopy.STYLES)}
    style = cv.table({i: ids.get(f.style, ids[""]) for i, f in cv.features(C.FOREST)})[idx].astype(np.int64)
    crowns = canopy.crowns(x, y, style, cv.labels.class_map == C.FOREST, cv.textures, cv.ppm, cv.sun)
    season = cv.layout.season
    width = max(len(sp.colours[season]) for sp in canopy.SPECIES)
    palette = np.array(
        [[sp.colours[season][k % len(sp.colours[season])] for k in range(width)] for sp in canopy.SPECIES],
        dtype=np.float32,
    )
    counts = np.array([len(sp.colours[season]) for sp in canopy.SPECIES], dtype=np.int64)
    lit = crowns.crown >= 0
    species = np.maximum(crowns.species, 0)
    draw = crowns.crown.astype(np.float64)
    pick = np.floor(((draw * 0.6180339887) % 1.0) * counts[species]).astype(np.int64)
    shade_of_crown = (0.82 + 0.36 * ((draw * 0.7548776662) % 1.0)).astype(np.float32)
    colour = palette[species, pick] * shade_of_crown[:, None]
    cone = np.array([sp.cone for sp in canopy.SPECIES])[species]
    clumps = cv.textures.fractal("leaves", max(0.6 * cv.ppm, 1.5), octaves=2).ravel()[flat]
    needles = cv.textures.fractal("needles", 0.25 * cv.ppm, octaves=2).ravel()[flat]
    texture = np.where(cone, 1.0 + 0.12 * needles, 1.0 + (0.1 + 0.08 * _detail(cv)) * clumps)
    t = crowns.t
    albedo_crown = colour * (texture * (1.0 - 0.28 * t**3))[:, None]
    floor = np.asarray(canopy.FLOOR, dtype=np.float32) * (1.0 + 0.1 * clumps)[:, None]
    albedo = cv.albedo.reshape(-1, 3)
    albedo[flat] = np.where(lit[:, None], albedo_crown, floor)
    slope = np.where(cone, 0.82, 0.8 * t)
    light = _slope_light(cv, crowns.ux, crowns.uy, slope.astype(np.float32))
    cv.scale_direct(flat, np.where(lit, light, 0.3) * (1.0 - 0.8 * crowns.shade))


def _vehicles(cv: _Canvas) -> None:
    flat, idx, x, y = cv.pixels(C.VEHICLE)
    if not flat.size:
        return
    table = np.zeros((len(cv.labels.painted) + 1, 6), dtype=np.float32)
    table[:, 3:5] = 1.0
    for i, f in cv.features(C.VEHICLE):
        r = f.rects[0]
        table[i] = (r.cx, r.cy, r.angle, r.half_len, r.half_wid, 1.0 if f.kind == "truck" else 0.0)
    cx, cy, angle, hl, hw, truck = table[idx].T
    u = ((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)) / hl
    v = (-(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)) / hw
    au, av = np.abs(u), np.abs(v)
    # Cars (front at +u): windscreen narrowing to the roof, rear window, side windows along the cabin,
    # darker sills, rounded corners; the bonnet and boot slope away from the roof.
    windscreen = (u > 0.18) & (u < 0.45) & (av < 0.86 - 0.25 * (u - 0.18) / 0.27)
    rear = (u > -0.78) & (u < -0.58) & (av < 0.8)
    side = (u > -0.58) & (u < 0.18) & (av > 0.68) & (av < 0.86)
    glass = windscreen | rear | side
    corner = (au > 0.82) & (av > 0.55) & (((au - 0.82) / 0.18) ** 2 + ((av - 0.55) / 0.45) ** 2 > 1.0)
    car = np.where(glass, 0.25, np.where(av > 0.86, 0.78, 1.0))
    car = np.where(corner, 0.45, car)
    slope = np.where((u > 0.45) | (u < -0.78), 0.3 * np.sign(u), 0.0)
    roof = (u > -0.58) & (u < 0.18) & (av < 0.68)
    fine = _detail(cv)
    car = car * np.where(roof, 1.0 + 0.08 * fine * (1.0 - av), 1.0)
    lorry = np.where((u > 0.62) & (u < 0.7), 0.3, 1.0)
    lorry = np.where((u > 0.9) & (av < 0.85), 0.3, lorry)  # the cab's windscreen
    if fine > 0:  # trailer roof ribs
        ribs = np.abs(((u * hl / cv.ppm) % 0.6) - 0.3) > 0.25
        lorry = np.where((u < 0.62) & ribs, lorry * (1.0 - 0.08 * fine), lorry)
    is_truck = truck > 0
    trailer = flat[is_truck & (u < 0.62)]
    cv.albedo.reshape(-1, 3)[trailer] = np.array([0.78, 0.78, 0.76], dtype=np.float32)
    cv.scale_albedo(flat, np.where(is_truck, lorry, car))
    ca, sa = np.cos(angle), np.sin(angle)
    tilt = _slope_light(cv, np.sign(slope) * ca, np.sign(slope) * sa, np.abs(slope).astype(np.float32))
    cv.scale_direct(flat, np.where(is_truck, 1.0, tilt))


def _marks(cv: _Canvas) -> None:
    """Painted lines (road dashes, parking stalls), only where their owner is on top."""
    shapes = [(f.marks, i) for i, f in enumerate(cv.labels.painted, 1) if f.marks is not None and not f.marks.is_empty]
    if not shapes:
        return
    owner = burn(shapes, cv.layout.size, "int32", all_touched=True)
    flat = np.flatnonzero((owner > 0) & (owner == cv.labels.index))
    on_roof = cv.labels.class_map.ravel()[flat] == C.BUILDING
    paint = np.where(on_roof[:, None], np.float32([0.74, 0.74, 0.73]), np.float32([0.85, 0.85, 0.82]))
    strength = min(1.0, 0.35 * cv.ppm)
    albedo = cv.albedo.reshape(-1, 3)
    albedo[flat] += (paint - albedo[flat]) * strength


def _shadows(cv: _Canvas) -> np.ndarray:
    """Soft shadow cover in [0, 1]: a pixel is shaded by anything taller whose shadow falls on it."""
    sx, sy, sz = cv.sun
    horizontal = math.hypot(sx, sy)
    per_metre = cv.ppm * horizontal / sz
    ux, uy = -sx / horizontal, -sy / horizontal
    casters = sorted((f for f in cv.labels.painted if f.height_m > 0), key=lambda f: f.height_m)
    shapes = _swept(casters, ux * per_metre, uy * per_metre)
    cast = burn(shapes, cv.layout.size, "float32")
    own = cv.table({i: f.height_m for i, f in enumerate(cv.labels.painted, 1)})[cv.labels.index]
    shadow = (cast > own + 0.5).astype(np.float32)
    return np.clip(ndimage.gaussian_filter(shadow, max(0.15 * cv.ppm, 0.6), truncate=2.5), 0.0, 1.0)


def _swept(casters: list[Feature], ux: float, uy: float) -> list[tuple[BaseGeometry, float]]:
    """The ground each caster's shadow covers (its footprint swept by height x (ux, uy)), with its height."""
    outlines: list[np.ndarray] = []
    heights: list[float] = []
    shapes: list[tuple[BaseGeometry, float]] = []
    circle = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for f in casters:
        shift = np.array([ux, uy]) * f.height_m
        if f.cls == C.FOREST:
            rings = [
                np.asarray(ring.coords)
                for part in getattr(f.geometry, "geoms", [f.geometry])
                for ring in (part.exterior, *part.interiors)
            ]
            quads = np.concatenate([np.stack([r[:-1], r[1:], r[1:] + shift, r[:-1] + shift], axis=1) for r in rings])
            shapes.extend((g, f.height_m) for g in [f.geometry, *shapely.polygons(quads)])
            continue
        if f.cls == C.TREE:
            d = f.discs[0]
            crown = np.column_stack([d.cx + d.r * np.cos(circle), d.cy + d.r * np.sin(circle)])
            outlines.append(np.vstack([crown + 0.35 * shift, crown + 0.9 * shift]))
            trunk = max(0.15 * float(np.hypot(*shift)) / max(f.height_m, 1e-6), 0.35)
            outlines.append(
                _pad(
                    np.array([[d.cx - trunk, d.cy], [d.cx + trunk, d.cy], [d.cx, d.cy - trunk], [d.cx, d.cy + trunk]])
                    + np.outer([0.0, 0.4], shift)[:, None, :]
                )
            )
            heights += [f.height_m, f.height_m]
            continue
        parts = (
            [r.corners() for r in f.rects]
            if f.rects
            else [np.column_stack([d.cx + d.r * np.cos(circle), d.cy + d.r * np.sin(circle)]) for d in f.discs]
        )
        for p in parts:
            outlines.append(_pad(np.stack([p, p + shift])))
            heights.append(f.height_m)
    if outlines:
        hulls = shapely.convex_hull(shapely.multipoints(np.stack(outlines)))
        shapes.extend(zip(hulls, heights))
    shapes.sort(key=lambda gh: gh[1])
    return shapes


def _pad(points: np.ndarray) -> np.ndarray:
    """(k, n, 2) point groups as one (32, 2) point set (repeating the last point) for hulls."""
    flat = points.reshape(-1, 2)
    return np.pad(flat, ((0, 32 - len(flat)), (0, 0)), mode="edge")


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur, done at reduced resolution when the blur is wide."""
    factor = max(1, int(sigma // 3))
    if factor == 1:
        return ndimage.gaussian_filter(image, sigma)
    h, w = image.shape
    padded = np.pad(image, ((0, -h % factor), (0, -w % factor)), mode="edge")
    small = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    return ndimage.zoom(ndimage.gaussian_filter(small, sigma / factor), factor, order=1)[:h, :w]


def _expose(cv: _Canvas, lit: np.ndarray) -> np.ndarray:
    """Sky and sun light, atmosphere and sensor: from albedo to 8-bit RGB."""
    c = cv.conditions
    look = c.look
    share = looks.direct_share(c.sun_elevation)
    sky = np.array([0.9, 0.97, 1.12], dtype=np.float32) * c.ambient
    sun = looks.low_sun_tint(c.sun_elevation) * np.float32((1.0 - c.ambient) * share)
    radiance = cv.albedo * (sky + (lit * np.maximum(cv.direct, 0.0))[..., None] * sun)
    radiance /= np.float32(c.ambient + (1.0 - c.ambient) * share)  # flat sunlit ground keeps its brightness
    size = cv.layout.size
    ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    radiance *= (1.0 - 2.0 * c.vignette * (ramp[None, :] ** 2 + ramp[:, None] ** 2))[..., None]
    radiance *= c.exposure * np.asarray(c.white_balance, dtype=np.float32)
    radiance = looks.mix_colours(radiance, look)
    patches = None
    if look.haze_patchiness > 0 and look.haze > 0:
        patches = Textures(look.haze_seed, size).fractal("haze", size / 2.0, octaves=3)
    radiance = looks.hazed(radiance, c.haze, look, patches)
    radiance = np.clip(radiance, 0.0, 1.0) ** c.gamma
    radiance = looks.tone(radiance, look)
    for channel in range(3):
        radiance[..., channel] = ndimage.gaussian_filter(radiance[..., channel], c.blur * look.blur_scale, truncate=2.5)
    radiance = looks.sharpen_and_bleed(radiance, look)
    noise = np.random.default_rng(c.noise_seed).standard_normal(radiance.shape, dtype=np.float32)
    noise = looks.grain(noise, look)
    noise *= c.noise * look.noise_scale
    radiance *= 255.0
    radiance += noise
    radiance += 0.5
    np.clip(radiance, 0.0, 255.0, out=radiance)
    return looks.jpeg(radiance.astype(np.uint8), look)
