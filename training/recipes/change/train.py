"""python -m training change --config training/recipes/change/tiny.toml [--set key=value ...] [--fresh]

DeltaVLM (Deng et al., 2025, "DeltaVLM: Interactive Remote Sensing Image Change Analysis via
Instruction-guided Difference Perception") on the RSA model: both dates through one vision
encoder (its last ``train_vision_layers`` layers fine-tuned, the rest frozen), the cross-semantic
difference module (after - before, related to both dates, gated), the instruction-aware Q-Former
(``rsa.delta_qformer_layers`` > 0: queries that read the user's instruction and then the
difference features), the bridges, and a frozen LLM (only the RSA tokens' embedding rows learn).
The changed/unchanged head on the difference features is trained with BCE beside the LM loss.

Data (either or both):

- change captioning, ``change_format`` ``levir_cc`` (LEVIR-CC: ``LevirCCcaptions.json``,
  ``images/<split>/{A,B}``) or ``second_cc`` (SECOND-CC: ``SECOND-CC-AUG.json``,
  ``<split>/rgb/{A,B}``, ``<split>/sem/{A,B}``) under ``change_root``: ``<change> what changed
  between the two images`` -> one of the pair's reference captions (drawn by seed and step), and
  ``changeflag`` for the head. With SECOND-CC's semantic maps and ``change_masks``, a changed pair's
  answer ends with `` [SEG]`` whose target is the change mask (pixels whose label differs between
  the two dates), as the engine's change task reads it;
- ``changechat_json`` + ``changechat_images``: ChangeChat-105k multi-turn conversations
  (captioning, classification, quantification, localisation) as ``chat`` turns over the pair,
  earlier turns as history, every answer trained.

Evaluation (``metrics.json``): the ``eval_split`` pairs are captioned (greedy) and scored with
BLEU-1..4, METEOR, ROUGE-L and CIDEr (pycocoevalcap, needs Java) over all pairs and, as the
change-captioning papers report them, separately over the changed (``changed_*``) and unchanged
(``unchanged_*``) pairs; ``paper_*`` are the same captions scored as the data set's authors score them
(training.eval.paper_metrics: Chg2Cap's tokenisation and vocabulary for LEVIR-CC, MModalCC's for
SECOND-CC); the head's verdict gives ``change_accuracy``. The export is an RSA
checkpoint the engine serves (``backend = "rsa"``, task ``change`` and two-image ``chat``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rs_assistant.core.protocol import Task
from rs_assistant.engine.models.rsa.processing_rsa import SEG
from training.data.formats import ChangeChat, LevirCC, SecondCC
from training.data.formats._common import open_image
from training.data.formats.conversations import Role
from training.eval.metrics import binary_accuracy
from training.loop import Runtime, map_batches, seeded, unwrap
from training.recipes.rsa_base import (
    RSARecipe,
    RSARecipeConfig,
    RSATraining,
    caption_metrics,
    generate,
    history_messages,
    rgb,
)

log = logging.getLogger(__name__)

FORMATS = {"levir_cc": LevirCC, "second_cc": SecondCC}


@dataclass(frozen=True)
class ChangeConfig(RSARecipeConfig):
    """The change recipe's settings (tiny.toml, paper.toml)."""

    change_format: str = "levir_cc"  # levir_cc | second_cc
    change_root: str = ""  # the LEVIR-CC / SECOND-CC folder
    changechat_json: str = ""  # ChangeChat-105k conversation JSON
    changechat_images: str = ""  # its image folder
    train_split: str = "train"
    eval_split: str = "test"
    change_masks: bool = True  # SECOND-CC: a changed pair's answer ends with [SEG] on the change mask

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.change_format not in FORMATS:
            raise ValueError(f"change_format must be one of {', '.join(FORMATS)}, got {self.change_format!r}")
        if not (self.change_root or self.changechat_json):
            raise ValueError(
                "no training data: give change_root (LEVIR-CC or SECOND-CC) and/or changechat_json "
                "(+ changechat_images), e.g. --set change_root=/data/LEVIR-CC"
            )
        if bool(self.changechat_json) != bool(self.changechat_images):
            raise ValueError(
                "changechat_json and changechat_images go together; got "
                f"changechat_json={self.changechat_json!r}, changechat_images={self.changechat_images!r}"
            )


