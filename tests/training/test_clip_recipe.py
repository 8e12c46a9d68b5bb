"""The clip recipe on its tiny config: training, overfitting, LoRA, resume, data formats, export to the engine, bad
input."""

from __future__ import annotations

import base64
import json
import tomllib
from pathlib import Path

import pytest
import torch

from rs_assistant.core.protocol import AnalyzeRequest, ImageRef, Options, Task
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.training.fixtures import SCENE_CLASSES, write_levir_cc, write_shards, write_skyscript
from training.__main__ import main as training_main
from training.data.formats import DataFormatError
from training.loop import CHECKPOINT, LOG_FILE, METRICS_FILE, train
from training.recipes.clip.train import ClipConfig, ClipRecipe

TINY = Path(__file__).parents[2] / "training" / "recipes" / "clip" / "tiny.toml"
LABELS = [label for label, _ in SCENE_CLASSES]


def config(tmp: Path, model: Path, data: Path, **changes: object) -> ClipConfig:
    values = tomllib.loads(TINY.read_text(encoding="utf-8"))
    values.update(out=str(tmp / "model"), work_dir=str(tmp / "work"), model_path=str(model), data_root=str(data))
    values.update(changes)
    return ClipConfig.from_dict(values)


def losses(work_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (work_dir / LOG_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_folder, scene_classes) -> ClipConfig:
    """tiny.toml through the command line, 40 steps on the four pairs (every batch is the whole set)."""
    tmp = tmp_path_factory.mktemp("clip-recipe")
    args = [
        "clip",
        "--config",
        str(TINY),
        "--set",
        f"out={tmp / 'model'}",
        "--set",
        f"work_dir={tmp / 'work'}",
        "--set",
        f"model_path={tiny_clip_folder}",
        "--set",
        f"data_root={scene_classes}",
        "--set",
        "max_steps=40",
        "--set",
        "checkpoint_every=20",
        "--set",
        f"zeroshot_labels={json.dumps(LABELS)}",
    ]
    assert training_main(args) == 0
    return config(tmp, tiny_clip_folder, scene_classes, max_steps=40, checkpoint_every=20)


def test_loss_falls_and_four_pairs_are_overfit(trained):
    values = losses(Path(trained.work_dir))
    assert len(values) == 40
    assert sum(values[-5:]) / 5 < 0.25 * sum(values[:5]) / 5
    metrics = json.loads((Path(trained.out) / METRICS_FILE).read_text())
    assert metrics["t2i_R@1"] == 1.0 and metrics["i2t_R@1"] == 1.0 and metrics["mR"] == 1.0
    assert metrics["zeroshot_top1"] == 1.0
    out = {p.name for p in Path(trained.out).iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
        LOG_FILE,
        METRICS_FILE,
    } <= out


def test_lora_trains_adapters_only_and_exports_a_plain_clip(tmp_path, tiny_clip_folder, scene_classes):
    cfg = config(
        tmp_path, tiny_clip_folder, scene_classes, finetune="lora", max_steps=30, lr=2e-2, checkpoint_every=100
    )
    recipe = ClipRecipe(cfg)
    result = train(recipe)
    assert result.finished
    trainable = torch.load(Path(cfg.work_dir) / CHECKPOINT, weights_only=False)["trainable"]
    assert trainable and all("lora_" in name or name.endswith("logit_scale") for name in trainable)
    values = losses(Path(cfg.work_dir))
    assert sum(values[-5:]) / 5 < 0.5 * sum(values[:5]) / 5
    from safetensors.torch import load_file

    keys = load_file(str(Path(cfg.out) / "model.safetensors")).keys()
    assert not any("lora" in k for k in keys) and "text_model.encoder.layers.0.self_attn.q_proj.weight" in keys


def test_an_interrupted_run_resumes_to_the_same_weights(trained, tmp_path, tiny_clip_folder, scene_classes):
    cfg = config(tmp_path, tiny_clip_folder, scene_classes, max_steps=40, checkpoint_every=20)
    stopped = train(ClipRecipe(cfg), stop=lambda step: step == 13)
    assert stopped.step == 13 and not stopped.finished and not Path(cfg.out).exists()
    assert torch.load(Path(cfg.work_dir) / CHECKPOINT, weights_only=False)["step"] == 13
    resumed = train(ClipRecipe(cfg))
    assert resumed.finished and resumed.step == 40
    straight = torch.load(Path(trained.work_dir) / CHECKPOINT, weights_only=False)
    again = torch.load(Path(cfg.work_dir) / CHECKPOINT, weights_only=False)
    for name, value in straight["trainable"].items():
        torch.testing.assert_close(again["trainable"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert [json.loads(line)["step"] for line in (Path(cfg.work_dir) / LOG_FILE).read_text().splitlines()] == list(
        range(1, 41)
    )


def test_a_checkpoint_of_other_settings_is_refused(tmp_path, tiny_clip_folder, scene_classes):
    train(ClipRecipe(config(tmp_path, tiny_clip_folder, scene_classes)), stop=lambda step: step == 1)
    with pytest.raises(ValueError, match="batch_size: 4.*now batch_size: 2"):
        train(ClipRecipe(config(tmp_path, tiny_clip_folder, scene_classes, batch_size=2)))
    assert train(
        ClipRecipe(config(tmp_path, tiny_clip_folder, scene_classes, batch_size=2, max_steps=2)), fresh=True
    ).finished


def test_the_engine_serves_the_export(trained, tmp_path, scene_classes):
    (tmp_path / "models.toml").write_text(f'[models.rsclip]\nbackend = "clip"\npath = "{trained.out}"\n')
    engine = Engine(Registry.from_file(tmp_path / "models.toml"))
    pngs = {
        label: base64.b64encode((scene_classes / "images" / f"{label}_train.png").read_bytes()).decode()
        for label in LABELS
    }
    images = [ImageRef(extent=(0, 0, 32, 32), crs="EPSG:3857", png_base64=pngs[label]) for label in LABELS]
    for label, image in zip(LABELS, images):
        response = engine.analyze(
            AnalyzeRequest(
                task=Task.CLASSIFY,
                images=(image,),
                output_crs="EPSG:3857",
                model="rsclip",
                options=Options(labels=tuple(LABELS)),
            )
        )
        assert response.text.splitlines()[0] == label
    response = engine.analyze(
        AnalyzeRequest(
            task=Task.RETRIEVE,
            images=tuple(images),
            output_crs="EPSG:3857",
            model="rsclip",
            prompt="an aerial view of the harbor.",
            options=Options(top_k=2),
        )
    )
    best = min(response.features["features"], key=lambda f: f["properties"]["rank"])
    assert best["properties"]["image"] == LABELS.index("harbor")


def test_open_clip_checkpoints_and_other_formats_train(tmp_path, tiny_clip_folder):
    from tests.engine.tiny_models import clip as engine_tiny_clip

    # the engine tests' tiny CLIP rewritten in open_clip's layout (GeoRSCLIP/RemoteCLIP/SkyCLIP ship that)
    open_clip = engine_tiny_clip.make_open_clip(tmp_path / "open_clip", engine_tiny_clip.make(tmp_path / "hf"))
    (tmp_path / "skyscript").mkdir()
    csv = write_skyscript(tmp_path / "skyscript")
    result = train(
        ClipRecipe(
            config(
                tmp_path / "a",
                open_clip,
                tmp_path / "skyscript",
                data_format="skyscript",
                skyscript_csv=str(csv),
                max_steps=2,
                evaluate=False,
            )
        )
    )
    assert result.finished and (Path(result.out) / "config.json").is_file()
    write_shards(tmp_path / "shards")
    result = train(
        ClipRecipe(
            config(
                tmp_path / "b",
                tiny_clip_folder,
                tmp_path,
                data_format="shards",
                shards=str(tmp_path / "shards" / "shard-{000000..000001}.tar"),
                batch_size=2,
                max_steps=5,
                checkpoint_every=2,
                evaluate=False,
            )
        )
    )
    assert result.finished and len(losses(Path(result.work_dir))) == 5


def test_bad_input_says_what_was_found_and_expected(tmp_path, tiny_clip_folder, tiny_lm_folder, scene_classes):
    levir = write_levir_cc(tmp_path / "levir")
    with pytest.raises(DataFormatError, match=r"no dataset_\*\.json \(folder holds LevirCCcaptions\.json, images/\)"):
        ClipRecipe(config(tmp_path, tiny_clip_folder, levir))
    with pytest.raises(DataFormatError, match=r"no samples in split 'val'; splits found: train \(4\)"):
        ClipRecipe(config(tmp_path, tiny_clip_folder, scene_classes, train_split="val"))
    with pytest.raises(ValueError, match=r"holds a 'qwen2' model .*expected a CLIP checkpoint folder"):
        train(ClipRecipe(config(tmp_path, tiny_lm_folder, scene_classes)))
    with pytest.raises(ValueError, match="unknown config key"):
        config(tmp_path, tiny_clip_folder, scene_classes, lora_rank=4)
    assert (
        training_main(
            [
                "clip",
                "--config",
                str(TINY),
                "--set",
                f"data_root={levir}",
                "--set",
                f"work_dir={tmp_path / 'w'}",
                "--set",
                f"out={tmp_path / 'o'}",
            ]
        )
        == 2
    )
