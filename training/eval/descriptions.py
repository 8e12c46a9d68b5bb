"""python -m training.eval.descriptions --model FOLDER [--split test] [--count 100] [--pairs N] [--out FILE]

Whether the built-in model's words say what is there, through the engine's own ``rsa`` backend:

- **captions** of ``count`` scenes: BLEU-4 and CIDEr against the scene's five captions, and the share of the
  scene's main classes (each over 10% of its pixels) the caption names, by any of its nouns
  (:data:`CLASS_WORDS`), and that the whole describe answer names (the caption with its land cover, the
  classes the class map finds on at least 5% of the window, as the chat shows them);
- **change answers** of ``count`` pairs (every other one changed): the changed/unchanged accuracy, the share of
  answers whose text agrees with their verdict (a changed one says what changed, an unchanged one says
  nothing changed or nothing), and BLEU-4 / CIDEr of the text after the verdict against the pair's change
  captions (an unchanged pair's "No change." included).

Every figure is also given per GSD band. Prints the tables and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rs_assistant.core.protocol import Options, Task
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.rsa import RSABackend
from training.data.synthetic import generate_pair, generate_scene, split_seeds
from training.eval.metrics import caption_scores
from training.eval.rsa import (
    GSD_BANDS,
    eval_arguments,
    generator_arguments,
    gsd_band,
    parse_eval_arguments,
    write_results,
)

log = logging.getLogger(__name__)

#: The words that name each class of the Synthetic Earth in a caption (class id -> words; singular and plural).
CLASS_WORDS: dict[int, tuple[str, ...]] = {
    1: ("building", "house", "apartment", "warehouse", "barn", "shed", "roof", "home"),
    2: ("road", "street", "track", "lane", "highway"),
    3: ("parking", "car park"),
    4: ("vehicle", "car", "truck"),
    5: ("tank", "silo"),
    6: ("tree",),
    7: ("forest", "wood"),
    8: ("grass", "meadow", "lawn", "park"),
    9: ("field", "crop", "farmland"),
    10: ("water", "pond", "lake", "river", "pool"),
    11: ("bare soil", "soil", "bare ground", "sand"),
}
MAIN_SHARE = 0.1
NAMING_GOAL = 0.8
AGREEMENT_GOAL = 0.95
#: How a change answer (rsa_changes.sentence) names each kind of change of the Synthetic Earth (ChangeKind names).
KIND_WORDS = {
    "BUILT": re.compile(r"\bbuildings? (?:was|were) built\b"),
    "DEMOLISHED": re.compile(r"\bdemolished\b"),
    "TREES_CUT": re.compile(r"\b(?:cut down|cleared)\b"),
    "FLOODED": re.compile(r"\bflooded\b"),
    "NEW_ROAD": re.compile(r"\bnew road\b"),
}
_NO_CHANGE = re.compile(r"\b(no change|nothing has changed|without any changes|unchanged|have changed)\b")


def main_classes(class_map: np.ndarray, share: float = MAIN_SHARE) -> list[int]:
    """The classes (ids, not the ground) each covering more than ``share`` of a scene's pixels."""
    counts = np.bincount(class_map.ravel(), minlength=len(CLASS_WORDS) + 1) / class_map.size
    return [c for c in CLASS_WORDS if counts[c] > share]


def names(caption: str, cls: int) -> bool:
    """Whether ``caption`` names class ``cls`` by one of its words."""
    text = caption.lower()
    return any(re.search(rf"\b{re.escape(word)}", text) for word in CLASS_WORDS[cls])


def kinds_named(text: str) -> set[str]:
    """The kinds of change (:data:`KIND_WORDS`) a change answer's text names."""
    lower = text.lower()
    return {kind for kind, words in KIND_WORDS.items() if words.search(lower)}


def agrees(changed: bool, text: str) -> bool:
    """Whether a change answer's text (after the verdict) agrees with the verdict ``changed``: a changed pair's
    text says what changed (not that nothing did), an unchanged pair's says nothing changed or nothing."""
    says_none = bool(_NO_CHANGE.search(text.lower()))
    return bool(text.strip()) and not says_none if changed else (not text.strip() or says_none)


