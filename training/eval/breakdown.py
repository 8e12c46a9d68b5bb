"""python -m training.eval.breakdown --model FOLDER [--split val] [--count 40] [--out FILE]

Where an RSA checkpoint's grounding and masks go wrong, on ``count`` scenes of a split (val by
default; the goals are measured by training.eval on test):

- **referring grounding by rule** (only, largest, smallest, extreme, region, relation, style):
  Acc@0.5 and mean IoU of the first box, read from the location tokens and, for a model with
  ``box_from_mask``, from the box's mask;
- **referring masks**: of the pixels a "segment <expression>" mask holds, the share on the target,
  on other objects of the target's class, and on other classes; and the recall of the target and of
  those other objects (a model that only recognises the class covers both alike);
- **class masks**: IoU of "segment the <class>" for every class present in each scene, per class,
  with the class's mean share of the image (small classes are where a 224-pixel view fails).

Each scene is the window, as in training.eval. Prints the tables and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rs_assistant.core.protocol import FeatureKind, Options, Task
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.rsa import RSABackend
from training.data.synthetic import CLASSES, generate_scene, split_seeds
from training.eval.metrics import box_iou
from training.eval.rsa import grounding_case, mask_union


def breakdown(backend: RSABackend, split: str = "val", count: int = 40, size: int = 512) -> dict[str, dict]:
    """The three breakdowns (see the module's doc) of ``count`` scenes of ``split``."""
    config = backend.model.config
    sources = ("tokens", "mask") if config.box_from_mask else ("tokens",)
    ground: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    shares: list[tuple[float, ...]] = []
    classes: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def ask(task: Task, image: np.ndarray, prompt: str):
        return backend.run(BackendCall(task=task, images=[image], prompt=prompt, options=Options()))

    try:
        for seed in tqdm(split_seeds(split, count), desc=f"breakdown ({split})", dynamic_ncols=True):
            scene = generate_scene(seed, size=size)
            ref = grounding_case(scene, np.random.default_rng(seed))
            if ref is not None:
                for source in sources:
                    config.box_from_mask = source == "mask"
                    found = [
                        d.box
                        for d in ask(Task.GROUND, scene.image, f"find {ref.text}").detections
                        if d.kind is FeatureKind.BOX
                    ]
                    ground[ref.rule][source].append(box_iou(found[0], ref.box) if found else 0.0)
                target = scene.mask(ref.target)
                same = (scene.class_map == scene.class_map[target].max()) & ~target
                predicted = mask_union(ask(Task.SEGMENT, scene.image, f"segment {ref.text}"), target)
                held = max(int(predicted.sum()), 1)
                shares.append(
                    (
                        float(predicted.any()),
                        (predicted & target).sum() / held,
                        (predicted & same).sum() / held,
                        (predicted & ~target & ~same).sum() / held,
                        (predicted & target).sum() / target.sum(),
                        (predicted & same).sum() / max(int(same.sum()), 1),
                    )
                )
            for cls in sorted({int(c) for c in np.unique(scene.class_map)} - {0}):
                target = scene.class_map == cls
                predicted = mask_union(ask(Task.SEGMENT, scene.image, f"segment the {CLASSES[cls].plural}"), target)
                classes[CLASSES[cls].plural].append(
                    ((predicted & target).sum() / max(int((predicted | target).sum()), 1), float(target.mean()))
                )
    finally:
        config.box_from_mask = "mask" in sources
    rules = {
        rule: {
            "n": len(by["tokens"]),
            **{f"{s}_acc@0.5": float(np.mean(np.array(by[s]) >= 0.5)) for s in sources},
            **{f"{s}_mean_iou": float(np.mean(by[s])) for s in sources},
        }
        for rule, by in sorted(ground.items())
    }
    table = np.array(shares, float).reshape(-1, 6)
    held = table[table[:, 0] > 0]
    referring = {
        "n": len(table),
        "nonempty": float(table[:, 0].mean()) if len(table) else float("nan"),
        **{
            key: float(held[:, i].mean()) if len(held) else float("nan")
            for i, key in ((1, "share_on_target"), (2, "share_on_same_class"), (3, "share_on_other_classes"))
        },
        "target_recall": float(table[:, 4].mean()) if len(table) else float("nan"),
        "same_class_recall": float(table[:, 5].mean()) if len(table) else float("nan"),
    }
    per_class = {
        name: {"n": len(v), "iou": float(np.mean([x[0] for x in v])), "area": float(np.mean([x[1] for x in v]))}
        for name, v in sorted(classes.items(), key=lambda kv: -np.mean([x[1] for x in kv[1]]))
    }
    return {"ground_by_rule": rules, "referring_masks": referring, "class_masks": per_class}


def report(results: dict[str, dict]) -> str:
    lines = ["referring grounding by rule (first box)"]
    for rule, row in results["ground_by_rule"].items():
        figures = "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "n")
        lines.append(f"  {rule:<10} n={row['n']:<4} {figures}")
    r = results["referring_masks"]
    lines += [
        "referring masks",
        f"  n={r['n']}  non-empty {r['nonempty']:.2f}; of the mask's pixels: on the target "
        f"{r['share_on_target']:.2f}, on its class elsewhere {r['share_on_same_class']:.2f}, on other classes "
        f"{r['share_on_other_classes']:.2f}; recall of the target {r['target_recall']:.2f}, of its class elsewhere "
        f"{r['same_class_recall']:.2f}",
        "class masks (largest share of the image first)",
    ]
    for name, row in results["class_masks"].items():
        lines.append(f"  {name:<16} n={row['n']:<4} IoU {row['iou']:.2f}  area {row['area']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.eval.breakdown", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="RSA checkpoint folder")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"{args.model} holds no config.json: not an RSA checkpoint folder")
    torch.set_num_threads(args.threads)
    backend = RSABackend("breakdown", {"path": str(args.model)}, device="cuda" if torch.cuda.is_available() else "cpu")
    backend.ensure_loaded()
    results = breakdown(backend, args.split, args.count, args.size)
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
