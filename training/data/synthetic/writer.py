"""Writing scenes, pairs and whole splits to disk as GeoTIFF plus JSON.

Layout of a split folder (``NAME`` is ``<split>_<seed>``, zero-padded)::

    OUT/<split>/index.json                  what was written: seeds, files, classes, change kinds
    OUT/<split>/scenes/NAME.tif             RGB image, uint8, 3 bands, tiled, deflate
    OUT/<split>/scenes/NAME_instances.tif   instance ids, uint16 (0 = no object)
    OUT/<split>/scenes/NAME_classes.tif     class ids, uint8 with a colour table (classes.CLASSES)
    OUT/<split>/scenes/NAME.json            pixel size, look (gsd_band, sensor, jpeg_quality, soil, haze,
                                            sun, ...), objects, captions, referring expressions, QA
    OUT/<split>/pairs/NAME_before.tif (+ _instances, _classes, .json), NAME_after.tif (+ ...)
    OUT/<split>/pairs/NAME_change.tif       change map, uint8 ChangeKind (0 = unchanged)
    OUT/<split>/pairs/NAME.json             both dates' files, changed flag, changes, change captions

All rasters carry the scene's projected CRS and geotransform. Object boxes and polygons are in
pixel coordinates of their image (see ``annotations``); ``area_m2`` is in square metres. The
same seed always writes byte-identical files.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from shapely.geometry import mapping
from tqdm import tqdm

from training.data.synthetic.annotations import ChangeKind, Scene, SceneObject, ScenePair
from training.data.synthetic.change import generate_pair
from training.data.synthetic.classes import CLASSES
from training.data.synthetic.scene import generate_scene
from training.data.synthetic.splits import split_seeds

log = logging.getLogger(__name__)

GENERATOR_VERSION = "2"
"""2: pixel sizes 0.1-2 m, drawn looks (sensor, haze, JPEG, soil), forest crowns, a scene's ``look``."""
CHANGE_COLOURS = {
    0: (0, 0, 0),
    1: (230, 60, 60),
    2: (250, 170, 40),
    3: (40, 170, 40),
    4: (40, 110, 230),
    5: (200, 200, 200),
}


