"""The object detector's training stage (training/recipes/default/objects.py) and how the engine reads its maps
(engine/backends/rsa_objects.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rs_assistant.core.protocol import FeatureKind, Options, Task
from rs_assistant.engine.backends import rsa_instances, rsa_objects
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.rsa import RSABackend
from rs_assistant.engine.models.rsa import RSAForConditionalGeneration
from rs_assistant.engine.models.rsa.object_detector import STRIDE, ObjectMaps, RSAObjectDetector
from tests.training.rsa_recipes import write_tiny_rsa
from tests.training.test_refine import _config
from training.recipes.default import objects as stage


def _maps(height: int, width: int, peaks: list[tuple[int, int, float, float, float]]) -> ObjectMaps:
    """One class's maps of a ``height`` x ``width`` input with ``peaks`` (cell y, cell x, score, width, height)."""
    h, w = height // STRIDE, width // STRIDE
    centres, sizes = torch.zeros(1, 1, h, w), torch.zeros(1, 2, h, w)
    for y, x, score, box_w, box_h in peaks:
        centres[0, 0, y, x] = score
        sizes[0, :, y, x] = torch.tensor([box_w, box_h]).log()
    return ObjectMaps(centres, sizes, torch.full((1, 2, h, w), 0.5), torch.zeros(1, 1, h, w))


def test_objects_are_the_peaks_of_the_centre_map_with_their_sizes():
    maps = _maps(64, 64, [(10, 20, 0.9, 8, 4), (10, 21, 0.5, 8, 4), (25, 5, 0.3, 12, 12), (2, 2, 0.01, 4, 4)])
    found = rsa_objects.decode(maps, 0)
    assert [round(s, 2) for s, _ in found] == [0.9, 0.3]  # a weaker neighbour of a peak and a faint one are not
    assert found[0][1] == pytest.approx((41 - 4, 21 - 2, 41 + 4, 21 + 2))  # centre (20.5, 10.5) cells x 2
    assert found[1][1] == pytest.approx((11 - 6, 51 - 6, 11 + 6, 51 + 6))


def test_each_pixel_belongs_to_one_object_and_a_mask_is_its_ellipse_with_its_cover():
    cover = np.zeros((20, 40), bool)
    cover[2:12, 2:22] = True  # two touching objects' pixels, one region
    found = [(0.9, (2, 2, 12, 12)), (0.8, (10, 2, 22, 12)), (0.7, (28, 8, 36, 16))]
    first, second, empty = rsa_objects.object_masks(found, cover)
    assert not (first & second).any() and ((first | second) == cover).all()
    assert first[6, 5] and second[6, 19] and first[2, 2]  # a covered corner of its box is its own
    assert empty.sum() > 0.6 * 64 and not empty[8, 28] and empty[12, 32]  # no cover: the ellipse, corners out


