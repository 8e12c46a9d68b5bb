"""python -m training RECIPE --config FILE [--set key=value ...] [--fresh]

Runs a training recipe with a TOML config; ``--set`` overrides a key (dotted keys reach into
tables, values are read as TOML and fall back to a string: ``--set max_steps=100 --set
mix.change=0.3 --set out=/tmp/rsa``). A recipe resumes from its last checkpoint unless
``--fresh``; SIGTERM or Ctrl-C saves a checkpoint and stops. Under ``torchrun`` the shared
recipes (all but default) run data-parallel over every process (training/loop.py).

Recipes (each has ``tiny.toml`` for a CPU in seconds and a paper-sized config; training/README.md):

- ``default``: the built-in RSA model on the Synthetic Earth, its main run and then the stages its config
  asks for (training/recipes/default/pipeline.py);
- ``clip``: GeoRSCLIP/SkyCLIP continued contrastive training of a CLIP, full or LoRA (recipes/clip);
- ``capret``: RS-CapRet, a frozen CLIP and a frozen LLM joined by a trained linear bridge, with a
  ``[RET]`` token for retrieval (recipes/capret);
- ``grounding``: SkyEyeGPT/GeoChat-style instruction tuning of the RSA model, LoRA, boxes as location
  tokens (recipes/grounding);
- ``segment``: GeoPix, ``[SEG]`` tokens driving the RSA mask decoder with its class-wise memory, LoRA
  (recipes/segment);
- ``change``: DeltaVLM, bi-temporal encoder, difference module, instruction-aware Q-Former, frozen LLM;
  change captioning and ChangeChat conversations (recipes/change);
- ``moe``: RS-MoE, an instruction router writing sub-task prompts for K lightweight LLM experts, two
  stages (recipes/moe);
- ``rag``: RS-RAG, a CLIP knowledge index on disk (usearch), retrieval with re-ranking and
  knowledge-augmented prompts for an RSA VLM tuned with LoRA (recipes/rag).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before torch starts OpenMP: idle threads sleep instead of spinning, so a busy neighbour on the
# same cores does not slow every parallel region down many times.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from training.loop import TrainingError  # noqa: E402 - after OMP_WAIT_POLICY

log = logging.getLogger(__name__)


def _run_default(config: dict[str, Any], fresh: bool) -> int:
    from training.loop import install_signal_stop
    from training.recipes.default.pipeline import run
    from training.recipes.default.train import TrainConfig

    result = run(TrainConfig.from_dict(config), fresh=fresh, stop=install_signal_stop())
    return 0 if result.finished else 3


def _run_shared(module: str) -> Callable[[dict[str, Any], bool], int]:
    """A recipe on the shared loop: ``module.run(config, fresh, stop)``; exit 0 when finished, 3 when stopped."""

    def run(config: dict[str, Any], fresh: bool) -> int:
        import importlib

        from training.loop import install_signal_stop

        result = importlib.import_module(module).run(config, fresh, stop=install_signal_stop())
        return 0 if result.finished else 3

    return run


RECIPES: dict[str, Callable[[dict[str, Any], bool], int]] = {
    "default": _run_default,
    "clip": _run_shared("training.recipes.clip.train"),
    "capret": _run_shared("training.recipes.capret.train"),
    "grounding": _run_shared("training.recipes.grounding.train"),
    "segment": _run_shared("training.recipes.segment.train"),
    "change": _run_shared("training.recipes.change.train"),
    "moe": _run_shared("training.recipes.moe.train"),
    "rag": _run_shared("training.recipes.rag.train"),
}
#: Recipes that are planned but not written (none now); training/README.md says what each will reproduce.
NOT_IMPLEMENTED: dict[str, str] = {}


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """``key=value`` (or ``table.key=value``) into ``config``; the value is parsed as TOML, else kept as a string."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *tables, last = key.strip().split(".")
    target = config
    for table in tables:
        target = target.setdefault(table, {})
        if not isinstance(target, dict):
            raise ValueError(f"--set {key}: {table} is not a table")
    target[last] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help=f"one of: {', '.join(RECIPES)}")
    parser.add_argument("--config", type=Path, help="TOML file of the recipe's settings (required)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fresh", action="store_true", help="discard the last checkpoint and start over")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.recipe in NOT_IMPLEMENTED:
        log.error(
            "recipe %r (%s) is not implemented yet; implemented recipes: %s (see training/README.md)",
            args.recipe,
            NOT_IMPLEMENTED[args.recipe],
            ", ".join(RECIPES),
        )
        return 2
    if args.recipe not in RECIPES:
        parser.error(f"unknown recipe {args.recipe!r}; known recipes: {', '.join(RECIPES)}")
    if args.config is None:
        parser.error("--config FILE is required (each recipe has tiny.toml and a paper-sized config in its folder)")
    if not args.config.is_file():
        parser.error(f"no config file {args.config}")
    config = tomllib.loads(args.config.read_text(encoding="utf-8"))
    try:
        for assignment in args.overrides:
            apply_override(config, assignment)
        return RECIPES[args.recipe](config, args.fresh)
    except ValueError as exc:  # bad settings or data (DataFormatError), wrong checkpoint
        log.error("%s", exc)
        return 2
    except TrainingError as exc:  # out of memory, a diverged loss
        log.error("%s", exc)
        return 4


if __name__ == "__main__":
    sys.exit(main())
