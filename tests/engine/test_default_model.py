"""The shipped built-in model: no models file, a real region of the demo pair, every task answered."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from shapely.geometry import box, shape

from rs_assistant.core.protocol import AnalyzeRequest, FeatureKind
from rs_assistant.engine.registry import Registry, default_model_path
from rs_assistant.engine.service import Engine

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"
WORDS = {
    "building",
    "buildings",
    "house",
    "houses",
    "road",
    "roads",
    "tree",
    "trees",
    "grass",
    "water",
    "parking",
    "car",
    "cars",
    "vehicle",
    "vehicles",
    "field",
    "fields",
    "roofs",
    "lot",
    "lots",
    "pond",
    "tank",
    "tanks",
}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(Registry.from_file(None))


@pytest.fixture(scope="module")
def region() -> dict:
    """A 512 x 512 pixel window in the middle of the demo's after image, in its own CRS."""
    with rasterio.open(DEMO / "after.tif") as src:
        left, top = src.transform * (768, 768)
        right, bottom = src.transform * (1280, 1280)
        return {"extent": [left, bottom, right, top], "crs": src.crs.to_string()}


def ask(engine: Engine, region: dict, task: str, prompt: str = "", images: tuple[str, ...] = ("after",)):
    refs = [{"source": str(DEMO / f"{name}.tif"), **region} for name in images]
    request = AnalyzeRequest.from_dict(
        {
            "task": task,
            "prompt": prompt,
            "images": refs,
            "output_crs": "EPSG:3857",
            "options": {"max_side": 512, "score_threshold": 0.0},
        }
    )
    return engine.analyze(request)


def test_the_weights_ship_within_the_size_limit():
    weights = default_model_path() / "model.safetensors"
    assert weights.is_file()
    assert weights.stat().st_size <= 25 * 1024 * 1024


def test_caption_talks_about_what_is_there(engine, region):
    response = ask(engine, region, "caption")
    assert response.model == "default"
    assert WORDS & set(response.text.lower().replace(",", " ").replace(".", " ").split()), response.text
    covers = dict(response.land_cover or ())
    assert "grass areas" in covers and "buildings" in covers, response.land_cover  # a suburb's lawns and houses


def test_find_buildings_returns_boxes_inside_the_region(engine, region):
    response = ask(engine, region, "ground", "find the buildings")
    feats = response.feature_list
    assert feats and all(f["properties"]["kind"] == FeatureKind.BOX.value for f in feats)
    from pyproj import Transformer
    from shapely.ops import transform

    to_3857 = Transformer.from_crs(region["crs"], "EPSG:3857", always_xy=True)
    # the region's outline in Web Mercator (its edges, not only two corners: the grids are turned by a degree)
    area = transform(to_3857.transform, box(*region["extent"]).segmentize(8.0)).buffer(0.5)
    assert len(feats) > 20  # one box per building (rsa_instances), not the few the language model writes
    assert all(area.contains(shape(f["geometry"])) for f in feats)


def test_segment_answers_with_masks_or_says_nothing_was_found(engine, region):
    response = ask(engine, region, "segment", "segment the buildings")
    kinds = {f["properties"]["kind"] for f in response.feature_list}
    assert kinds <= {FeatureKind.MASK.value}
    assert response.feature_list or response.text == "nothing found", response.text


def test_compare_gives_a_verdict(engine, region):
    response = ask(engine, region, "change", "what changed?", images=("before", "after"))
    assert response.text.split()[0] in {"changed", "unchanged"}, response.text
