"""What the recipes on the RSA model share (grounding, segment, change): building the model, LoRA,
the added tokens' embeddings, batches in the RSA prompt format, greedy evaluation and the export.

The RSA model family (rs_assistant/engine/models/rsa) *is* the reproduction: given pretrained parts
(a CLIP vision folder and a causal-LM folder) and a named config for the rest (configs/NAME.json:
bridge, mask decoder, difference module), it is SkyEyeGPT/GeoChat (bridge + LoRA LLM + location
tokens), GeoPix ([SEG] + mask decoder with class-wise memory) or DeltaVLM (bi-temporal encoder,
difference module, instruction-aware Q-Former, frozen LLM). A run starts either

- from an RSA checkpoint folder (``init_from``: what the engine serves, e.g. a previous run's
  export), or
- from pretrained parts: ``vision_path`` (a transformers CLIP or CLIP-vision folder) and
  ``lm_path`` (any transformers causal LM with its tokenizer, which gets the RSA tokens added:
  ``extend_tokenizer``). Left empty, tiny random ones are built in ``work_dir``
  (training/tiny_checkpoints.py): what tiny.toml and the tests use.

Trainable, per recipe: ``trainable_modules`` (top-level RSA parts: projector, mask_decoder,
difference, delta_projector, delta_qformer), the language model by ``finetune`` (``lora``: peft LoRA
adapters on ``lora_targets``; ``full``; ``frozen``), the last ``train_vision_layers`` layers of the
vision encoder, and the embedding rows of the RSA tokens (``<loc_i>``, ``[SEG]``, task tags,
``</s>`` ...: a pretrained LLM has never seen them). With ``new_token_rows_only`` (the default) only
those rows learn: the gradient of every other row is zeroed and they are kept out of weight decay,
so a "frozen" LLM stays exactly the pretrained one apart from the tokens it could not know.

The export is a plain RSA checkpoint folder (LoRA merged into the weights), served by the engine
with ``backend = "rsa"``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rs_assistant.core.protocol import Message, Task
from rs_assistant.core.protocol import Role as MessageRole
from rs_assistant.engine.models.rsa import RSAConfig, RSAForConditionalGeneration, RSAProcessor, extend_tokenizer
from rs_assistant.engine.models.rsa.configuration_rsa import CONFIGS_DIR
from rs_assistant.engine.models.rsa.processing_rsa import SEG
from training.loop import LoopConfig, Recipe, Runtime, describe_found, main_first, unwrap
from training.parts import check_causal_lm, check_clip, check_loading_info, check_model_type, lora_config, vision_and_lm

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FINETUNES = ("lora", "full", "frozen")
CAPTION_METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr")
TOP_LEVEL = ("projector", "delta_projector", "difference", "delta_qformer", "mask_decoder", "aux_class_head")
RSA_EXPECTED = (
    "an RSA checkpoint folder (config.json with model_type 'rsa', model.safetensors, tokenizer files, "
    "processor_config.json), e.g. a previous run's export"
)


@dataclass(frozen=True)
class RSARecipeConfig(LoopConfig):
    """Settings shared by the RSA recipes; each recipe's config adds its data and evaluation keys."""

    init_from: str = ""  # an RSA checkpoint folder; "" builds the model from pretrained parts
    model: str = (
        "tiny"  # configs/NAME.json: bridge, mask decoder, difference module (the parts' sizes come from their folders)
    )
    rsa: dict = field(
        default_factory=dict
    )  # RSAConfig overrides when building from parts, e.g. {delta_qformer_layers = 2}
    vision_path: str = ""  # CLIP folder; "" builds a tiny random one in work_dir
    lm_path: str = ""  # causal LM folder (weights + tokenizer); "" builds a tiny random Qwen2
    finetune: str = "lora"  # the language model: lora | full | frozen
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    trainable_modules: tuple[str, ...] = ("projector",)
    train_vision_layers: int = 0  # the last N vision encoder layers train (-1: all of it)
    new_token_rows_only: bool = True  # of the LM's embeddings, only the RSA tokens' rows learn (else whole matrices)
    max_length: int = 512  # tokens per sample, images included (longer samples are cut)
    eval_count: int = 0  # samples evaluated (0: the whole evaluation split)
    eval_batch_size: int = 16
    eval_max_new_tokens: int = 64
    export_dtype: str = "float32"
    caption_metrics: tuple[str, ...] = (
        CAPTION_METRICS  # of BLEU, METEOR, ROUGE_L, CIDEr; [] : none (METEOR takes seconds)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "caption_metrics", tuple(self.caption_metrics))
        check_outputs(self.caption_metrics, self.export_dtype)
        if self.finetune not in FINETUNES:
            raise ValueError(f"finetune must be one of {', '.join(FINETUNES)}, got {self.finetune!r}")
        unknown = sorted(set(self.trainable_modules) - set(TOP_LEVEL))
        if unknown:
            raise ValueError(f"trainable_modules: unknown part(s) {', '.join(unknown)}; known: {', '.join(TOP_LEVEL)}")
        if self.init_from and self.rsa:
            raise ValueError(
                f"rsa overrides {sorted(self.rsa)} change the architecture, which init_from "
                f'({self.init_from}) fixes; drop them or build from parts (init_from = "")'
            )
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        object.__setattr__(self, "trainable_modules", tuple(self.trainable_modules))


def check_outputs(caption_metrics: Sequence[str], export_dtype: str) -> None:
    """A recipe config's caption metrics (of :data:`CAPTION_METRICS`) and export dtype (of :data:`DTYPES`)."""
    unknown = sorted(set(caption_metrics) - set(CAPTION_METRICS))
    if unknown:
        raise ValueError(f"caption_metrics: unknown {', '.join(unknown)}; known: {', '.join(CAPTION_METRICS)}")
    if export_dtype not in DTYPES:
        raise ValueError(f"export_dtype must be one of {', '.join(DTYPES)}, got {export_dtype!r}")


# --- building -------------------------------------------------------------------------------------


def load_rsa_checkpoint(folder: Path) -> tuple[RSAForConditionalGeneration, RSAProcessor]:
    """An RSA checkpoint folder; ValueError saying what was found when it is something else."""
    check_model_type(folder, "init_from", ("rsa",), RSA_EXPECTED)
    if not (folder / "processor_config.json").is_file():
        raise ValueError(
            f"init_from {folder}: no processor_config.json (holds {describe_found(folder)}); expected {RSA_EXPECTED}"
        )
    processor = RSAProcessor.from_pretrained(folder)
    model, info = RSAForConditionalGeneration.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    check_loading_info(folder, info)
    return model, processor


def build_from_parts(c: RSARecipeConfig, vision: Path, lm: Path) -> tuple[RSAForConditionalGeneration, RSAProcessor]:
    """configs/``c.model``.json with the vision and text configs of the two folders, their weights loaded."""
    from transformers import AutoConfig, AutoTokenizer, CLIPVisionConfig

    check_clip(vision, "vision_path")
    check_causal_lm(lm, "lm_path")
    named = CONFIGS_DIR / f"{c.model}.json"
    if not named.is_file():
        raise ValueError(
            f"model {c.model!r}: no {named}; known: {', '.join(sorted(p.stem for p in CONFIGS_DIR.glob('*.json')))}"
        )
    values = json.loads(named.read_text(encoding="utf-8"))
    values.update(c.rsa)
    tokenizer = extend_tokenizer(
        AutoTokenizer.from_pretrained(lm, local_files_only=True), int(values.get("num_location_bins", 100))
    )
    values.update(
        vision_config=CLIPVisionConfig.from_pretrained(vision, local_files_only=True).to_dict(),
        text_config=AutoConfig.from_pretrained(lm, local_files_only=True).to_dict(),
        vision_pretrained_path=str(vision),
        text_pretrained_path=str(lm),
        freeze_vision=c.train_vision_layers == 0,
        freeze_llm=c.finetune != "full",
        train_new_embeddings=True,
    )
    try:
        config = RSAConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model {c.model!r} with rsa overrides {c.rsa} and the parts {vision}, {lm}: {exc}") from None
    config.bind_tokenizer(tokenizer)
    torch.manual_seed(c.seed)
    model = RSAForConditionalGeneration.from_pretrained_parts(config)
    model.config.vision_pretrained_path = model.config.text_pretrained_path = None  # the export holds every weight
    return model, RSAProcessor.for_model(tokenizer, model.config)


def rsa_token_ids(processor: RSAProcessor) -> list[int]:
    """The ids of the tokens the RSA format adds to a language model (specials and location bins)."""
    return sorted(set(processor.token_ids.values()) | set(processor.loc_ids))


class RSATraining(nn.Module):
    """The RSA model and its loss terms for the loop; a recipe adds its own terms in ``extra_loss``."""

    def __init__(self, model: RSAForConditionalGeneration) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: Any) -> dict[str, torch.Tensor]:
        out = self.model(**batch)
        terms = {"loss": out.loss}
        for name in ("lm_loss", "mask_loss", "change_loss"):
            value = getattr(out, name)
            if value is not None:
                terms[name.removesuffix("_loss")] = value.detach()
        return terms


