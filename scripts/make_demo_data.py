"""Writes the demo data: a 2048 x 2048 before/after pair from the Synthetic Earth and a QGIS project.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/make_demo_data.py [--out resources/demo]

The pair comes from a seed of the test split (never trained on), with real changes. The rasters are
JPEG-compressed tiled GeoTIFFs with overviews, in the scene's UTM zone; the project shows them in
Web Mercator, so the plugin's answers are reprojected on the way, as with most users' data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import rasterio
from rasterio.enums import Resampling

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.data.synthetic import generate_pair, split_seeds  # noqa: E402

DEMO_SEED = split_seeds("test", 1, base=99_000_006)[0]
THEME = "suburban"  # buildings, water and a built-up change: every demo question has an answer
SIZE = 2048
GSD = 0.5
PROJECT_CRS = "EPSG:3857"


def write_rgb(path: Path, scene) -> None:
    height, width = scene.image.shape[:2]
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": scene.crs,
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "JPEG",
        "photometric": "YCBCR",
        "jpeg_quality": 88,
    }
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(scene.image.transpose(2, 0, 1))
        dst.build_overviews([2, 4, 8], Resampling.average)
    tmp.replace(path)


def write_project(out: Path) -> None:
    from qgis.core import (
        QgsApplication,
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsProject,
        QgsRasterLayer,
        QgsReferencedRectangle,
    )

    app = QgsApplication([], False)
    app.initQgis()
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem(PROJECT_CRS))
    for name in ("before", "after"):
        layer = QgsRasterLayer(str(out / f"{name}.tif"), name)
        if not layer.isValid():
            raise SystemExit(f"make_demo_data: QGIS cannot open {out / f'{name}.tif'}")
        project.addMapLayer(layer)
    to_project = QgsCoordinateTransform(layer.crs(), project.crs(), project)
    view = QgsReferencedRectangle(to_project.transformBoundingBox(layer.extent()), project.crs())
    project.viewSettings().setDefaultViewExtent(view)  # QGIS opens the project on the pair
    if not project.write(str(out / "demo.qgs")):
        raise SystemExit(f"make_demo_data: cannot write {out / 'demo.qgs'}")
    app.exitQgis()


def main(argv: list[str] | None = None) -> int:
    """Writes the pair (unless ``--project-only``) and the project."""
    parser = argparse.ArgumentParser(description="Write the demo before/after pair and project")
    parser.add_argument("--out", type=Path, default=ROOT / "resources" / "demo")
    parser.add_argument("--project-only", action="store_true", help="rewrite demo.qgs for the existing rasters")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.project_only:
        write_project(args.out)
        return 0
    print(f"make_demo_data: generating the {SIZE} x {SIZE} pair (seed {DEMO_SEED}) ...", flush=True)
    pair = generate_pair(DEMO_SEED, size=SIZE, gsd=GSD, theme=THEME, changed=True)
    write_rgb(args.out / "before.tif", pair.before)
    write_rgb(args.out / "after.tif", pair.after)
    (args.out / "changes.txt").write_text("\n".join(pair.captions) + "\n", encoding="utf-8")
    write_project(args.out)
    print(f"make_demo_data: wrote {args.out}/before.tif, after.tif, demo.qgs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
