"""python -m training capret --config training/recipes/capret/tiny.toml [--set key=value ...] [--fresh]

RS-CapRet (Silva et al., 2024; FROMAGe's recipe): a frozen CLIP image encoder (``clip_path``,
transformers or open_clip folder) and a frozen causal LM (``lm_path``, any transformers causal
LM: Llama-2-7B in the paper), with only the linear maps between them trained (the model is
rs_assistant/engine/models/capret). Each step, on image-caption pairs of a Karpathy-style data
set (RSICD, UCM-Captions, Sydney-Captions; ``data_root``):

- captioning loss: the image's k visual tokens, then its caption (one of five, drawn by
  ``(seed, step, index)``) and EOS, learnt by next-token cross-entropy;
- retrieval loss: the caption then ``[RET]``; InfoNCE (both ways, learnable temperature, over the
  global batch) between the ``[RET]`` hidden state and the image's embedding, plus the LM's loss of
  emitting ``[RET]`` after the caption (``ret_token`` in the log).

``loss = caption_weight * caption + retrieval_weight * (retrieval + ret_token)``. At the end the
model captions the ``eval_split`` images (BLEU-1..4, METEOR, ROUGE-L, CIDEr with pycocoevalcap,
when Java is there) and retrieves images from their captions (R@1/5/10 both ways, mR), then the
whole model (frozen parts included) and its processor are exported to ``out`` for the engine's
``capret`` backend. Left empty, ``clip_path`` and ``lm_path`` are tiny random models built in
``work_dir`` (tiny.toml, the tests).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModelWithProjection

from rs_assistant.engine.models.capret import CapRetConfig, CapRetForCausalLM, CapRetProcessor
from training.data.formats import KarpathyCaptions
from training.eval.metrics import caption_scores, image_text_retrieval
from training.loop import LoopConfig, Recipe, Runtime, gather_with_grad, main_first, map_batches, seeded, unwrap
from training.parts import check_causal_lm, vision_and_lm
from training.recipes.clip.model import load_clip

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class CapRetTrainConfig(LoopConfig):
    """The capret recipe's settings (tiny.toml, paper.toml)."""

    clip_path: str = ""  # CLIP folder (transformers or open_clip); "" builds a tiny random one in work_dir
    lm_path: str = ""  # causal LM folder (config, weights, tokenizer); "" builds a tiny random Qwen2
    num_visual_tokens: int = 4
    retrieval_dim: int = 256
    caption_weight: float = 1.0
    retrieval_weight: float = 1.0
    max_text_tokens: int = 64
    data_root: str = ""  # Karpathy-style data set (dataset_*.json + images)
    train_split: str = "train"
    eval_split: str = "test"
    eval_count: int = 0  # images captioned in the evaluation (0: all of the split)
    eval_max_new_tokens: int = 40
    eval_batch_size: int = 32
    caption_metrics: bool = True  # BLEU/METEOR/ROUGE-L/CIDEr (pycocoevalcap, needs Java)
    export_dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.export_dtype not in DTYPES:
            raise ValueError(f"export_dtype must be one of {', '.join(DTYPES)}, got {self.export_dtype!r}")
        if not self.data_root:
            raise ValueError(
                "data_root is empty; give a Karpathy-style data set folder (dataset_*.json and its images), "
                "e.g. --set data_root=/data/RSICD"
            )


