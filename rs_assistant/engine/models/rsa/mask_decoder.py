"""GeoPix's mask decoder: a ``[SEG]`` hidden state and the patch features -> mask logits, with its per-pixel
class and change heads and the class-wise memory (step 5 of modeling_rsa.py).
"""

from __future__ import annotations

import torch
from torch import nn

from rs_assistant.engine.models.rsa.configuration_rsa import RSAConfig
from rs_assistant.engine.models.rsa.layers import RSAChannelNorm, RSAFeedForward


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
