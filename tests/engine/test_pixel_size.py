"""A window's ground pixel size, and the built-in model fed at the scale it was trained for.

``Window.pixel_size_m`` is geodesic (true ground metres whatever the CRS); the RSA backend reads class-level
finds on a fine window in crops of a ground size (rsa_instances.CROP_SIDE_M), can place a window finer than its
trained range on its input at the low end (rsa_scale, off as measured worse), reports the scale it fed, and
answers in the window's own pixels. Without a pixel size, or with a config from before
``trained_input_pixel_m``, the answers are today's.
"""

from __future__ import annotations

import threading

import affine
import numpy as np
import pyproj
import pytest
import torch
from shapely.geometry import box

from rs_assistant.core.protocol import AnalyzeRequest, AnalyzeResponse, BatchRequest, ImageRef, Options, Task
from rs_assistant.engine import batch
from rs_assistant.engine.backends import rsa_instances, rsa_scale
from rs_assistant.engine.backends.base import BackendCall, BackendResult
from rs_assistant.engine.backends.rsa import RSABackend
from rs_assistant.engine.imagery import Window
from rs_assistant.engine.registry import Registry, default_model_path
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from tests.engine.fakes import write_models_file
from training.data.synthetic import generate_scene, split_seeds

PIXELS = np.zeros((512, 512, 3), np.uint8)


def test_a_utm_window_has_its_grid_pixel_size():
    window = Window(PIXELS, affine.Affine(0.5, 0, 500_000, 0, -0.5, 4_650_000), "EPSG:32633")
    assert window.pixel_size_m == pytest.approx(0.5, rel=2e-3)  # UTM's scale factor is 0.9996 at its meridian


def test_a_web_mercator_window_at_60_north_has_half_its_mercator_size_on_the_ground():
    x, y = pyproj.Transformer.from_crs(4326, 3857, always_xy=True).transform(10.0, 60.0)
    window = Window(PIXELS, affine.Affine(1.0, 0, x, 0, -1.0, y), "EPSG:3857")
    assert window.pixel_size_m == pytest.approx(0.5, rel=0.01)  # 1 Mercator metre is cos(60) ground metres


def test_a_degrees_window_has_metres_per_pixel():
    window = Window(PIXELS, affine.Affine(1e-5, 0, 10.0, 0, -1e-5, 0.00256), "EPSG:4326")
    # at the equator 1e-5 degrees is 1.113 m of longitude and 1.106 m of latitude: their mean
    assert window.pixel_size_m == pytest.approx(1.109, rel=2e-3)


def test_no_pixel_size_without_a_crs_proj_knows():
    assert Window(PIXELS, affine.Affine(1, 0, 0, 0, -1, 0), "not a crs").pixel_size_m is None


def test_the_response_and_a_batch_tile_carry_the_windows_pixel_size(tmp_path):
    write_models_file(tmp_path / "models.toml")
    grid = rasters.utm_transform()
    rasters.burn(tmp_path / "burn.tif", box(*rasters.pixel_extent(grid, 20, 10, 36, 26)))
    extent = rasters.pixel_extent(grid, 0, 0, 64, 64)
    engine = Engine(Registry.from_file(tmp_path / "models.toml"))
    request = AnalyzeRequest(
        task="caption",
        model="echo",
        images=(ImageRef(extent=extent, crs=rasters.UTM, source=str(tmp_path / "burn.tif")),),
        output_crs=rasters.UTM,
    )
    response = engine.analyze(request)
    assert response.pixel_size_m == pytest.approx(rasters.UTM_RES, rel=2e-3)
    assert response.model_pixel_size_m is None  # the echo model feeds every window as read
    assert AnalyzeResponse.from_dict(response.to_dict()).pixel_size_m == response.pixel_size_m
    window = Window(PIXELS, grid, rasters.UTM)
    job = BatchRequest(task="caption", sources=(str(tmp_path / "burn.tif"),), output_crs=rasters.UTM)
    tile = batch._call(job, [window], threading.Event())
    assert tile.pixel_size_m == pytest.approx(rasters.UTM_RES, rel=2e-3)