class CapRetTraining(nn.Module):
    """The two passes of a step and their losses, for the loop (and DistributedDataParallel)."""

    def __init__(self, model: CapRetForCausalLM, config: CapRetTrainConfig) -> None:
        super().__init__()
        self.model = model
        self.caption_weight, self.retrieval_weight = config.caption_weight, config.retrieval_weight

    def forward(
        self,
        pixel_values: torch.Tensor,
        caption_ids: torch.Tensor,
        caption_mask: torch.Tensor,
        caption_labels: torch.Tensor,
        ret_ids: torch.Tensor,
        ret_mask: torch.Tensor,
        ret_labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        model = self.model
        with torch.no_grad():
            image_embeds = model.image_embeddings(pixel_values)  # frozen encoder
        caption = model(
            input_ids=caption_ids,
            attention_mask=caption_mask,
            labels=caption_labels,
            inputs_embeds=model.embed(caption_ids, image_embeds=image_embeds),
        )
        ret = model(input_ids=ret_ids, attention_mask=ret_mask, labels=ret_labels)
        texts = gather_with_grad(model.text_retrieval_embeddings(ret.hidden_states, ret_ids))
        images = gather_with_grad(model.image_retrieval_embeddings(image_embeds))
        scale = model.bridge.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
        logits = scale * texts @ images.T
        target = torch.arange(len(logits), device=logits.device)
        retrieval = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        loss = self.caption_weight * caption.loss + self.retrieval_weight * (retrieval + ret.loss)
        return {
            "loss": loss,
            "caption": caption.loss.detach(),
            "retrieval": retrieval.detach(),
            "ret_token": ret.loss.detach(),
            "acc": (logits.argmax(1) == target).float().mean(),
        }


class CapRetRecipe(Recipe):
    name = "capret"
    run_keys = (
        "clip_path",
        "lm_path",
        "num_visual_tokens",
        "retrieval_dim",
        "data_root",
        "train_split",
        "max_text_tokens",
    )
    config: CapRetTrainConfig

    def __init__(self, config: CapRetTrainConfig) -> None:
        super().__init__(config)
        self.data = KarpathyCaptions(config.data_root, split=config.train_split)  # checks the data first
        if not self.data.samples:
            raise ValueError(f"{self.data.annotation}: split {config.train_split!r} has no images")

    def paths(self) -> tuple[Path, Path]:
        return vision_and_lm(self.config.work_dir, self.config.clip_path, self.config.lm_path)

    def build(self, runtime: Runtime) -> nn.Module:
        clip_path, lm_path = main_first(runtime, self.paths)
        parts = load_clip(clip_path)
        vision_config = parts.model.config.vision_config
        vision_config.projection_dim = parts.model.config.projection_dim
        vision = CLIPVisionModelWithProjection(vision_config)
        vision.load_state_dict(
            {k: v for k, v in parts.model.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
        )
        del parts.model
        lm, tokenizer = load_causal_lm(lm_path, runtime)
        self.processor = CapRetProcessor(tokenizer, parts.image_processor, self.config.num_visual_tokens)
        config = CapRetConfig(
            vision_config=vision_config.to_dict(),
            text_config=lm.config.to_dict(),
            num_visual_tokens=self.config.num_visual_tokens,
            retrieval_dim=self.config.retrieval_dim,
            image_token_id=self.processor.image_token_id,
            ret_token_id=self.processor.ret_token_id,
        )
        torch.manual_seed(self.config.seed)
        model = CapRetForCausalLM.from_parts(config, vision, lm)
        model.freeze_backbones()
        return CapRetTraining(model, self.config).to(runtime.device)

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        # The LM is frozen but gradients still flow through it to the bridge; checkpoint its layers.
        lm = model.model.language_model
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.enable_input_require_grads()

    def batches(self, start_step: int, runtime: Runtime) -> Iterator[dict[str, Any]]:
        samples, processor, limit = self.data.samples, self.processor, self.config.max_text_tokens
        seed = self.config.seed

        def collate(indices: list[int], step: int) -> dict:
            images, captions, ret_ids, ret_labels = [], [], [], []
            cap_ids, cap_labels = [], []
            for index in indices:
                sample = samples[index]
                caption = sample.captions[int(seeded(seed, step, index).integers(len(sample.captions)))]
                image = sample.image()
                ids, labels = processor.caption_example(image, caption)
                cap_ids.append(ids[: limit + processor.k])
                cap_labels.append(labels[: limit + processor.k])
                ids, labels = processor.retrieval_example(caption)
                keep = min(len(ids) - 1, limit)  # cut the caption, keep [RET] last
                ret_ids.append(ids[:keep] + ids[-1:])
                ret_labels.append(labels[:keep] + labels[-1:])
                images.append(image)
                captions.append(caption)
            cap = processor.pad(cap_ids, cap_labels)
            ret = processor.pad(ret_ids, ret_labels)
            return {
                "pixel_values": processor.pixel_values(images),
                "caption_ids": cap["input_ids"],
                "caption_mask": cap["attention_mask"],
                "caption_labels": cap["labels"],
                "ret_ids": ret["input_ids"],
                "ret_mask": ret["attention_mask"],
                "ret_labels": ret["labels"],
            }

        return map_batches(self.config, start_step, runtime, len(samples), collate)

    # --- evaluation --------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, runtime: Runtime) -> dict[str, float]:
        capret: CapRetForCausalLM = unwrap(model).model
        c, processor, device = self.config, self.processor, runtime.device
        data = KarpathyCaptions(c.data_root, split=c.eval_split)
        samples = data.samples[: c.eval_count] if c.eval_count else data.samples
        image_embeds = []
        for start in range(0, len(samples), c.eval_batch_size):
            chunk = [s.image() for s in samples[start : start + c.eval_batch_size]]
            image_embeds.append(capret.image_embeddings(processor.pixel_values(chunk).to(device)))
        image_embeds = torch.cat(image_embeds)
        metrics: dict[str, float] = {}
        predictions = {}
        stop = (processor.tokenizer.eos_token_id, processor.ret_token_id)
        for i, sample in enumerate(samples):  # noqa: B007
            ids = torch.tensor([processor.prefix() + [processor.image_token_id] * processor.k], device=device)
            embeds = capret.embed(ids, image_embeds=image_embeds[i : i + 1])
            produced = _greedy(capret, embeds, c.eval_max_new_tokens, stop)
            predictions[str(i)] = processor.tokenizer.decode(produced, skip_special_tokens=True).strip()
        references = {str(i): list(s.captions) for i, s in enumerate(samples)}
        if c.caption_metrics and shutil.which("java") is not None:
            metrics.update(caption_scores(references, predictions))
        elif c.caption_metrics:
            log.warning("no java on PATH: BLEU/METEOR/ROUGE-L/CIDEr skipped (pycocoevalcap's tokenizer needs it)")
        texts, owners = [], []
        for i, sample in enumerate(samples):
            texts.extend(sample.captions)
            owners.extend([i] * len(sample.captions))
        text_embeds = []
        for start in range(0, len(texts), c.eval_batch_size):
            encoded = [processor.retrieval_example(t)[0] for t in texts[start : start + c.eval_batch_size]]
            batch = {k: v.to(device) for k, v in processor.pad(encoded).items()}
            out = capret(**batch)
            text_embeds.append(capret.text_retrieval_embeddings(out.hidden_states, batch["input_ids"]))
        similarity = capret.image_retrieval_embeddings(image_embeds) @ torch.cat(text_embeds).T
        metrics.update(image_text_retrieval(similarity.float().cpu().numpy(), owners))
        self.examples = {samples[int(k)].image_path.name: v for k, v in list(predictions.items())[:20]}
        return metrics

    def export(self, model: nn.Module, out: Path) -> Path:
        capret: CapRetForCausalLM = unwrap(model).model
        capret.to("cpu", DTYPES[self.config.export_dtype]).save_pretrained(out)
        self.processor.save_pretrained(out)
        if getattr(self, "examples", None):
            (out / "eval_captions.json").write_text(json.dumps(self.examples, indent=1) + "\n", encoding="utf-8")
        return out


def _greedy(model: CapRetForCausalLM, embeds: torch.Tensor, max_new_tokens: int, stop: tuple[int, ...]) -> list[int]:
    cache, produced = None, []
    for _ in range(max_new_tokens):
        out = model(input_ids=None, inputs_embeds=embeds, cache=cache, use_cache=True)
        cache = out.cache
        token = int(out.logits[0, -1].argmax())
        if token in stop:
            break
        produced.append(token)
        embeds = model.embed(torch.tensor([[token]], device=embeds.device))
    return produced


def load_causal_lm(path: Path, runtime: Runtime) -> tuple[nn.Module, Any]:
    """The frozen LM and its tokenizer; ValueError saying what was found when ``path`` is no causal LM."""
    check_causal_lm(path, "language model")
    dtype = torch.bfloat16 if runtime.autocast_dtype is not None else torch.float32
    lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return lm, tokenizer


def run(config: dict[str, Any], fresh: bool, stop=None):
    """The command line's entry: config dict -> a finished (or stopped) run."""
    from training.loop import train

    return train(CapRetRecipe(CapRetTrainConfig.from_dict(config)), fresh=fresh, stop=stop)
