"""The RSA model's training losses and the targets they compare against (soft location, Dice, class maps)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _paired_targets(
    seg_targets: torch.Tensor | Sequence[torch.Tensor], sample_index: torch.Tensor, size: torch.Size
) -> torch.Tensor:
    """The target mask of each ``[SEG]`` (in ``sample_index`` order), resized to the logits' ``size``."""
    counts = torch.bincount(sample_index, minlength=len(seg_targets)).tolist()
    per_sample = [t.unsqueeze(0) for t in seg_targets] if isinstance(seg_targets, torch.Tensor) else list(seg_targets)
    chosen = []
    for b, count in enumerate(counts):
        if not count:
            continue
        if len(per_sample[b]) != count:
            raise ValueError(
                f"sample {b} has {count} mask query(ies) ([SEG], or boxes with box_from_mask) "
                f"but {len(per_sample[b])} target mask(s)"
            )
        chosen.append(per_sample[b])
    targets = torch.cat(chosen).unsqueeze(1).float()
    return F.interpolate(targets, size=tuple(size), mode="area").squeeze(1)


def _patch_classes(class_targets: torch.Tensor, grid: int, classes: int) -> torch.Tensor:
    """Class maps ``[B, H, W]`` or ``[B, 2, H, W]`` -> the majority class of each of ``grid x grid`` cells
    (patches, or the mask decoder's pixels), ``[N, grid*grid]``."""
    maps = class_targets.long().flatten(0, -3)
    if maps.numel() and (maps.min() < 0 or maps.max() >= classes):
        raise ValueError(f"class_targets hold ids outside 0..{classes - 1} (num_aux_classes {classes})")
    one_hot = F.one_hot(maps, classes).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(one_hot, grid).argmax(dim=1).flatten(1)


def _class_balance(targets: torch.Tensor, classes: int, power: float) -> torch.Tensor | None:
    """Per-class weights ``share ** -power`` from the class shares among ``targets`` (classes absent
    from them get no weight), scaled so that the mean weight per target pixel is 1; None for 0."""
    if power <= 0:
        return None
    counts = torch.bincount(targets.flatten(), minlength=classes).float()
    share = counts / counts.sum().clamp(min=1)
    weight = torch.where(counts > 0, share.clamp(min=1e-12) ** -power, torch.zeros_like(share))
    return weight * counts.sum() / (weight * counts).sum().clamp(min=1e-12)


def _soft_location_loss(
    logits: torch.Tensor, labels: torch.Tensor, first: int, bins: int, sigma: float
) -> torch.Tensor:
    """Token cross-entropy where each ``<loc_i>`` label is a Gaussian (width ``sigma`` bins) over the
    location tokens ``first`` .. ``first + bins - 1``; other labels stay one-hot, -100 is ignored."""
    flat = labels.reshape(-1)
    keep = flat != -100
    if not keep.any():
        return logits.sum() * 0.0
    logprobs = F.log_softmax(logits.reshape(-1, logits.shape[-1])[keep], dim=-1)
    targets = flat[keep]
    loss = -logprobs.gather(1, targets[:, None])[:, 0]
    located = (targets >= first) & (targets < first + bins)
    if located.any():
        centre = (targets[located] - first).float()[:, None]
        grid = torch.arange(bins, device=logits.device, dtype=torch.float32)[None]
        weights = torch.softmax(-0.5 * ((grid - centre) / sigma) ** 2, dim=-1)
        loss = loss.masked_scatter(located, -(weights * logprobs[located, first : first + bins]).sum(-1))
    return loss.mean()


def _dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    probs = torch.sigmoid(logits).flatten(1)
    targets = targets.flatten(1)
    overlap = (probs * targets).sum(-1)
    return (1 - (2 * overlap + 1) / (probs.sum(-1) + targets.sum(-1) + 1)).mean()
