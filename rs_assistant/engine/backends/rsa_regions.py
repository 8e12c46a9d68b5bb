"""Reading regions off the RSA model's maps: the class head's map of a window with its connected regions (which
refine a mask or box, or which the region selector chooses from), and the box of a decoded mask's main region.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rs_assistant.engine.backends import boxes
from rs_assistant.engine.models.rsa.modeling_rsa import RSAForConditionalGeneration, RSAInstruction, RSAVisualFeatures
from rs_assistant.engine.models.rsa.regions import candidate_regions, connected_regions, region_features


class ClassRegions:
    """The per-pixel class head's map of one sample at the window's size (computed on first use), its
    connected regions per class, and how they refine a mask or box named by ``label`` (the config's
    ``class_names`` and ``class_nouns``), or are chosen by the model's region selector.

    ``visual``/``sample``: the encoded images and which one; ``shape``: the window (height, width);
    ``image``: the window's pixels (H x W x 3 uint8), which the selector needs for colours.
    """

    def __init__(
        self,
        model: RSAForConditionalGeneration,
        visual: RSAVisualFeatures,
        sample: int,
        shape: tuple[int, int],
        image: np.ndarray | None = None,
    ):
        self.model, self.visual, self.sample, self.shape, self.image = model, visual, sample, shape, image
        self._probabilities: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._pixels: torch.Tensor | None = None
        self._regions: dict[int, torch.Tensor] = {}
        self._fine: dict[int, torch.Tensor] = {}
        self._features: dict[int, torch.Tensor] = {}
        self._candidates: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._classes: torch.Tensor | None = None

    def class_of(self, label: str) -> int | None:
        """The class id ``label`` names (``class_nouns``), or None."""
        cls = self.model.config.class_nouns.get(label.strip().lower())
        return None if cls is None else int(cls)

    def refine(
        self,
        label: str,
        inside: torch.Tensor,
        probability: torch.Tensor,
        query: tuple[torch.Tensor, RSAInstruction] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, probability)``: a class's own name -> that class's pixels (those where it is the most
        probable class, or whose probability reaches the class's ``class_mask_bars``) and probabilities; another
        noun of a class -> with ``class_region_masks`` the region of that class the selector picks for
        ``query`` (the [SEG]'s state and the instruction's, with a selector) or else the one the mask
        overlaps best, without it the mask's pixels of that class; any other label -> unchanged."""
        config = self.model.config
        cls = self.class_of(label)
        if cls is None:
            return inside, probability
        probabilities = self.probabilities()
        of_class = self.classes() == cls
        if label.strip().lower() == str(config.class_names[cls]).lower():
            bar = (config.class_mask_bars or {}).get(str(config.class_names[cls]))
            return (of_class if bar is None else probabilities[cls] >= bar), probabilities[cls]
        if config.class_region_masks:
            chosen = self.select(cls, *query) if query is not None and self.model.region_selector is not None else 0
            if chosen:
                region = self.candidate_pixels(cls, chosen)
                if region.any():  # scored by the class head's probability over the region
                    return region, torch.full_like(probability, float(probabilities[cls][region].mean()))
            region = self._best_region(cls, inside)
            if region is not None:  # scored by the decoder's probability where its mask lies on the region
                return region, torch.full_like(probability, float(probability[region & inside].mean()))
        return inside & of_class, probability

    def fine_regions(self, cls: int) -> torch.Tensor:
        """``[H, W]`` long: the window pixels of class ``cls`` numbered by their connected region (found at the
        head's resolution, grown by one cell, cut to the window-sized class map); 0 elsewhere."""
        if cls not in self._fine:
            regions = self.regions(cls)
            padded = F.pad(regions, (1, 1, 1, 1))  # grow each region into the empty cells beside it
            grown = torch.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]).amax(dim=0)
            regions = torch.where(regions > 0, regions, grown)
            fine = F.interpolate(regions[None, None].float(), size=self.shape, mode="nearest")[0, 0].long()
            self._fine[cls] = torch.where(self.classes() == cls, fine, torch.zeros_like(fine))
        return self._fine[cls]

    def _best_region(self, cls: int, inside: torch.Tensor) -> torch.Tensor | None:
        """The window pixels of the region of :meth:`fine_regions` whose IoU with the mask ``inside`` is
        highest; None when no region overlaps it."""
        count = int(self.regions(cls).max()) + 1
        if count == 1:
            return None
        fine = self.fine_regions(cls)
        sizes = torch.bincount(fine.flatten(), minlength=count).float()
        overlap = torch.bincount(fine[inside], minlength=count).float()
        iou = overlap / (sizes + float(inside.sum()) - overlap).clamp(min=1.0)
        iou[0] = 0.0
        if float(iou.max()) <= 0.0:
            return None
        return fine == int(iou.argmax())

    def candidates(self, cls: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masks [K, M, M], levels [K])``: the regions of class ``cls`` the selector chooses from, at the
        head's resolution (regions.candidate_regions; found once per class)."""
        if cls not in self._candidates:
            self._candidates[cls] = candidate_regions(self.logits().argmax(dim=0) == cls)
        return self._candidates[cls]

    def candidate_pixels(self, cls: int, index: int) -> torch.Tensor:
        """``[H, W]`` bool: the window pixels of class ``cls`` in candidate ``index`` (1..K) grown by one cell."""
        return self._near_pixels(self.candidates(cls)[0][index - 1], cls)

    def _grid_rgb(self) -> torch.Tensor:
        """``[3, M, M]``: the window's colours in [0, 1] averaged over the head's cells."""
        if self.image is None:
            raise ValueError("the region selector needs the window's pixels")
        return self.window_rgb(self.logits().shape[-1])[0]

    def window_rgb(self, side: int) -> torch.Tensor:
        """``[1, 3, side, side]``: the window's colours in [0, 1], area-averaged to ``side`` pixels a side."""
        rgb = (
            torch.from_numpy(np.ascontiguousarray(self.image[..., :3]))
            .to(self.logits().device)
            .permute(2, 0, 1)[None]
            .float()
            / 255
        )
        return F.interpolate(rgb, size=(side, side), mode="area")

    def region_features(self, cls: int) -> torch.Tensor:
        """``[K, F]``: what the region selector reads of each candidate of class ``cls`` (regions.region_features)."""
        if cls not in self._features:
            logits = self.logits()
            self._features[cls] = region_features(
                *self.candidates(cls),
                logits.argmax(dim=0),
                torch.softmax(logits, dim=0)[cls],
                self.pixel_features(),
                self._grid_rgb(),
                logits.shape[0],
            )
        return self._features[cls]

    def select(self, cls: int, state: torch.Tensor, instruction: RSAInstruction) -> int:
        """The candidate of class ``cls`` (1..K, as :meth:`candidates` orders them) the selector scores highest
        for the answer state ``state`` and the user's turn ``instruction``; 0 when the class has none."""
        features = self.region_features(cls)
        if not len(features):
            return 0
        return int(self.model.score_regions(state, instruction, features).argmax()) + 1

    def selected_box(
        self, label: str, state: torch.Tensor, instruction: RSAInstruction
    ) -> tuple[float, float, float, float] | None:
        """The window-pixel extent of the region of ``label``'s class that the selector picks; None when the
        label names no class, the class has no region or the model no selector."""
        cls = self.class_of(label)
        if cls is None or self.model.region_selector is None:
            return None
        chosen = self.select(cls, state, instruction)
        return self.region_box(cls, chosen) if chosen else None

    def region_box(self, cls: int, index: int) -> tuple[float, float, float, float]:
        """The window-pixel extent of candidate ``index`` (1..K) of class ``cls`` (as :meth:`snap` measures a
        region)."""
        region = self.candidates(cls)[0][index - 1]
        return self._fine_extent(region, cls) or self._coarse_extent(region)

    def _coarse_extent(self, region: torch.Tensor) -> tuple[float, float, float, float]:
        height, width = self.shape
        side = region.shape[0]
        rows = torch.nonzero(region.any(dim=1)).flatten()
        cols = torch.nonzero(region.any(dim=0)).flatten()
        return (
            float(cols[0]) * width / side,
            float(rows[0]) * height / side,
            float(cols[-1] + 1) * width / side,
            float(rows[-1] + 1) * height / side,
        )

    def snap(self, label: str, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """The window-pixel extent of the region of ``label``'s class whose extent overlaps ``box`` best; ``box``
        itself when the label names no class or no region overlaps it."""
        cls = self.class_of(label)
        if cls is None:
            return box
        regions = self.regions(cls)
        best, chosen, extent = 0.0, 0, box
        for index in range(1, int(regions.max()) + 1):
            coarse = self._coarse_extent(regions == index)
            overlap = boxes.iou(coarse, box)
            if overlap > best:
                best, chosen, extent = overlap, index, coarse
        if not chosen:
            return box
        return self._fine_extent(regions == chosen, cls) or extent

    def _fine_extent(self, region: torch.Tensor, cls: int) -> tuple[float, float, float, float] | None:
        """The extent of ``region`` (head resolution) measured on the window-sized class map, within the
        region grown by one cell (as :func:`region_box`)."""
        chosen = self._near_pixels(region, cls)
        if not chosen.any():
            return None
        rows = torch.nonzero(chosen.any(dim=1)).flatten()
        cols = torch.nonzero(chosen.any(dim=0)).flatten()
        return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)

    def _near_pixels(self, region: torch.Tensor, cls: int) -> torch.Tensor:
        """``[H, W]`` bool: the window pixels of class ``cls`` within ``region [M, M]`` (head resolution) grown by
        one cell (its 4-neighbours)."""
        cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=region.device)[None, None]
        grown = F.conv2d(region[None, None].float(), cross, padding=1)
        return (F.interpolate(grown, size=self.shape, mode="nearest")[0, 0] > 0) & (self.classes() == cls)

    def classes(self) -> torch.Tensor:
        """``[H, W]``: the most probable class of each window pixel (computed once)."""
        if self._classes is None:
            self._classes = self.probabilities().argmax(dim=0)
        return self._classes

    def regions(self, cls: int) -> torch.Tensor:
        """``[M, M]``: the connected regions of class ``cls`` in the head's map, at its own resolution
        (:func:`connected_regions`; found once per class, however many boxes and masks ask)."""
        if cls not in self._regions:
            self._regions[cls] = connected_regions(self.logits().argmax(dim=0) == cls)
        return self._regions[cls]

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        visual, sample = self.visual, self.sample
        detail = visual.mask_detail[sample : sample + 1] if visual.mask_detail is not None else None
        return visual.mask_features[sample : sample + 1], detail

    def pixel_features(self) -> torch.Tensor:
        """``[C, M, M]``: the decoder's query-free pixel features, which the class head reads."""
        if self._pixels is None:
            self._pixels = self.model.mask_decoder.pixel_features(*self._inputs())
        return self._pixels[0]

    def logits(self) -> torch.Tensor:
        """``[classes, M, M]``: the head's logits at its own resolution."""
        if self._logits is None:
            self._logits = self.model.mask_decoder.pixel_class_logits(*self._inputs())[0].float()
        return self._logits

    def fine_logits(self) -> torch.Tensor:
        """``[classes, S, S]``: the class refiner's logits (RSAClassRefiner, at ``class_refine_size``), or the head's
        own when the model has no refiner or the window's pixels are not known."""
        if self.model.class_refiner is None or self.image is None:
            return self.logits()
        rgb = self.window_rgb(self.model.config.class_refine_size)
        return self.model.refine_class_logits(self.logits()[None], self.pixel_features()[None], rgb)[0].float()

    def probabilities(self) -> torch.Tensor:
        """``[classes, H, W]`` class probabilities at the window's size (of :meth:`fine_logits`)."""
        if self._probabilities is None:
            resized = F.interpolate(self.fine_logits()[None], size=self.shape, mode="bilinear")[0]
            self._probabilities = torch.softmax(resized, dim=0)
        return self._probabilities


