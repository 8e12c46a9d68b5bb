"""DeltaVLM's bi-temporal difference module and its instruction-aware Q-Former, with the changed/unchanged head
(step 2 of modeling_rsa.py).
"""

from __future__ import annotations

import torch
from torch import nn

from rs_assistant.engine.models.rsa.configuration_rsa import RSAConfig
from rs_assistant.engine.models.rsa.layers import RSAFeedForward


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
