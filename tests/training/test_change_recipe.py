"""The change recipe (DeltaVLM on the RSA model) on its tiny config: training, overfitting, the frozen LLM,
resume, SECOND-CC change masks, the engine serving the export for ``change`` and two-image ``chat``, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rs_assistant.core.protocol import AnalyzeRequest, Options, Task
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.training.fixtures import (
    CHANGECHAT_RECORDS,
    LEVIR_CHANGE_PAIRS,
    write_changechat,
    write_levir_cc_pairs,
    write_second_cc,
)
from tests.training.rsa_recipes import (
    assert_resumes_to_the_same_weights,
    mean,
    models_file,
    png,
    records,
    saved_trainable,
    tiny_values,
    train_cli,
)
from training.data.formats import DataFormatError
from training.loop import CHECKPOINT, METRICS_FILE, train
from training.recipes.change.train import ChangeConfig, ChangeRecipe

STEPS = 120


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("change-data")
    chat = write_changechat(tmp / "ChangeChat")
    return {
        "levir": write_levir_cc_pairs(tmp / "LEVIR-CC"),
        "chat": chat,
        "chat_images": chat.parent / "images",
        "second": write_second_cc(tmp / "SECOND-CC-AUG"),
    }


def parts(tiny_clip_folder: Path, tiny_lm_folder: Path, data: dict[str, Path]) -> dict[str, str]:
    return {"vision_path": str(tiny_clip_folder), "lm_path": str(tiny_lm_folder), "change_root": str(data["levir"])}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_folder, tiny_lm_folder, data) -> ChangeConfig:
    """tiny.toml through the command line: 4 LEVIR-CC pairs (2 changed) + 3 ChangeChat conversations."""
    tmp = tmp_path_factory.mktemp("change-recipe")
    changes = dict(
        parts(tiny_clip_folder, tiny_lm_folder, data),
        changechat_json=str(data["chat"]),
        changechat_images=str(data["chat_images"]),
        max_steps=STEPS,
        checkpoint_every=80,
        batch_size=7,
        lr=0.02,
        caption_metrics=["BLEU", "ROUGE_L", "CIDEr"],
    )
    return train_cli("change", tmp, ChangeConfig, **changes)


def test_losses_fall_and_the_pairs_are_overfit(trained):
    log = records(trained.work_dir)
    assert len(log) == STEPS
    assert mean(log, "loss", slice(-5, None)) < 0.05 * mean(log, "loss", slice(0, 5))
    assert mean(log, "change", slice(-5, None)) < 0.05  # the changed/unchanged head
    metrics = json.loads((Path(trained.out) / METRICS_FILE).read_text())
    assert metrics["change_accuracy"] == 1.0
    # reported separately for changed and unchanged pairs, as the change-captioning papers do
    for prefix in ("", "changed_", "unchanged_"):
        assert {f"{prefix}Bleu_4", f"{prefix}ROUGE_L", f"{prefix}CIDEr"} <= set(metrics)  # METEOR: paper.toml
    assert metrics["changed_Bleu_1"] > 0.5 and metrics["unchanged_Bleu_1"] > 0.3
    assert {"paper_Bleu_4", "paper_CIDEr", "paper_changed_Bleu_4", "paper_unchanged_Bleu_4"} <= set(metrics)
    # the two unchanged pairs differ only in their ground colour (no difference at all): either may get the
    # other's caption, but an unchanged pair is always described as unchanged and a changed one as built
    captions = json.loads((Path(trained.out) / "eval_examples.json").read_text())
    unchanged = {raw.strip(" .") for name, flag, _box, raws in LEVIR_CHANGE_PAIRS if not flag for raw in raws}
    for name, flag, _box, _raws in LEVIR_CHANGE_PAIRS:
        if flag:
            assert captions[name].startswith(("a house is built", "a building appears")), captions
        else:
            assert captions[name].strip(" .") in unchanged, captions


def test_the_llm_stays_frozen_and_the_delta_parts_train(trained, tiny_lm_folder):
    trainable = torch.load(Path(trained.work_dir) / CHECKPOINT, weights_only=False)["trainable"]
    prefixes = (
        "model.projector.",
        "model.difference.",
        "model.delta_projector.",
        "model.delta_qformer.",
        "model.vision_tower.encoder.layers.1.",
        "model.language_model.model.embed_tokens.",
    )
    assert all(name.startswith(prefixes) for name in trainable)
    assert any(name.startswith("model.delta_qformer.") for name in trainable)  # the instruction-aware Q-Former
    from safetensors.torch import load_file

    exported = load_file(str(Path(trained.out) / "model.safetensors"))
    original = load_file(str(tiny_lm_folder / "model.safetensors"))
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert torch.equal(exported[f"language_model.{name}"], original[name])


def test_an_interrupted_run_resumes_to_the_same_weights_and_new_rows_only_keeps_the_rest(
    tmp_path, tiny_clip_folder, tiny_lm_folder, data
):
    def config(tmp: Path) -> ChangeConfig:
        return ChangeConfig.from_dict(
            tiny_values(
                "change",
                tmp,
                **parts(tiny_clip_folder, tiny_lm_folder, data),
                max_steps=8,
                checkpoint_every=100,
                evaluate=False,
                new_token_rows_only=True,
                weight_decay=0.1,
            )
        )

    straight, _ = assert_resumes_to_the_same_weights(ChangeRecipe, config, tmp_path, stop_at=5)
    from safetensors.torch import load_file

    original = load_file(str(tiny_lm_folder / "model.safetensors"))["model.embed_tokens.weight"]
    trained_rows = saved_trainable(straight.work_dir)["model.language_model.model.embed_tokens.weight"]
    words = original.shape[0]  # the LM's own vocabulary; the RSA tokens were added after it
    assert torch.equal(trained_rows[:words], original)  # the frozen LLM's rows did not move, even with weight decay
    assert not torch.equal(trained_rows[words:], torch.zeros_like(trained_rows[words:]))


def test_second_cc_change_masks_train_the_seg_token(tmp_path, tiny_clip_folder, tiny_lm_folder, data):
    values = tiny_values(
        "change",
        tmp_path,
        **{**parts(tiny_clip_folder, tiny_lm_folder, data), "change_root": str(data["second"])},
        change_format="second_cc",
        max_steps=2,
        batch_size=1,
        evaluate=False,
    )
    assert train(ChangeRecipe(ChangeConfig.from_dict(values))).finished
    assert "mask" in records(tmp_path / "work")[0]  # the changed pair's [SEG] against its semantic-map change mask


def test_the_engine_serves_the_export_for_change_and_chat(trained, tmp_path, data):
    engine = Engine(Registry.from_file(models_file(tmp_path, "deltavlm", trained.out), device="cpu"))

    def pair(root: Path, name: str) -> tuple:
        return tuple(png(root / "images" / "train" / side / name, (32, 32)) for side in ("A", "B"))

    changed = engine.analyze(
        AnalyzeRequest(
            task=Task.CHANGE,
            images=pair(data["levir"], "train_000101.png"),
            output_crs="EPSG:3857",
            model="deltavlm",
            options=Options(max_new_tokens=16),
        )
    )
    assert changed.text.startswith("changed (") and (
        "a house is built" in changed.text or "a building appears" in changed.text
    )
    same = engine.analyze(
        AnalyzeRequest(
            task=Task.CHANGE,
            images=pair(data["levir"], "train_000103.png"),
            output_crs="EPSG:3857",
            model="deltavlm",
            options=Options(max_new_tokens=16),
        )
    )
    assert same.text.startswith("unchanged (")
    record = CHANGECHAT_RECORDS[0]
    images = tuple(png(data["chat_images"] / path, (8, 8)) for path in record["image"])
    chat = engine.analyze(
        AnalyzeRequest(
            task=Task.CHAT,
            images=images,
            output_crs="EPSG:3857",
            model="deltavlm",
            prompt=record["conversations"][0]["value"].replace("<image>", "").strip(),
            options=Options(max_new_tokens=16),
        )
    )
    assert chat.text.startswith("Some buildings")


def test_bad_input_says_what_was_found_and_expected(tmp_path, tiny_clip_folder, tiny_lm_folder, data):
    from training.recipes.rsa_base import build_from_parts

    def config(**changes) -> ChangeConfig:
        values = parts(tiny_clip_folder, tiny_lm_folder, data)
        values.update(changes)
        return ChangeConfig.from_dict(tiny_values("change", tmp_path, **values))

    with pytest.raises(
        DataFormatError, match=r"LevirCCcaptions\.json: file not found \(folder holds .*SECOND-CC-AUG\.json"
    ):
        ChangeRecipe(config(change_root=str(data["second"])))  # a SECOND-CC folder read as LEVIR-CC
    with pytest.raises(DataFormatError, match=r"no samples in split 'test'; splits found: train \(4\)"):
        ChangeRecipe(config(train_split="test"))
    with pytest.raises(DataFormatError, match=r"record 0: 1 image\(s\); expected 2 \(a before/after pair\)"):
        ChangeRecipe(
            config(change_root="", changechat_json=str(_single_image_chat(tmp_path)), changechat_images=str(tmp_path))
        )
    # a checkpoint of another architecture: an RSA model without the Q-Former the config trains
    without = tmp_path / "no-qformer"
    model, processor = build_from_parts(config(rsa={}), tiny_clip_folder, tiny_lm_folder)
    model.save_pretrained(without)
    processor.save_pretrained(without)
    with pytest.raises(
        ValueError, match=r"trainable_modules names 'delta_qformer', which this model's config does not have"
    ):
        train(ChangeRecipe(config(init_from=str(without), rsa={})))


def _single_image_chat(tmp: Path) -> Path:
    (tmp / "a.png").write_bytes(b"")
    path = tmp / "single.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "x",
                    "image": "a.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nwhat changed?"},
                        {"from": "gpt", "value": "nothing"},
                    ],
                }
            ]
        )
    )
    return path
