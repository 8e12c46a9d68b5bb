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

This file wires the parts into the forward pass; the parts live in vision.py (steps 1 and 3), difference.py
(step 2), mask_decoder.py (step 5), region_selector.py, class_refiner.py and losses.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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

from rs_assistant.engine.models.rsa.class_refiner import RSAClassRefiner
from rs_assistant.engine.models.rsa.configuration_rsa import RSAConfig
from rs_assistant.engine.models.rsa.difference import RSADifferenceModule, RSAInstructionQFormer
from rs_assistant.engine.models.rsa.losses import (
    _class_balance,
    _dice_loss,
    _paired_targets,
    _patch_classes,
    _soft_location_loss,
)
from rs_assistant.engine.models.rsa.mask_decoder import RSAClassMemory, RSAMaskDecoder
from rs_assistant.engine.models.rsa.object_detector import RSAObjectDetector
from rs_assistant.engine.models.rsa.region_selector import RSAInstruction, RSARegionSelector
from rs_assistant.engine.models.rsa.vision import RSAConvStem, RSAProjector, RSAVisualPosition, xy_code
from rs_assistant.engine.models.rsa.vision import grid_code as grid_code  # re-exported: it lived here before vision.py

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
        self.object_detector = RSAObjectDetector(config) if config.object_detector_channels > 0 else None
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
        :meth:`predict_masks`; neither for a prompt without ``<image>`` (a chat without image: the
        language model alone). The returned sequences hold only the new tokens; every
        ``generate`` keyword (``max_new_tokens``, ``stopping_criteria``,
        ``return_dict_in_generate``, ``output_hidden_states`` ...) passes through.
        """
        if visual is None and pixel_values is not None:
            visual = self.encode_images(pixel_values)
        if visual is None:
            placeholders = (input_ids == self.config.image_token_id) | (input_ids == self.config.delta_token_id)
            if placeholders.any():
                raise ValueError("generate needs pixel_values or visual features for the prompt's <image> tokens")
            embeds = self.get_input_embeddings()(input_ids)
        else:
            embeds = self.embed(input_ids, visual)
        kwargs.setdefault("eos_token_id", self.config.text_config.eos_token_id)
        kwargs.setdefault("pad_token_id", self.config.text_config.pad_token_id)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


AutoConfig.register("rsa", RSAConfig, exist_ok=True)
AutoModelForImageTextToText.register(RSAConfig, RSAForConditionalGeneration, exist_ok=True)

__all__ = ["RSAForConditionalGeneration", "RSAOutput", "RSAPreTrainedModel", "RSAVisualFeatures"]
