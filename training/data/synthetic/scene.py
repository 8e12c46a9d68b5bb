"""One synthetic scene from one seed: layout, labels, image and text, plus its georeference.

>>> from training.data.synthetic import generate_scene
>>> scene = generate_scene(7, size=256)
>>> scene.image.shape, scene.crs.startswith("EPSG:32")
((256, 256, 3), True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from training.data.synthetic.annotations import Scene
from training.data.synthetic.geo import Place, draw_place
from training.data.synthetic.graph import Layout
from training.data.synthetic.labels import Labels, rasterise
from training.data.synthetic.language import describe
from training.data.synthetic.layout import generate_layout, gsd_band
from training.data.synthetic.looks import draw_soil
from training.data.synthetic.render import Conditions, draw_conditions, render
from training.data.synthetic.textures import Textures

log = logging.getLogger(__name__)

SCENE_STREAM = 0
PAIR_STREAM = 1


@dataclass(frozen=True)
class Streams:
    """Independent random streams of one seed, so that changing one part leaves the others alone."""

    place: np.random.Generator
    layout: np.random.Generator
    conditions: np.random.Generator
    language: np.random.Generator
    change: np.random.Generator
    texture_seed: int
    look: np.random.Generator
    """The soil and each date's sensor, haze and compression (a stream of its own, added last, so
    the other streams draw what they drew before looks existed)."""


def streams(seed: int, stream: int) -> Streams:
    """The random streams of ``seed`` for scenes (``SCENE_STREAM``) or pairs (``PAIR_STREAM``)."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    children = np.random.SeedSequence([seed, stream]).spawn(7)
    place, layout, conditions, language, change, texture, look = (np.random.default_rng(c) for c in children)
    return Streams(place, layout, conditions, language, change, int(texture.integers(0, 2**62)), look)


def look_record(layout: Layout, conditions: Conditions) -> dict[str, Any]:
    """What a scene's metadata says about how it looks (JSON types)."""
    look = conditions.look
    return {
        **look.record(),
        "gsd": layout.gsd,
        "gsd_band": gsd_band(layout.gsd),
        "soil": layout.soil,
        "season": layout.season,
        "sun_elevation": round(conditions.sun_elevation, 2),
        "sun_azimuth": round(conditions.sun_azimuth, 2),
        "haze": round(min(conditions.haze + look.haze, 0.85), 3),
        "blur": round(conditions.blur * look.blur_scale, 3),
        "noise": round(conditions.noise * look.noise_scale, 3),
    }


def build_scene(
    seed: int,
    layout: Layout,
    labels: Labels,
    conditions: Conditions,
    textures: Textures,
    place: Place,
    language: np.random.Generator,
) -> Scene:
    """Render and describe an already rasterised layout."""
    image = render(layout, labels, conditions, textures)
    text = describe(labels.objects, labels.instance_map, labels.class_map, layout.gsd, layout.season, language)
    return Scene(
        seed=seed,
        image=image,
        class_map=labels.class_map,
        instance_map=labels.instance_map,
        objects=labels.objects,
        captions=text.captions,
        referring=text.referring,
        qa=text.qa,
        transform=place.transform,
        crs=place.crs,
        gsd=layout.gsd,
        theme=layout.theme,
        season=layout.season,
        sun_azimuth=conditions.sun_azimuth,
        sun_elevation=conditions.sun_elevation,
        look=look_record(layout, conditions),
    )


def generate_scene(
    seed: int, size: int = 512, gsd: float | None = None, theme: str | None = None, looks: bool = True
) -> Scene:
    """The scene of ``seed``: ``size`` x ``size`` pixels at ``gsd`` metres (drawn when ``None``).

    The same arguments always give the same scene. ``theme`` (urban, suburban, industrial, rural,
    natural) is drawn when ``None``. ``looks=False`` keeps the plain look of generator version 1
    (loam soil; no sensor colour response, extra haze, sharpening or JPEG) for comparisons with
    models trained on it; the layout, labels and text are the same either way.
    """
    rng, place, layout, labels, conditions, textures = scene_parts(seed, size, gsd, theme, looks)
    scene = build_scene(seed, layout, labels, conditions, textures, place, rng.language)
    log.debug("scene %d: %s, %d objects", seed, layout.theme, len(scene.objects))
    return scene


def scene_parts(
    seed: int, size: int = 512, gsd: float | None = None, theme: str | None = None, looks: bool = True
) -> tuple[Streams, Place, Layout, Labels, Conditions, Textures]:
    """What :func:`generate_scene` renders and describes: streams, place, layout (with its soil),
    labels, conditions (with the look) and textures."""
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    rng = streams(seed, SCENE_STREAM)
    place = draw_place(rng.place, size, gsd)
    layout = generate_layout(rng.layout, size, place.gsd, theme)
    if looks:
        layout = replace(layout, soil=draw_soil(rng.look, layout.theme))
    conditions = draw_conditions(rng.conditions, rng.look if looks else None)
    return rng, place, layout, rasterise(layout), conditions, Textures(rng.texture_seed, size)
