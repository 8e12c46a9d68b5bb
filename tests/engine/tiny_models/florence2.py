"""A tiny random-weight Florence-2 checkpoint folder (transformers-native layout), as a user's would look.

    from tests.engine.tiny_models import florence2
    folder = florence2.make(tmp_path / "florence2")

The architecture (DaViT vision tower + BART), processor, special tokens (``<loc_0>`` ...
``<loc_999>``, ``<poly>``, ``<sep>``) and generation settings are the real ones; only the sizes
are tiny (one vision stage, one encoder and one decoder layer, 32x32 input images) and the
byte-level BPE tokenizer is trained here on a few sentences, so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BartTokenizer,
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
)

#: The task and location tokens the real Florence-2 tokenizer adds after BART's vocabulary.
TASK_TOKENS = ("<od>", "</od>", "<ocr>", "</ocr>", "<poly>", "</poly>", "<sep>")
LOC_TOKENS = tuple(f"<loc_{i}>" for i in range(1000))
IMAGE_TOKEN = "<image>"

_CORPUS = (
    "What does the image describe?",
    "Describe in detail what is shown in the image.",
    "Locate the phrases in the caption: storage tanks",
    "Locate the objects with category name in the image.",
    "Locate a building in the image with mask",
    "The image shows storage tanks next to a road, a river and some buildings.",
)

IMAGE_SIZE = 32  # stride-4 patch embedding -> 8 x 8 tokens, plus one pooled token
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // 4) ** 2 + 1

TEXT_CONFIG = {
    "model_type": "bart",
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "max_position_embeddings": 160,
    "scale_embedding": False,
}
VISION_CONFIG = {
    "depths": [1],
    "patch_size": [7],
    "patch_stride": [4],
    "patch_padding": [3],
    "patch_prenorm": [False],
    "embed_dim": [16],
    "num_heads": [1],
    "num_groups": [1],
    "window_size": 4,
    "projection_dim": 32,
    "drop_path_rate": 0.0,
}


def make_tokenizer() -> BartTokenizer:
    """BART's byte-level BPE with Florence-2's added tokens, trained on a few sentences."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["<mask>"] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": IMAGE_TOKEN})
    tokenizer.add_tokens(list(TASK_TOKENS + LOC_TOKENS), special_tokens=True)
    return tokenizer


def make(path: Path) -> Path:
    """Write a complete tiny Florence-2 checkpoint folder at ``path`` and return it."""
    path = Path(path)
    tokenizer = make_tokenizer()
    image_processor = CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    image_processor.image_seq_length = IMAGE_SEQ_LENGTH
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>")}
    config = Florence2Config(
        text_config={
            **TEXT_CONFIG,
            "vocab_size": len(tokenizer),
            "bos_token_id": special["<s>"],
            "pad_token_id": special["<pad>"],
            "eos_token_id": special["</s>"],
            "decoder_start_token_id": special["</s>"],
            "forced_eos_token_id": special["</s>"],
        },
        vision_config=VISION_CONFIG,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    generation = model.generation_config
    generation.bos_token_id = special["<s>"]
    generation.pad_token_id = special["<pad>"]
    generation.eos_token_id = special["</s>"]
    generation.decoder_start_token_id = special["</s>"]
    generation.forced_bos_token_id = special["<s>"]
    generation.forced_eos_token_id = special["</s>"]
    generation.no_repeat_ngram_size = 3
    generation.num_beams = 3
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
