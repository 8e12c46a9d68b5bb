"""RS-MoE: the whole forward pass.

1. **Shared vision encoder and bridge**: the CLIP vision transformer's patch tokens (the class
   token dropped) through a two-layer MLP into the experts' input width: N image tokens.
2. **Instruction router** (:class:`InstructionRouter`): a small transformer reads, together, K x P
   learned sub-task queries, one routing token per expert, the N image tokens and the instruction's
   token embeddings (from the experts' shared, frozen input embeddings). The outputs of expert k's P
   queries are the *sub-task prompt* it writes for expert k (P soft-prompt vectors: "describe the
   theme", "list the objects", "relate them" as the paper's experts specialise); the routing tokens
   give the routing weights ``w = softmax(logits)`` over the experts.
3. **Experts**: K lightweight causal LMs of one config. Expert k reads
   ``[prompt_k] [image tokens] [dialogue text]`` and produces the answer.
4. **Loss**: stage 1, the mixture likelihood of the answer, ``-log sum_k w_k p_k(answer)`` (each ``p_k``
   the product of expert k's token probabilities), per answer token; stage 2 (router frozen), the
   weighted NLL of the router's top-k experts only (sparse: an expert runs on the samples routed to
   it, the ones it will answer at inference); plus ``balance_weight`` x the Switch-style balance term
   ``K * sum_k mean(w_k)^2`` so that no expert is left unused.
5. **Answer**: ``compose = "top1"``: the expert the router weighs most generates; ``"concat"``: the
   ``top_k`` most weighted experts generate and their answers are joined in expert order.

Two-stage training (training/recipes/moe): stage 1 trains the router and the bridge with the experts
frozen; stage 2 freezes the router (and, by default, the bridge) and fine-tunes each expert with its
own LoRA adapters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionModel, PreTrainedModel
from transformers.utils import ModelOutput

from rs_assistant.engine.models.moe.configuration_moe import MoEConfig

IGNORE_INDEX = -100


@dataclass
class MoEOutput(ModelOutput):
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None  # the mixture's negative log-likelihood per answer token
    balance_loss: torch.Tensor | None = None
    routing_weights: torch.Tensor | None = None  # B x K
    expert_nll: torch.Tensor | None = None  # B x K: each expert's NLL of the answer per token


class InstructionRouter(nn.Module):
    """Writes a P-vector sub-task prompt for each expert and the routing weights, from image + instruction."""

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        hidden = config.text_config.hidden_size
        self.k, self.p = config.num_experts, config.prompt_tokens
        self.queries = nn.Parameter(torch.zeros(self.k * self.p, hidden))
        self.route_tokens = nn.Parameter(torch.zeros(self.k, hidden))
        self.segment = nn.Parameter(torch.zeros(3, hidden))  # query / image / instruction
        layer = nn.TransformerEncoderLayer(
            hidden, config.router_heads, 4 * hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.router_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.prompt_out = nn.Linear(hidden, hidden)
        self.route_out = nn.Linear(hidden, 1)
        self.reset(config.initializer_range)

    def reset(self, std: float) -> None:
        with torch.no_grad():
            for p in (self.queries, self.route_tokens):
                p.normal_(0.0, std)
            self.segment.zero_()
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()

    def forward(
        self, image: torch.Tensor, instruction: torch.Tensor, instruction_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image B x N x H, instruction B x T x H (mask B x T) -> prompts B x K x P x H, routing logits B x K."""
        b = image.shape[0]
        dtype = self.queries.dtype
        queries = (self.queries + self.segment[0]).expand(b, -1, -1)
        route = (self.route_tokens + self.segment[0]).expand(b, -1, -1)
        x = torch.cat([queries, route, image.to(dtype) + self.segment[1], instruction.to(dtype) + self.segment[2]], 1)
        fixed = torch.zeros(b, queries.shape[1] + route.shape[1] + image.shape[1], dtype=torch.bool, device=x.device)
        padding = torch.cat([fixed, instruction_mask == 0], 1)
        y = self.norm(self.encoder(x, src_key_padding_mask=padding))
        prompts = self.prompt_out(y[:, : self.k * self.p]).view(b, self.k, self.p, -1)
        logits = self.route_out(y[:, self.k * self.p : self.k * self.p + self.k]).squeeze(-1)
        return prompts, logits


