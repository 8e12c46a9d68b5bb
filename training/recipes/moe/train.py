"""python -m training moe --config training/recipes/moe/tiny.toml [--set key=value ...] [--fresh]

RS-MoE (Lin et al., TGRS 2025): a shared CLIP vision encoder and bridge, an instruction router that
writes a sub-task prompt for each of K lightweight LLM experts and weighs them, and the experts
(rs_assistant/engine/models/moe). Two stages, each one run of this recipe:

- ``stage = 1``: the router and the bridge train; the experts (copies of ``lm_path``) and the vision
  encoder are frozen. A run builds the model from ``vision_path`` + ``lm_path`` (empty: tiny random
  ones in ``work_dir``, what tiny.toml and the tests use);
- ``stage = 2``: ``init_from`` = the stage-1 export; the router (and the bridge, unless
  ``stage2_bridge``) is frozen and every expert is fine-tuned with its own LoRA adapters.

Each step draws, by ``(seed, step)``, caption samples (a Karpathy-style set, ``caption_root``: RSICD,
UCM-Captions, Sydney-Captions; the instruction "Describe the image." and one of the five captions)
and VQA samples (RSVQA LR/HR, ``vqa_root``: the question and its answer). The loss is the mixture
likelihood of the answer under the router's weights (stage 1) or the weighted NLL of the experts the
frozen router picks for the sample (stage 2), plus a small balance term (modeling_moe.py).

Evaluation (``metrics.json`` beside the export): captions of ``caption_root``'s ``eval_split`` scored
with BLEU-1..4/METEOR/ROUGE-L/CIDEr (pycocoevalcap, needs Java; ``caption_metrics``) and RSVQA
``eval_split`` accuracy, overall and per question type (``accuracy_presence`` ...), plus how often
each expert is routed to (``route_EXPERT``). The export (LoRA merged) is an RS-MoE folder the engine
serves with ``backend = "rs_assistant.engine.backends.moe:MoEBackend"`` (caption, chat).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rs_assistant.engine.models.moe import CAPTION_INSTRUCTION, MoEConfig, MoEForConditionalGeneration, MoEProcessor
from rs_assistant.engine.models.moe.configuration_moe import COMPOSE
from training.data.formats import RSVQA, KarpathyCaptions
from training.eval.metrics import vqa_accuracy
from training.loop import LoopConfig, Recipe, Runtime, main_first, map_batches, seeded, unwrap
from training.parts import check_clip, check_loading_info, check_model_type, lora_config, vision_and_lm
from training.recipes.rsa_base import CAPTION_METRICS, DTYPES, caption_metrics, check_outputs

log = logging.getLogger(__name__)

MOE_EXPECTED = (
    "an RS-MoE checkpoint folder (config.json with model_type 'rs_moe', model.safetensors, tokenizer "
    "files, preprocessor_config.json), e.g. the export of a stage-1 run"
)


@dataclass(frozen=True)
class MoETrainConfig(LoopConfig):
    """The moe recipe's settings (tiny.toml, paper.toml)."""

    stage: int = 1  # 1: router + bridge (experts frozen); 2: experts' LoRA (router frozen), from init_from
    init_from: str = ""  # an RS-MoE export (stage 2 starts from the stage-1 export)
    vision_path: str = ""  # CLIP folder; "" builds a tiny random one in work_dir
    lm_path: str = ""  # the experts' causal LM folder; "" builds a tiny random Qwen2
    num_experts: int = 3  # architecture keys: used when building from parts (init_from fixes them)
    expert_names: tuple[str, ...] = ("theme", "object", "relationship")
    prompt_tokens: int = 4
    router_layers: int = 2
    router_heads: int = 4
    compose: str = "top1"
    top_k: int = 1
    stage2_bridge: bool = False  # stage 2 also trains the bridge
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    balance_weight: float = 0.01
    max_text_tokens: int = 96
    caption_root: str = ""  # Karpathy-style caption set (dataset_*.json + images)
    vqa_root: str = ""  # RSVQA LR or HR folder
    train_split: str = "train"
    eval_split: str = "test"
    eval_count: int = 0  # samples evaluated per data set (0: the whole split)
    eval_batch_size: int = 16
    eval_max_new_tokens: int = 40
    caption_metrics: tuple[str, ...] = CAPTION_METRICS
    export_dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("expert_names", "lora_targets", "caption_metrics"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 (router + bridge) or 2 (experts' LoRA), got {self.stage}")
        if self.stage == 2 and not self.init_from:
            raise ValueError(
                "stage = 2 fine-tunes the experts of a trained router: give init_from = the stage-1 export"
            )
        if not (self.caption_root or self.vqa_root):
            raise ValueError(
                "no training data: give caption_root (a Karpathy-style caption set) and/or vqa_root "
                "(an RSVQA folder), e.g. --set caption_root=/data/RSICD"
            )
        if self.compose not in COMPOSE:
            raise ValueError(f"compose must be one of {', '.join(COMPOSE)}, got {self.compose!r}")
        check_outputs(self.caption_metrics, self.export_dtype)


@dataclass(frozen=True)
class Example:
    source: Any  # a CaptionSample or a VQASample (``.image()``)
    instruction: str
    answers: tuple[str, ...]  # a caption sample's references (one drawn per step) or the VQA answer


class MoETraining(nn.Module):
    def __init__(self, model: MoEForConditionalGeneration, balance_weight: float, routed_top_k: int) -> None:
        super().__init__()
        self.model, self.balance_weight, self.routed_top_k = model, balance_weight, routed_top_k

    def forward(self, **batch: Any) -> dict[str, torch.Tensor]:
        out = self.model(**batch, balance_weight=self.balance_weight, routed_top_k=self.routed_top_k)
        terms = {"loss": out.loss, "lm": out.lm_loss.detach(), "balance": out.balance_loss.detach()}
        for k, weight in enumerate(out.routing_weights.mean(0).detach()):
            terms[f"w{k}"] = weight
        return terms


def load_moe_checkpoint(folder: Path) -> tuple[MoEForConditionalGeneration, MoEProcessor]:
    """An RS-MoE export; ValueError saying what was found when it is something else."""
    check_model_type(folder, "init_from", ("rs_moe",), MOE_EXPECTED)
    model, info = MoEForConditionalGeneration.from_pretrained(
        folder, local_files_only=True, output_loading_info=True, dtype=torch.float32
    )
    check_loading_info(folder, info)
    return model, MoEProcessor.from_pretrained(folder)


class MoERecipe(Recipe):
    name = "moe"
    run_keys = (
        "stage",
        "init_from",
        "vision_path",
        "lm_path",
        "num_experts",
        "prompt_tokens",
        "router_layers",
        "stage2_bridge",
        "lora_r",
        "lora_targets",
        "caption_root",
        "vqa_root",
        "train_split",
        "max_text_tokens",
    )
    config: MoETrainConfig

    def __init__(self, config: MoETrainConfig) -> None:
        super().__init__(config)
        c = config
        # Read the data now: a wrong folder or a missing split fails before any model is built.
        self.captions = KarpathyCaptions(c.caption_root, split=c.train_split) if c.caption_root else None
        self.vqa = RSVQA(c.vqa_root, split=c.train_split) if c.vqa_root else None
        self.examples_train: list[Example] = []
        if self.captions is not None:
            self.examples_train += [Example(s, CAPTION_INSTRUCTION, tuple(s.captions)) for s in self.captions.samples]
        if self.vqa is not None:
            self.examples_train += [Example(s, s.question, (s.answer,)) for s in self.vqa.samples]
        if not self.examples_train:
            raise ValueError(f"split {c.train_split!r} holds no caption or question")

    # --- building ----------------------------------------------------------------------------------

    def parts(self) -> tuple[Path, Path]:
        return vision_and_lm(self.config.work_dir, self.config.vision_path, self.config.lm_path)

    def from_parts(self, runtime: Runtime) -> tuple[MoEForConditionalGeneration, MoEProcessor]:
        from transformers import AutoImageProcessor, CLIPVisionConfig, CLIPVisionModel

        from training.recipes.capret.train import load_causal_lm

        c = self.config
        vision_path, lm_path = main_first(runtime, self.parts)
        check_clip(vision_path, "vision_path", "weights, preprocessor_config.json")
        lm, tokenizer = load_causal_lm(lm_path, runtime)
        lm = lm.float()
        vision_config = CLIPVisionConfig.from_pretrained(vision_path, local_files_only=True)
        vision = CLIPVisionModel.from_pretrained(
            vision_path, config=vision_config, local_files_only=True, dtype=torch.float32
        )
        try:
            config = MoEConfig(
                vision_config=vision_config.to_dict(),
                text_config=lm.config.to_dict(),
                num_experts=c.num_experts,
                expert_names=list(c.expert_names)[: c.num_experts] or None,
                prompt_tokens=c.prompt_tokens,
                router_layers=c.router_layers,
                router_heads=c.router_heads,
                compose=c.compose,
                top_k=c.top_k,
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the RS-MoE architecture keys: {exc}") from None
        torch.manual_seed(c.seed)
        model = MoEForConditionalGeneration.from_parts(config, vision, lm)
        return model, MoEProcessor(tokenizer, AutoImageProcessor.from_pretrained(vision_path, local_files_only=True))

    def build(self, runtime: Runtime) -> nn.Module:
        c = self.config
        if c.init_from:
            model, self.processor = load_moe_checkpoint(Path(c.init_from))
        else:
            model, self.processor = self.from_parts(runtime)
        model.requires_grad_(False)
        if c.stage == 1:
            model.router.requires_grad_(True)
            model.bridge.requires_grad_(True)
        else:
            from peft import get_peft_model

            lora = lora_config(c)
            try:
                for k in range(len(model.experts)):
                    model.experts[k] = get_peft_model(model.experts[k], lora)
            except ValueError as exc:
                raise ValueError(f"LoRA on the experts: {exc} (lora_targets {list(c.lora_targets)})") from None
            if c.stage2_bridge:
                model.bridge.requires_grad_(True)
        log.info(
            "moe stage %d: %d experts (%s), %d training samples",
            c.stage,
            len(model.experts),
            ", ".join(model.config.expert_names),
            len(self.examples_train),
        )
        # stage 2: each sample trains the experts that will answer it (the frozen router's top 1, or top_k for concat)
        routed = 0 if c.stage == 1 else (1 if model.config.compose == "top1" else model.config.top_k)
        return MoETraining(model, c.balance_weight, routed).to(runtime.device)

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        for expert in unwrap(model).model.experts:
            expert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            expert.enable_input_require_grads()

    # --- batches -----------------------------------------------------------------------------------

    def batches(self, start_step: int, runtime: Runtime) -> Iterator[dict[str, Any]]:
        examples, processor, seed, limit = (
            self.examples_train,
            self.processor,
            self.config.seed,
            self.config.max_text_tokens,
        )

        def collate(indices: list[int], step: int) -> dict:
            images, instructions, answers = [], [], []
            for index in indices:
                example = examples[index]
                choice = int(seeded(seed, step, index).integers(len(example.answers)))
                answers.append(example.answers[choice])
                instructions.append(example.instruction)
                images.append(example.source.image())
            batch = processor.training_batch(instructions, answers, max_text_tokens=limit)
            batch["pixel_values"] = processor.pixel_values(images)
            return batch

        return map_batches(self.config, start_step, runtime, len(examples), collate)

    # --- evaluation --------------------------------------------------------------------------------

    def _answers(
        self, model: MoEForConditionalGeneration, samples: list, instructions: list[str], runtime: Runtime
    ) -> tuple[list[str], list[int]]:
        c, processor = self.config, self.processor
        answers, routed = [], []
        for start in range(0, len(samples), c.eval_batch_size):
            part = samples[start : start + c.eval_batch_size]
            batch = processor.generation_batch(instructions[start : start + c.eval_batch_size])
            batch = {k: v.to(runtime.device) for k, v in batch.items()}
            texts, weights, _ = model.answer(
                processor.pixel_values([s.image() for s in part]).to(runtime.device),
                batch["input_ids"],
                batch["attention_mask"],
                batch["router_ids"],
                batch["router_mask"],
                c.eval_max_new_tokens,
                processor.eos_token_id,
                processor.decode,
            )
            answers += texts
            routed += weights.argmax(1).tolist()
        return answers, routed

    def evaluate(self, model: nn.Module, runtime: Runtime) -> dict[str, float]:
        c = self.config
        moe: MoEForConditionalGeneration = unwrap(model).model
        metrics: dict[str, float] = {}
        routed: list[int] = []
        self.examples: dict[str, str] = {}
        if c.caption_root:
            samples = KarpathyCaptions(c.caption_root, split=c.eval_split).samples
            samples = samples[: c.eval_count] if c.eval_count else samples
            predicted, routes = self._answers(moe, samples, [CAPTION_INSTRUCTION] * len(samples), runtime)
            routed += routes
            predictions = {str(i): p for i, p in enumerate(predicted)}
            references = {str(i): list(s.captions) for i, s in enumerate(samples)}
            metrics.update(caption_metrics(references, predictions, names=c.caption_metrics))
            self.examples.update({f"caption {s.image_path.name}": p for s, p in list(zip(samples, predicted))[:10]})
        if c.vqa_root:
            samples = RSVQA(c.vqa_root, split=c.eval_split).samples
            samples = samples[: c.eval_count] if c.eval_count else samples
            predicted, routes = self._answers(moe, samples, [s.question for s in samples], runtime)
            routed += routes
            metrics.update(vqa_accuracy(predicted, [s.answer for s in samples], [s.question_type for s in samples]))
            self.examples.update(
                {f"vqa {s.question_id}: {s.question}": p for s, p in list(zip(samples, predicted))[:10]}
            )
        for k, name in enumerate(moe.config.expert_names):
            metrics[f"route_{name}"] = routed.count(k) / max(len(routed), 1)
        return metrics

    # --- export ------------------------------------------------------------------------------------

    def export(self, model: nn.Module, out: Path) -> Path:
        moe: MoEForConditionalGeneration = unwrap(model).model
        if self.config.stage == 2:
            for k in range(len(moe.experts)):
                moe.experts[k] = moe.experts[k].merge_and_unload()
        moe.requires_grad_(False)
        moe.to("cpu", DTYPES[self.config.export_dtype]).save_pretrained(out)
        self.processor.save_pretrained(out)
        if getattr(self, "examples", None):
            (out / "eval_examples.json").write_text(json.dumps(self.examples, indent=1) + "\n", encoding="utf-8")
        return out


def run(config: dict[str, Any], fresh: bool, stop=None):
    """The command line's entry: config dict -> a finished (or stopped) run."""
    from training.loop import train

    return train(MoERecipe(MoETrainConfig.from_dict(config)), fresh=fresh, stop=stop)