class _Finder(torch.nn.Module):
    """A stand-in detector right by construction in any view: one object, the bright pixels of its input."""

    def forward(self, rgb: torch.Tensor) -> ObjectMaps:
        n, _, height, width = rgb.shape
        ys, xs = torch.nonzero(rgb[0, 0] > 0.5, as_tuple=True)
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        shape = (n, 1, height // STRIDE, width // STRIDE)
        centres, sizes, offsets = torch.zeros(shape), torch.zeros(n, 2, *shape[2:]), torch.full((n, 2, *shape[2:]), 0.5)
        centres[0, 0, int(cy), int(cx)] = 0.9
        sizes[0, :, int(cy), int(cx)] = torch.tensor([float(x1 - x0), float(y1 - y0)]).log()
        offsets[0, :, int(cy), int(cx)] = torch.tensor([cx - int(cx), cy - int(cy)])
        return ObjectMaps(centres, sizes, offsets, torch.zeros(shape))


def test_every_view_of_the_window_puts_its_objects_back_where_they_are():
    rgb = torch.zeros(1, 3, 48, 64)
    rgb[:, :, 30:35, 11:22] = 1.0  # an object 11 x 5 pixels, not square: a view that turns it must turn it back
    for views in (1, 2, 3, 4):
        found = rsa_objects.decode(rsa_objects.read_maps(_Finder(), rgb, views), 0)
        assert len(found) == 1 and found[0][0] == pytest.approx(0.9)
        assert found[0][1] == pytest.approx((11, 30, 22, 35), abs=1e-4), views
    assert [rsa_objects.view_count(s) for s in [(512, 512), (64, 48), (1024, 1024), (1536, 1536)]] == [4, 4, 2, 1]


def _region(box: tuple[int, int, int, int], shape=(40, 60)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


def test_joined_answers_keep_the_class_maps_shapes_and_add_what_only_the_detector_found():
    big = rsa_instances.Instance((0, 0, 30, 20), _region((0, 0, 30, 20)), 0.8)  # a large building
    lone = rsa_instances.Instance((40, 30, 50, 40), _region((40, 30, 50, 40)), 0.9)  # no detector centre in it
    inside = rsa_instances.Instance((10, 5, 20, 15), _region((8, 3, 22, 17)), 0.95)  # its centre in the big one
    missed = rsa_instances.Instance((32, 2, 40, 10), _region((26, 0, 41, 12)), 0.6)  # the class map missed it
    faint = rsa_instances.Instance((20, 25, 24, 29), None, 0.35)  # too weak to add on its own
    boxed = rsa_instances.Instance((20, 25, 24, 29), None, 0.5)
    covered = rsa_instances.Instance((28, 18, 34, 24), _region((29, 19, 31, 21)) | big.mask, 0.7)  # 3 px its own
    joined = rsa_objects.join([big, lone], [inside, missed, faint, boxed, covered])
    assert [(i.box, round(i.score, 2)) for i in joined] == [
        ((0, 0, 30, 20), 0.95),  # confirmed: its own shape, the detector's score
        ((32, 2, 40, 10), 0.6),
        ((20, 25, 24, 29), 0.5),
        ((40, 30, 50, 40), 0.45),  # unconfirmed: ranked at half its score, still drawn at 0.3
    ]
    assert joined[0].mask is big.mask and joined[1].mask[5, 35] and not joined[1].mask[5, 28]  # no pixel twice
    assert joined[2].mask is None  # a box-only answer keeps its boxes
    assert rsa_objects.join([], [missed, inside]) == [inside, missed]


def test_a_window_is_read_near_the_detectors_pixel_sizes_and_a_huge_one_shrunk():
    assert rsa_objects.read_scale((512, 512), 0.1, 0.25, 0.5) == pytest.approx(0.4)  # a drone tile: shrunk
    assert rsa_objects.read_scale((512, 512), 0.4, 0.25, 0.5) == 1.0
    assert rsa_objects.read_scale((512, 512), 0.75, 0.25, 0.5) == pytest.approx(1.5)  # coarse: enlarged
    assert rsa_objects.read_scale((512, 512), 2.0, 0.25, 0.5) == 2.0  # at most twice
    assert rsa_objects.read_scale((512, 512), 2.0, 0.25, None) == 1.0
    assert rsa_objects.read_scale((512, 512), None, 0.25, 0.5) == 1.0  # no pixel size: as read
    assert rsa_objects.read_scale((3072, 1000), 1.0, 0.25) == pytest.approx(0.5)
    assert rsa_objects.read_scale((1024, 1024), 1.0, 0.25, 0.5) == pytest.approx(1.5)  # at most MAX_SIDE a side
    rgb = rsa_objects.detector_input(np.zeros((100, 61, 3), np.uint8), 1.0)
    assert rgb.shape == (1, 3, 104, 64)


def test_targets_put_each_object_at_its_centre_with_its_size():
    cover = np.zeros((32, 32), np.uint8)
    cover[4:8, 10:18] = 3  # class index 2 + 1
    made = stage.targets(np.array([[2, 10, 4, 18, 8]], np.float32), cover, classes=4)
    heat = made["heat"]
    assert heat.shape == (4, 16, 16) and heat[2, 3, 7] == 1.0 and heat[2].sum() > 1 and heat[[0, 1, 3]].sum() == 0
    assert made["size"][:, 3, 7].exp().tolist() == pytest.approx([8, 4])
    assert made["offset"][:, 3, 7].tolist() == pytest.approx([0.0, 0.0])
    assert made["centre"].sum() == 1 and made["inside"][2, 2:4, 5:9].min() == 1.0


def test_a_coarse_window_is_learned_enlarged_as_the_engine_reads_it():
    image = np.zeros((16, 16, 3), np.uint8)
    image[4:6, 4:8] = 255
    cover = np.zeros((16, 16), np.uint8)
    cover[4:6, 4:8] = 1
    example = stage.Example(image, cover, np.array([[0, 4, 4, 8, 6]], np.float32), gsd=1.0)
    enlarge = stage.zoom(example, 0.25, 0.5)
    assert enlarge == 2.0 and stage.zoom(example, 0.25, None) == 1.0
    crop, crop_cover, objects = stage.augmented(example, 32, np.random.default_rng(0), enlarge)
    assert crop.shape == (32, 32, 3) and crop_cover.shape == (32, 32)
    assert len(objects) == 1 and sorted([objects[0, 3] - objects[0, 1], objects[0, 4] - objects[0, 2]]) == [4, 8]
    assert crop_cover.sum() == 4 * 8 and crop[crop_cover > 0].mean() > 150  # the object's pixels moved with it


def _squares(count: int, seed: int, side: int = 64) -> list[stage.Example]:
    """Bright squares (class 0, 4 px) and long bars (class 1, 10 x 3 px) on dark ground, some touching."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        image = np.full((side, side, 3), 40, np.uint8)
        cover = np.zeros((side, side), np.uint8)
        objects = []
        for k, (w, h) in enumerate([(4, 4), (10, 3)]):
            for _ in range(3):
                x, y = int(rng.integers(1, side - w - 1)), int(rng.integers(1, side - h - 1))
                if cover[y - 1 : y + h + 1, x - 1 : x + w + 1].any():
                    continue
                image[y : y + h, x : x + w] = (230, 230, 230) if k == 0 else (200, 80, 40)
                cover[y : y + h, x : x + w] = k + 1
                objects.append((k, x, y, x + w, y + h))
        found.append(stage.Example(image, cover, np.array(objects, np.float32).reshape(-1, 5), 0.5))
    return found


def test_fit_learns_to_find_every_object():
    config = _config()
    config.object_detector_channels, config.object_classes = 8, ["vehicles", "trees"]
    torch.manual_seed(0)
    detector = RSAObjectDetector(config)
    held_out = _squares(8, seed=1)
    before = stage.val_ap50(detector, held_out, ["vehicles", "trees"], views=1)
    losses = stage.fit(detector, _squares(64, seed=0), epochs=12, lr=1e-2, batch=8, side=64)
    after = stage.val_ap50(detector, held_out, ["vehicles", "trees"], views=1)  # the detector itself, one view
    assert losses[-1] < 0.5 * losses[0]
    assert after["vehicles"]["objects"] > 10 and after["trees"]["objects"] > 10
    assert before["vehicles"]["box_AP50"] < 0.2 and after["vehicles"]["box_AP50"] > 0.7
    assert after["trees"]["box_AP50"] > 0.7


def test_fit_refuses_no_examples():
    config = _config()
    config.object_detector_channels, config.object_classes = 4, ["vehicles"]
    with pytest.raises(ValueError, match="no examples"):
        stage.fit(RSAObjectDetector(config), [])


def test_train_detector_writes_a_folder_whose_class_level_answers_come_from_it(tmp_path: Path):
    """On a tiny random model: the examples come from real scenes, the folder gets the detector and its config,
    and the rsa backend answers "find the vehicles" with the detector's boxes and "segment the trees" with its
    masks (whatever an untrained detector finds: one feature per object, the count equal to those drawn)."""
    source, out = tmp_path / "rsa", tmp_path / "with-detector"
    config = _config(channels=0)
    config.class_aware_masks = True  # class-level answers read off its maps
    write_tiny_rsa(source, config, ["find the largest house", "segment the pond", "house [SEG]"])
    results = stage.train_detector(
        source, out, scenes_count=2, val_count=1, epochs=1, channels=4, size=96, crop=64, workers=1, threads=1
    )
    assert results["scenes"] == 2 and set(results["val"]) == set(stage.DETECTED)
    backend = RSABackend("detector", {"path": str(out)}, "cpu")
    backend.ensure_loaded()
    config = backend.model.config
    assert (
        backend.model.object_detector is not None
        and config.object_detector_channels == 4
        and config.object_served == ["vehicles", "trees"]
        and config.object_joined == ["buildings", "storage tanks"]
    )
    assert RSAForConditionalGeneration.from_pretrained(source).object_detector is None
    image = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    asked = [(Task.GROUND, "find the vehicles", FeatureKind.BOX, "vehicle"),
             (Task.SEGMENT, "segment the trees", FeatureKind.MASK, "tree"),
             (Task.SEGMENT, "segment the buildings", FeatureKind.MASK, "building")]  # fmt: skip
    for task, prompt, kind, noun in asked:
        call = BackendCall(task=task, images=[image], prompt=prompt, options=Options(score_threshold=0.0))
        result = backend.run(call)
        assert all(d.kind is kind and d.one_object for d in result.detections)
        assert result.text == rsa_instances.found_text(len(result.detections), noun, noun + "s", False)
    fine = BackendCall(task=Task.GROUND, images=[image], prompt="find the vehicles", pixel_size_m=0.1)
    assert backend.run(fine).model_pixel_size_m == pytest.approx(0.25, rel=0.02)  # read at the detector's scale
