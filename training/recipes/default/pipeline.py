"""The default recipe end to end: the main run (train.py), then the config's ``[stages]`` on its frozen model,
in order: the region selector (selector.py), the class refiner (refine.py), the object detector (objects.py) and
the calibration of the serving thresholds on the val split (training.eval.calibrate), each written into ``out``.

``work_dir/stages.json`` records each step done, with its settings, seconds and results, so the same
command run again resumes: inside the main run from its checkpoint, and after it at the first stage
not done. A stage is written into ``out`` only when it ends, so one interrupted part-way (a second
Ctrl-C; the first lets it finish) starts over. A step whose settings changed is done again, and so
is every step after it. The record is copied to ``out/train_stages.json`` at the end.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.loop import TrainResult
from training.recipes.default.stages import StageSettings
from training.recipes.default.train import RUN_KEYS, TrainConfig, train

log = logging.getLogger(__name__)

STATE = "stages.json"
SHIPPED_STATE = "train_stages.json"


def run(config: TrainConfig, fresh: bool = False, stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Runs (or resumes) the main run and then every stage ``config.stages`` asks for; ``stop(step)``
    returning True ends the run at the next step of the main run or before the next stage."""
    settings = config.stage_settings()
    if settings.names:  # a stage that cannot run is named before an hour of training
        _check_model(config, settings)
    work_dir, out = Path(config.work_dir), Path(config.out)
    state_path = work_dir / STATE
    if fresh:
        state_path.unlink(missing_ok=True)
    values = config.as_json()
    planned = {"train": {k: values[k] for k in RUN_KEYS} | {"out": str(out)}}
    planned.update({name: _stage_keys(settings, name) for name in settings.names})
    done = _still_done(_read(state_path), planned, out)
    step = done.get("train", {}).get("step", 0)
    for name, keys in planned.items():
        if name in done:
            log.info("%s: done before (%s), skipped", name, state_path)
            continue
        if name != "train" and stop is not None and stop(step):
            log.info("stopped before the %s stage; run the same command to resume", name)
            return TrainResult(step, False, work_dir, None, {})
        started = time.perf_counter()
        if name == "train":
            result = train(config, fresh=fresh, stop=stop)
            if not result.finished:
                return result
            step, results = result.step, {"step": result.step}
        else:
            results = STAGES[name](out, settings, config.seed)
        done[name] = {"settings": keys, "seconds": round(time.perf_counter() - started, 1), **results}
        _write(state_path, done)
    seconds = {name: record["seconds"] for name, record in done.items()}
    log.info(
        "the model in %s is complete: %s (%.0f s in all)",
        out,
        ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()),
        sum(seconds.values()),
    )
    _write(out / SHIPPED_STATE, done)
    return TrainResult(step, True, work_dir, out, {})


def _check_model(config: TrainConfig, settings: StageSettings) -> None:
    model = config.model_config()
    if model.pixel_class_loss_weight <= 0 or model.num_aux_classes <= 0:
        raise ValueError(
            f"[stages] {', '.join(settings.names)}: model {config.model!r} has no per-pixel class head "
            "(pixel_class_loss_weight and num_aux_classes), which the selector, the refiner and the "
            "class calibration read; set their scenes to 0 or train such a model"
        )


def _stage_keys(settings: StageSettings, name: str) -> dict[str, Any]:
    """The settings a stage's result depends on."""
    prefix = {"selector": "selector_", "refiner": "refine_", "objects": "objects_", "calibration": "calibrate_"}[name]
    keys = {k: v for k, v in vars(settings).items() if k.startswith(prefix)}
    keys["size"] = settings.size
    if name != "calibration":
        keys["val_scenes"] = settings.val_scenes
    return keys


def _still_done(recorded: dict[str, Any], planned: dict[str, dict[str, Any]], out: Path) -> dict[str, Any]:
    """The recorded steps that still hold: those before the first one not recorded or recorded with other
    settings; none when ``out`` holds no model any more or holds a stage no longer planned."""
    if not (out / "config.json").is_file() or set(recorded) - set(planned):
        return {}  # the model is gone, or holds a stage not asked for now: export it again and go on from there
    done: dict[str, Any] = {}
    for name, keys in planned.items():
        record = recorded.get(name)
        if record is None or record.get("settings") != keys:
            break
        done[name] = record
    return done


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("%s is unreadable; every step runs again", path)
        return {}


def _write(path: Path, done: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


def _selector(out: Path, settings: StageSettings, seed: int) -> dict[str, Any]:
    from training.recipes.default.selector import train_selector

    return train_selector(
        out,
        None,
        settings.selector_scenes,
        settings.val_scenes,
        settings.selector_epochs,
        size=settings.size,
        workers=settings.workers,
        seed=seed,
    )


def _refiner(out: Path, settings: StageSettings, seed: int) -> dict[str, Any]:
    from training.recipes.default.refine import train_refiner

    return train_refiner(
        out,
        None,
        settings.refine_scenes,
        settings.val_scenes,
        settings.refine_epochs,
        size=settings.size,
        workers=settings.workers,
        seed=seed,
    )


def _objects(out: Path, settings: StageSettings, seed: int) -> dict[str, Any]:
    from training.recipes.default.objects import train_detector

    return train_detector(
        out,
        None,
        settings.objects_scenes,
        settings.val_scenes,
        settings.objects_epochs,
        crop=min(256, settings.size // 8 * 8),
        size=settings.size,
        workers=settings.workers,
        seed=seed,
    )


def _calibration(out: Path, settings: StageSettings, seed: int) -> dict[str, Any]:
    from training.eval.calibrate import main as calibrate

    before = json.loads((out / "config.json").read_text(encoding="utf-8"))
    code = calibrate(
        [
            "--model",
            str(out),
            "--count",
            str(settings.calibrate_scenes),
            "--pairs",
            str(settings.calibrate_pairs),
            "--captions",
            str(settings.calibrate_captions),
            "--size",
            str(settings.size),
            "--write",
        ]
    )
    if code != 0:
        raise RuntimeError(f"the calibration of {out} failed (exit {code})")
    after = json.loads((out / "config.json").read_text(encoding="utf-8"))
    return {
        "chosen": {k: v for k, v in after.items() if before.get(k) != v and k not in ("class_names", "class_nouns")}
    }


#: What each stage runs: ``stage(out, settings, seed)`` trains or tunes the folder ``out`` in place; its results.
STAGES: dict[str, Callable[[Path, StageSettings, int], dict[str, Any]]] = {
    "selector": _selector,
    "refiner": _refiner,
    "objects": _objects,
    "calibration": _calibration,
}