@dataclass(frozen=True)
class PairExample:
    before: Any  # path
    after: Any
    task: Task
    prompt: str
    answers: tuple[str, ...]  # references (captioning: one is drawn per step)
    changed: bool | None
    history: tuple[tuple[str, str], ...] = ()
    semantic: tuple[Any, Any] | None = None  # SECOND-CC label maps (before, after)


def change_mask(semantic: tuple[Any, Any]) -> np.ndarray:
    """Pixels whose label (colour) differs between the two dates' semantic maps."""
    before, after = (np.asarray(open_image(p)) for p in semantic)
    if before.shape != after.shape:
        raise ValueError(
            f"semantic maps {semantic[0]} and {semantic[1]} differ in size: {before.shape} vs {after.shape}"
        )
    return (before != after).any(axis=-1)


def caption_examples(data) -> list[PairExample]:
    out = []
    for s in data.samples:
        semantic = (s.before_semantic_path, s.after_semantic_path) if s.before_semantic_path is not None else None
        out.append(PairExample(s.before_path, s.after_path, Task.CHANGE, "", s.captions, s.changed, (), semantic))
    return out


def chat_examples(data) -> list[PairExample]:
    out = []
    for s in data.samples:
        pairs = [
            (q.text, a.text)
            for q, a in zip(s.turns[0::2], s.turns[1::2])
            if q.role is Role.HUMAN and a.role is Role.GPT
        ]
        if pairs:
            out.append(
                PairExample(
                    s.image_paths[0],
                    s.image_paths[1],
                    Task.CHAT,
                    pairs[-1][0],
                    (pairs[-1][1],),
                    None,
                    tuple(pairs[:-1]),
                )
            )
    return out


class ChangeTraining(RSATraining):
    """The RSA losses plus the changed/unchanged head's BCE over the pairs whose flag is known (>= 0)."""

    def forward(self, change_flags: torch.Tensor, **batch: Any) -> dict[str, torch.Tensor]:
        out = self.model(**batch)
        terms = {"loss": out.loss}
        for name in ("lm_loss", "mask_loss"):
            value = getattr(out, name)
            if value is not None:
                terms[name.removesuffix("_loss")] = value.detach()
        known = change_flags >= 0
        if known.any():
            head = F.binary_cross_entropy_with_logits(out.change_logits.float()[known], change_flags[known].float())
            terms["loss"] = terms["loss"] + self.model.config.change_loss_weight * head
            terms["change"] = head.detach()
        return terms


