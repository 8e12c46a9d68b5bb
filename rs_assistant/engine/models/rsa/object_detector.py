"""The object detector: every building, storage tank, vehicle and single tree of a window, read from its own
pixels at full resolution (a CenterNet-style head on a small convolutional network, beside the model's
224-pixel view, where a car is two pixels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rs_assistant.engine.models.rsa.configuration_rsa import RSAConfig

#: The detector's maps are 1/STRIDE of the pixels it reads.
STRIDE = 2


def _conv(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


@dataclass
class ObjectMaps:
    """The detector's maps at 1/:data:`STRIDE` of its input, for ``n`` windows and ``K`` classes: ``centres [n, K, h,
    w]`` (the probability that an object's centre falls in the cell), ``sizes [n, 2, h, w]`` (log of the object's
    width and height in input pixels, read at its centre), ``offsets [n, 2, h, w]`` (the centre's place in its cell,
    0..1 in x and y) and ``inside [n, K, h, w]`` (the probability that the cell is covered by an object of the
    class)."""

    centres: torch.Tensor
    sizes: torch.Tensor
    offsets: torch.Tensor
    inside: torch.Tensor


class RSAObjectDetector(nn.Module):
    """A small U-shaped convolutional network over the window's colours at full resolution: three levels (1/2,
    1/4 and 1/8 of the input, the deeper two with dilated convolutions for the context of a building), joined back
    to 1/2, where a head writes, per class of ``object_classes``, CenterNet's map of object centres (with each
    object's size and its centre's place in the cell) and a map of the pixels objects cover (for their masks).
    ``object_detector_channels`` is the width of its first level (the others are 2x and 3x)."""

    def __init__(self, config: RSAConfig):
        super().__init__()
        width, classes = config.object_detector_channels, len(config.object_classes or ())
        self.classes = classes
        self.level1 = nn.Sequential(_conv(3, width, stride=2), _conv(width, width))
        self.level2 = nn.Sequential(
            _conv(width, 2 * width, stride=2), _conv(2 * width, 2 * width, dilation=2), _conv(2 * width, 2 * width)
        )
        self.level3 = nn.Sequential(
            _conv(2 * width, 3 * width, stride=2),
            _conv(3 * width, 3 * width, dilation=2),
            _conv(3 * width, 3 * width, dilation=4),
        )
        self.up2 = _conv(5 * width, 2 * width)
        self.up1 = _conv(3 * width, width)
        self.head = nn.Conv2d(width, 2 * classes + 4, 1)
        with torch.no_grad():  # centres start rare (CenterNet's prior of 0.1)
            self.head.bias.zero_()
            self.head.bias[:classes] = -2.19

    def forward(self, rgb: torch.Tensor) -> ObjectMaps:
        """``rgb [n, 3, H, W]`` (0..1; H and W multiples of 8) -> the maps at ``H/2 x W/2`` (:class:`ObjectMaps`),
        centres and inside as probabilities."""
        out = self.logits(rgb)
        k = self.classes
        return ObjectMaps(
            centres=out[:, :k].sigmoid(),
            sizes=out[:, k : k + 2],
            offsets=out[:, k + 2 : k + 4].sigmoid(),
            inside=out[:, k + 4 :].sigmoid(),
        )

    def logits(self, rgb: torch.Tensor) -> torch.Tensor:
        """The head's raw output ``[n, 2K + 4, H/2, W/2]`` (centres, sizes, offsets, inside), for training."""
        dtype = self.head.weight.dtype
        one = self.level1((rgb.to(dtype) - 0.5) / 0.25)
        two = self.level2(one)
        three = self.level3(two)
        two = self.up2(torch.cat([two, F.interpolate(three, size=two.shape[-2:], mode="bilinear")], dim=1))
        one = self.up1(torch.cat([one, F.interpolate(two, size=one.shape[-2:], mode="bilinear")], dim=1))
        return self.head(one).float()
