"""python -m training grounding --config training/recipes/grounding/tiny.toml [--set key=value ...] [--fresh]

SkyEyeGPT (Zhan et al., 2024) / GeoChat (Kuckreja et al., CVPR 2024)-style instruction tuning of
the RSA model: a vision encoder (frozen), a bridge (trained) and an LLM tuned with LoRA, on
conversations that mix captioning, VQA, referring expressions and grounded descriptions. Boxes are
written in the RSA location-token format (``LABEL<loc_x0><loc_y0><loc_x1><loc_y1>``, bins of each
side of the image, processing_rsa.py) whatever convention the data set uses: every box is first
converted to pixels of its original image by the loaders, then to location tokens.

Data (any of them; at least one):

- ``geochat_json`` + ``geochat_images``: LLaVA conversation JSON as GeoChat-Instruct publishes it
  (``{<x1><y1><x2><y2>|θ}`` boxes on 0-100). A single-turn ``[refer]`` record becomes a ``ground``
  sample (the engine's ``<ground> find PHRASE``); a single-turn ``[caption]`` record a ``caption``
  sample; everything else (``[grounding]`` descriptions, ``[vqa]``, ``[identify]``, free
  conversation) becomes ``chat`` turns, earlier turns as the history, every answer trained;
- ``rsvg_root``: DIOR-RSVG (VOC XML + split files): ``<ground> find EXPRESSION`` ->
  ``CATEGORY<loc..>x4``;
- ``caption_root``: a Karpathy-style caption set (UCM-Captions, RSICD ...): ``caption`` samples.

Evaluation (``metrics.json`` beside the export): Acc@0.5 on the DIOR-RSVG ``eval_split`` (and on
the single-turn ``[refer]`` records of ``geochat_eval_json``), the generated location tokens read
back into pixels of the original image (``RSAProcessor.parse_answer`` with the original size) and
compared with the published boxes; captions of ``caption_root``'s ``eval_split`` scored with
BLEU-1..4, METEOR, ROUGE-L and CIDEr (pycocoevalcap, needs Java). The export (LoRA merged) is an
RSA checkpoint the engine serves (``backend = "rsa"``: ground, caption, chat).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rs_assistant.core.protocol import Task
from rs_assistant.engine.backends.boxes import target_phrase
from training.data.formats import DiorRSVG, GeoChatInstruct, KarpathyCaptions
from training.data.formats._common import image_size
from training.data.formats.conversations import Role
from training.eval.metrics import accuracy_at_iou
from training.loop import Runtime, map_batches, seeded, unwrap
from training.recipes.rsa_base import RSARecipe, RSARecipeConfig, caption_metrics, generate, history_messages, rgb

log = logging.getLogger(__name__)

#: A GeoChat box and the <p>phrase</p> markers around a label (the loader parses the same boxes).
_GEOCHAT_BOX = re.compile(
    r"\{\s*<-?\d+(?:\.\d+)?>\s*,?\s*<-?\d+(?:\.\d+)?>\s*,?\s*<-?\d+(?:\.\d+)?>\s*,?\s*"
    r"<-?\d+(?:\.\d+)?>\s*(?:\|\s*<?\s*-?\d+(?:\.\d+)?\s*>?\s*)?\}"
    r"|\[\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*\]"
)
_PHRASE = re.compile(r"</?p>")
_TAG = re.compile(r"^\s*\[[A-Za-z_ ]+\]\s*")


@dataclass(frozen=True)
class GroundingConfig(RSARecipeConfig):
    """The grounding recipe's settings (tiny.toml, paper.toml)."""

    geochat_json: str = ""  # GeoChat-Instruct-style LLaVA conversation JSON
    geochat_images: str = ""  # its image folder
    rsvg_root: str = ""  # DIOR-RSVG folder
    caption_root: str = ""  # Karpathy-style caption set
    train_split: str = "train"  # DIOR-RSVG and caption splits
    eval_split: str = "test"
    geochat_eval_json: str = ""  # conversation JSON whose single-turn [refer] records are scored (Acc@0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.geochat_json or self.rsvg_root or self.caption_root):
            raise ValueError(
                "no training data: give geochat_json (+ geochat_images), rsvg_root and/or caption_root, "
                "e.g. --set rsvg_root=/data/DIOR_RSVG"
            )
        if bool(self.geochat_json) != bool(self.geochat_images):
            raise ValueError(
                "geochat_json and geochat_images go together (the JSON's image paths are relative to "
                f"geochat_images); got geochat_json={self.geochat_json!r}, geochat_images={self.geochat_images!r}"
            )


