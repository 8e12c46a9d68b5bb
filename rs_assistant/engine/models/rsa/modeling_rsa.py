"""The RSA model: one vision-language model for caption, ground, segment, change and chat.

The whole forward pass, in order (sizes from configuration_rsa.RSAConfig):

1. **Vision encoder** (CLIP ViT, transformers ``CLIPVisionModel``): an image ``[B, 3, S, S]``
   becomes ``P = (S / patch)^2`` patch features (the CLS token is dropped). A bi-temporal pair
   ``[B, 2, 3, S, S]`` is encoded as 2B images.
2. **Difference module** (pairs only; DeltaVLM, Deng et al. 2025, "cross-semantic relation
   measuring"): the after-minus-before patch features attend to both images' features; a learned
   gate keeps the context that explains a real change and suppresses harmless differences
   (illumination, season, misregistration). Its pooled output (``change_pooling``: mean, max,
   or a learned attention over the patches) drives a changed/unchanged head (``change_logits``);
   or the head scores each patch ("dense") or each pixel of the mask decoder's pixel features of
   the difference ("pixel"), and the verdict is the highest score.
3. **Bridge** (RS-CapRet, Silva et al. 2024): a linear map (or LLaVA-1.5's two-layer MLP) from
   the vision width into the language model's embeddings, after folding each s x s block of
   patches into one token (``token_merge``; InternVL's pixel shuffle keeps every feature while
   the LM reads s^2 fewer tokens). Each ``<image>`` placeholder run in the prompt is replaced by
   its image's T = P / s^2 tokens (a pair: the before image's, then the after image's), each
   ``<delta>`` run by the T difference tokens (their own bridge). With ``delta_qformer_layers`` > 0
   the difference bridge reads instead the T outputs of DeltaVLM's instruction-aware Q-Former:
   T learned queries that read the last user instruction, then the difference features. With ``projector_norm`` both
   bridges end in a LayerNorm, so the visual tokens keep a fixed scale near the text embeddings'.
4. **Language model**: any transformers causal LM (Qwen2 in the shipped configs) reads the
   merged embeddings and writes text. Boxes are written as location tokens (SkyEyeGPT, Zhan et
   al. 2024; Florence-2): ``<loc_0>`` .. ``<loc_{N-1}>`` bins of each side of the square input.
5. **Mask decoder** (GeoPix, Ou et al. 2025, after LISA): the last hidden state that produces
   a ``[SEG]`` token (the position just before it) is projected into a query; the query and the
   patch features (the difference features for a pair) attend to each other in a small two-way
   transformer, optionally with GeoPix's class-wise learnable memory as extra context; the
   features are upsampled by transposed convolutions (x2 per step) and the mask is the dot
   product of each upsampled pixel with the query: ``[n, M, M]`` logits, M = 4 x the patch grid
   in the shipped configs (1/4 of a stride-16 input). With ``box_from_mask`` the hidden state
   that writes a box's first location token is a query too, trained on the boxed object's mask;
   the engine then reads each box off its decoded mask.

Losses (weights in the config): LM cross-entropy on the labelled tokens; per ``[SEG]``, binary
cross-entropy plus Dice against its target mask; per pair, binary cross-entropy of the
changed/unchanged head; with ``aux_class_loss_weight`` > 0 and ``class_targets`` given, the
cross-entropy of a linear per-patch land-cover head on the vision features against the majority
class of each patch (dense supervision, so the encoder learns the scene's layout from every sample);
with ``pixel_class_loss_weight`` > 0, the same at the mask decoder's resolution, from the pixel
features its queries read (single images only).

A batch holds either single images (``pixel_values`` 4-D) or pairs (5-D), not both.

GeoPix's memory is learned by gradient here (the paper also refreshes it from class-masked
features); the other parts follow their papers at the sizes the config gives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    CLIPVisionModel,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import ModelOutput

from rs_assistant.engine.models.rsa.configuration_rsa import RSAConfig
from rs_assistant.engine.models.rsa.regions import num_region_features

log = logging.getLogger(__name__)


@dataclass
class RSAVisualFeatures(ModelOutput):
    """What the images contribute, computed once per request and reused by generation and masks.

    ``tokens``: ``[B, T, D_text]`` embeddings for the placeholders, in prompt order (a pair:
    before, after, difference: 3 x num_image_tokens); ``mask_features``: ``[B, P, D_vision]``, what the mask
    decoder reads (the patch features, or the difference features of a pair);
    ``change_logits``: ``[B]``, pairs only.
    """

    tokens: torch.Tensor | None = None
    mask_features: torch.Tensor | None = None
    change_logits: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None  # [N, P, num_aux_classes] per image (pairs: 2B), with the aux head
    mask_detail: torch.Tensor | None = (
        None  # [B, C, M, M] stem features at 1/4 (pairs: after - before), with mask_detail
    )
    change_patch_logits: torch.Tensor | None = None  # [B, P], pairs with change_pooling "dense"
    change_pixel_logits: torch.Tensor | None = None  # [B, M, M], pairs with change_pooling "pixel"
    delta_features: torch.Tensor | None = None  # [B, P, D_vision] pairs with the Q-Former: read in embed()


@dataclass
class RSAOutput(ModelOutput):
    """``mask_logits``: ``[n, M, M]``, one per ``[SEG]`` token in ``input_ids`` (batch-major order)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask_logits: torch.Tensor | None = None
    change_logits: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    mask_loss: torch.Tensor | None = None
    change_loss: torch.Tensor | None = None
    aux_class_loss: torch.Tensor | None = None
    change_dense_loss: torch.Tensor | None = None
    pixel_class_loss: torch.Tensor | None = None


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


class RSAFeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class RSADifferenceLayer(nn.Module):
    """One DeltaVLM cross-semantic step: the difference attends to both dates, gated, then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.gate = nn.Linear(2 * dim, dim)
        self.mlp = RSAFeedForward(dim, 4 * dim)

    def forward(self, delta: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = self.norm_context(context)
        related, _ = self.attention(self.norm_query(delta), context, context, need_weights=False)
        gate = torch.sigmoid(self.gate(torch.cat([delta, related], dim=-1)))
        delta = delta + gate * related
        return delta + self.mlp(delta)


class RSADifferenceModule(nn.Module):
    """DeltaVLM's cross-semantic difference: ``after - before`` related to both images, plus a change head."""

    def __init__(self, dim: int, heads: int, layers: int, pooling: str = "mean"):
        super().__init__()
        self.layers = nn.ModuleList(RSADifferenceLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.pooling = pooling
        # "attention": a learned score per patch, softmax over the patches (a small change can dominate).
        self.pool_score = nn.Linear(dim, 1) if pooling == "attention" else None
        self.change_head = nn.Linear(dim, 1) if pooling != "pixel" else None  # "pixel": the mask decoder's head

    def forward(
        self, before: torch.Tensor, after: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``[B, P, D]`` twice -> difference features ``[B, P, D]``, changed logits ``[B]`` and, with
        ``dense`` pooling, each patch's changed logit ``[B, P]`` (the verdict is their maximum). With
        ``pixel`` pooling the logits are None: the mask decoder scores the pixels."""
        context = torch.cat([before, after], dim=1)
        delta = after - before
        for layer in self.layers:
            delta = layer(delta, context)
        delta = self.norm(delta)
        if self.pooling == "pixel":
            return delta, None, None
        if self.pooling == "dense":
            patch_logits = self.change_head(delta).squeeze(-1)
            return delta, patch_logits.max(dim=1).values, patch_logits
        return delta, self.change_head(self.pool(delta)).squeeze(-1), None

    def pool(self, delta: torch.Tensor) -> torch.Tensor:
        """``[B, P, D]`` -> ``[B, D]`` by the config's ``change_pooling``."""
        if self.pooling == "max":
            return delta.max(dim=1).values
        if self.pooling == "attention":
            weights = torch.softmax(self.pool_score(delta).squeeze(-1), dim=1)
            return torch.einsum("bp,bpd->bd", weights, delta)
        return delta.mean(dim=1)


class RSAQFormerLayer(nn.Module):
    """One Q-Former step: the queries attend to themselves and the instruction, then to the difference features."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(dim)
        self.cross_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = RSAFeedForward(dim, 4 * dim)

    def forward(
        self, queries: torch.Tensor, instruction: torch.Tensor, padding: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        q = self.self_norm(queries)
        both = torch.cat([q, instruction], dim=1)
        keep = torch.cat(
            [torch.zeros(padding.shape[0], q.shape[1], dtype=torch.bool, device=padding.device), padding], 1
        )
        read, _ = self.self_attention(q, both, both, key_padding_mask=keep, need_weights=False)
        queries = queries + read
        context = self.context_norm(features)
        read, _ = self.cross_attention(self.cross_norm(queries), context, context, need_weights=False)
        queries = queries + read
        return queries + self.mlp(queries)


class RSAInstructionQFormer(nn.Module):
    """DeltaVLM's instruction-aware Q-Former (InstructBLIP's, small): instruction + difference -> T tokens.

    The instruction's token embeddings are projected to the vision width; the output has the
    merged width the difference bridge reads (``token_merge``^2 x the vision width).
    """

    def __init__(self, config: RSAConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.queries = nn.Parameter(torch.empty(config.num_image_tokens, dim))
        self.instruction_proj = nn.Linear(config.text_config.hidden_size, dim)
        self.layers = nn.ModuleList(
            RSAQFormerLayer(dim, config.delta_heads) for _ in range(config.delta_qformer_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim * config.token_merge**2)

    def forward(self, instruction: torch.Tensor, padding: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``instruction [B, L, D_text]`` (``padding [B, L]`` True where absent), ``features [B, P, D]`` -> ``[B, T,
        s*s*D]``."""
        instruction = self.instruction_proj(instruction.to(features.dtype))
        queries = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        for layer in self.layers:
            queries = layer(queries, instruction, padding, features)
        return self.out(self.norm(queries))


class RSAClassMemory(nn.Module):
    """GeoPix's class-wise learnable memory: slots per land-cover class that features read from.

    The features attend to ``classes x tokens`` learned slots and add what they read (residual),
    so every mask query sees class-wise geo-context beyond its own image.
    """

    def __init__(self, dim: int, heads: int, classes: int, tokens: int):
        super().__init__()
        self.memory = nn.Parameter(torch.empty(classes * tokens, dim))
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        memory = self.memory.unsqueeze(0).expand(features.shape[0], -1, -1)
        read, _ = self.attention(self.norm(features), memory, memory, need_weights=False)
        return features + read


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


class RSATwoWayLayer(nn.Module):
    """SAM-style two-way attention between one mask query and the patch features."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.query_to_image = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.query_mlp = RSAFeedForward(dim, 4 * dim)
        self.image_norm = nn.LayerNorm(dim)
        self.image_to_query = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(
        self, query: torch.Tensor, image: torch.Tensor, position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image + position
        read, _ = self.query_to_image(self.query_norm(query), keys, image, need_weights=False)
        query = query + read
        query = query + self.query_mlp(query)
        read, _ = self.image_to_query(self.image_norm(image) + position, query, query, need_weights=False)
        return query, image + read


class RSAChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of ``[n, C, H, W]`` features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RSAMaskDecoder(nn.Module):
    """GeoPix's pixel decoder: a ``[SEG]`` hidden state and patch features -> mask logits."""

    def __init__(self, config: RSAConfig):
        super().__init__()
        dim = config.mask_decoder_dim
        self.grid = config.grid_size
        self.query_proj = nn.Sequential(nn.Linear(config.text_config.hidden_size, dim), nn.GELU(), nn.Linear(dim, dim))
        self.feature_proj = nn.Linear(config.vision_config.hidden_size, dim)
        self.position = nn.Parameter(torch.empty(1, self.grid * self.grid, dim))
        self.memory = (
            RSAClassMemory(dim, config.mask_decoder_heads, config.class_memory_classes, config.class_memory_tokens)
            if config.class_memory_classes > 0
            else None
        )
        self.layers = nn.ModuleList(
            RSATwoWayLayer(dim, config.mask_decoder_heads) for _ in range(config.mask_decoder_layers)
        )
        upsample: list[nn.Module] = []
        channels = dim
        for _ in range(config.mask_upsample_steps):
            upsample += [nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2), nn.GELU()]
            channels //= 2
        self.upsample = nn.Sequential(*upsample)
        self.detail_proj = (
            nn.Conv2d(config.stem_detail_channels, channels, kernel_size=1) if config.mask_detail else None
        )
        self.hyper = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, channels))
        self.class_pixels = (
            nn.Sequential(RSAChannelNorm(channels), nn.Conv2d(channels, config.num_aux_classes, kernel_size=1))
            if config.pixel_class_loss_weight > 0
            else None
        )
        self.change_pixels = (
            nn.Sequential(RSAChannelNorm(channels), nn.Conv2d(channels, 1, kernel_size=1))
            if config.change_pooling == "pixel"
            else None
        )

    def forward(
        self, seg_states: torch.Tensor, features: torch.Tensor, detail: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``seg_states [n, D_text]`` with each one's ``features [n, P, D_vision]`` (and ``detail [n, C, M, M]``
        with ``mask_detail``) -> logits ``[n, M, M]``."""
        query = self.query_proj(seg_states).unsqueeze(1)
        image = self._image(features)
        for layer in self.layers:
            query, image = layer(query, image, self.position)
        return torch.einsum("nc,nchw->nhw", self.hyper(query.squeeze(1)), self._pixels(image, detail))

    def pixel_class_logits(self, features: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        """The per-pixel land-cover head (``pixel_class_loss_weight`` > 0): ``features [n, P, D_vision]``
        -> ``[n, classes, M, M]`` from the pixel features every query reads, before any query has."""
        return self.classify_pixels(self.pixel_features(features, detail))

    def pixel_features(self, features: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        """The query-free pixel features ``[n, C, M, M]`` that the masks, the class head and the region selector
        read."""
        return self._pixels(self._image(features), detail)

    def classify_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel features ``[n, C, M, M]`` -> class logits ``[n, classes, M, M]``."""
        if self.class_pixels is None:
            raise ValueError("this model has no per-pixel class head (pixel_class_loss_weight is 0)")
        return self.class_pixels(pixels)

    def pixel_change_logits(self, delta: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        """The per-pixel change head (``change_pooling = "pixel"``): a pair's difference features
        ``[B, P, D_vision]`` (and detail difference) -> changed logits ``[B, M, M]``."""
        if self.change_pixels is None:
            raise ValueError("this model has no per-pixel change head (change_pooling is not 'pixel')")
        return self.change_pixels(self._pixels(self._image(delta), detail)).squeeze(1)

    def _image(self, features: torch.Tensor) -> torch.Tensor:
        image = self.feature_proj(features)
        return self.memory(image) if self.memory is not None else image

    def _pixels(self, image: torch.Tensor, detail: torch.Tensor | None) -> torch.Tensor:
        """Patch tokens ``[n, P, dim]`` -> pixel features ``[n, C, M, M]`` (upsampled, plus the stem's detail)."""
        n, _, dim = image.shape
        pixels = self.upsample(image.transpose(1, 2).reshape(n, dim, self.grid, self.grid))
        if self.detail_proj is not None and detail is not None:
            pixels = pixels + self.detail_proj(detail)
        return pixels


class RSAInstruction(NamedTuple):
    """The user's turn as the region selector reads it: the mean of the LM's last hidden states over
    it (``state [D_text]``) and its tokens' input embeddings (``words [L, D_text]``)."""

    state: torch.Tensor
    words: torch.Tensor


class RSARegionSelector(nn.Module):
    """Scores candidate regions against a referring expression (MAttNet's region scoring).

    ``query``: the hidden state that writes the answer's box or ``[SEG]`` with the mean hidden
    state of the user's turn (``[2 * D_text]``); ``words``: the turn's token embeddings (``[L, D_text]``,
    the LM's own, frozen), projected and max-pooled so that one word ("easternmost", "left of")
    is not averaged away; ``features``: one row per candidate region (regions.region_features).
    Query and features are standardised by statistics of the training set, kept as buffers so that
    they travel with the weights. The score of a region is an MLP of its embedding times the
    query's and of its embedding alone (a prior: a speck of noise is rarely meant).
    """

    def __init__(self, config: RSAConfig):
        super().__init__()
        dim = config.region_selector_dim
        features = num_region_features(config.mask_decoder_dim >> config.mask_upsample_steps, config.num_aux_classes)
        query = 2 * config.text_config.hidden_size
        for name, size, value in (
            ("feature_mean", features, 0.0),
            ("feature_std", features, 1.0),
            ("query_mean", query, 0.0),
            ("query_std", query, 1.0),
        ):
            self.register_buffer(name, torch.full((size,), value))
        self.features = nn.Sequential(nn.Linear(features, dim), nn.GELU(), nn.Linear(dim, dim))
        self.words = nn.Linear(config.text_config.hidden_size, dim)
        self.query = nn.Sequential(nn.Linear(query + dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.score = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def set_statistics(self, features: torch.Tensor, queries: torch.Tensor) -> None:
        """Standardise by the mean and spread of training ``features [N, F]`` and ``queries [n, Q]``."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp(min=1e-3))
        self.query_mean.copy_(queries.mean(0))
        self.query_std.copy_(queries.std(0).clamp(min=1e-3))

    def forward(self, query: torch.Tensor, features: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """``query [Q]``, ``features [K, F]`` and ``words [L, D_text]`` -> scores ``[K]`` (softmax over the
        candidates)."""
        dtype = self.feature_mean.dtype
        regions = self.features((features.to(dtype) - self.feature_mean) / self.feature_std)
        said = (
            self.words(words.to(dtype)).amax(dim=0)
            if len(words)
            else self.words.bias.new_zeros(self.words.out_features)
        )
        asked = self.query(torch.cat([(query.to(dtype) - self.query_mean) / self.query_std, said]))
        return self.score(torch.cat([regions * asked[None], regions], dim=-1))[:, 0]


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


class RSAPreTrainedModel(PreTrainedModel):
    config: RSAConfig
    config_class = RSAConfig
    base_model_prefix = "rsa"
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "RSAMaskDecoder", "RSADifferenceModule"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RSAClassMemory):
            init.normal_(module.memory, std=self.config.initializer_range)
        elif isinstance(module, RSAInstructionQFormer):
            init.normal_(module.queries, std=self.config.initializer_range)
        elif isinstance(module, RSAMaskDecoder):
            init.normal_(module.position, std=self.config.initializer_range)
        elif isinstance(module, RSAVisualPosition):
            init.constant_(module.scale, 0.5)
        elif isinstance(module, RSAClassRefiner):
            init.zeros_(module.correction.weight)
            init.zeros_(module.correction.bias)
        elif isinstance(module, RSARegionSelector):
            for name in ("feature_mean", "query_mean"):
                init.zeros_(getattr(module, name))
            for name in ("feature_std", "query_std"):
                init.ones_(getattr(module, name))


class RSAForConditionalGeneration(RSAPreTrainedModel):
    """Vision encoder -> bridge -> causal LM, with the [SEG] mask decoder and the difference module."""

    def __init__(self, config: RSAConfig):
        super().__init__(config)
        vision_dim, text_dim = config.vision_config.hidden_size, config.text_config.hidden_size
        merged_dim = vision_dim * config.token_merge**2
        self.vision_tower = CLIPVisionModel(config.vision_config)
        if config.vision_stem == "conv":
            embeddings = self.vision_tower.embeddings
            embeddings.patch_embedding = RSAConvStem(config.vision_config.hidden_size, config.vision_config.patch_size)
        self.projector = RSAProjector(merged_dim, text_dim, config.projector_type, config.projector_norm)
        self.difference = RSADifferenceModule(
            vision_dim, config.delta_heads, config.delta_layers, config.change_pooling
        )
        self.delta_projector = RSAProjector(merged_dim, text_dim, config.projector_type, config.projector_norm)
        self.delta_qformer = RSAInstructionQFormer(config) if config.delta_qformer_layers > 0 else None
        self.aux_class_head = nn.Linear(vision_dim, config.num_aux_classes) if config.num_aux_classes else None
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.mask_decoder = RSAMaskDecoder(config)
        self.visual_position = RSAVisualPosition(config) if config.visual_position_encoding else None
        self.region_selector = RSARegionSelector(config) if config.region_selector_dim > 0 else None
        self.class_refiner = RSAClassRefiner(config) if config.class_refine_channels > 0 else None
        self.post_init()
        self._init_location_embeddings()
        self.apply_freezing()

    def _init_location_embeddings(self) -> None:
        """With ``visual_position_encoding``, ``<loc_i>`` starts as bin i's code in both halves of the
        channels (at the embeddings' init scale), the code the visual tokens carry for their cells."""
        first, bins = self.config.loc_token_id, self.config.num_location_bins
        weight = self.get_input_embeddings().weight
        if self.visual_position is None or first < 0 or first + bins > weight.shape[0] or weight.is_meta:
            return
        centres = (torch.arange(bins, dtype=torch.float32) + 0.5) / bins
        code = xy_code(centres, centres, weight.shape[1], bins)
        with torch.no_grad():
            weight[first : first + bins] = (code * self.config.initializer_range).to(weight.dtype)

    # --- parts ----------------------------------------------------------------------------------

    def apply_freezing(self) -> None:
        """``freeze_vision`` / ``freeze_llm`` (RS-CapRet): those parts stop requiring gradients.

        With ``train_new_embeddings`` a frozen LLM keeps its input and output embeddings
        trainable, so that the added tokens can be learned.
        """
        self.vision_tower.requires_grad_(not self.config.freeze_vision)
        self.language_model.requires_grad_(not self.config.freeze_llm)
        if self.config.freeze_llm and self.config.train_new_embeddings:
            self.language_model.get_input_embeddings().requires_grad_(True)
            self.language_model.get_output_embeddings().requires_grad_(True)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, then the config's freezing (loading replaces the parameters)."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_freezing()
        return loaded

    @classmethod
    def from_pretrained_parts(cls, config: RSAConfig) -> RSAForConditionalGeneration:
        """A new model whose vision encoder and LM come from ``config``'s local pretrained folders.

        The folders' architectures must match ``vision_config`` / ``text_config`` (large.json gives
        CLIP ViT-L/14-336 and Qwen2.5-1.5B); the LM's embeddings grow to ``text_config.vocab_size``
        when the tokenizer added tokens. Everything else starts from its initialisation.
        """
        model = cls(config)
        if config.vision_pretrained_path:
            vision = CLIPVisionModel.from_pretrained(config.vision_pretrained_path, local_files_only=True)
            model.vision_tower.load_state_dict(vision.state_dict())
            log.info("vision encoder from %s", config.vision_pretrained_path)
        if config.text_pretrained_path:
            text = AutoModelForCausalLM.from_pretrained(config.text_pretrained_path, local_files_only=True)
            if text.get_input_embeddings().num_embeddings < config.text_config.vocab_size:
                text.resize_token_embeddings(config.text_config.vocab_size)
            model.language_model.load_state_dict(text.state_dict())
            log.info("language model from %s", config.text_pretrained_path)
        model.apply_freezing()
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # --- images ---------------------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor) -> RSAVisualFeatures:
        """Steps 1-3: ``[B, 3, S, S]`` or ``[B, 2, 3, S, S]`` -> placeholder tokens and mask features."""
        pair = pixel_values.dim() == 5
        images = pixel_values.flatten(0, 1) if pair else pixel_values
        images = images.to(dtype=self.vision_tower.dtype)
        details: list[torch.Tensor] = []
        hook = None
        if self.config.mask_detail:
            stem = self.vision_tower.embeddings.patch_embedding
            hook = stem.early.register_forward_hook(lambda _m, _i, output: details.append(output))
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
                layer = self.config.vision_feature_layer
                out = self.vision_tower(pixel_values=images, output_hidden_states=layer != -1)
                patches = (out.last_hidden_state if layer == -1 else out.hidden_states[layer])[:, 1:]
        finally:
            if hook is not None:
                hook.remove()
        detail = details[0] if details else None
        tokens = self.projector(self._merge(patches))
        class_logits = self.aux_class_head(patches) if self.aux_class_head is not None else None
        if not pair:
            return RSAVisualFeatures(
                tokens=tokens, mask_features=patches, class_logits=class_logits, mask_detail=detail
            )
        before, after = patches.unflatten(0, (-1, 2)).unbind(1)
        delta, change_logits, change_patch_logits = self.difference(before, after)
        if self.delta_qformer is None:
            delta_tokens = self.delta_projector(self._merge(delta))
        else:  # filled in by embed(), which sees the instruction
            delta_tokens = tokens.new_zeros(tokens.shape[0] // 2, tokens.shape[1], tokens.shape[2])
        tokens = torch.cat([tokens.unflatten(0, (-1, 2)).flatten(1, 2), delta_tokens], dim=1)
        if detail is not None:
            detail_before, detail_after = detail.unflatten(0, (-1, 2)).unbind(1)
            detail = detail_after - detail_before
        change_pixel_logits = None
        if self.config.change_pooling == "pixel":
            change_pixel_logits = self.mask_decoder.pixel_change_logits(delta, detail)
            change_logits = change_pixel_logits.flatten(1).max(dim=1).values
        return RSAVisualFeatures(
            tokens=tokens,
            mask_features=delta,
            change_logits=change_logits,
            class_logits=class_logits,
            mask_detail=detail,
            change_patch_logits=change_patch_logits,
            change_pixel_logits=change_pixel_logits,
            delta_features=delta if self.delta_qformer is not None else None,
        )

    def _merge(self, patches: torch.Tensor) -> torch.Tensor:
        """``[N, g*g, D]`` -> ``[N, (g/s)^2, s*s*D]``: each s x s block of patches as one token, row-major."""
        s, g = self.config.token_merge, self.config.grid_size
        if s == 1:
            return patches
        n, _, dim = patches.shape
        blocks = patches.reshape(n, g // s, s, g // s, s, dim).permute(0, 1, 3, 2, 4, 5)
        return blocks.reshape(n, (g // s) ** 2, s * s * dim)

    def embed(self, input_ids: torch.Tensor, visual: RSAVisualFeatures) -> torch.Tensor:
        """The prompt's embeddings with the ``<image>`` / ``<delta>`` placeholders replaced by ``visual.tokens``."""
        embeds = self.get_input_embeddings()(input_ids)
        slots = (input_ids == self.config.image_token_id) | (input_ids == self.config.delta_token_id)
        want = visual.tokens.shape[1]
        found = slots.sum(dim=1)
        if (found != want).any():
            raise ValueError(
                f"each prompt needs {want} image placeholder tokens for its image(s), found {found.tolist()}; "
                "format prompts with RSAProcessor"
            )
        tokens = visual.tokens
        if self.delta_qformer is not None and visual.delta_features is not None:
            instruction, padding = self._instruction(input_ids, embeds)
            delta = self.delta_projector(self.delta_qformer(instruction, padding, visual.delta_features))
            tokens = torch.cat([tokens[:, : -delta.shape[1]], delta.to(tokens.dtype)], dim=1)
        if self.visual_position is not None:
            tokens = self.visual_position(tokens)
        return embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.dtype))

    def _instruction_spans(self, input_ids: torch.Tensor) -> list[tuple[int, int]]:
        """Each prompt's last user turn: from after its last ``<|user|>`` to the next ``<|assistant|>`` (or the end)."""
        spans = []
        for row in input_ids.tolist():
            users = [i for i, t in enumerate(row) if t == self.config.user_token_id]
            start = users[-1] + 1 if users else len(row)
            end = next((i for i in range(start, len(row)) if row[i] == self.config.assistant_token_id), len(row))
            spans.append((start, max(end, start + 1) if start < len(row) else start))
        return spans

    def instruction_states(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The mean of ``hidden [B, L, D]`` (the LM's last hidden states) over each prompt's last user turn: ``[B,
        D]``."""
        rows = [
            hidden[b, s:e].mean(dim=0) if e > s else hidden.new_zeros(hidden.shape[-1])
            for b, (s, e) in enumerate(self._instruction_spans(input_ids))
        ]
        return torch.stack(rows)

    def instructions(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> list[RSAInstruction]:
        """Each prompt's last user turn as the region selector reads it, from ``hidden [B, L, D]`` (the LM's
        last hidden states over ``input_ids``)."""
        embeddings = self.language_model.get_input_embeddings()
        states = self.instruction_states(input_ids, hidden)
        return [
            RSAInstruction(states[b], embeddings(input_ids[b, s:e]))
            for b, (s, e) in enumerate(self._instruction_spans(input_ids))
        ]

    def score_regions(self, state: torch.Tensor, instruction: RSAInstruction, features: torch.Tensor) -> torch.Tensor:
        """The region selector's scores ``[K]`` of candidate ``features [K, F]`` for the answer position whose
        last hidden state is ``state [D]``, in the prompt whose :meth:`instructions` item is ``instruction``."""
        if self.region_selector is None:
            raise ValueError("this model has no region selector (region_selector_dim is 0)")
        return self.region_selector(
            torch.cat([state, instruction.state]).float(), features.float(), instruction.words.float()
        )

    def refine_class_logits(self, logits: torch.Tensor, pixels: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """The class refiner's logits ``[n, K, S, S]`` from the class head's ``logits [n, K, M, M]``, the decoder's
        pixel features ``[n, C, M, M]`` and the image ``rgb [n, 3, S, S]`` in 0..1 (RSAClassRefiner)."""
        if self.class_refiner is None:
            raise ValueError("this model has no class refiner (class_refine_channels is 0)")
        return self.class_refiner(logits, pixels, rgb)

    def _instruction(self, input_ids: torch.Tensor, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings of each prompt's last user turn (between its last ``<|user|>`` and the next
        ``<|assistant|>``, or the end), padded: ``[B, L, D_text]`` and ``padding [B, L]`` (True where absent)."""
        spans = self._instruction_spans(input_ids)
        length = max(max(e - s for s, e in spans), 1)
        out = embeds.new_zeros(len(spans), length, embeds.shape[-1])
        padding = torch.ones(len(spans), length, dtype=torch.bool, device=embeds.device)
        for b, (s, e) in enumerate(spans):
            out[b, : e - s] = embeds[b, s:e]
            padding[b, : e - s] = False
        padding[:, 0] = False  # an empty instruction attends to a zero vector rather than to nothing
        return out, padding

    # --- masks ----------------------------------------------------------------------------------

    def predict_masks(
        self, seg_states: torch.Tensor, visual: RSAVisualFeatures, sample_index: torch.Tensor
    ) -> torch.Tensor:
        """Step 5: ``[SEG]`` hidden states ``[n, D_text]`` of samples ``sample_index [n]`` -> ``[n, M, M]`` logits.

        The states are the LM's last hidden states at the positions that produced each ``[SEG]``
        (see :meth:`generated_seg_states` for a generated sequence).
        """
        features = visual.mask_features[sample_index]
        detail = visual.mask_detail[sample_index] if visual.mask_detail is not None else None
        return self.mask_decoder(seg_states.to(features.dtype), features, detail)

    def box_queries(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` True at each position whose next token is the first location token of a box
        (a ``<loc_i>`` run starts there): the box's mask query under ``box_from_mask``."""
        first = self.config.loc_token_id
        if first < 0:
            raise ValueError("box_from_mask needs the config's loc_token_id: call config.bind_tokenizer(tokenizer)")
        is_loc = (input_ids >= first) & (input_ids < first + self.config.num_location_bins)
        found = torch.zeros_like(is_loc)
        found[:, :-1] = is_loc[:, 1:] & ~is_loc[:, :-1]
        return found

    def generated_seg_states(
        self, output: GenerateDecoderOnlyOutput
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The hidden states that produced each generated ``[SEG]`` (needs ``output_hidden_states=True``).

        Returns ``(states [n, D_text], sample_index [n], step [n])`` in batch-major order.
        """
        found = (output.sequences == self.config.seg_token_id).nonzero()
        states = [output.hidden_states[int(step)][-1][int(b), -1] for b, step in found]
        if not states:
            empty = torch.zeros(0, dtype=torch.long, device=output.sequences.device)
            return torch.zeros(0, self.config.text_config.hidden_size, device=output.sequences.device), empty, empty
        return torch.stack(states), found[:, 0], found[:, 1]

    # --- forward --------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        seg_targets: torch.Tensor | Sequence[torch.Tensor] | None = None,
        change_labels: torch.Tensor | None = None,
        class_targets: torch.Tensor | None = None,
        change_targets: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> RSAOutput:
        """The training pass.

        ``labels``: ``input_ids`` with -100 where no loss is wanted (RSAProcessor builds them).
        ``seg_targets``: the target masks of the ``[SEG]`` tokens, at any resolution: a
        ``[B, H, W]`` tensor (one mask per sample; samples without ``[SEG]`` are skipped) or a
        list of ``[n_b, H, W]`` tensors (the k-th ``[SEG]`` of sample b gets the k-th mask). With
        ``box_from_mask`` each box of an answer takes a mask too, in answer order with the ``[SEG]``s.
        ``change_labels``: ``[B]`` 1 for changed, 0 for unchanged pairs.
        ``class_targets``: land-cover class maps ``[B, H, W]`` (pairs: ``[B, 2, H, W]``) for the
        auxiliary per-patch class head and the per-pixel one; used only when ``aux_class_loss_weight``
        or ``pixel_class_loss_weight`` > 0.
        ``change_targets``: pairs' change masks ``[B, H, W]`` (all zero for an unchanged pair) for the
        dense change head; used only when ``change_dense_loss_weight`` > 0.
        """
        visual = self.encode_images(pixel_values)
        out = self.language_model(
            inputs_embeds=self.embed(input_ids, visual),
            attention_mask=attention_mask,
            output_hidden_states=True,
            use_cache=False,
            **kwargs,
        )
        # GeoPix/LISA: the hidden state that predicts [SEG] is its query (and, with box_from_mask, the
        # one that predicts a box's first location token); the k-th query of a sample gets its k-th mask.
        queries = torch.zeros_like(input_ids, dtype=torch.bool)
        queries[:, :-1] = input_ids[:, 1:] == self.config.seg_token_id
        if self.config.box_from_mask:
            queries |= self.box_queries(input_ids)
        sample_index = queries.nonzero()[:, 0]
        mask_logits = None
        if sample_index.numel():
            mask_logits = self.predict_masks(out.hidden_states[-1][queries], visual, sample_index)

        terms: list[torch.Tensor] = []
        lm_loss = mask_loss = change_loss = aux_class_loss = change_dense_loss = pixel_class_loss = None
        if labels is not None:
            logits = out.logits[:, :-1].float()
            sigma, first = self.config.location_label_sigma, self.config.loc_token_id
            if sigma > 0 and first >= 0:
                lm_loss = _soft_location_loss(logits, labels[:, 1:], first, self.config.num_location_bins, sigma)
            else:
                lm_loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
                )
            terms.append(self.config.lm_loss_weight * lm_loss)
        if seg_targets is not None and mask_logits is not None:
            targets = _paired_targets(seg_targets, sample_index, mask_logits.shape[-2:])
            mask_loss = self.config.mask_bce_weight * F.binary_cross_entropy_with_logits(
                mask_logits.float(), targets
            ) + self.config.mask_dice_weight * _dice_loss(mask_logits.float(), targets)
            terms.append(mask_loss)
        if change_labels is not None:
            if visual.change_logits is None:
                raise ValueError("change_labels need bi-temporal pixel_values [B, 2, 3, S, S]")
            change_loss = F.binary_cross_entropy_with_logits(visual.change_logits.float(), change_labels.float())
            terms.append(self.config.change_loss_weight * change_loss)
        dense = visual.change_pixel_logits if visual.change_pixel_logits is not None else visual.change_patch_logits
        if change_targets is not None and self.config.change_dense_loss_weight > 0 and dense is not None:
            # the fraction of each patch (dense) or decoder pixel (pixel) that changed
            side = dense.shape[-1] if dense.dim() == 3 else self.config.grid_size
            fraction = F.adaptive_avg_pool2d(change_targets.float().unsqueeze(1), side).squeeze(1)
            change_dense_loss = F.binary_cross_entropy_with_logits(dense.float(), fraction.reshape(dense.shape))
            terms.append(self.config.change_dense_loss_weight * change_dense_loss)
        if class_targets is not None and self.config.aux_class_loss_weight > 0 and visual.class_logits is not None:
            targets = _patch_classes(class_targets, self.config.grid_size, self.config.num_aux_classes)
            aux_class_loss = F.cross_entropy(visual.class_logits.float().flatten(0, 1), targets.flatten())
            terms.append(self.config.aux_class_loss_weight * aux_class_loss)
        if class_targets is not None and self.config.pixel_class_loss_weight > 0 and visual.change_logits is None:
            # single images only: a pair's mask features are its difference features
            logits = self.mask_decoder.pixel_class_logits(visual.mask_features, visual.mask_detail)
            size = logits.shape[-1]
            targets = _patch_classes(class_targets, size, self.config.num_aux_classes).view(-1, size, size)
            pixel_class_loss = F.cross_entropy(
                logits.float(),
                targets,
                weight=_class_balance(targets, logits.shape[1], self.config.pixel_class_balance),
            )
            terms.append(self.config.pixel_class_loss_weight * pixel_class_loss)
        return RSAOutput(
            loss=torch.stack(terms).sum() if terms else None,
            logits=out.logits,
            mask_logits=mask_logits,
            change_logits=visual.change_logits,
            lm_loss=lm_loss,
            mask_loss=mask_loss,
            change_loss=change_loss,
            aux_class_loss=aux_class_loss,
            change_dense_loss=change_dense_loss,
            pixel_class_loss=pixel_class_loss,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        visual: RSAVisualFeatures | None = None,
        **kwargs: Any,
    ) -> GenerateDecoderOnlyOutput | torch.Tensor:
        """Text after the image prefix and the prompt: the LM's ``generate`` on the merged embeddings.

        Give ``pixel_values``, or ``visual`` from :meth:`encode_images` to reuse it for
        :meth:`predict_masks`. The returned sequences hold only the new tokens; every
        ``generate`` keyword (``max_new_tokens``, ``stopping_criteria``,
        ``return_dict_in_generate``, ``output_hidden_states`` ...) passes through.
        """
        if visual is None:
            if pixel_values is None:
                raise ValueError("generate needs pixel_values or visual features")
            visual = self.encode_images(pixel_values)
        kwargs.setdefault("eos_token_id", self.config.text_config.eos_token_id)
        kwargs.setdefault("pad_token_id", self.config.text_config.pad_token_id)
        return self.language_model.generate(
            inputs_embeds=self.embed(input_ids, visual), attention_mask=attention_mask, **kwargs
        )


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


AutoConfig.register("rsa", RSAConfig, exist_ok=True)
AutoModelForImageTextToText.register(RSAConfig, RSAForConditionalGeneration, exist_ok=True)

__all__ = ["RSAForConditionalGeneration", "RSAOutput", "RSAPreTrainedModel", "RSAVisualFeatures"]
