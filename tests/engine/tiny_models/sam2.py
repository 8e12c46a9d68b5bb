"""A tiny random-weight SAM 2.1 checkpoint folder laid out as facebook/sam2.1-hiera-* on the Hub.

    from tests.engine.tiny_models import sam2
    folder = sam2.make(tmp_path / "sam2")

facebook/sam2.1-hiera-base-plus holds the transformers conversion of the video model
(config.json with model_type "sam2_video", model.safetensors with the memory weights as well), the
image processor's preprocessor_config.json and a processor_config.json naming Sam2VideoProcessor;
this folder holds the same files for a ``Sam2VideoConfig`` of the real architecture shrunk: a
128-pixel input, a four-stage Hiera backbone of widths 8-64 with one block per stage (two in the
third, whose second block is the global-attention one, as in the real configurations), FPN and
decoder widths of 32, one memory-attention layer. The engine's sam backend loads its image part
with ``Sam2Model``, as for the real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Sam2VideoConfig, Sam2VideoModel

#: The model's square input side (the public checkpoints take 1024); the window is resized to it.
IMAGE_SIZE = 128
#: Not SAM 2's ImageNet values, so that a loader ignoring preprocessor_config.json shows in the masks.
MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)

_FEATURE = IMAGE_SIZE // 4  # the backbone's first stage: a stride-4 patch embedding
BACKBONE_CONFIG = {
    "model_type": "sam2_hiera_det_model",
    "hidden_size": 8,
    "num_attention_heads": 1,
    "image_size": [IMAGE_SIZE, IMAGE_SIZE],
    "blocks_per_stage": [1, 1, 2, 1],
    "embed_dim_per_stage": [8, 16, 32, 64],
    "num_attention_heads_per_stage": [1, 1, 2, 2],
    "window_size_per_stage": [8, 4, 4, 2],
    "global_attention_blocks": [3],
    "window_positional_embedding_background_size": [2, 2],
}
VISION_CONFIG = {
    "model_type": "sam2_vision_model",
    "backbone_config": BACKBONE_CONFIG,
    "backbone_channel_list": [64, 32, 16, 8],
    "backbone_feature_sizes": [[_FEATURE, _FEATURE], [_FEATURE // 2, _FEATURE // 2], [_FEATURE // 4, _FEATURE // 4]],
    "fpn_hidden_size": 32,
}
PROMPT_ENCODER_CONFIG = {"hidden_size": 32, "image_size": IMAGE_SIZE, "patch_size": 16, "mask_input_channels": 4}
MASK_DECODER_CONFIG = {
    "hidden_size": 32,
    "mlp_dim": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "iou_head_hidden_dim": 16,
}
MEMORY = {
    "memory_attention_hidden_size": 32,
    "memory_attention_num_layers": 1,
    "memory_attention_feed_forward_hidden_size": 32,
    "memory_attention_rope_feat_sizes": [_FEATURE // 4, _FEATURE // 4],
    "memory_encoder_hidden_size": 32,
    "memory_encoder_output_channels": 16,
    "mask_downsampler_embed_dim": 32,
    "memory_fuser_embed_dim": 32,
    "memory_fuser_intermediate_dim": 64,
}


def make(path: Path) -> Path:
    """Write a complete tiny SAM 2.1 checkpoint folder (Hub layout) at ``path`` and return it."""
    path = Path(path)
    config = Sam2VideoConfig(
        vision_config=VISION_CONFIG,
        prompt_encoder_config=PROMPT_ENCODER_CONFIG,
        mask_decoder_config=MASK_DECODER_CONFIG,
        image_size=IMAGE_SIZE,
        **MEMORY,
    )
    torch.manual_seed(0)
    model = Sam2VideoModel(config).eval()
    with torch.no_grad():  # no trivial zero biases or unit norms, so a wrongly loaded tensor shows
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(path)
    preprocessor = {
        "image_processor_type": "Sam2ImageProcessorFast",
        "do_resize": True,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "mask_size": {"height": IMAGE_SIZE // 4, "width": IMAGE_SIZE // 4},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(MEAN),
        "image_std": list(STD),
        "do_convert_rgb": True,
        "processor_class": "Sam2VideoProcessor",
    }
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")
    processor = {"point_pad_value": -10, "processor_class": "Sam2VideoProcessor", "target_size": IMAGE_SIZE}
    (path / "processor_config.json").write_text(json.dumps(processor, indent=2), encoding="utf-8")
    return path
