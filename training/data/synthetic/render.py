"""Drawing a rasterised layout as an aerial-looking RGB image (numpy and scipy only).

Per pixel: a base colour from the feature on top (by class, style, season and a random tone),
modulated by fractal textures; structure per class computed from the feature's geometry (crop
rows and tramlines, two-tone gable and four-facet hip roofs, domed tree crowns, cellular forest
canopy, tank rims and floating-roof shadows, car windows, painted road and parking lines, a water
depth gradient); cast shadows swept from every building, tank, tree, vehicle and forest edge
away from the sun by its height; then sky and sun light, exposure, white balance, haze,
vignetting, the sensor's blur and noise.

Everything is vectorised over pixels; the only Python loops run over features to build lookup
tables and shadow polygons.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry.base import BaseGeometry

from training.data.synthetic.classes import ObjectClass
from training.data.synthetic.graph import Feature, Layout
from training.data.synthetic.labels import Labels, burn
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


def draw_conditions(rng: np.random.Generator) -> Conditions:
    """Random but plausible acquisition conditions."""
    return Conditions(
        sun_azimuth=float(rng.uniform(90, 270) if rng.uniform() < 0.85 else rng.uniform(0, 360)),
        sun_elevation=float(rng.uniform(25, 65)),
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
SOILS: dict[str, RGB] = {"dusty": (0.66, 0.58, 0.46), "dark": (0.45, 0.37, 0.29), "": (0.58, 0.49, 0.38)}
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


def _colours(f: Feature, season: str) -> tuple[np.ndarray, np.ndarray]:
    """Base and secondary colour of one feature."""
    veg = VEGETATION[season]
    if f.cls == C.GRASS:
        base, second = veg["grass"]
    elif f.cls in (C.TREE, C.FOREST):
        base, second = CONIFER if f.style == "conifer" else veg["deciduous"]
        if f.style == "mixed":
            second = CONIFER[0]
    elif f.cls == C.CROP:
        seasons = CROP_COLOURS[f.style]
        base, second, _ = seasons.get(season, next(iter(seasons.values())))
    elif f.cls == C.BUILDING:
        base = second = ROOF_COLOURS[f.style]
    elif f.cls == C.VEHICLE:
        base = second = VEHICLE_COLOURS[f.style]
    elif f.cls == C.STORAGE_TANK:
        base = second = TANK_COLOURS[f.style]
    elif f.cls in (C.ROAD, C.PARKING_LOT):
        base = second = SURFACES[f.style]
    elif f.cls == C.WATER:
        base = second = POOL if f.kind == "pool" else WATER[f.style]
    else:
        base, second = SOILS[f.style], SOILS[""]
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
    ground = DUSTY if layout.theme in ("urban", "industrial") else VEGETATION[layout.season]["ground"]
    base[0], second[0] = (np.asarray(c) for c in ground)
    for i, f in enumerate(painted, start=1):
        base[i], second[i] = _colours(f, layout.season)
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
    for painter in (_crops, _water, _roofs, _tanks, _trees, _forest, _vehicles, _marks):
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


def _roofs(cv: _Canvas) -> None:
    wings = [(r, f.roof, f.kind == "warehouse") for _, f in cv.features(C.BUILDING) for r in f.rects]
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
    cv.scale_albedo(flat, factor)


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
    flat, idx, x, y = cv.pixels(C.TREE)
    if not flat.size:
        return
    cx, cy, r, _ = _disc_table(cv, C.TREE)[idx].T
    dx, dy = (x - cx) / r, (y - cy) / r
    d = np.clip(np.hypot(dx, dy), 0.0, 1.0)
    leaves = 1.0 + 0.12 * cv.textures.fractal("leaves", 0.8 * cv.ppm, octaves=2).ravel()[flat]
    cv.scale_direct(flat, _dome(cv, dx, dy, 0.75))
    cv.scale_albedo(flat, (1.0 - 0.35 * d**3) * leaves)


def _forest(cv: _Canvas) -> None:
    """A cellular canopy: each pixel belongs to the nearest of jittered crown centres."""
    flat, _, x, y = cv.pixels(C.FOREST)
    if not flat.size:
        return
    ox, oy = cv.textures.origin()
    tx, ty = x + ox, y + oy
    spacing = max(6.0 * cv.ppm, 3.0)
    n = int((cv.layout.size + 2 * cv.textures.pad) / spacing) + 3
    rng = cv.textures.rng("canopy")
    jitter = rng.uniform(0.1, 0.9, (n, n, 2)).astype(np.float32)
    radius = rng.uniform(0.55, 0.8, (n, n)).astype(np.float32) * spacing
    gx, gy = np.floor(tx / spacing).astype(np.int64), np.floor(ty / spacing).astype(np.int64)
    best = np.full(flat.shape, np.inf, dtype=np.float32)
    best_dx, best_dy = np.zeros_like(best), np.zeros_like(best)
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            cx, cy = np.clip(gx + i, 0, n - 1), np.clip(gy + j, 0, n - 1)
            r = radius[cy, cx]
            dx = (tx - (cx + jitter[cy, cx, 0]) * spacing) / r
            dy = (ty - (cy + jitter[cy, cx, 1]) * spacing) / r
            dist = np.hypot(dx, dy)
            closer = dist < best
            best = np.where(closer, dist, best)
            best_dx, best_dy = np.where(closer, dx, best_dx), np.where(closer, dy, best_dy)
    gap = np.clip((best - 0.9) / 0.3, 0.0, 1.0)
    dome = _dome(cv, np.clip(best_dx, -1, 1), np.clip(best_dy, -1, 1), 0.7)
    leaves = 1.0 + 0.1 * cv.textures.fractal("leaves", 0.8 * cv.ppm, octaves=2).ravel()[flat]
    cv.scale_direct(flat, dome * (1.0 - gap))
    cv.scale_albedo(flat, (1.0 - 0.3 * np.clip(best, 0, 1) ** 3) * (1.0 - 0.4 * gap) * leaves)


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
    glass = ((u > 0.2) & (u < 0.45)) | ((u > -0.75) & (u < -0.6))
    car = np.where(glass, 0.25, np.where(np.abs(v) > 0.75, 0.8, 1.0))
    lorry = np.where((u > 0.62) & (u < 0.7), 0.3, 1.0)
    is_truck = truck > 0
    cv.scale_albedo(flat, np.where(is_truck, lorry, car))
    trailer = flat[is_truck & (u < 0.62)]
    cv.albedo.reshape(-1, 3)[trailer] = np.array([0.78, 0.78, 0.76], dtype=np.float32)


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
    sky = np.array([0.9, 0.97, 1.12], dtype=np.float32) * c.ambient
    radiance = cv.albedo * (sky + ((1.0 - c.ambient) * lit * np.maximum(cv.direct, 0.0))[..., None])
    size = cv.layout.size
    ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    radiance *= (1.0 - 2.0 * c.vignette * (ramp[None, :] ** 2 + ramp[:, None] ** 2))[..., None]
    radiance *= c.exposure * np.asarray(c.white_balance, dtype=np.float32)
    radiance = radiance * (1.0 - c.haze) + c.haze * np.array([0.72, 0.76, 0.82], dtype=np.float32)
    radiance = np.clip(radiance, 0.0, 1.0) ** c.gamma
    for channel in range(3):
        radiance[..., channel] = ndimage.gaussian_filter(radiance[..., channel], c.blur, truncate=2.5)
    noise = np.random.default_rng(c.noise_seed).standard_normal(radiance.shape, dtype=np.float32)
    noise *= c.noise
    radiance *= 255.0
    radiance += noise
    radiance += 0.5
    np.clip(radiance, 0.0, 255.0, out=radiance)
    return radiance.astype(np.uint8)
