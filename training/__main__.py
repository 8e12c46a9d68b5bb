"""python -m training RECIPE --config FILE [--set key=value ...] [--fresh]

Runs a training recipe with a TOML config; ``--set`` overrides a key (dotted keys reach into
tables, values are read as TOML and fall back to a string: ``--set max_steps=100 --set
mix.change=0.3 --set out=/tmp/rsa``). A recipe resumes from its last checkpoint unless
``--fresh``. Recipes: ``default`` (the built-in RSA model, training/recipes/default).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

# Before torch starts OpenMP: idle threads sleep instead of spinning, so a busy neighbour on the
# same cores does not slow every parallel region down many times.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger(__name__)


def _run_default(config: dict[str, Any], fresh: bool) -> int:
    from training.recipes.default.train import TrainConfig, install_signal_stop, train

    result = train(TrainConfig.from_dict(config), fresh=fresh, stop=install_signal_stop())
    return 0 if result.finished else 3


RECIPES: dict[str, Callable[[dict[str, Any], bool], int]] = {"default": _run_default}


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
    parser.add_argument("--config", required=True, type=Path, help="TOML file of the recipe's settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fresh", action="store_true", help="discard the last checkpoint and start over")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.recipe not in RECIPES:
        parser.error(f"unknown recipe {args.recipe!r}; known recipes: {', '.join(sorted(RECIPES))}")
    if not args.config.is_file():
        parser.error(f"no config file {args.config}")
    config = tomllib.loads(args.config.read_text(encoding="utf-8"))
    try:
        for assignment in args.overrides:
            apply_override(config, assignment)
        return RECIPES[args.recipe](config, args.fresh)
    except ValueError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