class RSARecipe(Recipe):
    """Build, freeze/LoRA, batches in the RSA format, export; subclasses give the data and the evaluation."""

    config: RSARecipeConfig
    run_keys = (
        "init_from",
        "model",
        "rsa",
        "vision_path",
        "lm_path",
        "finetune",
        "lora_r",
        "lora_targets",
        "trainable_modules",
        "train_vision_layers",
        "new_token_rows_only",
    )

    def parts(self) -> tuple[Path, Path]:
        return vision_and_lm(self.config.work_dir, self.config.vision_path, self.config.lm_path)

    def load_model(self, runtime: Runtime) -> tuple[RSAForConditionalGeneration, RSAProcessor]:
        c = self.config
        if c.init_from:
            model, processor = load_rsa_checkpoint(Path(c.init_from))
            model.config.freeze_vision = c.train_vision_layers == 0
            model.config.freeze_llm = c.finetune != "full"
            return model, processor
        vision, lm = main_first(runtime, self.parts)
        return build_from_parts(c, vision, lm)

    def build(self, runtime: Runtime) -> nn.Module:
        c = self.config
        model, self.processor = self.load_model(runtime)
        self.check_model(model)
        model.requires_grad_(False)
        for name in c.trainable_modules:
            part = getattr(model, name, None)
            if part is None:
                raise ValueError(
                    f"trainable_modules names {name!r}, which this model's config does not have "
                    f"(e.g. delta_qformer needs rsa.delta_qformer_layers > 0)"
                )
            part.requires_grad_(True)
        layers = getattr(model.vision_tower, "vision_model", model.vision_tower).encoder.layers
        if c.train_vision_layers:
            trained = layers if c.train_vision_layers < 0 else layers[-c.train_vision_layers :]
            for layer in trained:
                layer.requires_grad_(True)
            if c.train_vision_layers < 0:
                model.vision_tower.requires_grad_(True)
        if c.finetune == "full":
            model.language_model.requires_grad_(True)
        elif c.finetune == "lora":
            from peft import get_peft_model

            try:
                model.language_model = get_peft_model(model.language_model, lora_config(c))
            except ValueError as exc:
                raise ValueError(f"LoRA on the language model: {exc} (lora_targets {list(c.lora_targets)})") from None
        self._token_rows(model)
        return RSATraining(model).to(runtime.device)

    def check_model(self, model: RSAForConditionalGeneration) -> None:
        """A recipe's checks of the built model (e.g. the task's parts are there)."""

    def _token_rows(self, model: RSAForConditionalGeneration) -> None:
        """The LM's embedding matrices learn the RSA tokens (only their rows with ``new_token_rows_only``)."""
        if self.config.finetune == "full":
            return
        matrices = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())}
        self._embedding_ids = set(matrices)
        for weight in matrices.values():
            weight.requires_grad_(True)
            if self.config.new_token_rows_only:
                keep = torch.zeros(weight.shape[0], 1)
                keep[rsa_token_ids(self.processor)] = 1.0
                weight.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device, grad.dtype))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The loop's groups, with the LM's embedding matrices never decayed (their frozen rows must not shrink)."""
        embeddings = getattr(self, "_embedding_ids", set())
        decay, rest = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                no_decay = (
                    param.dim() < 2
                    or "embed" in name
                    or "norm" in name
                    or id(param) in embeddings
                    or name.endswith(("position", "queries", "memory"))
                )
                (rest if no_decay else decay).append(param)
        return [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": rest, "weight_decay": 0.0}]

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        rsa = unwrap(model).model
        rsa.vision_tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm = rsa.language_model
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.enable_input_require_grads()

    # --- batches ------------------------------------------------------------------------------------

    def encode(
        self, texts: Sequence[str], images: Sequence[Any], masks: Sequence[Sequence[np.ndarray]] | None = None
    ) -> dict[str, Any]:
        """A training batch: processor inputs with labels, cut to ``max_length``; ``masks[b]`` are sample b's
        target masks (one per ``[SEG]``, any size), resized to the model's mask grid."""
        processor = self.processor
        batch = processor(list(texts), list(images), return_labels=True)
        limit = self.config.max_length
        if batch["input_ids"].shape[1] > limit:
            for key in ("input_ids", "attention_mask", "labels"):
                batch[key] = batch[key][:, :limit].contiguous()
        if masks is not None:
            size = self.mask_size
            seg = processor.token_ids[SEG]
            targets = []
            for b, sample_masks in enumerate(masks):
                kept = int((batch["input_ids"][b] == seg).sum())  # a cut sample keeps its first [SEG]s
                stack = [resize_mask(m, size) for m in list(sample_masks)[:kept]]
                targets.append(torch.stack(stack) if stack else torch.zeros(0, size, size))
            batch["seg_targets"] = targets
        return batch

    @property
    def mask_size(self) -> int:
        vision = self.processor.image_size
        return vision  # targets at the input size; the model area-resizes them to its mask grid

    # --- export -------------------------------------------------------------------------------------

    def export(self, model: nn.Module, out: Path) -> Path:
        rsa: RSAForConditionalGeneration = unwrap(model).model
        if self.config.finetune == "lora":
            rsa.language_model = rsa.language_model.merge_and_unload()
        rsa.requires_grad_(False)
        rsa.to("cpu", DTYPES[self.config.export_dtype]).save_pretrained(out)
        self.processor.save_pretrained(out)
        examples = getattr(self, "examples", None)
        if examples:
            (out / "eval_examples.json").write_text(json.dumps(examples, indent=1) + "\n", encoding="utf-8")
        return out


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """A bool/0-1 mask (H x W) as a float ``[size, size]`` tensor (area interpolation: fractions at the edges)."""
    tensor = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="area")[0, 0]


