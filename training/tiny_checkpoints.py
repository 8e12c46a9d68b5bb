"""Tiny random-weight checkpoints of the real architectures, for the recipes' ``tiny`` configs.

    from training.tiny_checkpoints import tiny_clip, tiny_causal_lm
    clip_folder = tiny_clip(Path("/tmp/tiny-clip"))        # transformers CLIPModel folder
    lm_folder = tiny_causal_lm(Path("/tmp/tiny-lm"))       # transformers Qwen2ForCausalLM folder

A tiny config that names no checkpoint builds these into its ``work_dir`` (once; a folder already
there is reused), so ``python -m training clip --config training/recipes/clip/tiny.toml`` runs
without a model hub. The folders hold what a released checkpoint holds (config, safetensors
weights, tokenizer, image processor) and load through the same code as a real one; only the
sizes differ (32-pixel images, two layers, widths of 24-64). Tokenizers are byte-level BPEs
whose merges join the words of a few remote-sensing sentences (built deterministically), laid out
as the real ones are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import regex
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from rs_assistant.engine.backends.clip import bytes_to_unicode, vocab_from_merges

CORPUS = (
    "a satellite image of an airport with two runways and many planes.",
    "a harbor with ships, boats and storage tanks next to the water.",
    "forest, farmland, residential area, river, bare land, industrial area, beach, desert, meadow.",
    "many buildings and green trees are around a playground. a road crosses the park.",
    "there are 1 2 3 4 5 6 7 8 9 0 cars in a parking lot near a church and a stadium.",
)
#: Scene classes (RSICD's, a few) whose captions the tiny LM is pre-trained on, so that it is a
#: language model (as RS-CapRet's frozen LLM is) and an image bridge has something to steer.
LABELS = ("forest", "harbor", "airport", "farmland", "river", "beach", "desert", "meadow", "parking lot", "stadium")
CAPTION_TEMPLATES = (
    "a satellite image of {label}.",
    "an aerial view of the {label}.",
    "there is a {label} in the image.",
)
PRETRAIN_STEPS = 150
#: The pre-tokenizer split of the original CLIP tokenizer.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
#: The pre-tokenizer split of the Qwen2 tokenizer.
_QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CLIP_SIZES = {
    "image_size": 32,
    "patch_size": 8,
    "context_length": 24,
    "embed_dim": 32,
    "vision_width": 32,
    "text_width": 32,
    "layers": 2,
    "heads": 2,
}
LM_SIZES = {"hidden_size": 64, "intermediate_size": 128, "layers": 2, "heads": 4, "kv_heads": 2}


def _atomic_folder(path: Path, write) -> Path:
    """Write into a temporary sibling, then rename: a crash never leaves half a checkpoint at ``path``."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        write(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _chain_merges(words: Iterable[list[str]]) -> list[tuple[str, str]]:
    """Merges that join each word's symbols left to right, in first-seen order.

    Built by hand rather than by ``tokenizers``' trainer, whose tie-breaking differs from run to
    run: two builds of a tiny checkpoint must tokenise alike (a resumed or distributed run may
    build its own copy)."""
    merges: dict[tuple[str, str], None] = {}
    for symbols in words:
        current = symbols[0]
        for symbol in symbols[1:]:
            merges.setdefault((current, symbol), None)
            current += symbol
    return list(merges)


def _bytes_of(text: str) -> list[str]:
    table = bytes_to_unicode()
    return [table[b] for b in text.encode("utf-8")]


def clip_merges(corpus: Iterable[str] = CORPUS) -> list[tuple[str, str]]:
    """CLIP-style BPE merges (the last symbol of a word ends in ``</w>``) for the words of ``corpus``."""
    words = []
    for sentence in corpus:
        for word in regex.findall(_CLIP_SPLIT, sentence.lower()):
            symbols = _bytes_of(word)
            words.append(symbols[:-1] + [symbols[-1] + "</w>"])
    return _chain_merges(words)


def tiny_clip(path: Path, seed: int = 0) -> Path:
    """A complete transformers CLIP folder (config, model.safetensors, tokenizer, processor_config.json)."""
    s = CLIP_SIZES

    def write(folder: Path) -> None:
        merges = clip_merges()
        tokenizer = CLIPTokenizer(vocab=vocab_from_merges(merges), merges=merges, model_max_length=s["context_length"])
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": s["image_size"]}, crop_size={"height": s["image_size"], "width": s["image_size"]}
        )
        config = CLIPConfig(
            projection_dim=s["embed_dim"],
            vision_config={
                "hidden_size": s["vision_width"],
                "intermediate_size": 4 * s["vision_width"],
                "num_hidden_layers": s["layers"],
                "num_attention_heads": s["heads"],
                "image_size": s["image_size"],
                "patch_size": s["patch_size"],
                "hidden_act": "quick_gelu",
            },
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": s["text_width"],
                "intermediate_size": 4 * s["text_width"],
                "num_hidden_layers": s["layers"],
                "num_attention_heads": s["heads"],
                "max_position_embeddings": s["context_length"],
                "hidden_act": "quick_gelu",
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
        )
        torch.manual_seed(seed)
        CLIPModel(config).save_pretrained(folder)
        CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)

    return _atomic_folder(path, write)


def lm_tokenizer(corpus: Iterable[str] = CORPUS) -> PreTrainedTokenizerFast:
    """A Qwen2-style byte-level BPE (no prefix space, ``<|endoftext|>`` ends and pads) for the words of ``corpus``."""
    merges = _chain_merges(_bytes_of(piece) for sentence in corpus for piece in regex.findall(_QWEN_SPLIT, sentence))
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token=None, model_max_length=512
    )


def lm_corpus() -> list[str]:
    return list(CORPUS) + [t.format(label=label) for label in LABELS for t in CAPTION_TEMPLATES]


def _pretrain(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    """A few hundred milliseconds of next-token training on :func:`lm_corpus` (seeded, deterministic)."""
    texts = lm_corpus()
    batch = tokenizer([" " + t for t in texts], padding=True, return_tensors="pt")
    ids = torch.cat([batch["input_ids"], torch.full((len(texts), 1), tokenizer.eos_token_id)], 1)
    mask = torch.cat([batch["attention_mask"], torch.ones(len(texts), 1, dtype=torch.long)], 1)
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend (many times slower on a busy machine)
    try:
        model.train()
        for _ in range(PRETRAIN_STEPS):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)


def tiny_causal_lm(path: Path, seed: int = 0) -> Path:
    """A complete transformers Qwen2ForCausalLM folder (config, generation config, weights, tokenizer)."""
    s = LM_SIZES

    def write(folder: Path) -> None:
        tokenizer = lm_tokenizer(lm_corpus())
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=s["hidden_size"],
            intermediate_size=s["intermediate_size"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"],
            max_position_embeddings=256,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
        _pretrain(model, tokenizer)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return _atomic_folder(path, write)