class ChangeRecipe(RSARecipe):
    name = "change"
    run_keys = RSARecipe.run_keys + (
        "change_format",
        "change_root",
        "changechat_json",
        "train_split",
        "change_masks",
        "max_length",
    )
    config: ChangeConfig

    def __init__(self, config: ChangeConfig) -> None:
        super().__init__(config)
        c = config
        self.captions = FORMATS[c.change_format](c.change_root, split=c.train_split) if c.change_root else None
        self.chat = ChangeChat(c.changechat_json, c.changechat_images) if c.changechat_json else None
        self.train_examples = (caption_examples(self.captions) if self.captions else []) + (
            chat_examples(self.chat) if self.chat else []
        )
        if not self.train_examples:
            raise ValueError("the training data hold no pair to learn from")

    def build(self, runtime: Runtime):
        module = super().build(runtime)
        return ChangeTraining(module.model).to(runtime.device)

    def batches(self, start_step: int, runtime: Runtime) -> Iterator[dict[str, Any]]:
        examples, processor, seed, c = self.train_examples, self.processor, self.config.seed, self.config

        def collate(indices: list[int], step: int) -> dict:
            texts, images, masks, flags = [], [], [], []
            for index in indices:
                e = examples[index]
                answer = e.answers[int(seeded(seed, step, index).integers(len(e.answers)))]
                sample_masks = []
                if e.task is Task.CHANGE and c.change_masks and e.semantic is not None:
                    mask = change_mask(e.semantic)
                    if e.changed if e.changed is not None else mask.any():
                        answer, sample_masks = f"{answer.strip()} {SEG}", [mask]
                texts.append(
                    processor.format_prompt(e.task, e.prompt, history_messages(e.history), pair=True, answer=answer)
                )
                images.append((rgb(open_image(e.before)), rgb(open_image(e.after))))
                masks.append(sample_masks)
                flags.append(-1 if e.changed is None else int(e.changed))
            batch = self.encode(texts, images, masks if any(masks) else None)
            batch["change_flags"] = torch.tensor(flags)
            return batch

        return map_batches(self.config, start_step, runtime, len(examples), collate)

    def evaluate(self, model, runtime: Runtime) -> dict[str, float]:
        c, processor = self.config, self.processor
        rsa = unwrap(model).model
        if not c.change_root:
            return {}
        samples = FORMATS[c.change_format](c.change_root, split=c.eval_split).samples
        samples = samples[: c.eval_count] if c.eval_count else samples
        predictions, references, verdicts = {}, {}, {}
        self.examples: dict[str, str] = {}
        prompt = processor.format_prompt(Task.CHANGE, pair=True)
        for start in range(0, len(samples), c.eval_batch_size):
            part = samples[start : start + c.eval_batch_size]
            images = [(rgb(s.before()), rgb(s.after())) for s in part]
            output, visual = generate(
                rsa, processor, [prompt] * len(part), images, c.eval_max_new_tokens, runtime.device
            )
            for b, (row, s) in enumerate(zip(output.sequences.tolist(), part)):
                key = s.name
                predictions[key] = processor.parse_answer(row, (1, 1)).text
                references[key] = list(s.captions)
                verdicts[key] = bool(visual.change_logits[b] > 0)
                if len(self.examples) < 20:
                    self.examples[key] = predictions[key]
        metrics: dict[str, float] = {}
        flagged = {s.name: s.changed for s in samples if s.changed is not None}
        if flagged:
            metrics["change_accuracy"] = binary_accuracy([verdicts[k] for k in flagged], list(flagged.values()))
        if c.caption_metrics:
            names = c.caption_metrics
            metrics.update(caption_metrics(references, predictions, names=names))
            for prefix, wanted in (("changed_", True), ("unchanged_", False)):
                keys = [k for k, v in flagged.items() if v is wanted]
                metrics.update(
                    caption_metrics({k: references[k] for k in keys}, {k: predictions[k] for k in keys}, prefix, names)
                )
            metrics.update(self._paper_scores(predictions, names))
        return metrics

    def _paper_scores(self, predictions: dict[str, str], names) -> dict[str, float]:
        """``paper_*``: the same captions scored as the data set's authors score them (Chg2Cap for LEVIR-CC,
        MModalCC for SECOND-CC: their tokenisation, vocabulary and changed/unchanged split;
        training.eval.paper_metrics); {} for other data or without Java."""
        import shutil

        from training.eval.paper_metrics import score_change_predictions

        dataset = {"levir_cc": "levir-cc", "second_cc": "second-cc"}.get(self.config.change_format)
        if dataset is None or not predictions or shutil.which("java") is None:
            return {}
        scores = score_change_predictions(dataset, self.config.change_root, None, predictions, tuple(names))
        return {f"paper_{key}": value for key, value in scores.items()}


def run(config: dict[str, Any], fresh: bool, stop=None):
    """The command line's entry: config dict -> a finished (or stopped) run."""
    from training.loop import train

    return train(ChangeRecipe(ChangeConfig.from_dict(config)), fresh=fresh, stop=stop)
