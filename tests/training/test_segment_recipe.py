"""The segment recipe (GeoPix on the RSA model) on its tiny config: training, overfitting, resume, continuing
from an exported checkpoint, the engine serving the export for ``segment``, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rs_assistant.core.protocol import AnalyzeRequest, FeatureKind, Options, Task
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.training.fixtures import GEOPIX_IMAGES, GEOPIX_SIZE, write_coco_masks, write_geopix_coco
from tests.training.rsa_recipes import (
    assert_resumes_to_the_same_weights,
    bounds,
    mean,
    models_file,
    png,
    records,
    tiny_values,
    train_cli,
)
from training.data.formats import DataFormatError
from training.eval.metrics import box_iou
from training.loop import CHECKPOINT, METRICS_FILE, train
from training.recipes.segment.train import SegmentConfig, SegmentRecipe

STEPS = 100


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return write_geopix_coco(tmp_path_factory.mktemp("geopix"))


def base(tiny_clip_folder: Path, tiny_lm_folder: Path, coco: Path) -> dict[str, str]:
    return {
        "vision_path": str(tiny_clip_folder),
        "lm_path": str(tiny_lm_folder),
        "coco_json": str(coco),
        "coco_images": str(coco.parent / "images"),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_folder, tiny_lm_folder, coco) -> SegmentConfig:
    """tiny.toml through the command line: 3 images, 4 masks, 7 referring/category samples."""
    tmp = tmp_path_factory.mktemp("segment-recipe")
    changes = dict(base(tiny_clip_folder, tiny_lm_folder, coco), max_steps=STEPS, checkpoint_every=50, batch_size=7)
    return train_cli("segment", tmp, SegmentConfig, **changes)


def test_losses_fall_and_the_masks_are_overfit(trained):
    log = records(trained.work_dir)
    assert len(log) == STEPS
    assert mean(log, "loss", slice(-5, None)) < 0.05 * mean(log, "loss", slice(0, 5))
    assert mean(log, "mask", slice(-5, None)) < 0.2 * mean(log, "mask", slice(0, 5))  # BCE + Dice
    metrics = json.loads((Path(trained.out) / METRICS_FILE).read_text())
    assert metrics["mIoU"] >= 0.6 and metrics["cIoU"] >= 0.6  # 16 x 16 logits upsampled to 32 x 32 masks
    examples = json.loads((Path(trained.out) / "eval_examples.json").read_text())
    assert examples["the plane at the top left"] == "plane [SEG]"


def test_lora_decoder_and_memory_train(trained):
    trainable = torch.load(Path(trained.work_dir) / CHECKPOINT, weights_only=False)["trainable"]
    assert any("lora_B" in name for name in trainable)
    assert "model.mask_decoder.memory.memory" in trainable  # GeoPix's class-wise memory
    assert not any("vision_tower" in name or "difference" in name for name in trainable)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_clip_folder, tiny_lm_folder, coco):
    def config(tmp: Path) -> SegmentConfig:
        return SegmentConfig.from_dict(
            tiny_values(
                "segment",
                tmp,
                **base(tiny_clip_folder, tiny_lm_folder, coco),
                max_steps=8,
                checkpoint_every=100,
                evaluate=False,
            )
        )

    assert_resumes_to_the_same_weights(SegmentRecipe, config, tmp_path, stop_at=5)


def test_a_run_continues_from_an_exported_checkpoint(trained, tmp_path, coco):
    values = tiny_values(
        "segment",
        tmp_path,
        init_from=trained.out,
        coco_json=str(coco),
        coco_images=str(coco.parent / "images"),
        max_steps=2,
        evaluate=False,
    )
    assert train(SegmentRecipe(SegmentConfig.from_dict(values))).finished
    first = records(tmp_path / "work")[0]["loss"]
    assert first < 0.1 * records(trained.work_dir)[0]["loss"]  # it starts where the export left off


def test_the_engine_serves_the_export_for_segment(trained, tmp_path, coco):
    engine = Engine(Registry.from_file(models_file(tmp_path, "geopix", trained.out), device="cpu"))
    name, objects = GEOPIX_IMAGES[0]
    image = png(coco.parent / "images" / name, (GEOPIX_SIZE, GEOPIX_SIZE))
    response = engine.analyze(
        AnalyzeRequest(
            task=Task.SEGMENT,
            images=(image,),
            output_crs="EPSG:3857",
            model="geopix",
            prompt="segment the plane at the top left",
            options=Options(max_new_tokens=8),
        )
    )
    masks = [f for f in response.features["features"] if f["properties"]["kind"] == FeatureKind.MASK.value]
    assert masks and {f["properties"]["label"] for f in masks} == {"plane"}
    r0, r1, c0, c1 = objects[0][1]
    xs0, ys0, xs1, ys1 = zip(*(bounds(f) for f in masks))
    assert box_iou((min(xs0), min(ys0), max(xs1), max(ys1)), (c0, GEOPIX_SIZE - r1, c1, GEOPIX_SIZE - r0)) > 0.5


def test_bad_input_says_what_was_found_and_expected(tmp_path, tiny_clip_folder, tiny_lm_folder, coco):
    def config(**changes) -> SegmentConfig:
        values = base(tiny_clip_folder, tiny_lm_folder, coco)
        values.update(changes)
        return SegmentConfig.from_dict(tiny_values("segment", tmp_path, **values))

    (tmp_path / "captions.json").write_text('{"images": [], "annotations": {}}')
    with pytest.raises(
        DataFormatError, match=r"captions\.json has no 'images' and 'annotations' lists .*expected COCO"
    ):
        SegmentRecipe(config(coco_json=str(tmp_path / "captions.json")))
    with pytest.raises(DataFormatError, match=r"1 image\(s\) it lists are missing"):
        fixture = write_coco_masks(tmp_path / "coco")
        (fixture.parent / "images" / "P0001_0000.png").unlink()
        SegmentRecipe(config(coco_json=str(fixture), coco_images=str(fixture.parent / "images")))
    with pytest.raises(ValueError, match=r"init_from .* holds a 'qwen2' model .*expected an RSA checkpoint folder"):
        train(SegmentRecipe(config(init_from=str(tiny_lm_folder))))
    with pytest.raises(ValueError, match=r"vision_path .* holds a 'qwen2' model .*expected a CLIP checkpoint"):
        train(SegmentRecipe(config(vision_path=str(tiny_lm_folder))))
    with pytest.raises(ValueError, match=r"rsa overrides \['class_memory_classes'\] change the architecture"):
        config(init_from=str(tmp_path), rsa={"class_memory_classes": 4})