def evaluate(
    model: Path,
    split: str = "test",
    count: int = 100,
    size: int = 512,
    threads: int = 2,
    pairs: int | None = None,
    pixel_size: bool = True,
    looks: bool = True,
) -> dict:
    """The figures (see the module's doc) of checkpoint folder ``model`` on ``count`` scenes and ``pairs`` pairs
    (default: as many as scenes) of ``split``; ``pixel_size`` and ``looks`` as for training.eval.rsa.evaluate."""
    torch.set_num_threads(threads)
    backend = RSABackend("eval", {"path": str(model)}, device="cuda" if torch.cuda.is_available() else "cpu")
    backend.ensure_loaded()
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    started = time.perf_counter()
    for seed in tqdm(split_seeds(split, count), desc=f"captions ({split})", dynamic_ncols=True):
        scene = generate_scene(seed, size=size, looks=looks)
        gsd = scene.gsd if pixel_size else None
        call = BackendCall(
            task=Task.CAPTION, images=[scene.image], options=Options(), pixel_size_m=gsd, land_cover=True
        )
        result = backend.run(call)
        caption = result.text
        answer = " ".join([caption, *(name for name, _ in result.land_cover or ())])
        main = main_classes(scene.class_map)
        named = [names(caption, c) for c in main]
        for group in ("all", gsd_band(scene.gsd)):
            groups[group]["caption_refs"].append((str(seed), list(scene.captions), caption))
            groups[group]["named"] += named
            groups[group]["answer_named"] += [names(answer, c) for c in main]
    pairs = count if pairs is None else pairs
    for seed in tqdm(split_seeds(split, pairs) if pairs else [], desc=f"change pairs ({split})", dynamic_ncols=True):
        pair = generate_pair(seed, size=size, changed=seed % 2 == 1, looks=looks)
        gsd = pair.before.gsd if pixel_size else None
        images = [pair.before.image, pair.after.image]
        call = BackendCall(task=Task.CHANGE, images=images, options=Options(), pixel_size_m=gsd)
        verdict, _, text = backend.run(call).text.partition(": ")
        changed = verdict.startswith("changed")
        for group in ("all", gsd_band(pair.before.gsd)):
            groups[group]["change_refs"].append((str(seed), list(pair.captions), text))
            groups[group]["correct"].append(changed == pair.changed)
            groups[group]["agrees"].append(agrees(changed, text))
            if pair.changed:
                truth, named = {c.kind.name for c in pair.changes}, kinds_named(text)
                groups[group]["kinds_found"] += [kind in named for kind in truth]
                groups[group]["kinds_right"] += [kind in truth for kind in named]
    results: dict = {"model": str(model), "split": split, "count": count, "size": size, "pixel_size": pixel_size}
    results["looks"] = looks
    results["seconds"] = round(time.perf_counter() - started, 1)
    for group in ["all", *(name for name, _, _ in GSD_BANDS)]:
        rows = groups.get(group)
        if not rows:
            continue
        figures: dict[str, float | int] = {"scenes": len(rows["caption_refs"]), "pairs": len(rows["change_refs"])}
        if rows["caption_refs"]:
            refs = {key: r for key, r, _ in rows["caption_refs"]}
            said = {key: c for key, _, c in rows["caption_refs"]}
            scores = caption_scores(refs, said, metrics=("BLEU", "CIDEr"))
            figures |= {"caption_BLEU-4": scores["Bleu_4"], "caption_CIDEr": scores["CIDEr"]}
            for key, row in (("caption_names_main_classes", "named"), ("answer_names_main_classes", "answer_named")):
                figures[key] = float(np.mean(rows[row])) if rows[row] else float("nan")
        if rows["change_refs"]:
            refs = {key: r for key, r, _ in rows["change_refs"]}
            said = {key: t for key, _, t in rows["change_refs"]}
            scores = caption_scores(refs, said, metrics=("BLEU", "CIDEr"))
            figures |= {"change_BLEU-4": scores["Bleu_4"], "change_CIDEr": scores["CIDEr"]}
            figures["change_accuracy"] = float(np.mean(rows["correct"]))
            figures["change_text_agrees"] = float(np.mean(rows["agrees"]))
            for key, row in (("change_kinds_recall", "kinds_found"), ("change_kinds_precision", "kinds_right")):
                figures[key] = float(np.mean(rows[row])) if rows[row] else float("nan")
        results[group] = figures
    return results


def table(results: dict) -> str:
    """Every group's figures (``all`` and the GSD bands), with the goals."""
    keys = (
        "caption_BLEU-4",
        "caption_CIDEr",
        "caption_names_main_classes",
        "answer_names_main_classes",
        "change_BLEU-4",
        "change_CIDEr",
        "change_accuracy",
        "change_text_agrees",
        "change_kinds_recall",
        "change_kinds_precision",
    )
    goals = {
        "caption_CIDEr": 1.0,
        "caption_names_main_classes": NAMING_GOAL,
        "answer_names_main_classes": NAMING_GOAL,
        "change_text_agrees": AGREEMENT_GOAL,
    }
    groups = ["all", *(name for name, _, _ in GSD_BANDS if name in results)]
    lines = [f"{'metric':<28}" + "".join(f"{g:>11}" for g in groups) + "   goal", "-" * (36 + 11 * len(groups))]
    for key in keys:
        if key not in results["all"]:
            continue
        cells = "".join(f"{float(results[g].get(key, float('nan'))):>11.3f}" for g in groups)
        goal = goals.get(key)
        status = "" if goal is None else f">={goal:g} {'met' if results['all'][key] >= goal else 'not met'}"
        lines.append(f"{key:<28}{cells}   {status}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.eval.descriptions", description=__doc__.splitlines()[0])
    eval_arguments(parser, "scenes, and as many pairs", "_descriptions")
    parser.add_argument("--pairs", type=int, default=None, help="change pairs (default: as many as scenes; 0: none)")
    args = parse_eval_arguments(parser, argv)
    results = evaluate(
        args.model, args.split, args.count, args.size, args.threads, args.pairs, **generator_arguments(args)
    )
    print(table(results))
    write_results(results, args, "_descriptions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
