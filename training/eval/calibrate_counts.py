"""python -m training.eval.calibrate_counts --model FOLDER [--split val] [--count 40] [--write]

Chooses an RSA checkpoint's ``count_bars`` on the validation split (never on the test split the goals are
measured on): for every class counted object by object (training.eval.instances.COUNTED), each scene's
``find the <class>`` is answered once (at the scene's pixel size, as the engine asks) with every object the
class map (rsa_instances) or the object detector (rsa_objects) gives, and the bar on the objects' scores in
:data:`BARS` whose count accuracy (within 10% or 1 of the truth, as training.eval.instances) is best wins (ties:
the lower bar); a class keeps no bar unless one beats counting what the served threshold (0.3) draws by more
than :data:`MIN_GAIN`.

The classes the class map and the object detector answer together (the config's ``object_joined``,
rsa_objects.join) keep the bars they have: theirs apply to the class map's objects before the join, which the
answers do not show, and the join was tuned on top of them.

With ``--write`` the bars go into the folder's config.json; the engine then serves with them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rs_assistant.core.protocol import Options, Task
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.rsa import RSABackend
from training.data.synthetic import CLASSES, generate_scene, split_seeds
from training.eval.instances import COUNTED, SERVED_THRESHOLD, count_correct

BARS = (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
MIN_GAIN = 0.05


def choose(
    scores: list[list[float]], truths: list[int], served: float = 0.0
) -> tuple[float | None, dict[float, float]]:
    """The bar whose count accuracy over the scenes is best (``scores``: each scene's objects' scores, ``truths``:
    each scene's true count), or None when none beats no bar (counting what the served threshold ``served`` draws)
    by :data:`MIN_GAIN`; and the accuracy of each (no bar under the key ``served``)."""
    accuracy = {
        bar: float(np.mean([count_correct(sum(s >= bar for s in found), n) for found, n in zip(scores, truths)]))
        for bar in (served, *(b for b in BARS if b > served))
    }
    best = max(accuracy, key=lambda bar: (accuracy[bar], -bar))
    return (best if best != served and accuracy[best] > accuracy[served] + MIN_GAIN else None), accuracy


def calibrate(model: Path, split: str = "val", count: int = 40, size: int = 512) -> dict[str, dict]:
    """Per class: the chosen bar and the count accuracy of every bar, on ``count`` scenes of ``split``."""
    torch.set_num_threads(2)
    backend = RSABackend("calibrate", {"path": str(model)}, device="cuda" if torch.cuda.is_available() else "cpu")
    backend.ensure_loaded()
    config = backend.model.config
    joined = set(config.object_joined or ()) if backend.model.object_detector is not None else set()
    kept = {name: bar for name, bar in (config.count_bars or {}).items() if name in joined}
    config.count_bars = kept or None  # every object, whatever the bars the folder has now (but the joined classes')
    classes = [cls for cls in COUNTED if CLASSES[cls].plural not in joined]
    scores: dict[int, list[list[float]]] = {cls: [] for cls in classes}
    truths: dict[int, list[int]] = {cls: [] for cls in classes}
    for seed in tqdm(split_seeds(split, count), desc=f"count bars ({split})", dynamic_ncols=True):
        scene = generate_scene(seed, size=size)
        for cls in classes:
            call = BackendCall(
                task=Task.GROUND,
                images=[scene.image],
                prompt=f"find the {CLASSES[cls].plural}",
                options=Options(score_threshold=0.0),
                pixel_size_m=scene.gsd,  # as the engine sends it
            )
            scores[cls].append([d.score for d in backend.run(call).detections])
            truths[cls].append(sum(int(o.cls) == cls for o in scene.objects))
    chosen = {name: {"bar": kept.get(name), "accuracy": {}, "kept": True} for name in sorted(joined)}
    for cls in classes:
        bar, accuracy = choose(scores[cls], truths[cls], SERVED_THRESHOLD)
        chosen[CLASSES[cls].plural] = {"bar": bar, "accuracy": accuracy}
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.eval.calibrate_counts", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", type=Path, default=Path("resources/models/rsa-default"))
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--count", type=int, default=40, help="scenes (default 40)")
    parser.add_argument("--write", action="store_true", help="write the bars into the folder's config.json")
    args = parser.parse_args(argv)
    config_file = args.model / "config.json"
    if not config_file.is_file():
        parser.error(f"{args.model} holds no config.json: not an RSA checkpoint folder")
    if args.count < 1:
        parser.error("--count must be at least 1")
    chosen = calibrate(args.model, args.split, args.count)
    for name, row in chosen.items():
        cells = "  ".join(f"{bar:g}: {acc:.2f}" for bar, acc in row["accuracy"].items())
        if row.get("kept"):
            cells = "kept: it applies to the class map's objects before they are joined with the detector's"
        print(f"{name:<15} bar {row['bar'] if row['bar'] is not None else 'none':<5} count accuracy by bar  {cells}")
    bars = {name: row["bar"] for name, row in chosen.items() if row["bar"] is not None}
    if args.write:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["count_bars"] = bars or None
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"count_bars {bars} written to {config_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