def test_a_fine_window_is_placed_at_the_low_end_and_mapped_back():
    placement = rsa_scale.fit((512, 512), 0.1, (0.5, 7.0), 224)
    assert placement is not None
    # 224 input pixels of 0.5 m are 112 m: 1120 window pixels, drawn at 1024 (rsa_scale.MAX_CANVAS)
    assert placement.canvas == (1024, 1024) and placement.size == (468, 468) and placement.offset == (278, 278)
    assert rsa_scale.fed_pixel_m(placement, 0.1, 224) == pytest.approx(0.5, rel=0.01)
    assert placement.box((278, 278, 278 + 468, 278 + 468)) == pytest.approx((0, 0, 512, 512))
    assert placement.box((0, 0, 200, 200)) is None  # wholly on the padding
    assert placement.box((0, 0, 512, 512)) == pytest.approx((0, 0, (512 - 278) * 512 / 468, (512 - 278) * 512 / 468))
    mask = np.zeros(placement.canvas, bool)
    mask[278:746, 278:512] = True
    back = placement.mask(mask)
    assert back.shape == (512, 512) and back[:, :250].all() and not back[:, 260:].any()
    image = placement.image(np.full((512, 512, 3), 200, np.uint8))
    assert image.shape == (1024, 1024, 3) and (image == 200).all()
    window = np.zeros((512, 512, 3), np.uint8)
    window[:, :8] = 255  # a white west edge, mirrored into the padding west of it
    image = placement.image(window)
    assert image[500, 278:282].min() == 255 and image[500, 274:278].min() == 255 and image[500, 300].max() == 0
    assert rsa_scale.fit((512, 512), 0.5, (0.5, 7.0), 224) is None  # 1.1 m per input pixel: fed as read
    assert rsa_scale.fit((512, 512), None, (0.5, 7.0), 224) is None
    assert rsa_scale.fit((512, 512), 0.1, None, 224) is None
    assert rsa_scale.coarser((512, 512), 4.0, (0.5, 7.0), 224) and not rsa_scale.coarser(
        (512, 512), 2.0, (0.5, 7.0), 224
    )


def test_crops_of_a_ground_size_are_todays_at_the_tuned_pixel_size_and_pad_a_small_window():
    at_tuned = rsa_instances.CROP_SIDE_M["buildings"] / rsa_instances.TUNED_PIXEL_M
    assert round(at_tuned) == rsa_instances.CROP_SIDE["buildings"] == 256
    assert rsa_instances.ground_crop_side("buildings", 0.1) == pytest.approx(198.4)
    assert rsa_instances.ground_crop_side("vehicles", 0.3) == pytest.approx(99.2)
    assert rsa_instances.ground_crop_side("buildings", 1.5) is None  # coarser: the tuned pixel crops
    seen = []

    def read(crops):
        seen.extend(c.shape[:2] for c in crops)
        return [torch.ones((3, *c.shape[:2])) for c in crops]

    image = np.zeros((512, 512, 3), np.uint8)
    out = rsa_instances.class_probabilities_at(image, 99.2, 0.1, read)  # 992 px crops: one, the window padded
    assert out.shape == (3, 512, 512) and seen == [(992, 992)]
    seen.clear()
    out = rsa_instances.class_probabilities_at(image, 198.4, 0.775, read)  # 256 px crops: a 2 x 2 grid, as today
    assert out.shape == (3, 512, 512) and seen == [(256, 256)] * 4


@pytest.fixture(scope="module")
def backend() -> RSABackend:
    torch.set_num_threads(2)
    model = RSABackend("default", {"path": str(default_model_path())}, device="cpu")
    model.ensure_loaded()
    assert model.trained_scale == (0.5, 7.0)
    return model


@pytest.fixture(scope="module")
def fine():
    """A test-split scene drawn at 0.1 m (a 51 m window: 0.23 m per model-input pixel), in the plain look."""
    return generate_scene(split_seeds("test", 6)[5], size=512, gsd=0.1, looks=False)


