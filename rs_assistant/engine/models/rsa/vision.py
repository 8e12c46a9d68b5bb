"""The RSA model's vision side around CLIP: the convolutional stem, the bridge into the language model and the
visual tokens' 2D position code (steps 1 and 3 of modeling_rsa.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rs_assistant.engine.models.rsa.configuration_rsa import RSAConfig


class RSAConvStem(nn.Module):
    """A convolutional patch embedding (``vision_stem = "conv"``): stride-2 3x3 convolutions down to
    1/``patch`` of the input, ending at the encoder's width, in place of CLIP's single patch convolution.

    ``early`` brings the image to 1/4 of its side (the detail features the mask decoder may read),
    ``late`` the rest of the way. ``weight`` is the last convolution's, which CLIP's embeddings
    read for the input dtype.
    """

    def __init__(self, width: int, patch: int):
        super().__init__()
        steps = patch.bit_length() - 1
        channels = [3] + [min(width, 32 * 2**i) for i in range(steps - 1)] + [width]
        layers = [self._step(channels[i], channels[i + 1], last=i == steps - 1) for i in range(steps)]
        self.early = nn.Sequential(*layers[:2])
        self.late = nn.Sequential(*layers[2:])
        self.detail_channels = channels[2]

    @staticmethod
    def _step(cin: int, cout: int, last: bool) -> nn.Module:
        conv = nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1)
        return conv if last else nn.Sequential(conv, nn.GroupNorm(min(8, cout), cout), nn.GELU())

    @property
    def weight(self) -> torch.Tensor:
        return self.late[-1].weight if len(self.late) else self.early[-1].weight

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(pixel_values))


class RSAProjector(nn.Module):
    """RS-CapRet's bridge: one linear layer ("linear") or Linear-GELU-Linear ("mlp"), optionally layer-normed."""

    def __init__(self, in_dim: int, out_dim: int, kind: str, norm: bool = False):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.norm = nn.LayerNorm(out_dim) if norm else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.net(features)
        return out if self.norm is None else self.norm(out)


def position_code(positions: torch.Tensor, dim: int, bins: int) -> torch.Tensor:
    """``[n]`` positions in (0, 1) -> ``[n, dim]``: sin and cos at ``dim // 2`` frequencies from pi to
    pi * bins / 2 (geometric), so that codes of nearby positions are alike down to a few bins."""
    count = max(dim // 2, 1)
    exponents = torch.arange(count, dtype=torch.float32, device=positions.device) / max(count - 1, 1)
    angles = positions.float()[:, None] * (math.pi * (bins / 2) ** exponents)[None]
    code = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(code, (0, dim - code.shape[-1]))


def xy_code(x: torch.Tensor, y: torch.Tensor, dim: int, bins: int) -> torch.Tensor:
    """``[n, dim]``: the x code of each point in the first half of the channels, its y code in the second."""
    return torch.cat([position_code(x, dim // 2, bins), position_code(y, dim - dim // 2, bins)], dim=-1)


def grid_code(side: int, dim: int, bins: int) -> torch.Tensor:
    """``[side * side, dim]``: the :func:`xy_code` of each cell's centre of a row-major ``side`` x ``side`` grid."""
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    return xy_code(centres.repeat(side), centres.repeat_interleave(side), dim, bins)  # column varies fastest


class RSAVisualPosition(nn.Module):
    """The visual tokens' 2D position code (config ``visual_position_encoding``), times a learned scale."""

    def __init__(self, config: RSAConfig):
        super().__init__()
        self.side = config.grid_size // config.token_merge
        self.dim = config.text_config.hidden_size
        self.bins = config.num_location_bins
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` visual tokens (one or more blocks of side x side) with their cell's code added."""
        cells = self.side * self.side
        if tokens.shape[1] % cells:
            raise ValueError(f"{tokens.shape[1]} visual tokens are not blocks of {cells}")
        code = grid_code(self.side, self.dim, self.bins).to(tokens.device, tokens.dtype)
        return tokens + self.scale.to(tokens.dtype) * code.repeat(tokens.shape[1] // cells, 1)
