"""The default RSA recipe on its tiny config: training, overfitting, resume, export to the engine, evaluation."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from rs_assistant.core.protocol import AnalyzeRequest, FeatureKind, ImageRef, Options, Task
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.service import Engine
from tests.engine import rasters
from training.__main__ import apply_override
from training.__main__ import main as training_main
from training.eval.rsa import METRIC_KEYS
from training.eval.rsa import main as eval_main
from training.recipes.default.train import CHECKPOINT, LOG_FILE, TrainConfig, train

TINY = Path(__file__).parents[2] / "training" / "recipes" / "default" / "tiny.toml"


def tiny_config(tmp: Path, **changes: object) -> TrainConfig:
    values = tomllib.loads(TINY.read_text(encoding="utf-8"))
    values.update(out=str(tmp / "model"), work_dir=str(tmp / "work"), **changes)
    return TrainConfig.from_dict(values)


def log_records(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / LOG_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    """tiny.toml, run to the end through the command line (8 steps, checkpoints at 4 and 8)."""
    tmp = tmp_path_factory.mktemp("tiny-recipe")
    code = training_main(
        ["default", "--config", str(TINY), "--set", f"out={tmp / 'model'}", "--set", f"work_dir={tmp / 'work'}"]
    )
    assert code == 0
    return tiny_config(tmp)


def test_a_run_logs_every_step_and_exports_a_small_folder(trained):
    records = log_records(Path(trained.work_dir))
    assert [r["step"] for r in records] == list(range(1, trained.max_steps + 1))
    assert all({"loss", "lm", "lr", "elapsed"} <= r.keys() for r in records)
    out = Path(trained.out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", LOG_FILE} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / CHECKPOINT).exists() and (Path(trained.work_dir) / CHECKPOINT).is_file()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert json.loads((out / "config.json").read_text())[
        "change_seg_marks_changed"
    ]  # [SEG] ends changed pairs' captions


def test_loss_falls_over_a_few_steps(tmp_path):
    train(tiny_config(tmp_path, max_steps=30, lr=3e-3, warmup_steps=3, checkpoint_every=100))
    lm = [r["lm"] for r in log_records(tmp_path / "work")]
    assert sum(lm[-5:]) / 5 < sum(lm[:5]) / 5 - 0.5


def test_overfits_a_handful_of_samples(tmp_path):
    config = tiny_config(tmp_path, fixed_batches=2, max_steps=120, lr=1e-2, warmup_steps=5, checkpoint_every=1000)
    train(config)
    losses = [r["loss"] for r in log_records(tmp_path / "work")]
    assert losses[-1] < 0.25 * losses[0]


def test_an_interrupted_run_resumes_to_the_same_weights(trained, tmp_path):
    config = tiny_config(tmp_path)
    stopped = train(config, stop=lambda step: step == 4)
    assert stopped.step == 4 and not stopped.finished and not Path(config.out).exists()
    resumed = train(config)
    assert resumed.finished and resumed.step == config.max_steps
    assert [r["step"] for r in log_records(tmp_path / "work")] == list(range(1, config.max_steps + 1))
    straight = torch.load(Path(trained.work_dir) / CHECKPOINT, weights_only=False)
    again = torch.load(tmp_path / "work" / CHECKPOINT, weights_only=False)
    assert straight["step"] == again["step"] == config.max_steps
    for name, value in straight["model"].items():
        assert torch.equal(value, again["model"][name]), name
    assert straight["optimizer"]["state"].keys() == again["optimizer"]["state"].keys()
    assert torch.equal(straight["optimizer"]["state"][0]["exp_avg"], again["optimizer"]["state"][0]["exp_avg"])


def test_loader_processes_build_the_same_batches_so_a_run_reaches_the_same_weights(trained, tmp_path):
    """``loader_workers`` (a GPU run's batches built ahead in other processes) changes nothing but when
    each batch is built: the run's log and weights are those of the in-process run."""
    config = tiny_config(tmp_path, loader_workers=2)
    assert train(config).finished
    straight = torch.load(Path(trained.work_dir) / CHECKPOINT, weights_only=False)
    loaded = torch.load(tmp_path / "work" / CHECKPOINT, weights_only=False)
    for name, value in straight["model"].items():
        assert torch.equal(value, loaded["model"][name]), name
    assert [r["lm"] for r in log_records(tmp_path / "work")] == [r["lm"] for r in log_records(Path(trained.work_dir))]
    with pytest.raises(ValueError, match="loader_workers must not be negative"):
        tiny_config(tmp_path, loader_workers=-1)


def test_a_checkpoint_of_other_settings_is_refused(trained, tmp_path):
    config = tiny_config(tmp_path)
    train(config, stop=lambda step: step == 1)
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_config(tmp_path, batch_size=2))
    assert train(tiny_config(tmp_path, batch_size=2, max_steps=2), fresh=True).finished