def rgb(image: Any) -> np.ndarray:
    """A PIL image (or array) as the H x W x 3 uint8 array the processor reads."""
    return np.array(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)  # a writable copy


def history_messages(turns: Sequence[tuple[str, str]]) -> tuple[Message, ...]:
    """(question, answer) pairs as protocol messages for ``RSAProcessor.format_prompt``."""
    messages: list[Message] = []
    for question, answer in turns:
        messages += [Message(MessageRole.USER, question), Message(MessageRole.ASSISTANT, answer)]
    return tuple(messages)


@torch.no_grad()
def generate(
    rsa: RSAForConditionalGeneration,
    processor: RSAProcessor,
    texts: Sequence[str],
    images: Sequence[Any],
    max_new_tokens: int,
    device: torch.device,
    hidden_states: bool = False,
) -> tuple[Any, Any]:
    """Greedy answers for a batch of prompts (left padded), as the engine generates them: (output, visual)."""
    batch = processor(list(texts), list(images), padding_side="left")
    visual = rsa.encode_images(batch["pixel_values"].to(device))
    output = rsa.generate(
        batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        visual=visual,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        output_hidden_states=hidden_states,
    )
    return output, visual


def caption_metrics(
    references: dict[str, Sequence[str]],
    predictions: dict[str, str],
    prefix: str = "",
    names: Sequence[str] = CAPTION_METRICS,
) -> dict[str, float]:
    """``names`` of BLEU (1..4), METEOR, ROUGE_L, CIDEr (pycocoevalcap; needs Java), keys prefixed; {} without Java."""
    import shutil

    from training.eval.metrics import caption_scores

    if not predictions or not names:
        return {}
    if shutil.which("java") is None:
        log.warning("no java on PATH: BLEU/METEOR/ROUGE-L/CIDEr skipped (pycocoevalcap's tokenizer needs it)")
        return {}
    return {prefix + k: v for k, v in caption_scores(references, predictions, names).items()}


__all__ = [
    "RSARecipe",
    "RSARecipeConfig",
    "RSATraining",
    "Task",
    "caption_metrics",
    "generate",
    "history_messages",
    "resize_mask",
    "rgb",
]
