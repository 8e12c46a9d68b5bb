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


class Scripts(LogitsProcessor):
    """Lets a sample write only the answers ``scripts`` (token ids, each then end of sequence), ranked
    in the order given: greedy decoding writes the first, beam search returns them all, best first."""

    def __init__(self, scripts: list[list[int]], eos: int):
        self.scripts = [[*ids, eos] for ids in scripts]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, -math.inf)
        step = input_ids.shape[1]
        for row, written in enumerate(input_ids.tolist()):
            for rank, script in reversed(list(enumerate(self.scripts))):  # the better rank written last
                if step < len(script) and script[:step] == written:
                    forced[row, script[step]] = -float(rank)
        return forced
