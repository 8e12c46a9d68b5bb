"""Small building blocks that several parts of the RSA model share: a pre-norm MLP and a per-pixel LayerNorm."""

from __future__ import annotations

import torch
from torch import nn


class RSAFeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class RSAChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of ``[n, C, H, W]`` features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