def region_box(
    logits: torch.Tensor, shape: tuple[int, int], threshold: float
) -> tuple[tuple[float, float, float, float], float] | None:
    """The box (window pixels x0, y0, x1, y1) and mean probability of the connected region around the most
    probable pixel of mask ``logits [M, M]``, among pixels above ``threshold``; None when there are none.

    The region is found at the logits' resolution (4-connected growth from the peak), then its extent
    is measured on the probabilities resized to the window ``shape`` (height, width), within the
    region grown by one cell (4-connected, so no other region joins), so the box has the window's precision."""
    probability = torch.sigmoid(logits.float())
    inside = probability > threshold
    if not inside.any():
        return None
    region = torch.zeros_like(inside)
    peak = int(torch.argmax(probability))
    region.view(-1)[peak] = True
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=logits.device)[None, None]
    while True:
        grown = (F.conv2d(region[None, None].float(), cross, padding=1)[0, 0] > 0) & inside
        if torch.equal(grown, region):
            break
        region = grown
    height, width = shape
    near = F.conv2d(region[None, None].float(), cross, padding=1)  # its edge cells, where bilinear values cross
    near = F.interpolate(near, size=(height, width), mode="nearest")[0, 0] > 0
    fine = torch.sigmoid(F.interpolate(logits[None, None].float(), size=(height, width), mode="bilinear")[0, 0])
    chosen = near & (fine > threshold)
    if not chosen.any():
        chosen = F.interpolate(region[None, None].float(), size=(height, width), mode="nearest")[0, 0] > 0
    rows = torch.nonzero(chosen.any(dim=1)).flatten()
    cols = torch.nonzero(chosen.any(dim=0)).flatten()
    box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
    return box, float(fine[chosen].mean())


#: The class of whatever no other class names (gardens, verges): not a land cover to tell.
UNNAMED_GROUND = "ground"


def land_cover(
    probabilities: torch.Tensor, class_names: list[str] | tuple[str, ...], least: float
) -> tuple[tuple[str, float], ...]:
    """What covers a window: ``(class name, share)`` of each class that is the most probable one on at least
    ``least`` of the pixels of ``probabilities [classes, H, W]``, the largest first (the unnamed ground left out)."""
    classes = probabilities.argmax(dim=0).flatten().cpu()
    shares = torch.bincount(classes, minlength=len(class_names)).double() / classes.numel()
    found = [(str(class_names[c]), float(shares[c])) for c in range(len(class_names)) if shares[c] >= least]
    return tuple(sorted(((n, round(s, 3)) for n, s in found if n != UNNAMED_GROUND), key=lambda cover: -cover[1]))
