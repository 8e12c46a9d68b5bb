"""The CLIP the recipe trains: loading a local checkpoint (transformers or open_clip), the contrastive
training module, LoRA, and the export the engine's ``clip`` backend serves.

Checkpoints are read the way the engine reads them (rs_assistant/engine/backends/clip.py): a
transformers CLIP folder, or an open_clip folder (GeoRSCLIP, RemoteCLIP, SkyCLIP ViTs) converted
onto a transformers ``CLIPModel`` by the backend's own converter. The export is always a
transformers CLIP folder (LoRA weights merged in).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

from rs_assistant.engine.backends import clip as clip_backend
from training.loop import describe_found, gather_with_grad

log = logging.getLogger(__name__)

EXPECTED = (
    "a CLIP checkpoint folder: transformers (config.json with model_type 'clip', model.safetensors, tokenizer, "
    "processor_config.json or preprocessor_config.json) or open_clip (open_clip_config.json, weights, BPE vocabulary)"
)
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class ClipParts:
    """A loaded CLIP: the model, its tokenizer and its image processor (what its training used)."""

    model: CLIPModel
    tokenizer: CLIPTokenizer
    image_processor: Any
    source: str  # "transformers" or "open_clip"

    @property
    def context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)


def load_clip(path: str | Path) -> ClipParts:
    """The CLIP in ``path`` (fp32, CPU); ValueError saying what was found when it is not a CLIP folder."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"CLIP checkpoint {path}: no such folder; expected {EXPECTED}")
    if (path / clip_backend.OPEN_CLIP_CONFIG).is_file():
        return _load_open_clip(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"CLIP checkpoint {path} holds {describe_found(path)}; expected {EXPECTED}")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"CLIP checkpoint {config_file} is not a JSON object ({exc}); expected {EXPECTED}") from exc
    if model_type != "clip":
        raise ValueError(
            f"CLIP checkpoint {path} holds a {model_type!r} model (config.json model_type); expected {EXPECTED}"
        )
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    return ClipParts(model, processor.tokenizer, processor.image_processor, "transformers")


def _load_open_clip(path: Path) -> ClipParts:
    raw = json.loads((path / clip_backend.OPEN_CLIP_CONFIG).read_text(encoding="utf-8"))
    model_cfg = raw.get("model_cfg", raw)
    try:
        vocab, merges = clip_backend.read_bpe(path)
        tokenizer = CLIPTokenizer(
            vocab=vocab, merges=merges, model_max_length=int(model_cfg["text_cfg"].get("context_length", 77))
        )
        config = clip_backend.clip_config_from_open_clip(model_cfg, tokenizer)
        image_processor = clip_backend.image_processor_from_open_clip(model_cfg, raw.get("preprocess_cfg", {}))
        weights = _open_clip_weights(path)
        state = clip_backend.convert_open_clip_state_dict(clip_backend.load_open_clip_state_dict(weights))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise ValueError(f"open_clip checkpoint {path}: {exc}; expected {EXPECTED}") from exc
    model = CLIPModel(config)
    model.load_state_dict(state, strict=True)
    log.info("converted open_clip checkpoint %s (%s) to a transformers CLIPModel", path, weights.name)
    return ClipParts(model, tokenizer, image_processor, "open_clip")


def _open_clip_weights(path: Path) -> Path:
    for name in clip_backend.OPEN_CLIP_WEIGHTS:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.pt"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"no weights ({' or '.join(clip_backend.OPEN_CLIP_WEIGHTS)} or one *.pt; folder holds {describe_found(path)})"
    )


def add_lora(
    model: CLIPModel, r: int, alpha: float, dropout: float, targets: Sequence[str], train_logit_scale: bool
) -> nn.Module:
    """``model`` with LoRA adapters (peft) on ``targets`` of both towers; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets)))
    model.logit_scale.requires_grad_(train_logit_scale)
    return lora


def merged(model: nn.Module) -> CLIPModel:
    """A plain CLIPModel: LoRA adapters merged into the weights (the peft wrapper is undone in place)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


class ContrastiveCLIP(nn.Module):
    """InfoNCE over the *global* batch (features gathered from every process), learnable temperature.

    ``forward`` returns the loss and, for the log, the in-batch image-to-text accuracy and the
    temperature's inverse (the logit scale, clamped at 100 as CLIP does).
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    @property
    def base(self) -> CLIPModel:
        model = self.clip
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.get_image_features(pixel_values=pixel_values).pooler_output.float(), dim=-1)

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(out.pooler_output.float(), dim=-1)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        images = gather_with_grad(self.embed_images(pixel_values))
        texts = gather_with_grad(self.embed_texts(input_ids, attention_mask))
        scale = self.base.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
        logits = scale * images @ texts.T
        target = torch.arange(len(logits), device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        accuracy = (logits.argmax(1) == target).float().mean()
        return {"loss": loss, "acc": accuracy.detach(), "scale": scale.detach()}


def export_clip(model: nn.Module, parts: ClipParts, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A transformers CLIP folder the engine's ``clip`` backend loads (LoRA merged)."""
    plain = merged(model).to("cpu", dtype)
    plain.save_pretrained(out)
    CLIPProcessor(image_processor=parts.image_processor, tokenizer=parts.tokenizer).save_pretrained(out)
    return out