def _profile(scene: Scene, count: int, dtype: str) -> dict[str, Any]:
    block = min(256, -(-scene.size // 16) * 16)
    return {
        "driver": "GTiff",
        "width": scene.size,
        "height": scene.size,
        "count": count,
        "dtype": dtype,
        "crs": scene.crs,
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "predictor": 2,
    }


def write_raster(
    path: Path, scene: Scene, array: np.ndarray, colours: dict[int, tuple[int, int, int]] | None = None
) -> None:
    """One GeoTIFF on ``scene``'s grid: (H, W, 3) uint8 as RGB, or (H, W) as a single band."""
    if array.ndim == 3:
        with rasterio.open(path, "w", photometric="RGB", **_profile(scene, 3, "uint8")) as dst:
            dst.write(np.moveaxis(array, 2, 0))
            dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        return
    with rasterio.open(path, "w", **_profile(scene, 1, array.dtype.name)) as dst:
        if colours is not None:
            dst.write_colormap(1, {k: (*rgb, 255) for k, rgb in colours.items()})
        dst.write(array, 1)


def _object_json(obj: SceneObject) -> dict[str, Any]:
    return {
        "id": obj.id,
        "class": CLASSES[obj.cls].name,
        "class_id": int(obj.cls),
        "kind": obj.kind,
        "style": obj.style,
        "box": list(obj.box),
        "polygon": _integral(mapping(obj.polygon)),
        "pixels": obj.pixels,
        "area_m2": obj.area_m2,
        "centroid": list(obj.centroid),
        "height_m": obj.height_m,
        "key": obj.key,
    }


def _integral(value: Any) -> Any:
    """GeoJSON coordinates with pixel-edge floats written as integers."""
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_integral(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def scene_json(scene: Scene, files: dict[str, str]) -> dict[str, Any]:
    """The annotation document of one scene (``files`` names its rasters)."""
    return {
        "generator": GENERATOR_VERSION,
        "seed": scene.seed,
        "size": scene.size,
        "gsd": scene.gsd,
        "crs": scene.crs,
        "transform": list(scene.transform)[:6],
        "theme": scene.theme,
        "season": scene.season,
        "sun": {"azimuth": scene.sun_azimuth, "elevation": scene.sun_elevation},
        "look": scene.look,
        **files,
        "objects": [_object_json(o) for o in scene.objects],
        "captions": list(scene.captions),
        "referring": [
            {
                "text": r.text,
                "target": r.target,
                "box": list(r.box),
                "rule": r.rule,
                "noun": r.noun,
                "landmark": r.landmark,
            }
            for r in scene.referring
        ],
        "qa": [{"question": q.question, "answer": q.answer, "kind": q.kind, "value": q.value} for q in scene.qa],
    }


def _dump(path: Path, document: dict[str, Any]) -> None:
    path.write_text(
        json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8"
    )


def write_scene(scene: Scene, directory: Path, name: str) -> dict[str, str]:
    """Write one scene as ``name.tif``, ``name_instances.tif``, ``name_classes.tif`` and ``name.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"image": f"{name}.tif", "instances": f"{name}_instances.tif", "classes": f"{name}_classes.tif"}
    write_raster(directory / files["image"], scene, scene.image)
    write_raster(directory / files["instances"], scene, scene.instance_map)
    write_raster(directory / files["classes"], scene, scene.class_map, {c.id: c.rgb for c in CLASSES})
    _dump(directory / f"{name}.json", scene_json(scene, files))
    return {**files, "annotation": f"{name}.json"}


def write_pair(pair: ScenePair, directory: Path, name: str) -> dict[str, Any]:
    """Write both dates (as scenes ``name_before``/``name_after``), the change map and ``name.json``."""
    before = write_scene(pair.before, directory, f"{name}_before")
    after = write_scene(pair.after, directory, f"{name}_after")
    change = f"{name}_change.tif"
    write_raster(directory / change, pair.before, pair.change_map, CHANGE_COLOURS)
    _dump(
        directory / f"{name}.json",
        {
            "generator": GENERATOR_VERSION,
            "seed": pair.seed,
            "before": before,
            "after": after,
            "change_mask": change,
            "changed": pair.changed,
            "captions": list(pair.captions),
            "changes": [
                {
                    "kind": c.kind.name.lower(),
                    "kind_id": int(c.kind),
                    "subject": c.subject,
                    "count": c.count,
                    "region": c.region,
                    "pixels": c.pixels,
                    "area_m2": c.area_m2,
                }
                for c in pair.changes
            ],
        },
    )
    return {"before": before, "after": after, "change_mask": change, "annotation": f"{name}.json"}


@dataclass(frozen=True)
class Job:
    """One item of a split to generate and write."""

    kind: str
    seed: int
    split: str
    size: int
    gsd: float | None
    directory: Path


def _run(job: Job) -> dict[str, Any]:
    name = f"{job.split}_{job.seed:09d}"
    if job.kind == "scene":
        files = write_scene(generate_scene(job.seed, job.size, job.gsd), job.directory / "scenes", name)
        return {"name": name, "seed": job.seed, **{k: f"scenes/{v}" for k, v in files.items()}}
    pair = generate_pair(job.seed, job.size, job.gsd)
    files = write_pair(pair, job.directory / "pairs", name)
    return {
        "name": name,
        "seed": job.seed,
        "changed": pair.changed,
        "annotation": f"pairs/{files['annotation']}",
        "change_mask": f"pairs/{files['change_mask']}",
    }


def write_split(
    out: Path,
    split: str,
    count: int,
    size: int = 512,
    pairs: int = 0,
    seed_base: int = 0,
    gsd: float | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Generate and write ``count`` scenes and ``pairs`` pairs of ``split``; returns the index path."""
    directory = out / split
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [Job("scene", s, split, size, gsd, directory) for s in split_seeds(split, count, seed_base)]
    jobs += [Job("pair", s, split, size, gsd, directory) for s in split_seeds(split, pairs, seed_base)]
    entries: dict[str, list[dict[str, Any]]] = {"scene": [], "pair": []}
    bar = tqdm(total=len(jobs), desc=f"synthetic {split}", unit="item", disable=not progress)
    for job, entry in zip(jobs, _results(jobs, workers)):
        entries[job.kind].append(entry)
        bar.update()
    bar.close()
    index = directory / "index.json"
    _dump(
        index,
        {
            "generator": GENERATOR_VERSION,
            "split": split,
            "size": size,
            "gsd": gsd,
            "seed_base": seed_base,
            "classes": [{"id": c.id, "name": c.name, "rgb": list(c.rgb)} for c in CLASSES],
            "change_kinds": [{"id": int(k), "name": k.name.lower()} for k in ChangeKind],
            "scenes": entries["scene"],
            "pairs": entries["pair"],
        },
    )
    log.info("wrote %d scenes and %d pairs to %s", len(entries["scene"]), len(entries["pair"]), directory)
    return index


def _results(jobs: list[Job], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        yield from map(_run, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_run, jobs)
