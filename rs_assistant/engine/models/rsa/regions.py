"""Instance regions of the per-pixel class map and what the region selector reads of each.

A referring expression ("the northernmost building", "the pond left of the road") names one
object among several of its class. The class head separates classes well but the language model
alone rarely picks the right instance, so the RSA model can end with a region selector
(MAttNet's idea of scoring candidate regions against the expression, with GeoPix's ``[SEG]``
state as the expression): the candidates are the 4-connected regions of the class in the head's
map, each described by :func:`region_features`:

- where it is and how big: centroid, extent, log area, and its rank among the candidates by
  area, x and y (so "largest", "westernmost" and "in the top left" are simple functions);
- what it looks like: the mean and spread of its colour and the mean of the decoder's pixel
  features over it, and the class head's mean probability there;
- what lies around it: for every class and each side (left, right, above, below), the share of
  its rows (or columns) with that class beyond it on that side ("left of the road").

Everything here works on the head's grid (``M x M``, 56 in the shipped configs) and on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Features per region that do not depend on the model's sizes: geometry (9), ranks (4), colour (6),
#: class probability (1), candidate count (1).
BASE_FEATURES = 21


def num_region_features(pixel_channels: int, classes: int) -> int:
    """The length of :func:`region_features`' rows for a model with these sizes."""
    return BASE_FEATURES + pixel_channels + 4 * classes


def connected_regions(inside: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` bool -> ``[H, W]`` long: 0 outside, and 1..K numbering the 4-connected regions of
    ``inside`` in row-major order of their first cell."""
    height, width = inside.shape
    ids = torch.arange(1, height * width + 1, device=inside.device).view(height, width)
    labels = torch.where(inside, ids, torch.zeros_like(ids))
    while True:  # every cell takes the largest id among itself and its 4 neighbours inside, until none changes
        padded = F.pad(labels, (1, 1, 1, 1))
        spread = torch.stack([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]).amax(dim=0)
        spread = torch.where(inside, spread, torch.zeros_like(spread))
        if torch.equal(spread, labels):
            break
        labels = spread
    flat = labels.flatten()
    out = torch.zeros_like(flat)
    seen: dict[int, int] = {}
    for value in flat.tolist():  # row-major, so each region is met first at its first cell
        if value:
            seen.setdefault(value, len(seen) + 1)
    for value, rank in seen.items():
        out[flat == value] = rank
    return out.view(height, width)


def region_features(regions: torch.Tensor, classes: torch.Tensor, probability: torch.Tensor, pixels: torch.Tensor,
                    rgb: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, num_region_features]`` float32 for the regions 1..K of ``regions [M, M]``.

    ``classes [M, M]`` is the head's class map (argmax), ``probability [M, M]`` the head's
    probability of the regions' class, ``pixels [C, M, M]`` the decoder's pixel features and
    ``rgb [3, M, M]`` the image in [0, 1] at the grid's size.
    """
    side = regions.shape[0]
    count = int(regions.max())
    if count == 0:
        return torch.zeros(0, num_region_features(pixels.shape[0], num_classes), device=regions.device)
    one_hot = regions.flatten()[None] == torch.arange(1, count + 1, device=regions.device)[:, None]  # [K, M*M]
    weights = one_hot.float()
    cells = weights.sum(dim=1, keepdim=True)
    mean = weights / cells
    coords = (torch.arange(side, device=regions.device, dtype=torch.float32) + 0.5) / side
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    cx, cy = mean @ xs.flatten(), mean @ ys.flatten()
    big = torch.tensor(2.0, device=regions.device)
    x0 = torch.where(one_hot, xs.flatten(), big).amin(dim=1) - 0.5 / side
    y0 = torch.where(one_hot, ys.flatten(), big).amin(dim=1) - 0.5 / side
    x1 = torch.where(one_hot, xs.flatten(), -big).amax(dim=1) + 0.5 / side
    y1 = torch.where(one_hot, ys.flatten(), -big).amax(dim=1) + 0.5 / side
    area = cells[:, 0] / side**2
    geometry = torch.stack([cx, cy, x0, y0, x1, y1, x1 - x0, y1 - y0, torch.log(area)], dim=1)
    ranks = torch.stack([_rank(area), _rank(cx), _rank(cy), area / area.max()], dim=1)
    colour = rgb.flatten(1).float()
    colour_mean = mean @ colour.T
    colour_std = (mean @ (colour**2).T - colour_mean**2).clamp(min=0).sqrt()
    feature_mean = mean @ pixels.flatten(1).float().T
    held = mean @ probability.flatten().float()
    several = torch.full((count, 1), float(torch.log(torch.tensor(float(count)))), device=regions.device)
    around = _surroundings(regions, classes, count, num_classes)
    return torch.cat([geometry, ranks, colour_mean, colour_std, held[:, None], several, feature_mean, around], dim=1)


def _rank(values: torch.Tensor) -> torch.Tensor:
    """Each value's rank among ``values`` scaled to [0, 1] (0: smallest); 0.5 for a single value."""
    if len(values) == 1:
        return torch.full_like(values, 0.5)
    return torch.argsort(torch.argsort(values)).float() / (len(values) - 1)


def _surroundings(regions: torch.Tensor, classes: torch.Tensor, count: int, num_classes: int) -> torch.Tensor:
    """``[K, 4 * classes]``: per side (left, right, above, below) and class, the share of the region's rows
    (left/right) or columns (above/below) that hold a cell of that class beyond the region on that side."""
    side = regions.shape[0]
    one_hot = F.one_hot(classes.long(), num_classes).permute(2, 0, 1).float()  # [N, M, M]
    # cells of each class strictly right of / left of column x in each row, and below / above row y per column
    right = one_hot.flip(2).cumsum(2).flip(2) - one_hot
    left = one_hot.cumsum(2) - one_hot
    below = one_hot.flip(1).cumsum(1).flip(1) - one_hot
    above = one_hot.cumsum(1) - one_hot
    index = torch.arange(side, device=regions.device)
    out = torch.zeros(count, 4, num_classes, device=regions.device)
    for k in range(count):
        region = regions == k + 1
        rows = region.any(dim=1)
        cols = region.any(dim=0)
        first_x = torch.where(region, index[None, :], side).amin(dim=1)[rows]
        last_x = torch.where(region, index[None, :], -1).amax(dim=1)[rows]
        first_y = torch.where(region, index[:, None], side).amin(dim=0)[cols]
        last_y = torch.where(region, index[:, None], -1).amax(dim=0)[cols]
        row_ids, col_ids = index[rows], index[cols]
        out[k, 0] = (left[:, row_ids, first_x] > 0).float().mean(dim=1)
        out[k, 1] = (right[:, row_ids, last_x] > 0).float().mean(dim=1)
        out[k, 2] = (above[:, first_y, col_ids] > 0).float().mean(dim=1)
        out[k, 3] = (below[:, last_y, col_ids] > 0).float().mean(dim=1)
    return out.flatten(1)
