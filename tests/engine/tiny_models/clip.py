"""Tiny random-weight CLIP checkpoints: a transformers folder and an open_clip folder.

    from tests.engine.tiny_models import clip
    hf_folder = clip.make(tmp_path / "clip")
    open_clip_folder = clip.make_open_clip(tmp_path / "open_clip", hf_folder)

``make`` writes what openai/clip-vit-base-patch32 holds (config.json, model.safetensors,
tokenizer.json + tokenizer_config.json, processor_config.json) for a CLIP of the real
architecture with tiny sizes: 32-pixel images in 8-pixel patches, two layers per tower, widths
of 24-32, QuickGELU as OpenAI's models. Every parameter is perturbed from its initial value so
that no bias or norm is a trivial zero or one, and a mapping mistake cannot hide.

The tokenizer is CLIP's byte-level BPE with merges learnt here on a few remote-sensing
sentences; its vocabulary is laid out as the original CLIP tokenizer lays it out (bytes, bytes
with ``</w>``, one token per merge, then the two special tokens), so the open_clip folder can
carry only the merges, as open_clip's ``bpe_simple_vocab_16e6.txt.gz`` does.

``make_open_clip`` rewrites that same model the way open_clip stores it (GeoRSCLIP, RemoteCLIP and
SkyCLIP ship this layout): the state dict under open_clip's names with fused q/k/v and
(width, embed_dim) projections in ``open_clip_pytorch_model.bin``, an ``open_clip_config.json``
and the gzipped merges. Loading it through the backend's converter must give the embeddings of
the transformers model it came from.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

IMAGE_SIZE = 32
CONTEXT_LENGTH = 16
EMBED_DIM = 16
VISION = {"width": 32, "layers": 2, "heads": 2, "patch_size": 8}
TEXT = {"width": 24, "layers": 2, "heads": 2}
#: Not OpenAI's values, so that a loader ignoring the checkpoint's own shows up in the embeddings.
MEAN = (0.45, 0.5, 0.55)
STD = (0.25, 0.3, 0.2)

#: The pre-tokenizer split of the original CLIP tokenizer.
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CORPUS = (
    "a satellite image of an airport with two runways.",
    "a satellite image of a harbor with ships and storage tanks",
    "forest, farmland, residential area, river, bare land, industrial area",
)


def train_merges() -> list[tuple[str, str]]:
    """CLIP-style BPE merges (words end in ``</w>``) learnt on a few sentences."""
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=640,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    return [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(bpe.to_str())["model"]["merges"]
    ]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """The vocabulary as OpenAI's ``simple_tokenizer.py`` builds it from the merges."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    tokens = [chr(c) for c in cs]
    tokens = tokens + [t + "</w>" for t in tokens] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def make(path: Path) -> Path:
    """Write a complete tiny transformers CLIP checkpoint folder at ``path`` and return it."""
    path = Path(path)
    merges = train_merges()
    tokenizer = CLIPTokenizer(vocab=clip_vocab(merges), merges=merges, model_max_length=CONTEXT_LENGTH)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(MEAN),
        image_std=list(STD),
    )
    config = CLIPConfig(
        projection_dim=EMBED_DIM,
        vision_config={
            "hidden_size": VISION["width"],
            "intermediate_size": 4 * VISION["width"],
            "num_hidden_layers": VISION["layers"],
            "num_attention_heads": VISION["heads"],
            "image_size": IMAGE_SIZE,
            "patch_size": VISION["patch_size"],
            "hidden_act": "quick_gelu",
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT["width"],
            "intermediate_size": 4 * TEXT["width"],
            "num_hidden_layers": TEXT["layers"],
            "num_attention_heads": TEXT["heads"],
            "max_position_embeddings": CONTEXT_LENGTH,
            "hidden_act": "quick_gelu",
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def open_clip_state_dict(model: CLIPModel) -> dict[str, torch.Tensor]:
    """``model``'s weights under open_clip's names and shapes (the inverse of the backend's mapping)."""
    hf = model.state_dict()
    out = {
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": hf["visual_projection.weight"].t(),
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "text_projection": hf["text_projection.weight"].t(),
        "logit_scale": hf["logit_scale"],
    }
    # open_clip module -> transformers module, for modules with a weight and a bias
    modules = {
        "visual.ln_pre": "vision_model.pre_layrnorm",
        "visual.ln_post": "vision_model.post_layernorm",
        "ln_final": "text_model.final_layer_norm",
    }
    block = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
        "attn.out_proj": "self_attn.out_proj",
    }
    towers = (("visual.transformer", "vision_model", VISION["layers"]), ("transformer", "text_model", TEXT["layers"]))
    for oc, tower, layers in towers:
        for i in range(layers):
            src = f"{tower}.encoder.layers.{i}"
            for kind in ("weight", "bias"):
                qkv = [hf[f"{src}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{oc}.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(qkv)
            modules.update({f"{oc}.resblocks.{i}.{o}": f"{src}.{n}" for o, n in block.items()})
    for old, new in modules.items():
        out[f"{old}.weight"], out[f"{old}.bias"] = hf[f"{new}.weight"], hf[f"{new}.bias"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def open_clip_config(model: CLIPModel) -> dict:
    """``model``'s ``open_clip_config.json``, as on the Hugging Face hub."""
    return {
        "model_cfg": {
            "embed_dim": EMBED_DIM,
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": IMAGE_SIZE,
                "layers": VISION["layers"],
                "width": VISION["width"],
                "patch_size": VISION["patch_size"],
                "head_width": VISION["width"] // VISION["heads"],
            },
            "text_cfg": {
                "context_length": CONTEXT_LENGTH,
                "vocab_size": model.config.text_config.vocab_size,
                "width": TEXT["width"],
                "heads": TEXT["heads"],
                "layers": TEXT["layers"],
            },
        },
        "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)},
    }


def make_open_clip(path: Path, source: Path) -> Path:
    """Write the CLIP in ``source`` (a folder from :func:`make`) as an open_clip folder at ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = CLIPModel.from_pretrained(source, local_files_only=True)
    merges = json.loads((Path(source) / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    torch.save(open_clip_state_dict(model), path / "open_clip_pytorch_model.bin")
    (path / "open_clip_config.json").write_text(json.dumps(open_clip_config(model), indent=2), encoding="utf-8")
    with gzip.open(path / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(["bpe_simple_vocab_16e6.txt#version: 0.2"] + [" ".join(m) for m in merges]) + "\n")
    return path
