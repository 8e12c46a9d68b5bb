"""Configuration of the RSA model family (RS Assistant's own vision-language model).

One class serves every size; the sizes are data in ``configs/*.json``:

- ``tiny.json``: the unit tests' model (random weights, seconds on a CPU);
- ``default.json``: the model shipped in resources/models/rsa-default (trained from scratch by
  training/recipes/default/default_v13.toml on a CPU, default_v13_gpu.toml on a GPU; at most 25 MB of
  fp16 weights, a caption in well under 500 ms on two CPU cores): a ViT with a convolutional stem
  (``vision_stem``) and its 1/4-resolution features in the mask decoder (``mask_detail``), a
  per-pixel class head on the decoder's pixel features with class-balanced loss
  (``pixel_class_loss_weight``, ``pixel_class_balance``) and change scored per pixel there
  (``change_pooling`` "pixel");
- ``large.json``: CLIP ViT-L/14-336 and Qwen2.5-1.5B-Instruct read from local checkpoint folders
  (``vision_pretrained_path``, ``text_pretrained_path``), both frozen, on a GPU (the seeds' paper.toml
  recipes).

The model's earlier configs (default_v2 .. default_v10, and the first ``default.json``; today's
``default.json`` was ``default_v11.json``) and their recipes are in git at commit afca315:
``git show afca315:rs_assistant/engine/models/rsa/configs/default_v10.json``.

The parts, and the paper each follows (modeling_rsa.py has the details):

- ``vision_config``: a CLIP vision transformer (transformers ``CLIPVisionConfig``);
- ``projector_type``: RS-CapRet's linear bridge from the image encoder into the language model
  ("linear"), or LLaVA-1.5's two-layer MLP ("mlp"); ``token_merge`` first folds each s x s block
  of patches into one token (InternVL / Idefics3 pixel shuffle), s^2 fewer tokens for the LM;
- ``text_config``: any transformers causal LM (built with ``AutoModelForCausalLM.from_config``);
- ``num_location_bins``: SkyEyeGPT / Florence-2 location tokens ``<loc_0>`` .. ``<loc_{N-1}>``;
- ``seg_token_id`` and ``mask_*``: GeoPix's ``[SEG]`` token, whose hidden state becomes the query
  of a small mask decoder over the patch features, with its optional class-wise memory;
- ``delta_*`` and ``change_*``: DeltaVLM's cross-semantic difference module for bi-temporal pairs,
  plus a changed/unchanged head; ``delta_qformer_layers`` > 0 adds DeltaVLM's instruction-aware
  Q-Former between the difference features and their bridge (off in every shipped config).

The token ids (``image_token_id`` ...) default to the order build_tokenizer (processing_rsa.py)
gives them; a tokenizer built otherwise (a pretrained LLM's, extended) sets them with
:meth:`RSAConfig.bind_tokenizer`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, PreTrainedTokenizerBase
from transformers.configuration_utils import SubConfigSpec

from rs_assistant.engine.models.rsa.tokens import ASSISTANT, BOS, DELTA, EOS, IMAGE, PAD, SEG, USER, loc_token

log = logging.getLogger(__name__)

#: Where the named configs live: ``configs/NAME.json``.
CONFIGS_DIR = Path(__file__).with_name("configs")


@strict
class RSAConfig(PreTrainedConfig):
    """Sizes and switches of an RSA model; see the module docstring for what each part follows."""

    model_type = "rsa"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None

    # RS-CapRet bridge: vision patch features -> language-model embeddings.
    projector_type: Literal["linear", "mlp"] = "linear"
    vision_feature_layer: int = -1  # which vision hidden state feeds the bridge (-2: LLaVA's choice)
    token_merge: int = 1  # s: each s x s block of patches becomes one LM token (channels concatenated)
    # A LayerNorm on both bridges' outputs so the visual tokens have the LM embeddings' scale
    # (LLaVA-style bridges without it let the visual tokens grow far above the text embeddings).
    projector_norm: bool = False

    # Token ids; the defaults are build_tokenizer's order (processing_rsa.SPECIAL_TOKENS).
    image_token_id: int = 6
    delta_token_id: int = 7
    seg_token_id: int = 8
    user_token_id: int = 4  # <|user|> and <|assistant|>: where the instruction is, for the Q-Former
    assistant_token_id: int = 5
    num_location_bins: int = 100  # SkyEyeGPT / Florence-2 style <loc_i> bins per image side
    loc_token_id: int = -1  # <loc_0>, the bins' ids follow it (bind_tokenizer sets it; -1: unknown)
    # Where each visual token is, in the LM's own input: a fixed 2D sinusoidal code of its cell
    # (x in one half of the channels, y in the other, times a learned scale) added to the visual
    # tokens, and the <loc_i> embeddings start as the same code of bin i. Attention values carry
    # content only (RoPE puts positions into the scores), so without it the LM cannot read off
    # *where* the token it attends to lies; with it, copying the code to a <loc_i> logit is one step.
    visual_position_encoding: bool = False

    # GeoPix mask decoder: [SEG] hidden state -> query over the patch features -> mask at 1/4 input.
    mask_decoder_dim: int = 128
    mask_decoder_heads: int = 4
    mask_decoder_layers: int = 1
    mask_upsample_steps: int = 2  # each doubles the patch grid: 2 steps give 1/4 of a stride-16 input
    # Boxes from masks (GeoPix's pixel grounding applied to boxes): the hidden state that writes a
    # box's first location token also queries the mask decoder, trained on that object's mask, and
    # the engine reads the box off the decoded mask (its most probable connected region) instead of
    # the four bins. Dense mask supervision gives every box pixel-level gradients, where four
    # 100-way token choices give four; the loc tokens stay in the answer (the box's fallback).
    box_from_mask: bool = False
    # Serving: the mask probability above which a pixel belongs to a box's region.
    box_mask_threshold: float = 0.5
    class_memory_classes: int = 0  # GeoPix class-wise learnable memory: 0 turns it off
    class_memory_tokens: int = 4  # memory slots per class

    # DeltaVLM cross-semantic difference module (bi-temporal pairs) and the changed/unchanged head.
    delta_layers: int = 1
    delta_heads: int = 4
    # DeltaVLM's instruction-aware Q-Former (after InstructBLIP): num_image_tokens learned queries read
    # the last user instruction (self-attention over queries + instruction) and then the difference
    # features (cross-attention); their outputs replace the merged difference features as what the
    # difference bridge reads. 0 layers: off (the difference tokens are the difference features).
    delta_qformer_layers: int = 0
    # How the change head turns the difference features into one verdict: pool them first ("mean",
    # "max", or a learned "attention" over the patches), or "dense": the head scores every patch and
    # the verdict is the highest patch score (multiple-instance learning: a pair changed if any place
    # did). With "dense" and ``change_dense_loss_weight`` > 0 the patch scores are also trained
    # against the change mask (the fraction of each patch that changed), so every pair teaches the
    # head where changes are, not only whether there is one. "pixel" is "dense" at the mask decoder's
    # resolution: a head scores each pixel of the decoder's query-free pixel features of the
    # difference (with ``mask_detail``, the stem's after-minus-before detail at 1/4 of the input
    # too), so a change smaller than a patch still fills whole pixels of its own.
    change_pooling: Literal["mean", "max", "attention", "dense", "pixel"] = "mean"
    change_dense_loss_weight: float = 0.0

    # Serving: the mask probability above which a pixel belongs to a [SEG] mask. 0.5 unless
    # calibrated on the validation split (python -m training.eval.calibrate), which writes the
    # threshold with the best mIoU into the checkpoint's config.json.
    mask_threshold: float = 0.5
    # Serving: how captions are decoded. 1 beam is greedy; more beams search for the likelier caption,
    # and a length penalty of 0 ranks the beams by total log-probability (no length normalisation).
    # Calibrated on the validation split's CIDEr (python -m training.eval.calibrate).
    caption_num_beams: int = 1
    caption_length_penalty: float = 1.0
    # Serving: the changed/unchanged head's probability from which a pair counts as changed. 0.5
    # unless calibrated on the validation split's pairs (the same command picks the best accuracy).
    change_threshold: float = 0.5
    # Serving: the model was trained to end a change caption with [SEG] exactly when the pair changed
    # (the default recipe's format; LEVIR-CC-style captions carry no [SEG]). Then a caption that
    # contradicts the head's verdict is decoded again until one agrees (rsa backend).
    change_seg_marks_changed: bool = False

    # Dense auxiliary supervision of the vision encoder: a linear per-patch land-cover head trained
    # with cross-entropy against the class map (majority class per patch). 0 classes: no head.
    num_aux_classes: int = 0
    aux_class_loss_weight: float = 0.0
    # The same classes per pixel at the mask decoder's resolution (1/4 of the input with
    # ``mask_detail``): a 1x1 convolution over the decoder's query-free pixel features (the patch
    # features through its projection, class memory and upsampling, plus the stem's detail), trained
    # on every single-image batch. The [SEG] and box queries read those same pixel features, so a
    # class becomes a direction the query only has to pick. 0: no head.
    pixel_class_loss_weight: float = 0.0
    # Class balance of that loss: each class's pixels weigh (the class's share of the batch's target
    # pixels) ** -pixel_class_balance, scaled to a mean weight of 1 per pixel. 0 is plain
    # cross-entropy, where fields and forest outweigh vehicles, tanks and single trees by
    # hundreds to one; 0.5 weighs by the inverse square root of the share.
    pixel_class_balance: float = 0.0
    # Serving, with that head: class-aware masks. A [SEG] whose answer names a class by its own
    # (plural) name, as a class answer is trained ("buildings [SEG]"), becomes the pixels the head
    # gives that class; one named by another noun of the class ("house [SEG]", a referring answer)
    # keeps only those of its pixels. ``class_names`` (the plural of each class id) and
    # ``class_nouns`` (every answer noun -> its class id) come from the training data;
    # ``class_aware_masks`` is picked on the validation split (training.eval.calibrate).
    class_aware_masks: bool = False
    # Likewise for boxes: a box whose label names a class snaps to the extent of the connected region
    # of that class in the head's map that overlaps it best (IoU of the extents), so a roughly placed
    # box becomes the object under it. Picked on the validation split's grounding.
    class_aware_boxes: bool = False
    # With class-aware masks, a mask named by another noun of a class (a referring answer,
    # "warehouse [SEG]") becomes the whole connected region of that class in the head's map that
    # overlaps the decoded mask best (IoU), as boxes snap: the decoder only has to land on the
    # object, the class head draws its outline. Picked on the validation split with the masks.
    class_region_masks: bool = False
    # The region selector (regions.py, MAttNet-style): a head that scores the connected regions of the
    # named class in the head's map against the expression (the hidden state that writes the box or
    # the [SEG], with the mean state of the user's turn), trained after the rest on the frozen model
    # (training.recipes.default.selector). Serving: an answer with one box, or one [SEG] named by
    # another noun of a class, takes the region it scores highest instead of the one it overlaps.
    # ``region_selector_dim`` is its width; 0: no selector.
    region_selector_dim: int = 0
    # With class-aware masks, {class name: probability}: a class's own name ("trees [SEG]") is served
    # as the pixels whose probability of that class reaches its bar, rather than those where it is the
    # most probable class (small classes the head rarely wins outright). Chosen per class on the
    # validation split (training.eval.calibrate); a class without a bar keeps the most probable pixels.
    class_mask_bars: dict | None = None
    # Class name -> the least score (mean class probability over its pixels) of an object answered for a
    # class-level request ("find the buildings", "how many tanks?"; engine/backends/rsa_instances.py);
    # weaker ones are dropped as noise. Chosen per class on the validation split for count accuracy
    # (training.eval.calibrate_counts); a class without a bar keeps every object.
    count_bars: dict | None = None
    # The class refiner (a guided upsampling of that head's map, as CascadePSP refines a coarse
    # segmentation with the image): a few convolutions over the window's colours at
    # ``class_refine_size`` pixels a side, with the head's logits and pixel features upsampled to
    # them, add a correction to the logits. The head's map is 1/4 of the input: a cell is 9 pixels
    # of a 512 window, so a vehicle or a single tree crown is less than one. Trained after the rest
    # on the frozen model (training.recipes.default.refine). Serving: the window-sized class map
    # (class names' masks, the pixels of a selected region, fine extents) is the refined one; the
    # regions the selector scores stay those of the head's own map. ``class_refine_channels`` is its
    # width; 0: no refiner.
    class_refine_channels: int = 0
    class_refine_size: int = 224
    # The object detector (object_detector.py, a CenterNet-style network over the window's own pixels at
    # full resolution, beside the model's 224-pixel view where a car is two pixels): one map of centres
    # and one of covered pixels per class of ``object_classes`` (class names), trained alone after the
    # main run (training.recipes.default.objects). It reads windows finer than ``object_min_pixel_m``
    # metres a pixel shrunk to it, and coarser than ``object_max_pixel_m`` (None: as read) enlarged towards
    # it, at most twice (engine/backends/rsa_objects.py read_scale). Serving: class-level answers ("find
    # the cars", "how many trees?") for the classes of ``object_served`` come from it (rsa_objects.py), those
    # of ``object_joined`` from the class map and it together (rsa_objects.join), the others from the class
    # map (rsa_instances). ``object_detector_channels`` is its width; 0: no detector.
    object_detector_channels: int = 0
    object_classes: list | None = None
    object_min_pixel_m: float = 0.25
    object_max_pixel_m: float | None = None
    object_served: list | None = None
    object_joined: list | None = None
    class_names: list | None = None
    class_nouns: dict | None = None
    # Serving: [low, high], the ground metres per model-input pixel of the windows the model was trained
    # on. The default recipe (training/recipes/default/default_v13_gpu.toml, dataset.py's scene_gsd) draws a
    # base pixel size in [0.3, 2] m and a window of [384, 768] px of it, resized to the 224 px input:
    # 0.3 * 384 / 224 = 0.51 to 2 * 768 / 224 = 6.9 m per input pixel, so [0.5, 7.0]. With it, class-level
    # finds on a window finer than they were tuned at read crops of a ground size (rsa_instances.CROP_SIDE_M,
    # the window padded when smaller than a crop); a window finer than ``low`` (its ground width / 224 under
    # it: a 512 px window at 0.1 m is 0.23) could be shrunk and placed on the input at ``low`` for the other
    # tasks (engine/backends/rsa_scale.py; off: measured worse). Coarser than ``high``: fed as read. None
    # (configs written before it): every window is fed as before, whatever its pixel size.
    trained_input_pixel_m: list | None = None

    # The vision encoder's patch embedding: "patch" is CLIP's own (one patch x patch convolution);
    # "conv" is a small convolutional stem of the same total stride (Xiao et al. 2021, "Early
    # convolutions help transformers see better": a ViT trained from scratch learns much faster).
    # With ``mask_detail`` the mask decoder also reads the stem's 1/4-resolution features (a
    # skip, as in SAM's and Mask2Former's pixel decoders), so small objects get sharp masks.
    vision_stem: Literal["patch", "conv"] = "patch"
    mask_detail: bool = False

    # Loss weights: LM cross-entropy, mask BCE and Dice, change BCE.
    lm_loss_weight: float = 1.0
    # Soft location targets: a <loc_i> label becomes a Gaussian of this width (in bins) over the
    # location tokens, so a guess one bin off costs less than one fifty bins off and every box
    # teaches the neighbouring bins too (plain cross-entropy treats bins as unordered). 0: one-hot.
    location_label_sigma: float = 0.0
    mask_bce_weight: float = 2.0
    mask_dice_weight: float = 0.5
    change_loss_weight: float = 1.0

    # Pretrained parts from local folders and what stays frozen (RS-CapRet: both frozen, the
    # bridge trained). With a frozen LLM, the input and output embeddings may still train so that
    # the added tokens (<loc_i>, [SEG], ...) can be learned.
    vision_pretrained_path: str | None = None
    text_pretrained_path: str | None = None
    freeze_vision: bool = False
    freeze_llm: bool = False
    train_new_embeddings: bool = True

    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = bool(self.text_config.tie_word_embeddings)

    def validate_architecture(self) -> None:
        """Checks the sizes fit together (called by ``@strict`` after every change)."""
        super().validate_architecture()
        size, patch = self.vision_config.image_size, self.vision_config.patch_size
        if not isinstance(size, int) or not isinstance(patch, int) or size % patch:
            raise ValueError(f"vision image_size {size} must be a whole multiple of patch_size {patch}")
        if self.token_merge < 1 or (size // patch) % self.token_merge:
            raise ValueError(f"token_merge {self.token_merge} must divide the {size // patch}-patch grid")
        if self.projector_type not in ("linear", "mlp"):
            raise ValueError(f"projector_type must be 'linear' or 'mlp', got {self.projector_type!r}")
        if self.change_pooling not in ("mean", "max", "attention", "dense", "pixel"):
            raise ValueError(
                f"change_pooling must be 'mean', 'max', 'attention', 'dense' or 'pixel', got {self.change_pooling!r}"
            )
        if self.change_dense_loss_weight < 0 or (
            self.change_dense_loss_weight > 0 and self.change_pooling not in ("dense", "pixel")
        ):
            raise ValueError(
                f"change_dense_loss_weight {self.change_dense_loss_weight} must be 0, or positive with change_pooling "
                "'dense' or 'pixel'"
            )
        if self.location_label_sigma < 0:
            raise ValueError(f"location_label_sigma must be 0 or more, got {self.location_label_sigma}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be between 0 and 1, got {self.mask_threshold}")
        if self.caption_num_beams < 1:
            raise ValueError(f"caption_num_beams must be 1 or more, got {self.caption_num_beams}")
        if not 0.0 < self.box_mask_threshold < 1.0:
            raise ValueError(f"box_mask_threshold must be between 0 and 1, got {self.box_mask_threshold}")
        if not 0.0 < self.change_threshold < 1.0:
            raise ValueError(f"change_threshold must be between 0 and 1, got {self.change_threshold}")
        if self.vision_stem not in ("patch", "conv"):
            raise ValueError(f"vision_stem must be 'patch' or 'conv', got {self.vision_stem!r}")
        if self.vision_stem == "conv" and (patch < 4 or patch & (patch - 1)):
            raise ValueError(f"vision_stem 'conv' needs a power-of-two patch_size of at least 4, got {patch}")
        if self.mask_detail and (self.vision_stem != "conv" or patch >> self.mask_upsample_steps != 4):
            raise ValueError(
                "mask_detail needs vision_stem 'conv' and mask_upsample_steps that bring the patch grid to 1/4 of "
                f"the input (patch_size {patch}, mask_upsample_steps {self.mask_upsample_steps})"
            )
        if self.num_aux_classes < 0 or self.aux_class_loss_weight < 0:
            raise ValueError("num_aux_classes and aux_class_loss_weight must not be negative")
        if self.aux_class_loss_weight > 0 and self.num_aux_classes < 2:
            raise ValueError(f"aux_class_loss_weight {self.aux_class_loss_weight} needs num_aux_classes of at least 2")
        if self.pixel_class_loss_weight < 0 or (self.pixel_class_loss_weight > 0 and self.num_aux_classes < 2):
            raise ValueError(
                f"pixel_class_loss_weight {self.pixel_class_loss_weight} must be 0, or positive with "
                f"num_aux_classes of at least 2"
            )
        if not 0 <= self.pixel_class_balance <= 1:
            raise ValueError(f"pixel_class_balance must lie in 0..1, got {self.pixel_class_balance}")
        if self.class_region_masks and not self.class_aware_masks:
            raise ValueError("class_region_masks refines class-aware masks: it needs class_aware_masks")
        if (self.class_aware_masks or self.class_aware_boxes) and (
            self.pixel_class_loss_weight <= 0 or not self.class_names or not self.class_nouns
        ):
            raise ValueError(
                "class_aware_masks and class_aware_boxes need the per-pixel class head "
                "(pixel_class_loss_weight > 0), class_names and class_nouns"
            )
        if self.region_selector_dim < 0 or (self.region_selector_dim > 0 and self.pixel_class_loss_weight <= 0):
            raise ValueError(
                f"region_selector_dim {self.region_selector_dim} must be 0, or positive with the per-pixel "
                "class head (pixel_class_loss_weight > 0) whose regions it scores"
            )
        if self.class_refine_channels < 0 or (self.class_refine_channels > 0 and self.pixel_class_loss_weight <= 0):
            raise ValueError(
                f"class_refine_channels {self.class_refine_channels} must be 0, or positive with the per-pixel "
                "class head (pixel_class_loss_weight > 0) whose map it refines"
            )
        if self.class_refine_size < 8:
            raise ValueError(f"class_refine_size must be at least 8 pixels, got {self.class_refine_size}")
        if self.class_mask_bars and (
            set(self.class_mask_bars) - set(self.class_names or ())
            or not all(0 < float(b) <= 1 for b in self.class_mask_bars.values())
        ):
            raise ValueError(f"class_mask_bars {self.class_mask_bars} must map class_names to probabilities in (0, 1]")
        if self.count_bars and (
            set(self.count_bars) - set(self.class_names or ())
            or not all(0 <= float(b) < 1 for b in self.count_bars.values())
        ):
            raise ValueError(f"count_bars {self.count_bars} must map class_names to scores in [0, 1)")
        if self.object_detector_channels < 0 or (self.object_detector_channels > 0 and not self.object_classes):
            raise ValueError(
                f"object_detector_channels {self.object_detector_channels} must be 0, or positive with object_classes"
            )
        if set(self.object_classes or ()) - set(self.class_names or ()):
            raise ValueError(f"object_classes {self.object_classes} must be among class_names")
        if set(self.object_served or ()) - set(self.object_classes or ()):
            raise ValueError(f"object_served {self.object_served} must be among object_classes {self.object_classes}")
        if set(self.object_joined or ()) - set(self.object_classes or ()) or set(self.object_joined or ()) & set(
            self.object_served or ()
        ):
            raise ValueError(
                f"object_joined {self.object_joined} must be among object_classes {self.object_classes} and not served"
            )
        if self.object_min_pixel_m <= 0 or (
            self.object_max_pixel_m is not None and self.object_max_pixel_m < self.object_min_pixel_m
        ):
            raise ValueError(
                f"object_min_pixel_m ({self.object_min_pixel_m}) must be positive and object_max_pixel_m "
                f"({self.object_max_pixel_m}) None or not smaller"
            )
        if self.class_nouns and not all(0 <= int(c) < max(self.num_aux_classes, 1) for c in self.class_nouns.values()):
            raise ValueError(f"class_nouns name class ids outside 0..{self.num_aux_classes - 1}")
        if self.trained_input_pixel_m is not None:
            scale = self.trained_input_pixel_m
            if (
                not isinstance(scale, (list, tuple))
                or len(scale) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
                or not 0 < scale[0] <= scale[1]
            ):
                raise ValueError(
                    f"trained_input_pixel_m {scale!r} must be [low, high] metres per input pixel, 0 < low <= high"
                )
        if self.num_location_bins < 2:
            raise ValueError(f"num_location_bins must be at least 2, got {self.num_location_bins}")
        if self.mask_decoder_dim % self.mask_decoder_heads or self.mask_decoder_dim >> self.mask_upsample_steps < 4:
            raise ValueError(
                f"mask_decoder_dim {self.mask_decoder_dim} must divide by mask_decoder_heads {self.mask_decoder_heads} "
                f"and keep at least 4 channels after {self.mask_upsample_steps} upsampling steps"
            )
        if self.delta_qformer_layers < 0:
            raise ValueError(f"delta_qformer_layers must not be negative, got {self.delta_qformer_layers}")
        if self.vision_config.hidden_size % self.delta_heads:
            raise ValueError(
                f"vision hidden_size {self.vision_config.hidden_size} must divide by delta_heads {self.delta_heads}"
            )

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        """LM tokens per image (and difference tokens per pair): one per ``token_merge``-square of patches."""
        return (self.grid_size // self.token_merge) ** 2

    @property
    def stem_detail_channels(self) -> int:
        """Channels of the conv stem's 1/4-resolution features (RSAConvStem's ``early`` output)."""
        patch_steps = self.vision_config.patch_size.bit_length() - 1
        return min(self.vision_config.hidden_size, 64) if patch_steps > 2 else self.vision_config.hidden_size

    @property
    def mask_size(self) -> int:
        """Side of the predicted masks in pixels of the model's square input grid."""
        return self.grid_size * 2**self.mask_upsample_steps

    def bind_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Take the special token ids and the vocabulary size from ``tokenizer`` (processing_rsa's tokens)."""
        ids = {
            token: tokenizer.convert_tokens_to_ids(token)
            for token in (IMAGE, DELTA, SEG, PAD, BOS, EOS, USER, ASSISTANT)
        }
        missing = [token for token, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(
                f"the tokenizer lacks {', '.join(missing)}: build it with build_tokenizer or extend_tokenizer"
            )
        self.image_token_id, self.delta_token_id, self.seg_token_id = ids[IMAGE], ids[DELTA], ids[SEG]
        self.user_token_id, self.assistant_token_id = ids[USER], ids[ASSISTANT]
        locations = tokenizer.convert_tokens_to_ids([loc_token(i) for i in range(self.num_location_bins)])
        if locations != list(range(locations[0], locations[0] + self.num_location_bins)):
            raise ValueError(f"the tokenizer's {self.num_location_bins} location tokens must have consecutive ids")
        self.loc_token_id = locations[0]
        self.text_config.pad_token_id, self.text_config.bos_token_id, self.text_config.eos_token_id = (
            ids[PAD],
            ids[BOS],
            ids[EOS],
        )
        self.text_config.vocab_size = max(int(self.text_config.vocab_size), len(tokenizer))


def load_named_config(name: str, **changes: Any) -> RSAConfig:
    """``configs/NAME.json`` (tiny, default, large) as an RSAConfig, with ``changes`` (RSAConfig fields) over it."""
    path = CONFIGS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.json")))
        raise FileNotFoundError(f"no RSA config named {name!r} ({path}); known: {known}")
    unknown = sorted(key for key in changes if not hasattr(RSAConfig, key))
    if unknown:
        raise ValueError(f"RSAConfig has no field(s) {', '.join(unknown)}")
    return RSAConfig(**{**json.loads(path.read_text(encoding="utf-8")), **changes})


__all__ = ["CONFIGS_DIR", "RSAConfig", "load_named_config"]
