"""The region selector: scores candidate regions of the class map against a referring expression (MAttNet)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from rs_assistant.engine.models.rsa.configuration_rsa import RSAConfig
from rs_assistant.engine.models.rsa.regions import num_region_features


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
