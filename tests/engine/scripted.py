"""A logits processor that makes an RSA model write a given answer: tests of answer parsing (boxes,
masks, change verdicts) on a random-weight model."""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor


class Script(LogitsProcessor):
    """Forces every sample of the batch to write ``ids`` (then end of sequence)."""

    def __init__(self, ids: list[int], eos: int):
        self.ids = [*ids, eos]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, -math.inf)
        forced[:, self.ids[min(input_ids.shape[1], len(self.ids) - 1)]] = 0.0
        return forced
