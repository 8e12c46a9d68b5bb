"""The class refiner: sharpens the per-pixel class head's map with the image's colours (a guided upsampling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rs_assistant.engine.models.rsa.configuration_rsa import RSAConfig


class RSAClassRefiner(nn.Module):
    """Sharpens the per-pixel class head's map with the image (a guided upsampling, as CascadePSP
    refines a coarse segmentation): the head's logits and pixel features, projected at the head's
    resolution and upsampled, meet the colours at ``class_refine_size`` pixels a side; two 3x3
    convolutions (the second dilated) read them and add a correction to the upsampled logits. The
    correction starts at zero, so an untrained refiner serves the head's own map.
    """

    def __init__(self, config: RSAConfig):
        super().__init__()
        width, classes = config.class_refine_channels, config.num_aux_classes
        pixels = config.mask_decoder_dim >> config.mask_upsample_steps
        self.size = config.class_refine_size
        self.coarse = nn.Conv2d(classes + pixels, width, kernel_size=1)
        self.colour = nn.Conv2d(3, width, kernel_size=3, padding=1)
        self.body = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, kernel_size=3, padding=2, dilation=2),
            nn.GELU(),
        )
        self.correction = nn.Conv2d(width, classes, kernel_size=1)
        for conv in (self.coarse, self.colour, self.body[1], self.body[3]):  # He init: the signal keeps its scale
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def forward(self, logits: torch.Tensor, pixels: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """The head's ``logits [n, K, M, M]`` and ``pixels [n, C, M, M]`` with the image ``rgb [n, 3, S, S]`` (in
        0..1, S = ``class_refine_size``) -> refined logits ``[n, K, S, S]``."""
        size = tuple(rgb.shape[-2:])
        dtype = self.colour.weight.dtype
        logits, pixels, rgb = logits.to(dtype), pixels.to(dtype), rgb.to(dtype)
        context = F.interpolate(self.coarse(torch.cat([logits, pixels], dim=1)), size=size, mode="bilinear")
        upsampled = F.interpolate(logits, size=size, mode="bilinear")
        return upsampled + self.correction(self.body(context + self.colour(rgb - 0.5)))