class MoEBridge(nn.Module):
    """Vision width -> the experts' width (LLaVA-1.5's MLP), shared by the router and every expert."""

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        hidden = config.text_config.hidden_size
        self.fc1 = nn.Linear(config.vision_config.hidden_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(features)))


class MoEPreTrainedModel(PreTrainedModel):
    config: MoEConfig
    config_class = MoEConfig
    base_model_prefix = "rs_moe"
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CLIPEncoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, InstructionRouter):
            module.reset(self.config.initializer_range)


class MoEForConditionalGeneration(MoEPreTrainedModel):
    def __init__(self, config: MoEConfig):
        super().__init__(config)
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.bridge = MoEBridge(config)
        self.router = InstructionRouter(config)
        self.experts = nn.ModuleList(
            [AutoModelForCausalLM.from_config(config.text_config) for _ in range(config.num_experts)]
        )
        self.post_init()
        # post_init gathers tied weights from direct children only; the experts sit in a ModuleList
        self.all_tied_weights_keys.update(self.get_expanded_tied_weights_keys(all_submodels=True))

    @classmethod
    def from_parts(
        cls, config: MoEConfig, vision: CLIPVisionModel, language_model: PreTrainedModel
    ) -> MoEForConditionalGeneration:
        """A new model around a loaded vision encoder and LM (copied once per expert); router and bridge random."""
        with torch.device("meta"):
            model = cls(config)
        model.vision_tower = vision
        model.experts = nn.ModuleList(
            [language_model] + [copy.deepcopy(language_model) for _ in range(config.num_experts - 1)]
        )
        model.bridge = MoEBridge(config)
        model.router = InstructionRouter(config)
        for linear in (model.bridge.fc1, model.bridge.fc2):
            nn.init.normal_(linear.weight, std=config.initializer_range)
            nn.init.zeros_(linear.bias)
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.experts[0].get_input_embeddings()

    # --- parts -------------------------------------------------------------------------------------

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """B images -> B x N x H tokens in the experts' input space (patch tokens through the bridge)."""
        dtype = self.bridge.fc1.weight.dtype
        features = self.vision_tower(pixel_values=pixel_values.to(self.vision_tower.dtype)).last_hidden_state[:, 1:]
        return self.bridge(features.to(dtype))

    def route(
        self, image: torch.Tensor, router_ids: torch.Tensor, router_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sub-task prompts B x K x P x H, routing weights B x K)."""
        with torch.no_grad():  # the instruction's embeddings: the experts' shared input table, never trained here
            text = self.get_input_embeddings()(router_ids)
        prompts, logits = self.router(image, text, router_mask)
        return prompts, logits.float().softmax(-1)

    def _expert_inputs(
        self, k: int, prompts: torch.Tensor, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.experts[k].get_input_embeddings()(input_ids)
        embeds = torch.cat([prompts[:, k].to(text.dtype), image.to(text.dtype), text], 1)
        prefix = torch.ones(
            input_ids.shape[0],
            prompts.shape[2] + image.shape[1],
            dtype=attention_mask.dtype,
            device=attention_mask.device,
        )
        return embeds, torch.cat([prefix, attention_mask], 1)

    # --- training ----------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        router_ids: torch.Tensor,
        router_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        balance_weight: float = 0.01,
        routed_top_k: int = 0,
        **kwargs: Any,
    ) -> MoEOutput:
        """``routed_top_k = 0``: the mixture likelihood over every expert (stage 1: the router learns which
        expert's prompt suits a sample). ``routed_top_k = n``: each sample goes to the router's n most weighted
        experts only (weights renormalised) and the loss is their weighted NLL (stage 2: a frozen router decides
        which expert learns which sample, as it decides which one answers; sparse, each expert runs on its rows)."""
        image = self.image_tokens(pixel_values)
        prompts, weights = self.route(image, router_ids, router_mask)
        if labels is None:
            return MoEOutput(routing_weights=weights)
        prefix = prompts.shape[2] + image.shape[1]
        targets = F.pad(labels, (prefix, 0), value=IGNORE_INDEX)[:, 1:]
        counted = targets != IGNORE_INDEX
        tokens = counted.sum(1).clamp(min=1)
        k_all = len(self.experts)
        if routed_top_k:
            chosen = torch.zeros_like(weights, dtype=torch.bool).scatter(1, weights.topk(routed_top_k, 1).indices, True)
        else:
            chosen = torch.ones_like(weights, dtype=torch.bool)
        nll = torch.zeros(len(weights), k_all, device=weights.device)
        for k in range(k_all):
            rows = chosen[:, k].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            embeds, mask = self._expert_inputs(k, prompts[rows], image[rows], input_ids[rows], attention_mask[rows])
            logits = self.experts[k](inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].float()
            per_token = F.cross_entropy(logits.transpose(1, 2), targets[rows].clamp(min=0), reduction="none")
            nll = nll.index_put((rows, torch.full_like(rows, k)), (per_token * counted[rows]).sum(1))
        if routed_top_k:
            routed = torch.where(chosen, weights, torch.zeros_like(weights))
            routed = routed / routed.sum(1, keepdim=True)
            per_sample = (routed * nll).sum(1)
        else:
            per_sample = -torch.logsumexp(torch.log(weights.clamp(min=1e-9)) - nll, 1)  # -log sum_k w_k p_k
        lm_loss = (per_sample / tokens).mean()
        balance = k_all * (weights.mean(0) ** 2).sum()
        return MoEOutput(
            loss=lm_loss + balance_weight * balance,
            lm_loss=lm_loss,
            balance_loss=balance,
            routing_weights=weights,
            expert_nll=nll / tokens[:, None],
        )

    # --- generation --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_expert(
        self,
        k: int,
        prompts: torch.Tensor,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[int]]:
        """Greedy answers of expert k for a left-padded batch (positions counted from each row's first token)."""
        expert = self.experts[k]
        embeds, mask = self._expert_inputs(k, prompts, image, input_ids, attention_mask)
        # left padding sits before the prompt: move it to the very front so every row's tokens are contiguous
        pads = (attention_mask == 0).sum(1)
        if bool(pads.any()):
            order = torch.argsort(mask, dim=1, stable=True)  # zeros (padding) first, the rest in order
            embeds = torch.gather(embeds, 1, order[..., None].expand_as(embeds))
            mask = torch.gather(mask, 1, order)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache, done = None, torch.zeros(len(embeds), dtype=torch.bool, device=embeds.device)
        produced: list[list[int]] = [[] for _ in range(len(embeds))]
        for _ in range(max_new_tokens):
            if should_stop is not None and should_stop():
                break
            out = expert(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            cache = out.cache
            tokens = out.logits[:, -1].argmax(-1)
            for i, token in enumerate(tokens.tolist()):
                if not done[i]:
                    if token == eos_token_id:
                        done[i] = True
                    else:
                        produced[i].append(token)
            if bool(done.all()):
                break
            embeds = expert.get_input_embeddings()(tokens[:, None])
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
        return produced

    @torch.no_grad()
    def answer(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        router_ids: torch.Tensor,
        router_mask: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int,
        decode: Callable[[Sequence[int]], str],
        compose: str | None = None,
        top_k: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[list[str], torch.Tensor, list[dict[int, str]]]:
        """(composed answers, routing weights B x K, each row's {expert: its answer}) for a batch."""
        compose = compose or self.config.compose
        top_k = 1 if compose == "top1" else (top_k or self.config.top_k)
        image = self.image_tokens(pixel_values)
        prompts, weights = self.route(image, router_ids, router_mask)
        chosen = weights.topk(top_k, dim=1).indices.tolist()
        parts: list[dict[int, str]] = [{} for _ in range(len(weights))]
        for k in sorted({e for row in chosen for e in row}):
            rows = [i for i, row in enumerate(chosen) if k in row]
            index = torch.tensor(rows, device=input_ids.device)
            outputs = self.generate_expert(
                k,
                prompts[index],
                image[index],
                input_ids[index],
                attention_mask[index],
                max_new_tokens,
                eos_token_id,
                should_stop,
            )
            for i, ids in zip(rows, outputs):
                parts[i][k] = decode(ids)
        answers = []
        for row in parts:
            texts: list[str] = []
            for k in sorted(row):
                if row[k] and row[k] not in texts:
                    texts.append(row[k])
            answers.append(" ".join(texts))
        return answers, weights, parts


__all__ = ["InstructionRouter", "MoEBridge", "MoEForConditionalGeneration", "MoEOutput", "MoEPreTrainedModel"]
