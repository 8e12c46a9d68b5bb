"""Helpers the recipes' tests share (grounding, segment, change, rag, moe, capret, the default's stages):
config, command-line runs, log, checkpoint and served-feature reading, tiny RSA folders."""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from training.loop import CHECKPOINT, LOG_FILE

C = TypeVar("C")

RECIPES = Path(__file__).parents[2] / "training" / "recipes"


def tiny_values(recipe: str, tmp: Path, **changes: Any) -> dict[str, Any]:
    values = tomllib.loads((RECIPES / recipe / "tiny.toml").read_text(encoding="utf-8"))
    values.update(out=str(tmp / "model"), work_dir=str(tmp / "work"))
    values.update(changes)
    return values


def cli_args(recipe: str, tmp: Path, **changes: Any) -> list[str]:
    """``python -m training RECIPE --config tiny.toml --set ...`` arguments."""
    args = [
        recipe,
        "--config",
        str(RECIPES / recipe / "tiny.toml"),
        "--set",
        f"out={tmp / 'model'}",
        "--set",
        f"work_dir={tmp / 'work'}",
    ]
    for key, value in changes.items():
        args += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args


def train_cli(recipe: str, tmp: Path, config_class: type[C], **changes: Any) -> C:
    """Runs ``recipe`` on tiny.toml with ``changes`` through the command line (it must finish); its config."""
    from training.__main__ import main as training_main

    assert training_main(cli_args(recipe, tmp, **changes)) == 0
    return config_class.from_dict(tiny_values(recipe, tmp, **changes))


def saved_trainable(work_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trainable parameters in ``work_dir``'s checkpoint."""
    return torch.load(Path(work_dir) / CHECKPOINT, weights_only=False)["trainable"]


def assert_same_trainable(work_dir: str | Path, other: str | Path) -> None:
    """Two runs' checkpoints hold the same trainable parameters with (nearly) equal values."""
    first, again = saved_trainable(work_dir), saved_trainable(other)
    assert first.keys() == again.keys()
    for name, value in first.items():
        torch.testing.assert_close(again[name], value, rtol=1e-4, atol=1e-5, msg=name)


def assert_resumes_to_the_same_weights(
    recipe: Callable[[Any], Any], config: Callable[[Path], Any], tmp: Path, stop_at: int
) -> tuple[Any, Any]:
    """A run stopped after step ``stop_at`` and resumed ends with the trainable parameters of an uninterrupted one;
    the two configs (straight, cut)."""
    from training.loop import train

    straight, cut = config(tmp / "straight"), config(tmp / "cut")
    assert train(recipe(straight)).finished
    stopped = train(recipe(cut), stop=lambda step: step == stop_at)
    assert stopped.step == stop_at and not stopped.finished and not Path(cut.out).exists()
    assert train(recipe(cut)).finished
    assert_same_trainable(straight.work_dir, cut.work_dir)
    return straight, cut


def records(work_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(work_dir) / LOG_FILE).read_text().splitlines()]


def mean(log: list[dict], key: str, part: slice) -> float:
    values = [r[key] for r in log[part]]
    return sum(values) / len(values)


def png(path: Path, size: tuple[int, int]) -> Any:
    from rs_assistant.core.protocol import ImageRef

    return ImageRef(
        extent=(0, 0, size[0], size[1]), crs="EPSG:3857", png_base64=base64.b64encode(path.read_bytes()).decode()
    )


def bounds(feature: dict) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a GeoJSON feature's geometry."""
    points: list[tuple[float, float]] = []

    def walk(node: Any) -> None:
        if isinstance(node, (list, tuple)) and node and isinstance(node[0], (int, float)):
            points.append((float(node[0]), float(node[1])))
        elif isinstance(node, (list, tuple)):
            for child in node:
                walk(child)

    walk(feature["geometry"]["coordinates"])
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def models_file(tmp: Path, name: str, out: str | Path) -> Path:
    path = tmp / "models.toml"
    path.write_text(f'[models.{name}]\nbackend = "rsa"\npath = "{out}"\n', encoding="utf-8")
    return path


def write_tiny_rsa(folder: Path, config: Any, corpus: list[str]) -> Path:
    """A random-weight RSA model of ``config`` with a tokenizer built from ``corpus``, saved with its processor
    to ``folder`` (seeded: the same weights every time)."""
    from rs_assistant.engine.models.rsa import RSAForConditionalGeneration, RSAProcessor, build_tokenizer

    tokenizer = build_tokenizer(corpus, vocab_size=512)
    config.bind_tokenizer(tokenizer)
    torch.manual_seed(0)
    RSAForConditionalGeneration(config).save_pretrained(folder)
    RSAProcessor.for_model(tokenizer, config).save_pretrained(folder)
    return folder
