"""Token sequences for RS-MoE: a dialogue rendered as text, the router's instruction, CLIP pixels.

An expert reads ``[its sub-task prompt (P vectors)] [image tokens] [text]``; the text is the dialogue
rendered as ``User: QUESTION\\nAssistant: ANSWER\\n`` turns ending with ``User: INSTRUCTION\\nAssistant:``,
and, when training, `` ANSWER`` and the end-of-text token (the only tokens learnt). The router reads the
image tokens and the last instruction alone (``router_ids``), never the answer. A caption request is
the instruction :data:`CAPTION_INSTRUCTION`; a VQA question is its own instruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

IGNORE_INDEX = -100
CAPTION_INSTRUCTION = "Describe the image."


class MoEProcessor:
    """The experts' tokenizer and the vision encoder's image processor."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: Any) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MoEProcessor:
        return cls(
            AutoTokenizer.from_pretrained(folder, local_files_only=True),
            AutoImageProcessor.from_pretrained(folder, local_files_only=True),
        )

    def save_pretrained(self, folder: str | Path) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    # --- text --------------------------------------------------------------------------------------

    @staticmethod
    def dialogue(instruction: str, history: Sequence[tuple[str, str]] = ()) -> str:
        """The text an expert reads before its answer."""
        turns = "".join(f"User: {q.strip()}\nAssistant: {a.strip()}\n" for q, a in history)
        return f"{turns}User: {' '.join(instruction.split())}\nAssistant:"

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def training_batch(
        self,
        instructions: Sequence[str],
        answers: Sequence[str],
        histories: Sequence[Sequence[tuple[str, str]]] | None = None,
        max_text_tokens: int = 128,
    ) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask``/``labels`` (answer tokens and EOS learnt) and the
        router's ``router_ids``/``router_mask`` (the instruction alone)."""
        histories = histories or [()] * len(instructions)
        rows, labels = [], []
        for instruction, answer, history in zip(instructions, answers, histories):
            prompt = self.ids(self.dialogue(instruction, history))
            target = self.ids(" " + answer.strip()) + [self.eos_token_id]
            keep = max(max_text_tokens - len(target), 1)
            prompt = prompt[-keep:]  # a long history loses its oldest tokens, the answer stays whole
            rows.append((prompt + target)[:max_text_tokens])
            labels.append(([IGNORE_INDEX] * len(prompt) + target)[:max_text_tokens])
        batch = self.pad(rows, labels)
        router = self.pad(
            [self.ids(" ".join(i.split()))[:max_text_tokens] or [self.eos_token_id] for i in instructions]
        )
        batch["router_ids"], batch["router_mask"] = router["input_ids"], router["attention_mask"]
        return batch

    def generation_batch(
        self, instructions: Sequence[str], histories: Sequence[Sequence[tuple[str, str]]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Left-padded prompts (``input_ids``/``attention_mask``) and the router's inputs, to generate."""
        histories = histories or [()] * len(instructions)
        rows = [self.ids(self.dialogue(i, h)) for i, h in zip(instructions, histories)]
        batch = self.pad(rows, left=True)
        router = self.pad([self.ids(" ".join(i.split())) or [self.eos_token_id] for i in instructions])
        batch["router_ids"], batch["router_mask"] = router["input_ids"], router["attention_mask"]
        return batch

    def pad(
        self, rows: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None, left: bool = False
    ) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        out_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(list(row), dtype=torch.long)
            mask[i, span] = 1
            if labels is not None:
                out_labels[i, span] = torch.tensor(list(labels[i]), dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if labels is not None:
            out["labels"] = out_labels
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    # --- images ------------------------------------------------------------------------------------

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        """CLIP preprocessing of PIL images or H x W x 3 uint8 arrays."""
        images = list(images)
        if images and isinstance(images[0], np.ndarray):
            return self.image_processor(images=images, input_data_format="channels_last", return_tensors="pt")[
                "pixel_values"
            ]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]


__all__ = ["CAPTION_INSTRUCTION", "IGNORE_INDEX", "MoEProcessor"]
