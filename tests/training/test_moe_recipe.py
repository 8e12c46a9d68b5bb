"""The moe recipe (RS-MoE) on its tiny config: stage 1 (router + bridge) then stage 2 (the experts' LoRA),
falling losses, four captions and four RSVQA questions overfit, resume, the export served by the engine
(caption, chat), bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rs_assistant.core.protocol import AnalyzeRequest, Message, Options, Task
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.training.fixtures import SCENE_CLASSES, write_rsvqa
from tests.training.rsa_recipes import assert_resumes_to_the_same_weights, mean, png, records, tiny_values, train_cli
from training.data.formats import DataFormatError
from training.loop import CHECKPOINT, METRICS_FILE, train
from training.recipes.moe.train import MoERecipe, MoETrainConfig

BACKEND = "rs_assistant.engine.backends.moe:MoEBackend"
STAGE1, STAGE2 = 60, 250


@pytest.fixture(scope="module")
def vqa(tmp_path_factory) -> Path:
    return write_rsvqa(tmp_path_factory.mktemp("rsvqa") / "RSVQA_LR")


def data(tiny_clip_folder: Path, tiny_lm_folder: Path, scene_classes: Path, vqa: Path) -> dict[str, str]:
    return {
        "vision_path": str(tiny_clip_folder),
        "lm_path": str(tiny_lm_folder),
        "caption_root": str(scene_classes),
        "vqa_root": str(vqa),
    }


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory, tiny_clip_folder, tiny_lm_folder, scene_classes, vqa
) -> tuple[MoETrainConfig, MoETrainConfig]:
    """tiny.toml through the command line, both stages: 4 images x 2 captions + 4 active RSVQA questions."""
    tmp = tmp_path_factory.mktemp("moe-recipe")
    one = dict(data(tiny_clip_folder, tiny_lm_folder, scene_classes, vqa), max_steps=STAGE1, checkpoint_every=30)
    first = train_cli("moe", tmp / "stage1", MoETrainConfig, **one)
    two = dict(
        caption_root=str(scene_classes),
        vqa_root=str(vqa),
        stage=2,
        init_from=first.out,
        max_steps=STAGE2,
        checkpoint_every=125,
        caption_metrics=["BLEU", "CIDEr"],
    )
    return first, train_cli("moe", tmp / "stage2", MoETrainConfig, **two)


def test_both_stages_lower_the_loss_and_overfit_the_samples(trained):
    first, second = trained
    log1, log2 = records(first.work_dir), records(second.work_dir)
    assert len(log1) == STAGE1 and len(log2) == STAGE2
    assert mean(log1, "lm", slice(-10, None)) < 0.85 * mean(
        log1, "lm", slice(0, 10)
    )  # router + bridge steer frozen LMs
    assert mean(log2, "lm", slice(-20, None)) < 0.3 * mean(log2, "lm", slice(0, 10))
    metrics = json.loads((Path(second.out) / METRICS_FILE).read_text())
    assert metrics["accuracy"] >= 0.75 and metrics["accuracy_presence"] == 1.0  # RSVQA accuracy per question type
    assert metrics["Bleu_1"] > 0.9 and metrics["CIDEr"] > 1.0
    assert sum(metrics[f"route_{name}"] for name in ("theme", "object", "relationship")) == pytest.approx(1.0)


def test_stage_one_trains_the_router_and_stage_two_the_experts_lora(trained, tiny_lm_folder):
    first, second = trained
    one = torch.load(Path(first.work_dir) / CHECKPOINT, weights_only=False)["trainable"]
    assert one and all(name.startswith(("model.router.", "model.bridge.")) for name in one)
    two = torch.load(Path(second.work_dir) / CHECKPOINT, weights_only=False)["trainable"]
    assert two and all("lora_" in name for name in two) and {name.split(".")[2] for name in two} == {"0", "1", "2"}
    from safetensors.torch import load_file

    stage1, stage2 = (
        load_file(str(Path(first.out) / "model.safetensors")),
        load_file(str(Path(second.out) / "model.safetensors")),
    )
    original = load_file(str(tiny_lm_folder / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(stage1[f"experts.0.{name}"], original[name])  # stage 1: the experts stayed frozen
    assert not any("lora" in key for key in stage2)
    assert not torch.allclose(stage2[f"experts.0.{name}"], original[name]) or not torch.allclose(
        stage2[f"experts.1.{name}"], original[name]
    )  # stage 2: LoRA merged into the experts
    for key, value in stage1.items():
        if key.startswith("router."):
            assert torch.equal(stage2[key], value), key  # stage 2: the router stayed frozen


def test_an_interrupted_run_resumes_to_the_same_weights(trained, tmp_path, scene_classes, vqa):
    first, _ = trained

    def config(tmp: Path) -> MoETrainConfig:
        return MoETrainConfig.from_dict(
            tiny_values(
                "moe",
                tmp,
                caption_root=str(scene_classes),
                vqa_root=str(vqa),
                stage=2,
                init_from=first.out,
                max_steps=8,
                checkpoint_every=100,
                evaluate=False,
            )
        )

    assert_resumes_to_the_same_weights(MoERecipe, config, tmp_path, stop_at=3)


def test_the_engine_serves_the_export(trained, tmp_path, scene_classes, vqa):
    _, second = trained
    (tmp_path / "models.toml").write_text(
        f'[models.rs-moe]\nbackend = "{BACKEND}"\npath = "{second.out}"\n'
        f'[models.rs-moe-concat]\nbackend = "{BACKEND}"\npath = "{second.out}"\n'
        'compose = "concat"\n'
    )
    engine = Engine(Registry.from_file(tmp_path / "models.toml"))
    label = SCENE_CLASSES[0][0]
    image = png(scene_classes / "images" / f"{label}_train.png", (32, 32))
    caption = engine.analyze(
        AnalyzeRequest(
            task=Task.CAPTION,
            images=(image,),
            output_crs="EPSG:3857",
            model="rs-moe",
            options=Options(max_new_tokens=16),
        )
    )
    assert label in caption.text
    answer = engine.analyze(
        AnalyzeRequest(
            task=Task.CHAT,
            images=(png(vqa / "Images_LR" / "1.tif", (16, 16)),),
            output_crs="EPSG:3857",
            model="rs-moe",
            prompt="Is there a road?",
            options=Options(max_new_tokens=8),
        )
    )
    assert answer.text == "yes"
    chat = engine.analyze(
        AnalyzeRequest(
            task=Task.CHAT,
            images=(image,),
            output_crs="EPSG:3857",
            model="rs-moe-concat",
            prompt="Is it a rural or an urban area?",
            options=Options(max_new_tokens=8),
            history=(Message("user", "Is there a road?"), Message("assistant", "yes")),
        )
    )
    assert isinstance(chat.text, str)


def test_bad_input_says_what_was_found_and_expected(
    trained, tmp_path, tiny_clip_folder, tiny_lm_folder, scene_classes, vqa
):
    def config(**changes) -> MoETrainConfig:
        values = data(tiny_clip_folder, tiny_lm_folder, scene_classes, vqa)
        values.update(changes)
        return MoETrainConfig.from_dict(tiny_values("moe", tmp_path, **values))

    with pytest.raises(
        DataFormatError,
        match=r"no dataset_\*\.json \(folder holds Images_LR/, LR_split_train_answers\.json.*expected a Karpathy-style",
    ):
        MoERecipe(config(caption_root=str(vqa)))
    with pytest.raises(DataFormatError, match=r"no LR_split_test_images\.json \(splits found: train\)"):
        MoERecipe(config(caption_root="", train_split="test"))
    with pytest.raises(DataFormatError, match=r"no samples in split 'test'; splits found: train \(4\)"):
        MoERecipe(config(vqa_root="", train_split="test"))
    with pytest.raises(ValueError, match=r"init_from .* holds a 'qwen2' model .*expected an RS-MoE checkpoint folder"):
        train(MoERecipe(config(stage=2, init_from=str(tiny_lm_folder))))
    with pytest.raises(ValueError, match=r"language model .* holds a 'clip' model .*not a causal LM"):
        train(MoERecipe(config(lm_path=str(tiny_clip_folder))))
    with pytest.raises(ValueError, match="stage = 2 .*give init_from"):
        config(stage=2)
    with pytest.raises(ValueError, match="no training data"):
        config(caption_root="", vqa_root="")
