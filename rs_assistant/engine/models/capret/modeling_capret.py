"""RS-CapRet: a frozen CLIP image encoder and a frozen causal LM joined by trained linear maps.

The whole forward pass (FROMAGe's design, which RS-CapRet applies to remote sensing):

1. the CLIP image encoder gives each image its pooled, projected embedding ``v`` (frozen);
2. **captioning**: the linear bridge ``W_c`` maps ``v`` to k vectors in the LM's input space,
   which replace the k ``<image>`` placeholders of the token sequence; the frozen LM then reads
   images and text interleaved (a dialogue of several images and turns is one sequence) and is
   trained with next-token cross-entropy on the text it should produce;
3. **retrieval**: a ``[RET]`` token appended to a text; its last hidden state, through ``W_t``,
   and the image embedding, through ``W_i``, meet in a ``retrieval_dim`` space where an InfoNCE
   loss with a learnable temperature pulls a caption and its image together. The LM also learns
   to *emit* ``[RET]`` after a caption, which is how a dialogue asks for an image.

Trainable: ``W_c``, ``W_t``, ``W_i``, the ``[RET]`` input embedding and output row, the
temperature (all in ``bridge``). The LM's vocabulary is not resized: ``<image>`` and ``[RET]``
ids at or beyond it get the bridge's vectors instead of LM rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionModelWithProjection, PreTrainedModel
from transformers.utils import ModelOutput

from rs_assistant.engine.models.capret.configuration_capret import CapRetConfig

IGNORE_INDEX = -100


@dataclass
class CapRetOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None  # the LM's last hidden states
    cache: Any = None  # the LM's key/value cache (transformers' ``cache``)


class CapRetBridge(nn.Module):
    """Everything RS-CapRet trains."""

    def __init__(self, config: CapRetConfig):
        super().__init__()
        image_dim = config.vision_config.projection_dim
        hidden = config.text_config.hidden_size
        self.k = config.num_visual_tokens
        self.caption = nn.Linear(image_dim, self.k * hidden)  # W_c
        self.text_to_retrieval = nn.Linear(hidden, config.retrieval_dim)  # W_t
        self.image_to_retrieval = nn.Linear(image_dim, config.retrieval_dim)  # W_i
        self.ret_embedding = nn.Parameter(torch.zeros(hidden))  # [RET] as input
        self.ret_output = nn.Parameter(torch.zeros(hidden))  # [RET]'s row of the output layer
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.reset(config.initializer_range)

    def reset(self, std: float) -> None:
        with torch.no_grad():
            for linear in (self.caption, self.text_to_retrieval, self.image_to_retrieval):
                linear.weight.normal_(0.0, std)
                linear.bias.zero_()
            self.ret_embedding.normal_(0.0, std)
            self.ret_output.normal_(0.0, std)
            self.logit_scale.fill_(math.log(1 / 0.07))


class CapRetPreTrainedModel(PreTrainedModel):
    config: CapRetConfig
    config_class = CapRetConfig
    base_model_prefix = "capret"
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CLIPEncoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CapRetBridge):
            module.reset(self.config.initializer_range)


class CapRetForCausalLM(CapRetPreTrainedModel):
    def __init__(self, config: CapRetConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModelWithProjection(config.vision_config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.bridge = CapRetBridge(config)
        self.post_init()

    @classmethod
    def from_parts(
        cls, config: CapRetConfig, vision_model: CLIPVisionModelWithProjection, language_model: PreTrainedModel
    ) -> CapRetForCausalLM:
        """A new model around already loaded parts (the frozen LM is not allocated twice)."""
        with torch.device("meta"):
            model = cls(config)
        model.vision_model = vision_model
        model.language_model = language_model
        model.bridge = CapRetBridge(config)
        return model

    def freeze_backbones(self) -> None:
        """RS-CapRet's setting: the image encoder and the LM stay as they are; the bridge trains."""
        self.vision_model.requires_grad_(False)
        self.language_model.requires_grad_(False)
        self.bridge.requires_grad_(True)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    # --- parts -------------------------------------------------------------------------------------

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP's pooled, projected embedding of each image (N x projection_dim)."""
        dtype = self.vision_model.visual_projection.weight.dtype
        return self.vision_model(pixel_values=pixel_values.to(dtype)).image_embeds

    def visual_tokens(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """N images -> N x k LM input vectors (the caption bridge)."""
        hidden = self.config.text_config.hidden_size
        return self.bridge.caption(image_embeds.to(self.bridge.caption.weight.dtype)).view(
            len(image_embeds), self.bridge.k, hidden
        )

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with ``<image>`` placeholders filled by visual tokens (images in order of
        appearance, k placeholders each; from ``pixel_values`` or CLIP ``image_embeds`` already
        computed) and ``[RET]`` by its trained embedding."""
        table = self.language_model.get_input_embeddings()
        vocab = table.num_embeddings
        is_image = input_ids == self.config.image_token_id
        is_ret = input_ids == self.config.ret_token_id
        safe = input_ids.masked_fill(is_image | is_ret | (input_ids >= vocab) | (input_ids < 0), 0)
        embeds = table(safe)
        embeds = torch.where(is_ret[..., None], self.bridge.ret_embedding.to(embeds.dtype), embeds)
        placeholders = int(is_image.sum())
        if placeholders:
            if image_embeds is None and pixel_values is not None:
                image_embeds = self.image_embeddings(pixel_values)
            if image_embeds is None or placeholders != len(image_embeds) * self.bridge.k:
                given = 0 if image_embeds is None else len(image_embeds)
                raise ValueError(
                    f"{placeholders} <image> placeholders for {given} image(s) of {self.bridge.k} tokens each"
                )
            visual = self.visual_tokens(image_embeds).reshape(-1, embeds.shape[-1])
            embeds = embeds.masked_scatter(is_image[..., None], visual.to(embeds.dtype))
        return embeds

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM's output layer, with the ``[RET]`` column from the bridge (``<image>``: never predicted)."""
        logits = self.language_model.get_output_embeddings()(hidden)
        ret = hidden @ self.bridge.ret_output.to(hidden.dtype)
        size = max(logits.shape[-1], self.config.ret_token_id + 1, self.config.image_token_id + 1)
        if size > logits.shape[-1]:
            logits = F.pad(logits, (0, size - logits.shape[-1]), value=torch.finfo(logits.dtype).min)
        logits = logits.clone()
        logits[..., self.config.ret_token_id] = ret.to(logits.dtype)
        logits[..., self.config.image_token_id] = torch.finfo(logits.dtype).min
        return logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CapRetOutput:
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        decoder = self.language_model.get_decoder()
        out = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache, use_cache=use_cache)
        hidden = out.last_hidden_state
        logits = self.logits(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
            )
        return CapRetOutput(loss=loss, logits=logits, hidden_states=hidden, cache=out.cache)

    def text_retrieval_embeddings(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised ``W_t`` of the hidden state at each row's last ``[RET]``."""
        is_ret = input_ids == self.config.ret_token_id
        if not bool(is_ret.any(1).all()):
            raise ValueError("every retrieval text needs a [RET] token")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last = torch.where(is_ret, positions, -1).max(1).values
        states = hidden[torch.arange(len(hidden), device=hidden.device), last]
        return F.normalize(
            self.bridge.text_to_retrieval(states.to(self.bridge.text_to_retrieval.weight.dtype)).float(), dim=-1
        )

    def image_retrieval_embeddings(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """L2-normalised ``W_i`` of CLIP's image embeddings."""
        return F.normalize(
            self.bridge.image_to_retrieval(image_embeds.to(self.bridge.image_to_retrieval.weight.dtype)).float(), dim=-1
        )

    @torch.no_grad()
    def generate_text(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        stop_ids: tuple[int, ...] = (),
        should_stop: Any = None,
    ) -> list[int]:
        """Greedy continuation of one sequence (1 x L); stops at any of ``stop_ids`` (not returned)."""
        embeds = self.embed(input_ids, pixel_values)
        cache, produced = None, []
        for _ in range(max_new_tokens):
            if should_stop is not None and should_stop():
                break
            out = self.forward(input_ids=None, inputs_embeds=embeds, cache=cache, use_cache=True)
            cache = out.cache
            token = int(out.logits[0, -1].argmax())
            if token in stop_ids:
                break
            produced.append(token)
            embeds = self.embed(torch.tensor([[token]], device=input_ids.device))
        return produced


__all__ = ["CapRetForCausalLM", "CapRetOutput", "CapRetPreTrainedModel"]
