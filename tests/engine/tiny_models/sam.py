"""A tiny random-weight Segment Anything checkpoint folder, as a user's would look.

    from tests.engine.tiny_models import sam
    folder = sam.make(tmp_path / "sam")

The architecture and the processor are SAM's own; only the sizes are tiny: a 128-pixel input
(the public checkpoints take 1024) with 16-pixel patches, two vision blocks (one windowed, one
global) and hidden sizes of 16-32. The folder holds what facebook/sam-vit-base holds:
config.json, model.safetensors and the processor's configuration.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import SamConfig, SamModel, SamProcessor
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

#: The model's square input side; the processor resizes the longest side to it and pads.
IMAGE_SIZE = 128

VISION_CONFIG = {
    "hidden_size": 32,
    "output_channels": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": 16,
    "window_size": 4,
    "global_attn_indexes": [1],
    "num_pos_feats": 8,
    "mlp_dim": 64,
}
PROMPT_ENCODER_CONFIG = {"hidden_size": 16, "image_size": IMAGE_SIZE, "patch_size": 16, "mask_input_channels": 4}
MASK_DECODER_CONFIG = {
    "hidden_size": 16,
    "mlp_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "iou_head_hidden_dim": 16,
}


def make(path: Path) -> Path:
    """Write a complete tiny SAM checkpoint folder at ``path`` and return it."""
    path = Path(path)
    config = SamConfig(
        vision_config=VISION_CONFIG,
        prompt_encoder_config=PROMPT_ENCODER_CONFIG,
        mask_decoder_config=MASK_DECODER_CONFIG,
    )
    torch.manual_seed(0)
    model = SamModel(config).eval()
    low_res = IMAGE_SIZE // 4  # the mask decoder upsamples the 16-pixel patch grid four times
    processor = SamProcessor(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": IMAGE_SIZE},
            pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            mask_size={"longest_edge": low_res},
            mask_pad_size={"height": low_res, "width": low_res},
        )
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