@dataclass(frozen=True)
class Example:
    """One training sample in the RSA format: its image, task, instruction, history and answer."""

    source: Any  # loads the image: a path-bearing sample with .image() / .images()
    task: Task
    prompt: str
    answer: str
    history: tuple[tuple[str, str], ...] = ()


def _geochat_text(processor, text: str, boxes, size: tuple[int, int]) -> str:
    """A GeoChat answer with its boxes as RSA location tokens (pixel boxes from the loader, in order)."""
    boxes = list(boxes)

    def swap(match: re.Match) -> str:
        if not boxes:
            return ""
        return processor.box_tokens(boxes.pop(0).box, size)

    converted = _GEOCHAT_BOX.sub(swap, text)
    converted = re.sub(r"(<loc_\d+>)\s+(?=<loc_)", r"\1", converted)  # several boxes of one phrase in one run
    converted = _PHRASE.sub("", converted)
    return re.sub(r"\s+", " ", converted).strip()


def geochat_examples(processor, data) -> list[Example]:
    """The records of a GeoChat-Instruct-style file as RSA examples (boxes converted through pixels)."""
    out = []
    for index in range(len(data)):
        sample = data.sample(index)
        size = sample.image_size or image_size(sample.image_paths[0])
        pairs = []
        for question, answer in zip(sample.turns[0::2], sample.turns[1::2]):
            if question.role is not Role.HUMAN or answer.role is not Role.GPT:
                continue
            pairs.append((_TAG.sub("", question.text), _geochat_text(processor, answer.value, answer.boxes, size)))
        if not pairs:
            continue
        if len(pairs) == 1 and sample.task == "refer" and answer_boxes(processor, pairs[0][1]):
            phrase = target_phrase(pairs[0][0]) or pairs[0][0]
            # "<ground> find PHRASE" -> "PHRASE<loc..>": the label is the phrase, as the engine shows it
            tokens = "".join(re.findall(r"<loc_\d+>", pairs[0][1]))
            out.append(Example(sample, Task.GROUND, pairs[0][0], f"{phrase}{tokens}"))
        elif len(pairs) == 1 and sample.task == "caption":
            out.append(Example(sample, Task.CAPTION, "", pairs[0][1]))
        else:
            out.append(Example(sample, Task.CHAT, pairs[-1][0], pairs[-1][1], tuple(pairs[:-1])))
    return out


def answer_boxes(processor, text: str) -> bool:
    return bool(re.search(r"<loc_\d+>", text))


def rsvg_examples(processor, data: DiorRSVG) -> list[Example]:
    out = []
    for sample in data.samples:
        size = sample.image_size or image_size(sample.image_path)
        out.append(
            Example(
                sample, Task.GROUND, sample.expression, processor.ground_answer([(sample.category, sample.box)], size)
            )
        )
    return out


def load_image(source: Any):
    return rgb(source.images()[0] if hasattr(source, "images") else source.image())


