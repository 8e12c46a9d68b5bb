"""The Synthetic Earth: determinism, splits, exact ground truth, georeferencing, pairs and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio

from training.data.synthetic import (
    CLASSES,
    SPLITS,
    ChangeKind,
    ObjectClass,
    Scene,
    generate_pair,
    generate_scene,
    split_seeds,
)
from training.data.synthetic.language import (
    COMPASS,
    MIN_TARGET_FRACTION,
    REGIONS,
    candidates,
    mentioned_counts,
    region,
    where,
)
from training.data.synthetic.layout import GSD_BANDS, GSD_RANGE, THEMES, gsd_band
from training.data.synthetic.writer import write_pair, write_scene

ROOT = Path(__file__).resolve().parents[2]
SIZE = 256


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    """One scene per theme at a fine pixel size, plus a few with everything drawn."""
    themed = [generate_scene(100 + i, SIZE, gsd=0.5, theme=theme) for i, theme in enumerate(THEMES)]
    return themed + [generate_scene(seed, SIZE) for seed in (1, 2, 3, 4, 5, 6)]


def _arrays_equal(a: Scene, b: Scene) -> bool:
    return all(
        np.array_equal(x, y)
        for x, y in ((a.image, b.image), (a.class_map, b.class_map), (a.instance_map, b.instance_map))
    )


def test_same_seed_gives_the_same_scene() -> None:
    a, b = generate_scene(11, SIZE), generate_scene(11, SIZE)
    assert _arrays_equal(a, b)
    assert a.objects == b.objects
    assert (a.captions, a.referring, a.qa) == (b.captions, b.referring, b.qa)
    assert (a.transform, a.crs, a.gsd) == (b.transform, b.crs, b.gsd)
    assert a.look == b.look and a.look["gsd"] == a.gsd


def test_different_seeds_give_different_scenes() -> None:
    a, b = generate_scene(11, SIZE), generate_scene(12, SIZE)
    assert not np.array_equal(a.image, b.image)
    assert (a.transform, a.captions) != (b.transform, b.captions)


def test_splits_are_disjoint_seed_ranges() -> None:
    ranges = {split: split_seeds(split, 1000, base=10**6) for split in SPLITS}
    for one in SPLITS:
        for other in SPLITS:
            if one != other:
                assert not set(ranges[one]) & set(ranges[other])
    spans = sorted((SPLITS[s], SPLITS[s] + 10**8) for s in SPLITS)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    with pytest.raises(ValueError):
        split_seeds("train", 10, base=10**8)
    with pytest.raises(ValueError):
        split_seeds("holdout", 1)


def test_scenes_are_varied(scenes: list[Scene]) -> None:
    present = set().union(*(set(np.unique(s.class_map).tolist()) for s in scenes))
    assert present == {c.id for c in CLASSES}
    assert len({s.season for s in scenes}) >= 2 and len({s.crs for s in scenes}) >= 3
    assert all(GSD_RANGE[0] <= s.gsd <= GSD_RANGE[1] for s in scenes)


def test_objects_match_the_instance_and_class_maps(scenes: list[Scene]) -> None:
    for scene in scenes:
        check_ground_truth(scene)


def test_counts_in_captions_and_answers_are_exact(scenes: list[Scene]) -> None:
    assert sum(check_text(scene) for scene in scenes) > 20


def test_referring_expressions_single_out_their_target(scenes: list[Scene]) -> None:
    rules = set().union(*(check_referring(scene) for scene in scenes))
    assert {"only", "largest", "extreme", "relation", "style", "region"} <= rules


def check_ground_truth(scene: Scene) -> None:
    """Boxes, masks, classes, areas, outlines and centroids all agree with the instance map."""
    lut = np.array([0] + [int(o.cls) for o in scene.objects], dtype=np.uint8)
    assert np.array_equal(scene.class_map, lut[scene.instance_map])
    counts = np.bincount(scene.instance_map.ravel(), minlength=len(scene.objects) + 1)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        mask = scene.mask(obj.id)
        assert mask[y0:y1, x0:x1].sum() == obj.pixels == counts[obj.id]
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.box
        assert obj.area_m2 == pytest.approx(obj.pixels * scene.gsd**2, abs=1e-3)
        assert obj.polygon.area == pytest.approx(obj.pixels)
        assert obj.centroid == pytest.approx((xs.mean() + 0.5, ys.mean() + 0.5), abs=1e-3)


def check_text(scene: Scene) -> int:
    """Counts in captions and answers equal the objects present; returns how many were checked."""
    checked = 0
    assert len(scene.captions) == 5 and len(set(scene.captions)) == 5
    for caption in scene.captions:
        for count, noun in mentioned_counts(caption):
            assert count == len(candidates(noun, scene.objects)), (caption, noun)
            checked += 1
    for qa in scene.qa:
        if qa.kind == "count":
            noun = qa.question.removeprefix("How many ").removesuffix(" are there?")
            singular = mentioned_counts(f"2 {noun}")[0][1]
            assert qa.value == len(candidates(singular, scene.objects)) and qa.answer == str(qa.value)
            checked += 1
        elif qa.kind == "presence":
            assert qa.answer == ("yes" if qa.value else "no")
        elif qa.question == "What fraction of the image is water?":
            assert qa.value == pytest.approx(float((scene.class_map == ObjectClass.WATER).mean()))
        elif qa.kind == "position":
            target = next(r for r in scene.referring if f"Where is {r.text}?" == qa.question)
            assert qa.value == region(*scene.object(target.target).centroid, scene.size)
    return checked


def check_referring(scene: Scene) -> set[str]:
    """Every referring expression names exactly its target; returns the rules seen."""
    for ref in scene.referring:
        target = scene.object(ref.target)
        group = candidates(ref.noun, scene.objects)
        assert target in group and ref.box == target.box and ref.noun in ref.text
        # Big enough to single out by its box at the model's input size (no 5 x 5 sheds, no border slivers).
        assert target.pixels >= MIN_TARGET_FRACTION * scene.size**2, (ref.text, target.pixels)
        _check_rule(scene, ref.rule, ref.text, ref.noun, target, group, ref.landmark)
    return {ref.rule for ref in scene.referring}


def _check_rule(scene: Scene, rule: str, text: str, noun: str, target, group, landmark_id: int) -> None:
    others = [o for o in group if o.id != target.id]
    if rule == "only":
        assert not others
    elif rule == "largest":
        assert all(target.pixels >= 1.2 * o.pixels for o in others)
    elif rule == "smallest":
        assert all(target.pixels * 1.2 <= o.pixels for o in others)
    elif rule == "extreme":
        axis, sign = {
            "northernmost": (1, 1),
            "topmost": (1, 1),
            "southernmost": (1, -1),
            "bottommost": (1, -1),
            "westernmost": (0, 1),
            "leftmost": (0, 1),
            "easternmost": (0, -1),
            "rightmost": (0, -1),
        }[text.split()[1]]
        assert all(sign * target.centroid[axis] < sign * o.centroid[axis] for o in others)
    elif rule == "relation":
        landmark = scene.mask(landmark_id)
        relation = next(
            r
            for r, words in {
                "left": ("left of", "west of"),
                "right": ("right of", "east of"),
                "above": ("above", "north of"),
                "below": ("below", "south of"),
            }.items()
            if any(f" {w} the " in text for w in words)
        )
        assert _lies(relation, target.box, landmark)
        assert not any(_lies(relation, o.box, landmark) for o in others)
    elif rule == "style":
        assert target.style in text and all(o.style != target.style for o in others)
    elif rule == "region":
        places = {**{where(name): i for i, name in enumerate(REGIONS)}, **{where(c): i for i, c in enumerate(COMPASS)}}
        cell = places[text.removeprefix(f"the {noun} ")]
        row, col = divmod(cell, 3)
        cx0, cy0, cx1, cy1 = (v * scene.size / 3 for v in (col, row, col + 1, row + 1))
        x0, y0, x1, y1 = target.box
        assert cx0 <= x0 and cy0 <= y0 and x1 <= cx1 and y1 <= cy1
        assert not any(o.box[0] < cx1 and o.box[2] > cx0 and o.box[1] < cy1 and o.box[3] > cy0 for o in others)
    else:
        raise AssertionError(f"unknown rule {rule}")


def _lies(relation: str, box: tuple[int, int, int, int], landmark: np.ndarray) -> bool:
    """Whether a box lies wholly left/right/above/below the landmark pixels in the rows (columns) it spans."""
    x0, y0, x1, y1 = box
    ys, xs = np.nonzero(landmark)
    if relation in ("left", "right"):
        band = xs[(ys >= y0) & (ys < y1)]
        return band.size > 0 and (x1 <= band.min() if relation == "left" else x0 > band.max())
    band = ys[(xs >= x0) & (xs < x1)]
    return band.size > 0 and (y1 <= band.min() if relation == "above" else y0 > band.max())


def test_geotiffs_are_georeferenced_and_byte_identical(tmp_path: Path) -> None:
    scene = generate_scene(21, 320)
    first = write_scene(scene, tmp_path / "a", "s")
    write_scene(generate_scene(21, 320), tmp_path / "b", "s")
    for name in first.values():
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with rasterio.open(tmp_path / "a" / first["image"]) as src:
        assert src.count == 3 and src.dtypes == ("uint8",) * 3 and src.profile["tiled"]
        assert src.block_shapes == [(256, 256)] * 3
        assert src.crs.to_epsg() // 100 in (326, 327) and src.crs.to_string() == scene.crs
        assert src.transform.a == pytest.approx(scene.gsd) and src.transform.e == pytest.approx(-scene.gsd)
        assert src.transform.b == src.transform.d == 0 and src.transform == scene.transform
        assert 100_000 < src.transform.c < 900_000 and 0 <= src.transform.f < 10_000_000
        assert np.array_equal(np.moveaxis(src.read(), 0, 2), scene.image)
    with rasterio.open(tmp_path / "a" / first["instances"]) as src:
        assert src.dtypes == ("uint16",) and np.array_equal(src.read(1), scene.instance_map)
    with rasterio.open(tmp_path / "a" / first["classes"]) as src:
        assert src.dtypes == ("uint8",) and np.array_equal(src.read(1), scene.class_map)
        assert src.colormap(1)[ObjectClass.WATER][:3] == CLASSES[ObjectClass.WATER].rgb
    doc = json.loads((tmp_path / "a" / first["annotation"]).read_text())
    assert [o["id"] for o in doc["objects"]] == [o.id for o in scene.objects]
    assert doc["objects"][0]["area_m2"] == scene.objects[0].area_m2 and doc["crs"] == scene.crs
    assert doc["captions"] == list(scene.captions) and len(doc["referring"]) == len(scene.referring)
    assert doc["gsd"] == scene.gsd and doc["look"] == scene.look and doc["look"]["gsd_band"] == gsd_band(scene.gsd)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_changed_pairs_have_a_change_mask_and_captions(seed: int) -> None:
    pair = generate_pair(seed, SIZE, changed=True)
    assert pair.changed and pair.change_mask.any() and pair.changes
    assert sum(c.pixels for c in pair.changes) == int(pair.change_mask.sum())
    assert set(np.unique(pair.change_map)) - {0} == {int(c.kind) for c in pair.changes}
    for change in pair.changes:
        assert change.region in COMPASS and change.region in pair.captions[0]
    assert len(set(pair.captions)) == 5 and "no change" not in pair.captions[0].lower()
    assert pair.after.transform == pair.before.transform and pair.after.crs == pair.before.crs


@pytest.mark.parametrize("seed", range(20, 32))
def test_ground_truth_holds_across_seeds(seed: int) -> None:
    scene = generate_scene(seed, 192)
    check_ground_truth(scene)
    check_text(scene)
    check_referring(scene)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        generate_scene(1, 256, gsd=50.0)
    with pytest.raises(ValueError):
        generate_scene(-1, 256)
    with pytest.raises(ValueError):
        generate_scene(1, 8)


def test_every_change_is_large_enough_to_see_at_the_models_input() -> None:
    from training.data.synthetic.change import MIN_CHANGE_FRACTION

    for seed in range(1, 41, 2):  # changed pairs at the eval's window size and drawn pixel sizes
        pair = generate_pair(seed, 512, changed=True)
        for change in pair.changes:
            assert change.pixels >= MIN_CHANGE_FRACTION * 512 * 512, (seed, change)


@pytest.mark.parametrize("seed", range(40, 46))
def test_change_captions_count_what_changed(seed: int) -> None:
    pair = generate_pair(seed, 192, changed=True)
    for caption in pair.captions:
        for count, noun in mentioned_counts(caption):
            assert any(c.count == count and c.subject == noun for c in pair.changes), caption
    for date in (pair.before, pair.after):
        check_ground_truth(date)
        check_text(date)


def test_change_mask_marks_the_changed_objects() -> None:
    pair = generate_pair(5, SIZE, changed=True)
    before_keys = {o.key for o in pair.before.objects}
    after_keys = {o.key for o in pair.after.objects}
    assert before_keys != after_keys
    for change in pair.changes:
        region = pair.change_map == change.kind
        if change.kind == ChangeKind.BUILT:
            built = [o for o in pair.after.objects if o.key not in before_keys and o.cls == ObjectClass.BUILDING]
            assert len(built) == change.count
        if change.kind == ChangeKind.DEMOLISHED:
            gone = [o for o in pair.before.objects if o.key not in after_keys and o.cls == ObjectClass.BUILDING]
            assert len(gone) == change.count and all(region[pair.before.mask(o.id)].all() for o in gone)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_unchanged_pairs_differ_only_harmlessly(seed: int) -> None:
    pair = generate_pair(seed, SIZE, changed=False)
    assert not pair.changed and not pair.change_mask.any() and not pair.changes
    assert "change" in pair.captions[0].lower()
    difference = np.abs(pair.before.image.astype(int) - pair.after.image.astype(int))
    assert difference.mean() > 1.0
    inner = {o.key for o in pair.before.objects if min(o.box) >= 3 and max(o.box) <= SIZE - 3 and o.pixels > 9}
    assert inner <= {o.key for o in pair.after.objects}


def test_a_pair_is_reproducible(tmp_path: Path) -> None:
    a, b = generate_pair(8, 128), generate_pair(8, 128)
    assert np.array_equal(a.change_map, b.change_map) and a.captions == b.captions
    assert _arrays_equal(a.after, b.after)
    files = write_pair(a, tmp_path, "p")
    doc = json.loads((tmp_path / files["annotation"]).read_text())
    assert doc["changed"] == a.changed and doc["captions"] == list(a.captions)
    with rasterio.open(tmp_path / files["change_mask"]) as src:
        assert np.array_equal(src.read(1), a.change_map) and src.crs.to_string() == a.before.crs


def test_cli_writes_a_split(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.data.synthetic",
            "--out",
            str(tmp_path),
            "--split",
            "test",
            "--count",
            "2",
            "--size",
            "128",
            "--pairs",
            "1",
            "--seed-base",
            "5",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    index = json.loads((tmp_path / "test" / "index.json").read_text())
    assert result.stdout.strip().endswith("index.json")
    assert [s["seed"] for s in index["scenes"]] == [SPLITS["test"] + 5, SPLITS["test"] + 6]
    for entry in index["scenes"]:
        for key in ("image", "instances", "classes", "annotation"):
            assert (tmp_path / "test" / entry[key]).is_file()
    pair = json.loads((tmp_path / "test" / index["pairs"][0]["annotation"]).read_text())
    for date in ("before", "after"):
        assert (tmp_path / "test" / "pairs" / pair[date]["image"]).is_file()
    assert (tmp_path / "test" / "pairs" / pair["change_mask"]).is_file()
    assert len(pair["captions"]) == 5 and isinstance(pair["changed"], bool)
    assert [c["name"] for c in index["classes"]] == [c.name for c in CLASSES]


# --------------------------------------------------------------------------------------------
# Pixel sizes from 0.1 to 2 m, and the looks


def test_pixel_sizes_are_drawn_over_the_whole_range_and_fall_in_bands() -> None:
    from training.data.synthetic.geo import draw_gsd

    rng = np.random.default_rng(0)
    drawn = np.array([draw_gsd(rng) for _ in range(3000)])
    low, high = GSD_RANGE
    assert low <= 0.1 and high >= 2.0
    assert drawn.min() >= low and drawn.max() <= high
    assert drawn.min() < 0.11 and drawn.max() > 1.9
    bands = [gsd_band(g) for g in drawn]
    names = [gsd_band(lo) for lo, _ in GSD_BANDS]
    assert len(set(names)) == len(GSD_BANDS) and set(bands) == set(names)
    for (lo, hi), name in zip(GSD_BANDS, names):  # log-uniform: each band's share is its share of log range
        share = math.log(hi / lo) / math.log(high / low)
        assert bands.count(name) / len(bands) == pytest.approx(share, abs=0.04)
        assert gsd_band(lo) == name and gsd_band((lo * hi) ** 0.5) == name
    assert gsd_band(high) == names[-1]
    from training.eval.rsa import gsd_band as eval_band  # the evaluation's bands are the generator's

    assert all(gsd_band(g) == eval_band(g) for g in (*drawn[:200], 0.05, 0.3, 0.7, 2.0, 3.0))


@pytest.mark.parametrize("theme", ["urban", "suburban", "industrial", "rural", "natural"])
def test_scenes_at_a_tenth_of_a_metre_hold_objects_and_exact_labels(theme: str) -> None:
    """A 512 px view at 0.1 m is 51 m wide: still a street or a block edge, never one roof or nothing."""
    for seed in (3, 4):
        scene = generate_scene(seed, 512, gsd=0.1, theme=theme)
        classes = set(np.unique(scene.class_map).tolist())
        assert len(scene.objects) >= 2 and len(classes - {0}) >= 2, [o.kind for o in scene.objects]
        check_ground_truth(scene)
        check_text(scene)
        check_referring(scene)
        assert scene.referring  # something big enough to single out
        assert scene.look["gsd_band"] == gsd_band(0.1) and scene.gsd == 0.1


def test_fine_and_coarse_scenes_show_what_their_pixel_size_allows() -> None:
    fine = [generate_scene(seed, 512, gsd=0.1, theme="suburban") for seed in range(10, 16)]
    counts = [{c: sum(o.cls == c for o in s.objects) for c in ObjectClass} for s in fine]
    assert all(c[ObjectClass.BUILDING] + c[ObjectClass.TREE] + c[ObjectClass.ROAD] > 0 for c in counts)
    assert sum(c[ObjectClass.BUILDING] > 0 for c in counts) >= 3 and sum(c[ObjectClass.TREE] > 0 for c in counts) >= 3
    assert sum(c[ObjectClass.VEHICLE] for c in counts) >= 1
    assert all(c[ObjectClass.BUILDING] <= 12 for c in counts)  # a few houses, not a town
    coarse = generate_scene(10, 256, gsd=2.0, theme="urban")
    assert sum(o.cls == ObjectClass.BUILDING for o in coarse.objects) > 20
    houses_fine = [o.pixels for s in fine for o in s.objects if o.kind == "house"]
    houses_coarse = [o.pixels for o in coarse.objects if o.cls == ObjectClass.BUILDING]
    assert np.median(houses_fine) > 50 * np.median(houses_coarse)  # sizes are metres: 20 x 20 times the pixels


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_changes_at_a_tenth_of_a_metre_are_placed_and_large_enough(seed: int) -> None:
    from training.data.synthetic.change import MIN_CHANGE_FRACTION

    pair = generate_pair(seed, 256, gsd=0.1, changed=True)
    assert pair.changes
    for change in pair.changes:
        assert MIN_CHANGE_FRACTION * 256 * 256 <= change.pixels < 0.9 * 256 * 256, change
    for date in (pair.before, pair.after):
        check_ground_truth(date)
        check_referring(date)


def test_looks_vary_across_seeds_and_are_recorded() -> None:
    from training.data.synthetic.looks import SENSORS, SOILS

    looks = [generate_scene(seed, 64).look for seed in range(40)]
    assert {lk["sensor"] for lk in looks} == set(SENSORS)
    assert {lk["soil"] for lk in looks} == set(SOILS)
    qualities = [lk["jpeg_quality"] for lk in looks]
    assert 0 in qualities and len({q for q in qualities if q}) >= 10 and all(0 <= q <= 100 for q in qualities)
    elevations = [lk["sun_elevation"] for lk in looks]
    assert min(elevations) < 20 and max(elevations) > 65
    hazes = [lk["haze"] for lk in looks]
    assert min(hazes) < 0.05 and max(hazes) > 0.2
    assert {lk["gsd_band"] for lk in looks} == {gsd_band(lo) for lo, _ in GSD_BANDS}
    assert len({tuple(lk["colour_matrix"]) for lk in looks}) == len(looks)
    json.dumps(looks)  # plain JSON types, as the writer stores them


def _blockiness(image: np.ndarray) -> float:
    """Mean jump across 8-pixel block edges over the mean jump elsewhere (JPEG's 8 x 8 blocks)."""
    grey = image.astype(float).mean(axis=2)
    jumps = np.abs(np.diff(grey, axis=1)).mean(axis=0)
    edges = np.arange(7, jumps.size, 8)
    return float(jumps[edges].mean() / np.delete(jumps, edges).mean())


def test_jpeg_and_the_sensor_change_the_image_as_they_say() -> None:
    from training.data.synthetic.looks import PLAIN, colour_matrix
    from training.data.synthetic.render import render
    from training.data.synthetic.scene import scene_parts

    _, _, layout, labels, conditions, textures = scene_parts(5, 256, gsd=0.3, theme="suburban")
    plain = replace(conditions, look=PLAIN, noise=0.0)
    clean = render(layout, labels, plain, textures)
    compressed = render(layout, labels, replace(plain, look=replace(PLAIN, jpeg_quality=30)), textures)
    assert np.array_equal(render(layout, labels, plain, textures), clean)
    assert _blockiness(compressed) > _blockiness(clean) + 0.1
    assert np.array_equal(
        compressed, render(layout, labels, replace(plain, look=replace(PLAIN, jpeg_quality=30)), textures)
    )
    vivid = replace(PLAIN, colour=colour_matrix(1.4, (1.0, 1.0, 1.0), np.zeros((3, 3))))
    dull = replace(PLAIN, colour=colour_matrix(0.6, (1.0, 1.0, 1.0), np.zeros((3, 3))))

    def chroma(image: np.ndarray) -> float:
        return float(np.abs(image.astype(float) - image.astype(float).mean(axis=2, keepdims=True)).mean())

    saturated = chroma(render(layout, labels, replace(plain, look=vivid), textures))
    faded = chroma(render(layout, labels, replace(plain, look=dull), textures))
    assert faded < chroma(clean) < saturated


def test_a_natural_forest_is_drawn_as_crowns_of_several_species_inside_its_mask() -> None:
    from training.data.synthetic import canopy
    from training.data.synthetic.labels import rasterise
    from training.data.synthetic.render import render, sun_vector
    from training.data.synthetic.scene import scene_parts

    for seed in range(1, 30):  # the first natural scene that is mostly forest
        _, _, layout, labels, conditions, textures = scene_parts(seed, 384, gsd=0.2, theme="natural")
        if (labels.class_map == ObjectClass.FOREST).mean() > 0.4:
            break
    forest = labels.class_map == ObjectClass.FOREST
    assert forest.mean() > 0.4
    mixed = replace(
        layout,
        features=tuple(replace(f, style="mixed") if f.cls == ObjectClass.FOREST else f for f in layout.features),
    )
    labels = rasterise(mixed)
    ys, xs = np.nonzero(forest)
    style = np.full(xs.shape, canopy.STYLES.index("mixed"))
    crowns = canopy.crowns(xs + 0.5, ys + 0.5, style, forest, textures, 1 / layout.gsd, sun_vector(conditions))
    drawn = crowns.crown >= 0
    assert 0.6 < drawn.mean() < 0.98  # crowns with gaps between them
    assert {canopy.SPECIES[k].cone for k in np.unique(crowns.species[drawn])} == {True, False}
    assert len(set(crowns.species[drawn].tolist())) >= 3
    # Expected number of crowns: the forest area over a crown grid cell.
    cells = forest.sum() / (canopy.SPACING_M / layout.gsd) ** 2
    assert 0.5 * cells < len(crowns.centres) < 1.5 * cells
    # Crowns sit inside the forest mask: a crown's disc barely leaves it (they shrink at its edge).
    size = forest.shape[0]
    grid_y, grid_x = np.mgrid[0:size, 0:size] + 0.5
    outside = []
    for cx, cy, r in crowns.centres.values():
        if r <= 0 or not (r < cx < size - r and r < cy < size - r):
            continue
        disc = (grid_x - cx) ** 2 + (grid_y - cy) ** 2 < r * r
        outside.append(float((disc & ~forest).sum() / max(disc.sum(), 1)))
    assert outside and np.mean(outside) < 0.05 and np.max(outside) < 0.6
    # The image shows the crowns: lit crowns are brighter than the gaps between them.
    image = render(mixed, labels, replace(conditions, haze=0.0), textures).astype(float).mean(axis=2)
    values = image[ys, xs]
    assert values[drawn].mean() > values[~drawn].mean() + 10
    # The labels do not depend on how the forest is drawn.
    assert np.array_equal(labels.class_map == ObjectClass.FOREST, forest)


def test_the_cli_accepts_a_tenth_of_a_metre(tmp_path: Path) -> None:
    from training.data.synthetic.__main__ import main

    assert (
        main(["--out", str(tmp_path), "--split", "val", "--count", "1", "--size", "64", "--gsd", "0.1", "--quiet"]) == 0
    )
    index = json.loads((tmp_path / "val" / "index.json").read_text())
    doc = json.loads((tmp_path / "val" / index["scenes"][0]["annotation"]).read_text())
    assert doc["gsd"] == 0.1 and doc["look"]["gsd_band"] == gsd_band(0.1) and "sensor" in doc["look"]


def test_the_plain_look_keeps_layout_labels_and_text() -> None:
    drawn, plain = generate_scene(7, 128, gsd=0.5), generate_scene(7, 128, gsd=0.5, looks=False)
    assert np.array_equal(drawn.instance_map, plain.instance_map) and drawn.objects == plain.objects
    assert (drawn.captions, drawn.referring, drawn.qa) == (plain.captions, plain.referring, plain.qa)
    assert plain.look["jpeg_quality"] == 0 and plain.look["soil"] == "loam" and plain.look["sharpen"] == 0
    assert plain.look["colour_matrix"] == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    pair = generate_pair(7, 128, gsd=0.5, changed=True, looks=False)
    assert pair.before.look["jpeg_quality"] == pair.after.look["jpeg_quality"] == 0
    assert pair.captions == generate_pair(7, 128, gsd=0.5, changed=True).captions
