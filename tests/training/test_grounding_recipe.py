"""The grounding recipe (SkyEyeGPT/GeoChat on the RSA model) on its tiny config: training, overfitting,
LoRA merged into the export, resume, the engine serving the export for ``ground``, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rs_assistant.core.protocol import AnalyzeRequest, FeatureKind, Options, Task
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.training.fixtures import DIOR_OBJECTS, write_dior_rsvg, write_geochat
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
from training.recipes.grounding.train import GroundingConfig, GroundingRecipe

STEPS = 100


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("grounding-data")
    geochat = write_geochat(tmp / "GeoChat")
    return {"rsvg": write_dior_rsvg(tmp / "DIOR_RSVG"), "geochat": geochat, "images": geochat.parent / "images"}


def parts(tiny_clip_folder: Path, tiny_lm_folder: Path) -> dict[str, str]:
    return {"vision_path": str(tiny_clip_folder), "lm_path": str(tiny_lm_folder)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_folder, tiny_lm_folder, data) -> GroundingConfig:
    """tiny.toml through the command line: DIOR-RSVG train (3 expressions) + GeoChat (3 conversations)."""
    tmp = tmp_path_factory.mktemp("grounding-recipe")
    changes = dict(
        parts(tiny_clip_folder, tiny_lm_folder),
        rsvg_root=str(data["rsvg"]),
        geochat_json=str(data["geochat"]),
        geochat_images=str(data["images"]),
        max_steps=STEPS,
        checkpoint_every=50,
        batch_size=6,
        geochat_eval_json=str(data["geochat"]),
    )
    return train_cli("grounding", tmp, GroundingConfig, **changes)


def test_loss_falls_and_the_expressions_are_overfit(trained):
    log = records(trained.work_dir)
    assert len(log) == STEPS
    assert mean(log, "loss", slice(-5, None)) < 0.1 * mean(log, "loss", slice(0, 5))
    metrics = json.loads((Path(trained.out) / METRICS_FILE).read_text())
    # boxes generated as location tokens, read back into the 800 x 800 pixels of the XML and scored there
    assert metrics["Acc@0.5"] == 1.0
    assert metrics["geochat_refer_Acc@0.5"] == 1.0  # the 0-100 GeoChat box, converted through pixels


def test_lora_is_trained_and_merged_into_the_export(trained, tiny_lm_folder):
    trainable = torch.load(Path(trained.work_dir) / CHECKPOINT, weights_only=False)["trainable"]
    assert any("lora_A" in name for name in trainable) and any(
        name.startswith("model.projector.") for name in trainable
    )
    assert not any("vision_tower" in name or "mask_decoder" in name for name in trainable)
    from safetensors.torch import load_file

    exported = load_file(str(Path(trained.out) / "model.safetensors"))
    assert not any("lora" in key for key in exported)
    original = load_file(str(tiny_lm_folder / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert exported[f"language_model.{name}"].shape == original[name].shape
    assert not torch.allclose(exported[f"language_model.{name}"], original[name])  # the adapters are folded in


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_clip_folder, tiny_lm_folder, data):
    def config(tmp: Path) -> GroundingConfig:
        return GroundingConfig.from_dict(
            tiny_values(
                "grounding",
                tmp,
                **parts(tiny_clip_folder, tiny_lm_folder),
                rsvg_root=str(data["rsvg"]),
                max_steps=8,
                checkpoint_every=100,
                evaluate=False,
            )
        )

    assert_resumes_to_the_same_weights(GroundingRecipe, config, tmp_path, stop_at=3)


def test_the_engine_serves_the_export_for_ground(trained, tmp_path, data):
    engine = Engine(Registry.from_file(models_file(tmp_path, "skyeye", trained.out), device="cpu"))
    image = png(data["rsvg"] / "JPEGImages" / "00001.jpg", (16, 16))
    response = engine.analyze(
        AnalyzeRequest(
            task=Task.GROUND,
            images=(image,),
            output_crs="EPSG:3857",
            model="skyeye",
            prompt="A green and brown golf field",
            options=Options(max_new_tokens=16),
        )
    )
    boxes = [f for f in response.features["features"] if f["properties"]["kind"] == FeatureKind.BOX.value]
    assert len(boxes) == 1 and boxes[0]["properties"]["label"] == "golffield"
    x0, y0, x1, y1 = (v * 16 / 800 for v in DIOR_OBJECTS[0][1][0][1])  # the XML's 800-pixel box on the 16-pixel image
    assert box_iou(bounds(boxes[0]), (x0, 16 - y1, x1, 16 - y0)) > 0.5  # map y points up


def test_bad_input_says_what_was_found_and_expected(tmp_path, tiny_clip_folder, tiny_lm_folder, data):
    def config(**changes) -> GroundingConfig:
        values = dict(parts(tiny_clip_folder, tiny_lm_folder), rsvg_root=str(data["rsvg"]))
        values.update(changes)
        return GroundingConfig.from_dict(tiny_values("grounding", tmp_path, **values))

    with pytest.raises(DataFormatError, match=r"no Annotations/ folder .*expected DIOR-RSVG layout"):
        GroundingRecipe(config(rsvg_root=str(data["images"].parent)))
    with pytest.raises(
        DataFormatError,
        match=r"no split file nosuch\.txt \(split files found: test\.txt, train\.txt, "
        r"val\.txt\)",
    ):
        GroundingRecipe(config(train_split="nosuch"))
    with pytest.raises(
        DataFormatError, match=r"GeoChat_Instruct\.json is an object with keys 'images'.*expected LLaVA"
    ):
        (tmp_path / "GeoChat_Instruct.json").write_text('{"images": []}')
        GroundingRecipe(
            config(geochat_json=str(tmp_path / "GeoChat_Instruct.json"), geochat_images=str(data["images"]))
        )
    with pytest.raises(ValueError, match=r"init_from .* holds a 'clip' model .*expected an RSA checkpoint folder"):
        train(GroundingRecipe(config(init_from=str(tiny_clip_folder))))
    with pytest.raises(ValueError, match=r"lm_path .* holds a 'clip' model .*not a causal LM"):
        train(GroundingRecipe(config(lm_path=str(tiny_clip_folder))))
    with pytest.raises(ValueError, match="no training data"):
        config(rsvg_root="")