def test_unknown_recipe_and_bad_overrides_are_named(capsys):
    with pytest.raises(SystemExit):
        training_main(["nope", "--config", str(TINY)])
    assert "known recipes: default" in capsys.readouterr().err
    config: dict = {}
    apply_override(config, "mix.change=0.5")
    apply_override(config, "out=/tmp/x")
    assert config == {"mix": {"change": 0.5}, "out": "/tmp/x"}
    assert training_main(["default", "--config", str(TINY), "--set", "bogus=1"]) == 2


@pytest.mark.parametrize("recipe", ["default_v13.toml", "default_v13_gpu.toml"])
def test_the_shipped_recipes_build_the_shipped_models_architecture(recipe):
    """The CPU and GPU recipes name a kept config whose every field is what the shipped model's config.json holds."""
    from rs_assistant.engine.models.rsa import CONFIGS_DIR

    values = tomllib.loads((TINY.parent / recipe).read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(values).model_config().to_dict()
    shipped = json.loads((Path(__file__).parents[2] / "resources/models/rsa-default/config.json").read_text())
    named = json.loads((CONFIGS_DIR / f"{values['model']}.json").read_text())
    for key in [*named, *values.get("model_settings", {})]:
        if key.endswith("_config"):  # a sub-config: the fields the named config sets
            built, kept = config[key], shipped[key]
            assert {k: built[k] for k in named[key]} == {k: kept[k] for k in named[key]}, key
        else:
            assert config[key] == shipped[key], key


def test_the_exported_model_is_served_by_the_engine(trained, tmp_path):
    (tmp_path / "models.toml").write_text(f'[models.m]\nbackend = "rsa"\npath = "{trained.out}"\n')
    engine = Engine(Registry.from_file(tmp_path / "models.toml"))
    raster = rasters.rgb_uint8(tmp_path / "scene.tif", width=96, height=96)
    extent = rasters.pixel_extent(rasters.utm_transform(), 8, 8, 72, 72)
    image = ImageRef(extent=extent, crs=rasters.UTM, source=str(raster))
    for task, prompt, images in (
        (Task.CAPTION, "", (image,)),
        (Task.GROUND, "find the buildings", (image,)),
        (Task.SEGMENT, "segment water", (image,)),
        (Task.CHANGE, "", (image, image)),
    ):
        response = engine.analyze(
            AnalyzeRequest(
                task=task,
                images=images,
                output_crs=rasters.UTM,
                model="m",
                prompt=prompt,
                options=Options(max_new_tokens=12),
            )
        )
        assert isinstance(response.text, str)
        assert all(f["properties"]["kind"] in {k.value for k in FeatureKind} for f in response.features["features"])
        if task is Task.CHANGE:
            assert response.text.startswith(("changed (", "unchanged ("))


def test_the_eval_cli_prints_and_writes_every_metric(trained, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert (
        eval_main(
            [
                "--model",
                trained.out,
                "--split",
                "test",
                "--count",
                "2",
                "--size",
                "64",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    for key in METRIC_KEYS:
        assert key in results and key in printed
    assert "not met" in printed or "met" in printed


def test_batches_carry_class_maps_and_change_maps_only_when_the_model_trains_those_heads():
    import numpy as np

    from rs_assistant.engine.models.rsa import RSAProcessor, build_tokenizer, load_named_config
    from training.recipes.default.dataset import DataSettings, PairRecord, Sampler, SceneRecord

    class_map = np.zeros((32, 32), np.uint8)
    class_map[:16] = 10
    scene = SceneRecord(
        np.zeros((32, 32, 3), np.uint8),
        class_map,
        (class_map == 10).astype(np.uint16),
        np.array([10], np.uint8),
        np.array([[0, 0, 32, 16]], np.int32),
        ("a pond.",) * 5,
        (("the pond", 1, (0, 0, 32, 16), "pond"),),
        (("is there water?", "yes", "presence"),),
    )
    pair = PairRecord(scene.image, scene.image, np.zeros((32, 32), bool), ("no change.",) * 5, False)
    tokenizer = build_tokenizer(["a pond. the pond is there water? yes no change. water bodies ponds"], vocab_size=512)
    config = load_named_config("tiny")
    config.bind_tokenizer(tokenizer)
    processor = RSAProcessor.for_model(tokenizer, config)
    mix = {"caption": 1.0, "ground": 1.0, "segment": 1.0, "change": 0.0, "chat": 1.0}
    settings = DataSettings(0, 32, 32, 32, 1, 1, 12, mix)
    for on in (False, True):
        sampler = Sampler(settings, [scene], [pair], processor, class_targets=on)
        batch = sampler.batch(sampler.samples(0, 3))
        assert ("class_targets" in batch) is on
        if on:
            assert batch["class_targets"].shape == (3, 32, 32) and batch["class_targets"].dtype == torch.long
    change = Sampler(settings, [scene], [pair], processor, class_targets=True)
    assert "class_targets" not in change.batch([change._change(pair, np.random.default_rng(0))])  # pairs: no class maps
    assert "change_targets" not in change.batch([change._change(pair, np.random.default_rng(0))])
    changed_mask = np.zeros((32, 32), bool)
    changed_mask[4:12, 4:12] = True
    changed = PairRecord(scene.image, scene.image, changed_mask, ("a pond was dug.",) * 5, True)
    dense = Sampler(settings, [scene], [pair], processor, change_targets=True)
    rng = np.random.default_rng(0)
    batch = dense.batch([dense._change(changed, rng), dense._change(pair, rng)])  # the dense change head's targets
    assert batch["change_targets"].shape == (2, 32, 32)
    assert batch["change_targets"][0].sum() == 64 and batch["change_targets"][1].sum() == 0


def test_the_image_dependence_cli_prints_and_writes_its_figures(trained, tmp_path, capsys):
    from training.eval.image_dependence import main as dependence_main

    out = tmp_path / "dependence.json"
    assert dependence_main(["--model", trained.out, "--count", "2", "--threads", "1", "--out", str(out)]) == 0
    results, printed = json.loads(out.read_text()), capsys.readouterr().out
    for key in ("caption_gap", "qa_gap", "token_spread_ratio", "token_rms", "text_embedding_rms", "change_accuracy"):
        assert key in results and key in printed


def test_the_change_threshold_is_the_one_with_the_best_accuracy_when_it_beats_the_noise():
    from training.eval.calibrate import best_change_threshold

    probabilities = np.array(
        [0.1, 0.2, 0.3, 0.35, 0.6, 0.9] * 10
    )  # a head that is right, but low, on the changed pairs
    truths = np.array([False, False, True, True, True, True] * 10)
    best, accuracy = best_change_threshold(probabilities, truths)
    assert best == 0.3 and accuracy[0.25] == accuracy[0.3] == 1.0 and accuracy[0.5] == pytest.approx(4 / 6)
    best, _ = best_change_threshold(np.array([0.1, 0.9] * 30), np.array([False, True] * 30))
    assert best == 0.5  # every candidate from 0.15 to 0.9 is right: the one nearest 0.5
    best, accuracy = best_change_threshold(probabilities[:6], truths[:6])  # the same gain on 6 pairs is noise
    assert best == 0.5 and accuracy[0.3] == 1.0


def test_the_calibration_cli_writes_the_best_mask_threshold_found_on_the_val_split(trained, tmp_path, capsys):
    import shutil

    from training.eval.calibrate import BOX_THRESHOLDS, CAPTION_DECODINGS, CHANGE_THRESHOLDS, THRESHOLDS
    from training.eval.calibrate import main as calibrate_main

    model = tmp_path / "model"
    shutil.copytree(trained.out, model)
    assert (
        calibrate_main(
            ["--model", str(model), "--count", "2", "--pairs", "4", "--captions", "2", "--size", "64", "--write"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("caption_num_beams") == len(CAPTION_DECODINGS) + 1  # the candidates and what is written
    beams = json.loads((model / "config.json").read_text())
    assert (beams["caption_num_beams"], beams["caption_length_penalty"]) in CAPTION_DECODINGS
    assert printed.count("mask_threshold") == len(THRESHOLDS) + 1 and "<- best" in printed
    written = json.loads((model / "config.json").read_text())["mask_threshold"]
    assert written in THRESHOLDS and f"wrote mask_threshold {written}" in printed
    change = json.loads((model / "config.json").read_text())["change_threshold"]
    assert change in CHANGE_THRESHOLDS and f"change_threshold {change}" in printed.split("wrote")[-1]
    assert printed.count("<- best") == 3 and "box_mask_threshold" not in printed
    with pytest.raises(SystemExit):  # the test split is what the goals are measured on
        calibrate_main(["--model", str(model), "--split", "test"])

    config = json.loads((model / "config.json").read_text())  # a model that reads its boxes off masks
    (model / "config.json").write_text(json.dumps({**config, "box_from_mask": True}))
    assert calibrate_main(["--model", str(model), "--count", "2", "--pairs", "0", "--size", "64", "--write"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("box_mask_threshold") == len(BOX_THRESHOLDS) + 1 and printed.count("<- best") == 2
    box = json.loads((model / "config.json").read_text())["box_mask_threshold"]
    assert box in BOX_THRESHOLDS and f"box_mask_threshold {box}" in printed.split("wrote")[-1]
    assert "caption_num_beams" not in printed  # the caption decoding is chosen only when asked


def test_the_calibration_tries_class_aware_masks_on_a_model_with_a_pixel_class_head(trained, tmp_path, capsys):
    from rs_assistant.engine.models.rsa import RSAConfig, RSAForConditionalGeneration, RSAProcessor
    from training.eval.calibrate import THRESHOLDS
    from training.eval.calibrate import main as calibrate_main

    config = RSAConfig.from_pretrained(trained.out)
    config.num_aux_classes, config.pixel_class_loss_weight = 12, 1.0
    model = tmp_path / "model"
    RSAForConditionalGeneration(config).save_pretrained(model)
    RSAProcessor.from_pretrained(trained.out).save_pretrained(model)
    assert calibrate_main(["--model", str(model), "--count", "2", "--pairs", "0", "--size", "64", "--write"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("class-aware masks  mask_threshold") == len(THRESHOLDS) and printed.count("<- best") == 2
    assert printed.count("class-region masks  mask_threshold") == len(THRESHOLDS)
    written = json.loads((model / "config.json").read_text())
    assert (
        isinstance(written["class_aware_masks"], bool)
        and f"class_aware_masks {written['class_aware_masks']}" in printed
    )
    assert f"class_region_masks {written['class_region_masks']}" in printed
    assert written["class_aware_masks"] or not written["class_region_masks"]  # regions refine class-aware masks
    assert printed.count("class_aware_boxes") == 3 and isinstance(written["class_aware_boxes"], bool)
    assert (
        written["class_names"][1] == "buildings" and written["class_nouns"]["house"] == 1
    )  # a kind, from train scenes
    if written["class_aware_masks"]:  # then each class present in the 2 scenes is tried with its bars
        assert "class_mask_bars buildings" in printed or "class_mask_bars grass areas" in printed
        assert set(written.get("class_mask_bars") or {}) <= set(written["class_names"])
    else:
        assert "class_mask_bars" not in printed


def test_a_class_keeps_the_mask_bar_that_beats_its_most_probable_pixels_by_more_than_noise():
    from training.eval.calibrate import MIN_BAR_GAIN, best_class_bars

    ious = {
        "trees": {None: 0.10, 0.5: 0.09, 0.2: 0.14, 0.1: 0.13},  # a small class: a low bar helps
        "fields": {None: 0.90, 0.5: 0.90 + MIN_BAR_GAIN / 2, 0.2: 0.85},  # a gain within the noise
        "roads": {None: 0.60, 0.5: 0.62, 0.4: 0.62},
    }  # a tie: the higher bar
    assert best_class_bars(ious) == {"trees": 0.2, "roads": 0.5}


def test_class_vocabulary_maps_every_answer_noun_to_its_class():
    from training.data.synthetic.classes import class_vocabulary
    from training.recipes.default.dataset import SceneRecord, referring_nouns

    instance_map = np.zeros((8, 8), np.uint16)
    scene = SceneRecord(
        np.zeros((8, 8, 3), np.uint8),
        np.zeros((8, 8), np.uint8),
        instance_map,
        np.array([1, 10, 6], np.uint8),
        np.zeros((3, 4), np.int32),
        ("a house.",) * 5,
        (
            ("the largest house", 1, (0, 0, 2, 2), "house"),
            ("the pond", 2, (0, 0, 2, 2), "pond"),
            ("the tree", 3, (0, 0, 2, 2), "tree"),
        ),
        (),
    )
    assert list(referring_nouns([scene])) == [("house", 1), ("pond", 10), ("tree", 6)]
    names, nouns = class_vocabulary([*referring_nouns([scene]), ("pool", 10), ("pool", 3), ("tree", 7)])
    assert names[1] == "buildings" and names[10] == "water bodies" and len(names) == 12
    assert nouns["house"] == nouns["building"] == nouns["buildings"] == 1 and nouns["pond"] == 10
    assert "pool" not in nouns  # seen with two classes: it names no one class
    assert nouns["tree"] == 6  # a class's own noun keeps its class


def test_ground_samples_carry_each_boxed_objects_mask_in_answer_order_for_a_box_from_mask_model():
    from rs_assistant.engine.models.rsa import (
        RSAForConditionalGeneration,
        RSAProcessor,
        build_tokenizer,
        load_named_config,
    )
    from training.recipes.default.dataset import DataSettings, PairRecord, Sampler, SceneRecord

    instance_map = np.zeros((32, 32), np.uint16)
    instance_map[20:28, 2:10] = 1  # the lower building is object 1: the answer lists it second (top to bottom)
    instance_map[3:9, 18:30] = 2
    class_map = np.where(instance_map > 0, 1, 8).astype(np.uint8)
    boxes = np.array([[2, 20, 10, 28], [18, 3, 30, 9]], np.int32)
    scene = SceneRecord(
        np.zeros((32, 32, 3), np.uint8),
        class_map,
        instance_map,
        np.array([1, 1], np.uint8),
        boxes,
        ("two buildings.",) * 5,
        (("the largest building", 2, (18, 3, 30, 9), "building"),),
        (("how many buildings?", "2", "count"),),
    )
    pair = PairRecord(scene.image, scene.image, np.zeros((32, 32), bool), ("no change.",) * 5, False)
    tokenizer = build_tokenizer(
        ["two buildings. the largest building how many buildings? 2 no change. find"], vocab_size=512
    )
    config = load_named_config("tiny")
    config.box_from_mask = True
    config.bind_tokenizer(tokenizer)
    processor = RSAProcessor.for_model(tokenizer, config)
    mix = {"caption": 0.0, "ground": 1.0, "segment": 0.0, "change": 0.0, "chat": 0.0}
    settings = DataSettings(0, 32, 32, 32, 1, 1, 12, mix)
    plain = Sampler(settings, [scene], [pair], processor)
    assert all(s.mask is None for s in plain.samples(0, 4))  # loc-token models: ground answers carry no masks
    sampler = Sampler(settings, [scene], [pair], processor, box_masks=True)
    found = {}
    for step in range(40):
        for sample in sampler.samples(step, 2):
            boxes_written = sample.text.count("<loc_") // 4
            if boxes_written:
                assert sample.mask.shape == (boxes_written, 32, 32)
                found[boxes_written] = sample
    assert set(found) == {1, 2}  # referring (one box) and "find the buildings" (both)
    referring, both = found[1], found[2]
    assert np.array_equal(referring.mask[0], instance_map == 2)
    assert np.array_equal(both.mask[0], instance_map == 2) and np.array_equal(both.mask[1], instance_map == 1)

    model = RSAForConditionalGeneration(config).train()
    out = model(**sampler.batch([referring, both]))
    assert out.mask_logits.shape[0] == 3 and torch.isfinite(out.mask_loss)  # one mask query per box
    out.mask_loss.backward()
    assert model.mask_decoder.query_proj[0].weight.grad.abs().sum() > 0


def test_the_breakdown_cli_prints_and_writes_grounding_by_rule_and_masks_per_class(trained, tmp_path, capsys):
    import shutil

    from training.eval.breakdown import main as breakdown_main

    model = tmp_path / "model"
    shutil.copytree(trained.out, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "box_from_mask": True}))
    out = tmp_path / "breakdown.json"
    assert (
        breakdown_main(["--model", str(model), "--count", "3", "--size", "64", "--threads", "1", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "referring grounding by rule" in printed and "class masks" in printed
    written = json.loads(out.read_text())
    assert written["ground_by_rule"] and written["class_masks"]
    for row in written["ground_by_rule"].values():  # both box sources are measured for a box_from_mask model
        assert {"tokens_acc@0.5", "mask_acc@0.5"} <= set(row) and all(0 <= v <= 1 for k, v in row.items() if k != "n")
    assert json.loads((model / "config.json").read_text())["box_from_mask"] is True  # the checkpoint is left as it was
    with pytest.raises(SystemExit):
        breakdown_main(["--model", str(tmp_path / "missing")])


def test_the_breakdown_scores_a_perfect_segmenter_as_perfect(monkeypatch):
    """A backend that answers every segment prompt with the true mask gets IoU 1 per class and all of
    its referring pixels on the target."""
    from types import SimpleNamespace

    from rs_assistant.engine.backends.base import BackendResult, Detection
    from training.data.synthetic import CLASSES, generate_scene
    from training.eval import breakdown as module

    scenes = {}

    def scene_of(seed, size):
        scenes[seed] = scenes.get(seed) or generate_scene(seed, size=size)
        return scenes[seed]

    current = {}

    class Oracle:
        model = SimpleNamespace(config=SimpleNamespace(box_from_mask=False))

        def run(self, call):
            scene = current["scene"]
            if call.task is Task.GROUND:
                return BackendResult(detections=[Detection(FeatureKind.BOX, "x", 1.0, box=(0.0, 0.0, 1.0, 1.0))])
            text = call.prompt.removeprefix("segment ")
            ref = next((r for r in scene.referring if r.text == text), None)
            if ref is not None:
                mask = scene.mask(ref.target)
            else:
                cls = next(c.id for c in CLASSES[1:] if f"the {c.plural}" == text)
                mask = scene.class_map == cls
            return BackendResult(detections=[Detection(FeatureKind.MASK, "x", 1.0, box=(0, 0, 1, 1), mask=mask)])

    def generate(seed, size):
        current["scene"] = scene_of(seed, size)
        return current["scene"]

    monkeypatch.setattr(module, "generate_scene", generate)
    results = module.breakdown(Oracle(), "val", count=3, size=96)
    assert results["class_masks"] and all(row["iou"] == 1.0 for row in results["class_masks"].values())
    referring = results["referring_masks"]
    assert referring["n"] >= 2
    assert referring["share_on_target"] == 1.0 and referring["target_recall"] == 1.0
    assert referring["share_on_same_class"] == 0.0 and referring["same_class_recall"] == 0.0
