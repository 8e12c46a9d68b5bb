"""Token sequences for RS-CapRet: interleaved images and text, dialogues, captions and ``[RET]`` texts.

An input is a list of items, each a string or an image; an image becomes k ``<image>``
placeholders (the model fills them with its visual tokens). A dialogue is a list of messages in
the OpenAI/LLaVA shape, images anywhere in a user turn::

    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]},
     {"role": "assistant", "content": "an airport with two runways."},
     {"role": "user", "content": [{"type": "text", "text": "show me a similar place"}]}]

rendered as ``User: <image>xk what is this?\\nAssistant: an airport with two runways.\\nUser: ...``,
with the images passed beside it in order. The plain caption format (RS-CapRet's training and
the engine's ``caption``) is the image alone followed by its caption; the retrieval format is a
text followed by ``[RET]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"
RET_TOKEN = "[RET]"
IGNORE_INDEX = -100
ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Add ``<image>`` and ``[RET]`` to ``tokenizer`` (if missing); their ids."""
    missing = [t for t in (IMAGE_TOKEN, RET_TOKEN) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.convert_tokens_to_ids(RET_TOKEN)


class CapRetProcessor:
    """The tokenizer (with ``<image>`` and ``[RET]``) and the CLIP image processor of a CapRet model."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: Any, num_visual_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.k = num_visual_tokens
        self.image_token_id, self.ret_token_id = add_special_tokens(tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, folder: str | Path, num_visual_tokens: int) -> CapRetProcessor:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        return cls(tokenizer, image_processor, num_visual_tokens)

    def save_pretrained(self, folder: str | Path) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)

    # --- sequences ---------------------------------------------------------------------------------

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None and bos != self.tokenizer.eos_token_id else []

    def encode(self, items: Sequence[str | Any]) -> tuple[list[int], list[Any]]:
        """Token ids of interleaved text and images (k placeholders each), and the images in order."""
        ids, images = self.prefix(), []
        for item in items:
            if isinstance(item, str):
                ids += self.text_ids(item)
            else:
                ids += [self.image_token_id] * self.k
                images.append(item)
        return ids, images

    def dialogue(
        self, messages: Sequence[Mapping[str, Any]], images: Sequence[Any], add_generation_prompt: bool = True
    ) -> list[str | Any]:
        """A dialogue as interleaved items; ``{"type": "image"}`` entries take ``images`` in order."""
        items: list[str | Any] = []
        pending = list(images)
        for message in messages:
            role = ROLES.get(str(message.get("role")), str(message.get("role")).title())
            items.append(f"{role}: ")
            content = message.get("content", "")
            for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                if part.get("type") == "image":
                    if not pending:
                        raise ValueError("the dialogue has more image entries than images")
                    items.append(pending.pop(0))
                else:
                    items.append(str(part.get("text", "")))
            items.append("\n")
        if pending:
            raise ValueError(f"{len(pending)} image(s) not placed in the dialogue")
        if add_generation_prompt:
            items.append("Assistant:")
        return items

    def caption_example(self, image: Any, caption: str) -> tuple[list[int], list[int]]:
        """(ids, labels) of RS-CapRet's captioning: the image, then the caption and EOS, learnt."""
        prompt = self.prefix() + [self.image_token_id] * self.k
        target = self.text_ids(" " + caption.strip()) + [self.tokenizer.eos_token_id]
        return prompt + target, [IGNORE_INDEX] * len(prompt) + target

    def retrieval_example(self, caption: str) -> tuple[list[int], list[int]]:
        """(ids, labels) of the retrieval pass: the caption then ``[RET]``, which the LM learns to emit."""
        text = self.prefix() + self.text_ids(caption.strip())
        return text + [self.ret_token_id], [IGNORE_INDEX] * len(text) + [self.ret_token_id]

    def pad(
        self,
        sequences: Sequence[Sequence[int]],
        labels: Sequence[Sequence[int]] | None = None,
        length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` (and ``labels``), to ``length`` or the longest."""
        width = length or max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        out_labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        for i, seq in enumerate(sequences):
            seq = list(seq)[:width]
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
            if labels is not None:
                lab = list(labels[i])[:width]
                out_labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if labels is not None:
            out["labels"] = out_labels
        return out

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        """CLIP preprocessing of PIL images or H x W x 3 uint8 arrays."""
        images = list(images)
        if images and isinstance(images[0], np.ndarray):
            return self.image_processor(images=images, input_data_format="channels_last", return_tensors="pt")[
                "pixel_values"
            ]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]


__all__ = ["CapRetProcessor", "IMAGE_TOKEN", "RET_TOKEN", "add_special_tokens"]
