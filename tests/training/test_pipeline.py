"""The default recipe end to end (training/recipes/default/pipeline.py): the main run, then the selector, the
refiner, the object detector and the calibration on its model, resumed step by step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rs_assistant.engine.backends.rsa import RSABackend
from tests.training.rsa_recipes import cli_args, tiny_values
from training.__main__ import main as training_main
from training.recipes.default import pipeline
from training.recipes.default.train import TrainConfig

PIXEL_HEAD = {"num_aux_classes": 12, "pixel_class_loss_weight": 1.0}
SMALL_STAGES = {
    "selector_scenes": 2,
    "selector_epochs": 1,
    "refine_scenes": 2,
    "refine_epochs": 1,
    "objects_scenes": 2,
    "objects_epochs": 1,
    "calibrate_scenes": 2,
    "calibrate_pairs": 4,
    "val_scenes": 1,
    "size": 64,
    "workers": 0,
}


def _config(tmp: Path, **stages: int) -> TrainConfig:
    return TrainConfig.from_dict(
        tiny_values("default", tmp, model_settings=PIXEL_HEAD, stages={**SMALL_STAGES, **stages})
    )


@pytest.fixture
def fake_stages(monkeypatch) -> list[str]:
    """Stages that only note their run in the folder's config (and in the returned list), in a fraction of a second."""
    ran: list[str] = []

    def stage(name: str):
        def run(out: Path, settings, seed: int) -> dict:
            config = json.loads((out / "config.json").read_text())
            config.setdefault("stages_seen", []).append(name)
            (out / "config.json").write_text(json.dumps(config))
            ran.append(name)
            return {"note": name}

        return run

    monkeypatch.setattr(pipeline, "STAGES", {name: stage(name) for name in pipeline.STAGES})
    return ran


def test_one_command_trains_the_model_then_adds_the_selector_the_refiner_the_detector_and_the_calibration(
    tmp_path, monkeypatch
):
    from training.recipes.default import selector

    monkeypatch.setattr(selector, "MIN_TARGET_IOU", 0.0)  # a barely trained class head rarely matches an object
    args = cli_args("default", tmp_path)
    for key, value in PIXEL_HEAD.items():
        args += ["--set", f"model_settings.{key}={value}"]
    for key, value in SMALL_STAGES.items():
        args += ["--set", f"stages.{key}={value}"]
    assert training_main(args) == 0
    out = tmp_path / "model"
    record = json.loads((out / pipeline.SHIPPED_STATE).read_text())
    assert list(record) == ["train", "selector", "refiner", "objects", "calibration"]
    assert record["train"]["step"] == 8 and record["selector"]["examples"] > 0 and record["refiner"]["scenes"] == 2
    assert record["objects"]["scenes"] == 2
    assert "change_threshold" in json.dumps(record["calibration"]["chosen"]) or record["calibration"]["chosen"] == {}
    config = json.loads((out / "config.json").read_text())
    assert config["region_selector_dim"] > 0 and config["class_refine_channels"] > 0 and "class_aware_masks" in config
    assert config["object_detector_channels"] > 0
    backend = RSABackend("pipeline", {"path": str(out)}, "cpu")
    backend.ensure_loaded()
    assert backend.model.region_selector is not None and backend.model.class_refiner is not None
    assert backend.model.object_detector is not None


def test_a_second_run_skips_what_is_done_and_a_changed_stage_runs_again_with_the_ones_after_it(tmp_path, fake_stages):
    config = _config(tmp_path)
    assert pipeline.run(config).finished
    assert fake_stages == ["selector", "refiner", "objects", "calibration"]
    weights = (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns
    assert pipeline.run(config).finished
    assert fake_stages == ["selector", "refiner", "objects", "calibration"]  # nothing ran again
    assert (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns == weights  # the model was not exported again
    assert pipeline.run(_config(tmp_path, refine_epochs=2)).finished
    assert fake_stages[4:] == ["refiner", "objects", "calibration"]
    seen = json.loads((tmp_path / "model" / "config.json").read_text())["stages_seen"]
    assert seen == ["selector", "refiner", "objects", "calibration", "refiner", "objects", "calibration"]


def test_a_stage_no_longer_asked_for_leaves_a_freshly_exported_model(tmp_path, fake_stages):
    assert pipeline.run(_config(tmp_path)).finished
    assert pipeline.run(_config(tmp_path, selector_scenes=0)).finished
    assert fake_stages[4:] == ["refiner", "objects", "calibration"]
    seen = json.loads((tmp_path / "model" / "config.json").read_text())["stages_seen"]
    assert seen == ["refiner", "objects", "calibration"]


def test_a_stop_after_the_main_run_resumes_at_the_first_stage(tmp_path, fake_stages):
    config = _config(tmp_path)
    exported = tmp_path / "model" / "config.json"
    stopped = pipeline.run(config, stop=lambda step: exported.is_file())  # asked once the main run has exported
    assert not stopped.finished and stopped.step == config.max_steps and fake_stages == []
    assert pipeline.run(config).finished and fake_stages == ["selector", "refiner", "objects", "calibration"]
    assert json.loads((tmp_path / "work" / pipeline.STATE).read_text())["train"]["step"] == config.max_steps


def test_a_deleted_model_is_exported_again_from_the_checkpoint_and_every_stage_runs(tmp_path, fake_stages):
    import shutil

    config = _config(tmp_path)
    assert pipeline.run(config).finished
    shutil.rmtree(tmp_path / "model")
    assert pipeline.run(config).finished
    assert (
        fake_stages == ["selector", "refiner", "objects", "calibration"] * 2
        and (tmp_path / "model" / "model.safetensors").is_file()
    )


def test_stages_on_a_model_without_a_class_head_and_unknown_settings_are_named_before_training(tmp_path, caplog):
    args = cli_args("default", tmp_path) + ["--set", "stages.selector_scenes=5"]
    assert training_main(args) == 2
    assert "no per-pixel class head" in caplog.text and not (tmp_path / "work").exists()
    assert training_main(cli_args("default", tmp_path) + ["--set", "stages.selectr_scenes=5"]) == 2
    assert "[stages]" in caplog.text and "selectr_scenes" in caplog.text and "selector_scenes" in caplog.text
    assert training_main(cli_args("default", tmp_path) + ["--set", "stages.refine_epochs=0"]) == 2
    assert training_main(cli_args("default", tmp_path) + ["--set", "model_settings.no_such_field=1"]) == 2
    assert "no_such_field" in caplog.text and not (tmp_path / "work").exists()
