"""Training samples for the default RSA model, drawn from a cache of Synthetic Earth scenes and pairs.

The data is a pure function of the config and the step: the cache holds ``num_scenes`` train
scenes and ``num_pairs`` train pairs (generated once, in worker processes, into
``WORK_DIR/cache/KEY/``), and the batch of step ``n`` is drawn with the random generator
seeded by ``(seed, n)``. Resuming at step ``n`` therefore continues with exactly the batches an
uninterrupted run would have seen; the data position is the step.

Scale: each scene is rendered at ``scene_size`` pixels with a pixel size of ``region / scene_size``
times a drawn ground sampling distance, where ``region`` (``region_min`` .. ``region_max``
pixels) is the size of the window it stands for. So a 256-pixel scene standing for a 512-pixel
region covers the same ground, with the same object sizes in the model's 224-pixel input, as
the engine's resize of a 512-pixel window, at a quarter of the rendering cost.

Tasks (prompts and answers in RSAProcessor's formats, processing_rsa.py):

- caption: one of the scene's five captions;
- ground: a referring expression -> its one box, or "find the <class>" -> every box of that
  class (sorted top to bottom, then left to right; classes with more than ``max_ground_objects``
  objects are not asked), or an absent class -> ``none``; for a model with ``box_from_mask``
  each box also carries its object's instance mask;
- segment: "segment the <class>" -> the class mask, or a referring expression -> its instance mask,
  or an absent class -> ``none``;
- change: a pair (about half unchanged) -> one of its change captions, `` [SEG]`` and the change
  mask when changed, plus the changed/unchanged label;
- chat: a question/answer pair of the scene (presence, count, area, position).

A batch holds single images or pairs, not both (the model's rule): with probability
``mix.change`` a step trains on a batch of pairs, otherwise on single images whose tasks are
drawn by the other weights. The only augmentation is photometric (gain and offset per image):
flips and rotations would contradict the captions' and expressions' positions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import pickle
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rs_assistant.core.protocol import Task
from rs_assistant.engine.models.rsa.processing_rsa import RSAProcessor
from training.data.synthetic import CLASSES, generate_pair, generate_scene, split_seeds
from training.data.synthetic.layout import GSD_RANGE
from training.data.synthetic.writer import GENERATOR_VERSION

log = logging.getLogger(__name__)

CACHE_VERSION = 1
#: The pairs' own version, in their file names: pairs change without the scenes (2: no change under
#: change.MIN_CHANGE_FRACTION), and a cache keeps its scenes when only the pairs are made anew.
PAIR_VERSION = 2
CHUNK = 50  # scenes or pairs per cache file


def _chunk_file(kind: str, start: int, suffix: str = "pkl") -> str:
    return f"{kind}_v{PAIR_VERSION}_{start:07d}.{suffix}" if kind == "pairs" else f"{kind}_{start:07d}.{suffix}"


#: Other names a user may give a class, besides its singular and plural nouns (classes.py).
CLASS_ALIASES: Mapping[int, tuple[str, ...]] = {
    1: ("houses",),
    2: ("road network",),
    4: ("cars",),
    6: ("tree crowns",),
    7: ("woodland",),
    8: ("grass", "meadows"),
    9: ("crops", "crop fields"),
    10: ("water", "ponds"),
    11: ("bare soil",),
}
GROUND_VERBS = ("find", "find the", "find all the", "locate the", "show me the", "detect the", "where are the")
SEGMENT_VERBS = ("segment", "segment the", "segment all the", "outline the")
SINGLE_TASKS = (Task.CAPTION, Task.GROUND, Task.SEGMENT, Task.CHAT)


@dataclass(frozen=True)
class DataSettings:
    """What the cache and the sampler depend on (a part of the recipe's config)."""

    seed: int
    scene_size: int
    region_min: int
    region_max: int
    num_scenes: int
    num_pairs: int
    max_ground_objects: int
    mix: Mapping[str, float]

    def cache_key(self) -> str:
        """Names the cache folder: changes to anything the scenes depend on (the generator's version too) give a
        new one."""
        fields = [CACHE_VERSION, GENERATOR_VERSION, self.seed, self.scene_size, self.region_min, self.region_max]
        return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SceneRecord:
    """What training keeps of a scene (objects as arrays: class ids and boxes)."""

    image: np.ndarray  # S x S x 3 uint8
    class_map: np.ndarray  # S x S uint8
    instance_map: np.ndarray  # S x S uint16
    object_classes: np.ndarray  # N uint8
    object_boxes: np.ndarray  # N x 4 int32, x0 y0 x1 y1 (pixel edges)
    captions: tuple[str, ...]
    referring: tuple[tuple[str, int, tuple[int, int, int, int], str], ...]  # text, target id, box, noun
    qa: tuple[tuple[str, str, str], ...]  # question, answer, kind


@dataclass(frozen=True)
class PairRecord:
    before: np.ndarray
    after: np.ndarray
    change_mask: np.ndarray  # S x S bool
    captions: tuple[str, ...]
    changed: bool


@dataclass(frozen=True)
class Sample:
    """One training sample: its task, the full text (prompt and answer), image(s), mask and change label."""

    task: Task
    text: str
    images: np.ndarray | tuple[np.ndarray, np.ndarray]
    mask: np.ndarray | None = None  # S x S, or n x S x S: one per mask query of the answer, in order
    changed: bool | None = None
    class_map: np.ndarray | None = None  # S x S land-cover ids of a single scene (the aux class head's target)
    change_map: np.ndarray | None = None  # S x S bool, pairs: where the scene changed (all False when unchanged)


def referring_nouns(scenes: Sequence[SceneRecord]) -> Iterator[tuple[str, int]]:
    """``(noun, class id)`` of every referring expression's target: the nouns referring answers use."""
    for scene in scenes:
        for _, target, _, noun in scene.referring:
            yield noun, int(scene.object_classes[target - 1])  # instance ids are object index + 1


def scene_gsd(seed: int, scene_size: int, region_min: int, region_max: int) -> float:
    """The pixel size of scene ``seed``: a drawn GSD scaled so the scene covers a ``region``-pixel window."""
    rng = np.random.default_rng([seed, 7])
    base = math.exp(rng.uniform(math.log(GSD_RANGE[0]), math.log(GSD_RANGE[1])))
    region = math.exp(rng.uniform(math.log(region_min), math.log(region_max)))
    return round(min(base * region / scene_size, GSD_RANGE[1] * 2), 2)


def _scene_record(seed: int, size: int, gsd: float) -> SceneRecord:
    scene = generate_scene(seed, size=size, gsd=gsd)
    return SceneRecord(
        image=scene.image,
        class_map=scene.class_map,
        instance_map=scene.instance_map,
        object_classes=np.array([int(o.cls) for o in scene.objects], dtype=np.uint8),
        object_boxes=np.array([o.box for o in scene.objects], dtype=np.int32).reshape(-1, 4),
        captions=scene.captions,
        referring=tuple((r.text, r.target, tuple(r.box), r.noun) for r in scene.referring),
        qa=tuple((q.question, q.answer, q.kind) for q in scene.qa),
    )


def _pair_record(seed: int, size: int, gsd: float) -> PairRecord:
    pair = generate_pair(seed, size=size, gsd=gsd, changed=seed % 2 == 1)
    return PairRecord(pair.before.image, pair.after.image, pair.change_mask, pair.captions, pair.changed)


def _make_chunk(job: tuple[str, int, int, DataSettings]) -> list[SceneRecord] | list[PairRecord]:
    kind, start, count, settings = job
    seeds = split_seeds("train", count, base=start)
    size = settings.scene_size
    gsds = [scene_gsd(s, size, settings.region_min, settings.region_max) for s in seeds]
    if kind == "scenes":
        return [_scene_record(s, size, g) for s, g in zip(seeds, gsds)]
    return [_pair_record(s, size, g) for s, g in zip(seeds, gsds)]


def load_cache(
    settings: DataSettings, work_dir: Path, workers: int
) -> tuple[list[SceneRecord], list[PairRecord], float]:
    """The cached scenes and pairs, generating the missing chunk files first.

    Returns the records and the seconds spent generating them (over all runs, kept in the cache's
    ``meta.json``), which count against the run's time budget.
    """
    folder = work_dir / "cache" / settings.cache_key()
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"seconds": 0.0}
    jobs = []
    for kind, total in (("scenes", settings.num_scenes), ("pairs", settings.num_pairs)):
        for start in range(0, total, CHUNK):
            path = folder / _chunk_file(kind, start)
            if not path.is_file() or len(pickle.loads(path.read_bytes())) < min(CHUNK, total - start):
                jobs.append((kind, start, min(CHUNK, total - start), settings))
    if jobs:
        started = time.perf_counter()
        bar = tqdm(total=sum(j[2] for j in jobs), desc="synthetic data", unit="scene", dynamic_ncols=True)
        for job, records in zip(jobs, _run_jobs(jobs, workers)):
            tmp = folder / _chunk_file(job[0], job[1], "tmp")
            tmp.write_bytes(pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
            tmp.replace(folder / _chunk_file(job[0], job[1]))
            bar.update(job[2])
        bar.close()
        meta["seconds"] += time.perf_counter() - started
        meta_path.write_text(json.dumps(meta))
        log.info("generated %d scenes/pairs in %.0f s", bar.n, time.perf_counter() - started)
    scenes: list[SceneRecord] = []
    pairs: list[PairRecord] = []
    for kind, total, into in (("scenes", settings.num_scenes, scenes), ("pairs", settings.num_pairs, pairs)):
        for start in range(0, total, CHUNK):
            into.extend(pickle.loads((folder / _chunk_file(kind, start)).read_bytes())[: total - start])
    return scenes, pairs, float(meta["seconds"])


def _run_jobs(jobs: list[tuple[str, int, int, DataSettings]], workers: int) -> Iterator[list]:
    if workers <= 1:
        yield from map(_make_chunk, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_make_chunk, jobs)


def corpus(scenes: Sequence[SceneRecord], pairs: Sequence[PairRecord]) -> Iterator[str]:
    """Every text the model reads or writes, for the tokenizer."""
    for scene in scenes:
        yield from scene.captions
        for text, _, _, noun in scene.referring:
            yield f"find {text}; segment {text}; {noun}"
        for question, answer, _ in scene.qa:
            yield f"{question} {answer}"
    for pair in pairs:
        yield from pair.captions
    for info in CLASSES[1:]:
        yield " ".join((info.singular, info.plural, *CLASS_ALIASES.get(info.id, ())))


class Sampler:
    """Draws the batch of each step (a pure function of the step) and builds the model's inputs."""

    def __init__(
        self,
        settings: DataSettings,
        scenes: Sequence[SceneRecord],
        pairs: Sequence[PairRecord],
        processor: RSAProcessor,
        class_targets: bool = False,
        change_targets: bool = False,
        box_masks: bool = False,
    ):
        if not scenes or not pairs:
            raise ValueError("the recipe needs at least one scene and one pair (num_scenes, num_pairs)")
        self.settings = settings
        self.scenes = scenes
        self.pairs = pairs
        self.processor = processor
        self.class_targets = class_targets  # the model config trains its aux class head: batches carry class maps
        self.change_targets = change_targets  # the model trains a dense change head: pair batches carry change masks
        self.box_masks = (
            box_masks  # the model reads boxes off masks (box_from_mask): ground answers carry each box's mask
        )
        weights = np.array([settings.mix[t.value] for t in SINGLE_TASKS], dtype=float)
        self.single_weights = weights / weights.sum()
        self.change_fraction = float(settings.mix["change"]) / float(sum(settings.mix.values()))

    def samples(self, step: int, batch_size: int) -> list[Sample]:
        rng = np.random.default_rng([self.settings.seed, step])
        if rng.random() < self.change_fraction:
            return [self._change(self.pairs[int(rng.integers(len(self.pairs)))], rng) for _ in range(batch_size)]
        out = []
        for _ in range(batch_size):
            task = SINGLE_TASKS[int(rng.choice(len(SINGLE_TASKS), p=self.single_weights))]
            scene = self.scenes[int(rng.integers(len(self.scenes)))]
            sample = self._single(task, scene, rng)
            out.append(replace(sample, class_map=scene.class_map) if self.class_targets else sample)
        return out

    def batch(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Model inputs: the processor's batch plus ``seg_targets`` and, for pairs, ``change_labels``.

        With ``class_targets`` on, a batch of single images also carries ``class_targets`` ``[B, S, S]``
        (each scene's class map); pairs have no class maps in the cache and carry none.
        """
        batch: dict = self.processor([s.text for s in samples], [s.images for s in samples], return_labels=True)
        batch["seg_targets"] = [
            torch.zeros(0, 1, 1) if s.mask is None else torch.from_numpy(s.mask).float().reshape(-1, *s.mask.shape[-2:])
            for s in samples
        ]
        if samples[0].task is Task.CHANGE:
            batch["change_labels"] = torch.tensor([float(bool(s.changed)) for s in samples])
            if self.change_targets:
                batch["change_targets"] = torch.from_numpy(np.stack([s.change_map for s in samples])).float()
        elif self.class_targets and all(s.class_map is not None for s in samples):
            batch["class_targets"] = torch.from_numpy(np.stack([s.class_map for s in samples])).long()
        return batch

    # --- tasks ----------------------------------------------------------------------------------

    def _single(self, task: Task, scene: SceneRecord, rng: np.random.Generator) -> Sample:
        image = _jitter(scene.image, rng)
        size = (scene.image.shape[1], scene.image.shape[0])
        fmt = self.processor.format_prompt
        if task is Task.CAPTION:
            return Sample(task, fmt(task, answer=str(rng.choice(scene.captions))), image)
        if task is Task.CHAT:
            question, answer, _ = scene.qa[int(rng.integers(len(scene.qa)))]
            return Sample(task, fmt(task, question, answer=answer), image)
        referring = scene.referring and rng.random() < 0.5
        if referring:
            text, target, box, noun = scene.referring[int(rng.integers(len(scene.referring)))]
            if task is Task.GROUND:
                answer = self.processor.ground_answer([(noun, box)], size)
                return Sample(task, fmt(task, f"find {text}", answer=answer), image, self._box_masks(scene, [target]))
            return Sample(
                task, fmt(task, f"segment {text}", answer=f"{noun} [SEG]"), image, scene.instance_map == target
            )
        cls, name = self._pick_class(task, scene, rng)
        verbs = GROUND_VERBS if task is Task.GROUND else SEGMENT_VERBS
        prompt = f"{rng.choice(verbs)} {name}"
        if task is Task.GROUND:
            index = np.flatnonzero(scene.object_classes == cls)
            index = index[np.lexsort((scene.object_boxes[index, 0], scene.object_boxes[index, 1]))]
            label = CLASSES[cls].singular
            answer = self.processor.ground_answer(
                [(label, tuple(float(v) for v in scene.object_boxes[i])) for i in index], size
            )
            return Sample(
                task, fmt(task, prompt, answer=answer), image, self._box_masks(scene, [int(i) + 1 for i in index])
            )
        mask = scene.class_map == cls
        if not mask.any():
            return Sample(task, fmt(task, prompt, answer="none"), image)
        return Sample(task, fmt(task, prompt, answer=f"{CLASSES[cls].plural} [SEG]"), image, mask)

    def _box_masks(self, scene: SceneRecord, ids: Sequence[int]) -> np.ndarray | None:
        """The instance masks of objects ``ids`` (instance ids: object index + 1), one per box in answer
        order, when the model reads boxes off masks; None otherwise or when the answer has no box."""
        if not self.box_masks or not ids:
            return None
        return np.stack([scene.instance_map == i for i in ids])

    def _pick_class(self, task: Task, scene: SceneRecord, rng: np.random.Generator) -> tuple[int, str]:
        """A class to ask for and the name used: mostly present ones (countable for ground), sometimes absent."""
        counts = np.bincount(scene.object_classes, minlength=len(CLASSES))
        present = [
            c
            for c in range(1, len(CLASSES))
            if counts[c] and (task is Task.SEGMENT or counts[c] <= self.settings.max_ground_objects)
        ]
        absent = [c for c in range(1, len(CLASSES)) if not counts[c]]
        pool = absent if (not present or (absent and rng.random() < 0.15)) else present
        if not pool:  # every class is present and too numerous to list: ask for the least numerous
            pool = [int(np.argmin(np.where(counts[1:] > 0, counts[1:], np.iinfo(counts.dtype).max))) + 1]
        cls = int(pool[int(rng.integers(len(pool)))])
        info = CLASSES[cls]
        names = (info.plural, info.plural, info.singular, *CLASS_ALIASES.get(cls, ()))
        return cls, str(names[int(rng.integers(len(names)))])

    def _change(self, pair: PairRecord, rng: np.random.Generator) -> Sample:
        caption = str(rng.choice(pair.captions))
        answer = f"{caption} [SEG]" if pair.changed else caption
        images = (_jitter(pair.before, rng), _jitter(pair.after, rng))
        text = self.processor.format_prompt(Task.CHANGE, pair=True, answer=answer)
        change_map = pair.change_mask if pair.changed else np.zeros_like(pair.change_mask)
        return Sample(
            Task.CHANGE, text, images, pair.change_mask if pair.changed else None, pair.changed, change_map=change_map
        )


def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric augmentation only: a gain and an offset per image (positions in the text stay true)."""
    gain = rng.uniform(0.85, 1.15)
    offset = rng.uniform(-12.0, 12.0)
    return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
