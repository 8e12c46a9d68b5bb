"""python -m training.data.synthetic.preview [--out training/data/synthetic/previews]

Renders the README previews: ``scene.png`` (one scene in each pixel-size band, 0.1-0.3, 0.3-0.7 and
0.7-2 m), ``looks.png`` (one place in the four sensors' looks, then soils, forest crowns and houses at
0.1-0.15 m) and ``pair.png`` (a before/after pair side by side with its change mask), as 256-colour
PNGs under 400 KB.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.synthetic.change import generate_pair
from training.data.synthetic.looks import SENSORS, draw_look
from training.data.synthetic.render import render
from training.data.synthetic.scene import generate_scene, scene_parts

SCENES = (  # one per pixel-size band
    {"seed": 12, "size": 512, "gsd": 0.12, "theme": "suburban"},
    {"seed": 6, "size": 512, "gsd": 0.4, "theme": "suburban"},
    {"seed": 7, "size": 512, "gsd": 1.5, "theme": "urban"},
)
SCENE_PANEL = 384
LOOKS_PLACE = {"seed": 5, "size": 256, "gsd": 0.3, "theme": "suburban"}
LOOK_SEEDS = (5, 8, 3, 2)  # per sensor, in SENSORS' order: plain, JPEG 31, strong haze, smog and JPEG
FINE = (  # forest crowns on rocky ground, sandy ground, stones, houses and cars
    {"seed": 10, "size": 256, "gsd": 0.15, "theme": "natural"},
    {"seed": 1, "size": 256, "gsd": 0.12, "theme": "natural"},
    {"seed": 36, "size": 256, "gsd": 0.1, "theme": "natural"},
    {"seed": 8, "size": 512, "gsd": 0.1},
)
PAIR = {"seed": 6, "size": 512, "gsd": 0.5, "theme": "suburban", "changed": True}
PAIR_PANEL = 384
GAP = 4


def _save(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _row(images: list[np.ndarray], panel: int) -> np.ndarray:
    """Images resized to ``panel`` pixels, side by side with white gaps."""
    gap = np.full((panel, GAP, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for image in images:
        if parts:
            parts.append(gap)
        parts.append(np.asarray(Image.fromarray(image).resize((panel, panel), Image.LANCZOS)))
    return np.concatenate(parts, axis=1)


def looks_sheet() -> np.ndarray:
    """Top: one place through each sensor (drawn looks: colour, haze, JPEG). Bottom: fine pixel sizes."""
    _, _, layout, labels, conditions, textures = scene_parts(**LOOKS_PLACE)
    place = [
        render(layout, labels, replace(conditions, look=draw_look(np.random.default_rng(seed), sensor)), textures)
        for sensor, seed in zip(SENSORS, LOOK_SEEDS)
    ]
    fine = [generate_scene(**spec).image for spec in FINE]
    top, bottom = _row(place, 256), _row(fine, 256)
    return np.concatenate([top, np.full((GAP, top.shape[1], 3), 255, dtype=np.uint8), bottom], axis=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.synthetic.preview", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "previews")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    _save(_row([generate_scene(**spec).image for spec in SCENES], SCENE_PANEL), out / "scene.png")
    _save(looks_sheet(), out / "looks.png")
    pair = generate_pair(**PAIR)
    mask = np.repeat(pair.change_mask[..., None], 3, axis=2).astype(np.uint8) * 255
    _save(_row([pair.before.image, pair.after.image, mask], PAIR_PANEL), out / "pair.png")
    print(out / "scene.png", out / "looks.png", out / "pair.png")


if __name__ == "__main__":
    main()
