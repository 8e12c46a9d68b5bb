"""The capret recipe (RS-CapRet) on its tiny config: training, overfitting, resume, export to the engine, bad input."""

from __future__ import annotations

import base64
import json
import tomllib
from pathlib import Path

import pytest
import torch

from rs_assistant.core.protocol import AnalyzeRequest, ImageRef, Message, Options, Task
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.training.fixtures import SCENE_CLASSES
from tests.training.rsa_recipes import assert_same_trainable, records
from training.__main__ import main as training_main
from training.loop import CHECKPOINT, METRICS_FILE, train
from training.recipes.capret.train import CapRetRecipe, CapRetTrainConfig

TINY = Path(__file__).parents[2] / "training" / "recipes" / "capret" / "tiny.toml"
BACKEND = "rs_assistant.engine.backends.capret:CapRetBackend"


def config(tmp: Path, clip: Path, lm: Path, data: Path, **changes: object) -> CapRetTrainConfig:
    values = tomllib.loads(TINY.read_text(encoding="utf-8"))
    values.update(
        out=str(tmp / "model"), work_dir=str(tmp / "work"), clip_path=str(clip), lm_path=str(lm), data_root=str(data)
    )
    values.update(changes)
    return CapRetTrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_folder, tiny_lm_folder, scene_classes) -> CapRetTrainConfig:
    """tiny.toml through the command line: 80 steps on the four image-caption pairs."""
    tmp = tmp_path_factory.mktemp("capret-recipe")
    args = [
        "capret",
        "--config",
        str(TINY),
        "--set",
        f"out={tmp / 'model'}",
        "--set",
        f"work_dir={tmp / 'work'}",
        "--set",
        f"clip_path={tiny_clip_folder}",
        "--set",
        f"lm_path={tiny_lm_folder}",
        "--set",
        f"data_root={scene_classes}",
        "--set",
        "max_steps=80",
        "--set",
        "checkpoint_every=40",
        "--set",
        "lr=0.02",
    ]
    assert training_main(args) == 0
    return config(tmp, tiny_clip_folder, tiny_lm_folder, scene_classes, max_steps=80, checkpoint_every=40, lr=0.02)


def test_losses_fall_and_four_samples_are_overfit(trained):
    log = records(Path(trained.work_dir))
    assert len(log) == 80

    def mean(key: str, part: slice) -> float:
        values = [r[key] for r in log[part]]
        return sum(values) / len(values)

    assert mean("loss", slice(-5, None)) < 0.25 * mean("loss", slice(0, 5))
    assert mean("caption", slice(-5, None)) < 0.6 * mean("caption", slice(0, 5))
    assert mean("ret_token", slice(-5, None)) < 0.1
    assert mean("retrieval", slice(-5, None)) < 0.6 * mean("retrieval", slice(0, 5))
    metrics = json.loads((Path(trained.out) / METRICS_FILE).read_text())
    # 4 images, 8 captions: chance is R@1 0.25; the frozen tiny LM's [RET] states separate most of them
    assert metrics["t2i_R@1"] >= 0.5 and metrics["i2t_R@1"] >= 0.5


def test_only_the_bridge_is_trained_and_checkpointed(trained, tiny_lm_folder):
    checkpoint = torch.load(Path(trained.work_dir) / CHECKPOINT, weights_only=False)
    assert checkpoint["trainable"] and all(name.startswith("model.bridge.") for name in checkpoint["trainable"])
    from safetensors.torch import load_file

    exported = load_file(str(Path(trained.out) / "model.safetensors"))
    original = load_file(str(tiny_lm_folder / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(exported[f"language_model.{name}"], original[name])  # the LM stayed frozen


def test_an_interrupted_run_resumes_to_the_same_weights(
    trained, tmp_path, tiny_clip_folder, tiny_lm_folder, scene_classes
):
    cfg = config(
        tmp_path,
        tiny_clip_folder,
        tiny_lm_folder,
        scene_classes,
        max_steps=80,
        checkpoint_every=40,
        lr=0.02,
        evaluate=False,
    )
    stopped = train(CapRetRecipe(cfg), stop=lambda step: step == 30)
    assert stopped.step == 30 and not stopped.finished
    assert train(CapRetRecipe(cfg)).finished
    assert_same_trainable(trained.work_dir, cfg.work_dir)


def test_the_engine_serves_the_export(trained, tmp_path, scene_classes):
    (tmp_path / "models.toml").write_text(f'[models.capret]\nbackend = "{BACKEND}"\npath = "{trained.out}"\n')
    engine = Engine(Registry.from_file(tmp_path / "models.toml"))
    labels = [label for label, _ in SCENE_CLASSES]
    images = [
        ImageRef(
            extent=(0, 0, 32, 32),
            crs="EPSG:3857",
            png_base64=base64.b64encode((scene_classes / "images" / f"{label}_train.png").read_bytes()).decode(),
        )
        for label in labels
    ]
    caption = engine.analyze(
        AnalyzeRequest(
            task=Task.CAPTION,
            images=(images[0],),
            output_crs="EPSG:3857",
            model="capret",
            options=Options(max_new_tokens=12),
        )
    )
    assert caption.text and "forest" in caption.text
    chat = engine.analyze(
        AnalyzeRequest(
            task=Task.CHAT,
            images=(images[1],),
            output_crs="EPSG:3857",
            model="capret",
            prompt="and this one?",
            history=(Message("user", "hello"), Message("assistant", "hi")),
            options=Options(max_new_tokens=6),
        )
    )
    assert isinstance(chat.text, str)
    found = engine.analyze(
        AnalyzeRequest(
            task=Task.RETRIEVE,
            images=tuple(images),
            output_crs="EPSG:3857",
            model="capret",
            prompt="an aerial view of the airport.",
            options=Options(top_k=2),
        )
    )
    ranked = sorted(found.features["features"], key=lambda f: f["properties"]["rank"])
    assert [f["properties"]["rank"] for f in ranked] == [1, 2]
    assert {f["properties"]["image"] for f in ranked} <= set(range(4)) and found.text.startswith("1. image ")


def test_bad_input_says_what_was_found_and_expected(tmp_path, tiny_clip_folder, tiny_lm_folder, scene_classes):
    with pytest.raises(ValueError, match=r"holds a 'clip' model .*not a causal LM"):
        train(CapRetRecipe(config(tmp_path, tiny_clip_folder, tiny_clip_folder, scene_classes)))
    with pytest.raises(ValueError, match=r"holds a 'qwen2' model .*expected a CLIP checkpoint folder"):
        train(CapRetRecipe(config(tmp_path, tiny_lm_folder, tiny_lm_folder, scene_classes)))
    with pytest.raises(ValueError, match=r"no samples in split 'test'; splits found: train \(4\)"):
        CapRetRecipe(config(tmp_path, tiny_clip_folder, tiny_lm_folder, scene_classes, train_split="test"))
    with pytest.raises(ValueError, match="data_root is empty"):
        config(tmp_path, tiny_clip_folder, tiny_lm_folder, scene_classes, data_root="")
