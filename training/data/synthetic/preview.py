"""python -m training.data.synthetic.preview [--out training/data/synthetic/previews]

Renders the two README previews: ``scene.png`` (one 512 x 512 scene) and ``pair.png`` (a
before/after pair side by side with its change mask), as 256-colour PNGs under 400 KB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.synthetic.change import generate_pair
from training.data.synthetic.scene import generate_scene

SCENE = {"seed": 6, "size": 512, "gsd": 0.4, "theme": "suburban"}
PAIR = {"seed": 6, "size": 512, "gsd": 0.5, "theme": "suburban", "changed": True}
PAIR_PANEL = 384


def _save(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.synthetic.preview", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "previews")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    _save(generate_scene(**SCENE).image, out / "scene.png")
    pair = generate_pair(**PAIR)
    mask = np.repeat(pair.change_mask[..., None], 3, axis=2).astype(np.uint8) * 255
    panels = [
        Image.fromarray(a).resize((PAIR_PANEL, PAIR_PANEL), Image.LANCZOS)
        for a in (pair.before.image, pair.after.image, mask)
    ]
    gap = np.full((PAIR_PANEL, 4, 3), 255, dtype=np.uint8)
    _save(
        np.concatenate([np.asarray(panels[0]), gap, np.asarray(panels[1]), gap, np.asarray(panels[2])], axis=1),
        out / "pair.png",
    )
    print(out / "scene.png", out / "pair.png")


if __name__ == "__main__":
    main()