def ask(backend: RSABackend, task: Task, image: np.ndarray, prompt: str, pixel_size_m: float | None) -> BackendResult:
    options = Options(score_threshold=0.3)
    return backend.run(
        BackendCall(task=task, images=[image], prompt=prompt, options=options, pixel_size_m=pixel_size_m)
    )


def _inside(result: BackendResult, shape: tuple[int, int]) -> bool:
    height, width = shape
    return all(
        0 <= d.box[0] < d.box[2] <= width and 0 <= d.box[1] < d.box[3] <= height
        for d in result.detections
        if d.box is not None
    ) and all(d.mask.shape == shape for d in result.detections if d.mask is not None)


def test_a_fine_window_is_read_in_crops_of_a_ground_size_for_class_level_finds(backend, fine):
    segmented = ask(backend, Task.SEGMENT, fine.image, "segment the buildings", 0.1)
    assert segmented.model_pixel_size_m == pytest.approx(198.4 / 224, rel=0.01)  # crops of 198 m
    assert segmented.detections and _inside(segmented, fine.class_map.shape)
    found = ask(backend, Task.GROUND, fine.image, "find the trees", 0.1)  # the object detector: shrunk to 0.25 m
    assert found.model_pixel_size_m == pytest.approx(0.25, rel=0.01)
    assert _inside(found, fine.class_map.shape)
    enlarged = ask(backend, Task.SEGMENT, fine.image, "segment the trees", 1.0)  # coarse: enlarged twice
    assert enlarged.model_pixel_size_m == pytest.approx(0.5, rel=0.01)
    assert _inside(enlarged, fine.class_map.shape)
    coarse = ask(backend, Task.GROUND, fine.image, "find the buildings", 1.0)  # coarser than tuned: pixel crops
    assert coarse.model_pixel_size_m is None
    # placing the window for the other tasks measured worse (rsa_scale.PLACE_FINE_WINDOWS): fed as read
    assert ask(backend, Task.CAPTION, fine.image, "", 0.1).model_pixel_size_m is None


def test_a_placed_fine_window_is_fed_at_the_trained_scale_and_answered_in_its_pixels(backend, fine, monkeypatch):
    monkeypatch.setattr(rsa_scale, "PLACE_FINE_WINDOWS", True)
    ref = fine.referring[0].text
    grounded = ask(backend, Task.GROUND, fine.image, f"find {ref}", 0.1)
    assert grounded.model_pixel_size_m == pytest.approx(0.5, rel=0.01)
    assert _inside(grounded, fine.class_map.shape)
    segmented = ask(backend, Task.SEGMENT, fine.image, f"segment {ref}", 0.1)
    assert segmented.model_pixel_size_m == pytest.approx(0.5, rel=0.01)
    assert _inside(segmented, fine.class_map.shape)
    caption = ask(backend, Task.CAPTION, fine.image, "", 0.1)
    assert caption.text and caption.model_pixel_size_m == pytest.approx(0.5, rel=0.01)
    assert ask(backend, Task.CAPTION, fine.image, "", 1.0).model_pixel_size_m is None  # within the range: as read


def test_without_a_pixel_size_or_a_trained_scale_the_answers_are_todays(backend, fine):
    config = backend.model.config
    prompts = [(Task.GROUND, "find the buildings"), (Task.GROUND, f"find {fine.referring[0].text}")]
    unknown = [ask(backend, task, fine.image, prompt, None) for task, prompt in prompts]
    before = config.trained_input_pixel_m
    try:
        config.trained_input_pixel_m = None  # a config written before the field
        old_config = [ask(backend, task, fine.image, prompt, 0.1) for task, prompt in prompts]
    finally:
        config.trained_input_pixel_m = before
    for a, b in zip(unknown, old_config):
        assert a.model_pixel_size_m is None and b.model_pixel_size_m is None
        assert a.text == b.text and [d.box for d in a.detections] == [d.box for d in b.detections]