class GroundingRecipe(RSARecipe):
    name = "grounding"
    run_keys = RSARecipe.run_keys + ("geochat_json", "rsvg_root", "caption_root", "train_split", "max_length")
    config: GroundingConfig

    def __init__(self, config: GroundingConfig) -> None:
        super().__init__(config)
        c = config
        # Read every data set now: a wrong folder fails before any model is built.
        self.geochat = GeoChatInstruct(c.geochat_json, c.geochat_images) if c.geochat_json else None
        self.rsvg = DiorRSVG(c.rsvg_root, split=c.train_split) if c.rsvg_root else None
        self.captions = KarpathyCaptions(c.caption_root, split=c.train_split) if c.caption_root else None

    def build(self, runtime: Runtime):
        module = super().build(runtime)
        processor = self.processor
        self.examples_train: list[Example] = []
        if self.geochat is not None:
            self.examples_train += geochat_examples(processor, self.geochat)
        if self.rsvg is not None:
            self.examples_train += rsvg_examples(processor, self.rsvg)
        if self.captions is not None:
            self.examples_train += [Example(s, Task.CAPTION, "", "") for s in self.captions.samples]
        if not self.examples_train:
            raise ValueError("the training data hold no usable sample (no conversation with a human/gpt turn pair)")
        log.info("grounding: %d training samples", len(self.examples_train))
        return module

    def batches(self, start_step: int, runtime: Runtime) -> Iterator[dict[str, Any]]:
        examples, processor, seed = self.examples_train, self.processor, self.config.seed

        def collate(indices: list[int], step: int) -> dict:
            texts, images = [], []
            for index in indices:
                example = examples[index]
                answer = example.answer
                if example.task is Task.CAPTION and not answer:  # a caption set: one of the references, by (seed, step)
                    captions = example.source.captions
                    answer = captions[int(seeded(seed, step, index).integers(len(captions)))]
                texts.append(
                    processor.format_prompt(
                        example.task, example.prompt, history_messages(example.history), answer=answer
                    )
                )
                images.append(load_image(example.source))
            return self.encode(texts, images)

        return map_batches(self.config, start_step, runtime, len(examples), collate)

    # --- evaluation ------------------------------------------------------------------------------

    def evaluate(self, model, runtime: Runtime) -> dict[str, float]:
        c, processor = self.config, self.processor
        rsa = unwrap(model).model
        metrics: dict[str, float] = {}
        self.examples: dict[str, str] = {}
        cases = []  # (name, source, prompt, original size, target box)
        if c.rsvg_root:
            data = DiorRSVG(c.rsvg_root, split=c.eval_split)
            for s in data.samples:
                cases.append(("rsvg", s, s.expression, s.image_size or image_size(s.image_path), s.box))
        if c.geochat_eval_json:
            data = GeoChatInstruct(c.geochat_eval_json, c.geochat_images)
            for i in range(len(data)):
                s = data.sample(i)
                if s.task == "refer" and len(s.turns) == 2 and len(s.turns[1].boxes) == 1:
                    cases.append(("geochat", s, _TAG.sub("", s.turns[0].text), s.image_size, s.turns[1].boxes[0].box))
        for source in ("rsvg", "geochat"):
            chosen = [case for case in cases if case[0] == source]
            chosen = chosen[: c.eval_count] if c.eval_count else chosen
            if not chosen:
                continue
            predicted = []
            for start in range(0, len(chosen), c.eval_batch_size):
                part = chosen[start : start + c.eval_batch_size]
                texts = [processor.format_prompt(Task.GROUND, case[2]) for case in part]
                output, _ = generate(
                    rsa, processor, texts, [load_image(case[1]) for case in part], c.eval_max_new_tokens, runtime.device
                )
                for row, case in zip(output.sequences.tolist(), part):
                    answer = processor.parse_answer(row, case[3])  # bins -> pixels of the original image
                    predicted.append(answer.boxes[0].box if answer.boxes else None)
                    if len(self.examples) < 20:
                        self.examples[f"{source}: {case[2]}"] = processor.decode(row)
            key = "Acc@0.5" if source == "rsvg" else "geochat_refer_Acc@0.5"
            metrics[key] = accuracy_at_iou(predicted, [case[4] for case in chosen], 0.5)
        if c.caption_root:
            samples = KarpathyCaptions(c.caption_root, split=c.eval_split).samples
            samples = samples[: c.eval_count] if c.eval_count else samples
            predictions, references = {}, {}
            for start in range(0, len(samples), c.eval_batch_size):
                part = samples[start : start + c.eval_batch_size]
                output, _ = generate(
                    rsa,
                    processor,
                    [processor.format_prompt(Task.CAPTION)] * len(part),
                    [rgb(s.image()) for s in part],
                    c.eval_max_new_tokens,
                    runtime.device,
                )
                for offset, (row, s) in enumerate(zip(output.sequences.tolist(), part)):
                    key = str(start + offset)
                    predictions[key] = processor.parse_answer(row, (1, 1)).text
                    references[key] = list(s.captions)
            metrics.update(caption_metrics(references, predictions, names=c.caption_metrics))
        return metrics


def run(config: dict[str, Any], fresh: bool, stop=None):
    """The command line's entry: config dict -> a finished (or stopped) run."""
    from training.loop import train

    return train(GroundingRecipe(GroundingConfig.from_dict(config)), fresh=fresh, stop=stop)
