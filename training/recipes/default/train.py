"""python -m training default --config training/recipes/default/default_v13.toml [--set key=value ...] [--fresh]

The main run of the default recipe: trains the built-in RSA model (``default``) from scratch on the
Synthetic Earth, then writes it (fp16 safetensors, config, tokenizer, processor settings and the
training log) to ``out`` (resources/models/rsa-default), which the engine serves as model ``default``.
The stages the config's ``[stages]`` table asks for then run on that folder (pipeline.py).

The run:

1. generates (or reads back) the cached train scenes and pairs (dataset.py), in ``data_workers``
   processes; the time spent counts against ``max_minutes``;
2. builds the tokenizer from the training corpus (build_tokenizer; at most the config's vocab
   size) and the model from the named config (``model``: tiny, default);
3. trains with AdamW, linear warmup then a cosine decay to ``min_lr_ratio`` of ``lr``, until
   ``max_steps`` or the time budget. The schedule follows ``progress = max(step / max_steps,
   seconds / budget)``, so a run stopped by the clock has decayed its learning rate too;
4. saves a checkpoint (model, optimizer, step, which is also the data position, elapsed
   seconds and the random states) every ``checkpoint_every`` steps, on SIGINT/SIGTERM and at
   the end, in ``work_dir`` (out/train/default; never inside ``out``);
5. exports the final model to ``out``.

Running the same command again resumes from ``work_dir``'s checkpoint (``--fresh`` starts
over); an interrupted run loses at most the steps since its last checkpoint, and a resumed run
sees the same batches and reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from rs_assistant.core.protocol import Task
from rs_assistant.engine.models.rsa import (
    RSAConfig,
    RSAForConditionalGeneration,
    RSAProcessor,
    build_tokenizer,
    load_named_config,
)
from training.data.synthetic.classes import class_vocabulary
from training.loop import (
    CHECKPOINT,
    LOG_FILE,
    ConfigFromDict,
    TrainResult,
    check_settings,
    load_checkpoint,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from training.recipes.default.dataset import DataSettings, Sampler, corpus, load_cache, referring_nouns
from training.recipes.default.stages import StageSettings

log = logging.getLogger(__name__)

MAX_SHIPPED_MB = 25.0
EXPORT_RESERVE_S = 30.0  # of the time budget kept for the export
#: Keys whose change makes an existing checkpoint unusable (the rest may change on resume).
RUN_KEYS = (
    "model",
    "model_settings",
    "seed",
    "scene_size",
    "region_min",
    "region_max",
    "num_scenes",
    "num_pairs",
    "max_ground_objects",
    "mix",
    "batch_size",
    "fixed_batches",
)
TASK_SHORT = {Task.CAPTION: "cap", Task.GROUND: "gnd", Task.SEGMENT: "seg", Task.CHANGE: "chg", Task.CHAT: "qa"}


@dataclass(frozen=True)
class TrainConfig(ConfigFromDict):
    """The recipe's settings (tiny.toml and default_v13.toml give them; ``--set`` overrides any)."""

    model: str = "default"  # named RSA config (rs_assistant/engine/models/rsa/configs/NAME.json)
    model_settings: Mapping[str, Any] = field(default_factory=dict)  # RSAConfig fields set over the named config
    out: str = "resources/models/rsa-default"
    work_dir: str = "out/train/default"
    seed: int = 0
    # data (dataset.py)
    scene_size: int = 256
    region_min: int = 384
    region_max: int = 768
    num_scenes: int = 2500
    num_pairs: int = 1200
    data_workers: int = 2
    loader_workers: int = 0  # > 0: processes that build the next batches while the model trains (for a GPU)
    max_ground_objects: int = 12
    mix: Mapping[str, float] = field(
        default_factory=lambda: {"caption": 0.2, "ground": 0.3, "segment": 0.2, "change": 0.15, "chat": 0.15}
    )
    fixed_batches: int = 0  # > 0: cycle over the first N batches (overfitting checks)
    # optimisation
    batch_size: int = 16
    max_steps: int = 2600
    max_minutes: float = 55.0
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    threads: int = 2
    checkpoint_every: int = 200
    log_every: int = 10
    # the stages after the main run (pipeline.py; stages.StageSettings): none unless asked
    stages: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = {t.value for t in Task if t.value in ("caption", "ground", "segment", "change", "chat")} - set(
            self.mix
        )
        if missing or any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(
                f"mix needs non-negative weights for caption, ground, segment, change, chat; got {dict(self.mix)}"
            )
        if self.batch_size < 1 or self.max_steps < 1 or self.max_minutes <= 0:
            raise ValueError("batch_size, max_steps and max_minutes must be positive")
        if self.loader_workers < 0:
            raise ValueError(f"loader_workers must not be negative, got {self.loader_workers}")
        if not self.region_min <= self.region_max:
            raise ValueError(f"region_min {self.region_min} exceeds region_max {self.region_max}")
        if (
            Path(self.work_dir).resolve() == Path(self.out).resolve()
            or Path(self.out).resolve() in Path(self.work_dir).resolve().parents
        ):
            raise ValueError(
                f"work_dir {self.work_dir} must lie outside out {self.out}: only the final model is shipped"
            )
        try:  # an unknown model, model setting or stage setting is named before anything runs
            self.model_config()
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        self.stage_settings()

    def stage_settings(self) -> StageSettings:
        try:
            return StageSettings.from_dict(self.stages)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"[stages] {exc}") from None

    def model_config(self) -> RSAConfig:
        """The named RSA config with ``model_settings`` over it (an unknown field is named)."""
        return load_named_config(self.model, **self.model_settings)

    def data_settings(self) -> DataSettings:
        return DataSettings(
            self.seed,
            self.scene_size,
            self.region_min,
            self.region_max,
            self.num_scenes,
            self.num_pairs,
            self.max_ground_objects,
            dict(self.mix),
        )


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``lr`` to ``min_lr_ratio * lr`` over ``progress``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def train(config: TrainConfig, fresh: bool = False, stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Run (or resume) the recipe; ``stop(step)`` returning True checkpoints and returns early."""
    started = time.perf_counter()
    work_dir = Path(config.work_dir)
    if fresh and work_dir.exists():
        for name in (CHECKPOINT, LOG_FILE, "tokenizer"):
            path = work_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # TF32 matrix products: fp32 training at tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    checkpoint = _read_checkpoint(work_dir, config)
    scenes, pairs, data_seconds = load_cache(config.data_settings(), work_dir, config.data_workers)
    tokenizer = _tokenizer(work_dir, config, scenes, pairs)
    model_config = config.model_config()
    model_config.text_config.vocab_size = len(tokenizer)
    model_config.bind_tokenizer(tokenizer)
    model_config.change_seg_marks_changed = True  # dataset.py: a changed pair's caption ends with [SEG], only then
    if model_config.pixel_class_loss_weight > 0:  # the nouns answers use, for class-aware masks when served
        model_config.class_names, model_config.class_nouns = class_vocabulary(referring_nouns(scenes))
    processor = RSAProcessor.for_model(tokenizer, model_config)
    aux_classes = model_config.num_aux_classes > 0 and (
        model_config.aux_class_loss_weight > 0 or model_config.pixel_class_loss_weight > 0
    )
    dense_change = model_config.change_dense_loss_weight > 0
    sampler = Sampler(
        config.data_settings(),
        scenes,
        pairs,
        processor,
        class_targets=aux_classes,
        change_targets=dense_change,
        box_masks=model_config.box_from_mask,
    )

    torch.manual_seed(config.seed)
    model = RSAForConditionalGeneration(model_config).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98))
    step, elapsed = 0, 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, elapsed = int(checkpoint["step"]), float(checkpoint["elapsed"])
        set_rng_state(checkpoint["rng"])
        log.info("resumed from %s at step %d (%.0f s trained)", work_dir / CHECKPOINT, step, elapsed)
    budget = config.max_minutes * 60 - data_seconds - EXPORT_RESERVE_S
    log.info(
        "model %s: %.1fM parameters on %s; %d scenes, %d pairs; training budget %.0f s",
        config.model,
        sum(p.numel() for p in model.parameters()) / 1e6,
        device,
        len(scenes),
        len(pairs),
        budget,
    )

    def save() -> None:
        _write_checkpoint(work_dir, config, model, optimizer, step, elapsed)

    model.train()
    losses: dict[str, float] = {}
    bar = tqdm(total=config.max_steps, initial=step, desc="train default", unit="step", dynamic_ncols=True)
    batches = step_batches(sampler, config, step, device)
    session_start = time.perf_counter() - elapsed
    try:
        with (work_dir / LOG_FILE).open("a", encoding="utf-8") as log_file:
            while step < config.max_steps and elapsed < budget:
                progress = max(step / config.max_steps, elapsed / budget)
                lr = learning_rate(config, step, progress)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                tasks, batch = next(batches)
                terms = _train_step(model, optimizer, tasks, batch, device, config.grad_clip)
                step += 1
                elapsed = time.perf_counter() - session_start
                for key, value in terms.items():
                    losses[key] = value if key not in losses else 0.9 * losses[key] + 0.1 * value
                bar.update(1)
                bar.set_postfix({k: f"{v:.2f}" for k, v in losses.items()}, refresh=False)
                if step % config.log_every == 0 or step == config.max_steps:
                    record = {
                        "step": step,
                        **{k: round(v, 5) for k, v in terms.items()},
                        "lr": lr,
                        "elapsed": round(elapsed, 2),
                        "samples": step * config.batch_size,
                    }
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if step % config.checkpoint_every == 0:
                    save()
                if stop is not None and stop(step):
                    save()
                    bar.close()
                    log.info("stopped at step %d; run the same command to resume", step)
                    return TrainResult(step, False, work_dir, None, {})
    except KeyboardInterrupt:
        save()
        log.info("interrupted at step %d; checkpoint saved, run the same command to resume", step)
        raise
    bar.close()
    save()
    out = export(model, processor, Path(config.out), work_dir / LOG_FILE)
    log.info(
        "trained %d steps in %.0f s (this session %.0f s); model written to %s",
        step,
        elapsed,
        time.perf_counter() - started,
        out,
    )
    return TrainResult(step, True, work_dir, out, {})


class _StepBatches(torch.utils.data.Dataset):
    """Item ``n`` is step n's batch, ``(tasks, model inputs)``: the same in a loader process as in this one."""

    def __init__(self, sampler: Sampler, config: TrainConfig):
        self.sampler, self.batch_size, self.fixed = sampler, config.batch_size, config.fixed_batches

    def __getitem__(self, step: int) -> tuple[list[Task], dict[str, Any]]:
        samples = self.sampler.samples(step % self.fixed if self.fixed else step, self.batch_size)
        return [s.task for s in samples], self.sampler.batch(samples)


def step_batches(
    sampler: Sampler, config: TrainConfig, first: int, device: torch.device
) -> Iterator[tuple[list[Task], dict]]:
    """The batches of steps ``first``, ``first + 1``, ... in order: built here, or ahead of the model by
    ``loader_workers`` processes (a DataLoader over the step numbers), which only changes when they are built."""
    dataset = _StepBatches(sampler, config)
    if config.loader_workers <= 0:
        return (dataset[step] for step in itertools.count(first))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=itertools.count(first),
        num_workers=config.loader_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4,
        persistent_workers=False,
    )
    return iter(loader)


def _train_step(
    model: RSAForConditionalGeneration,
    optimizer: torch.optim.Optimizer,
    tasks: list[Task],
    batch: dict[str, Any],
    device: torch.device,
    grad_clip: float,
) -> dict[str, float]:
    """One optimizer step; returns the loss terms and the LM loss of each task in the batch."""
    inputs = {
        k: (
            v.to(device, non_blocking=True)
            if isinstance(v, torch.Tensor)
            else [t.to(device, non_blocking=True) for t in v]
        )
        for k, v in batch.items()
    }
    out = model(**inputs)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    terms = {"loss": out.loss.item(), "lm": out.lm_loss.item()}
    if out.mask_loss is not None:
        terms["mask"] = out.mask_loss.item()
    if out.change_loss is not None:
        terms["change"] = out.change_loss.item()
    if out.aux_class_loss is not None:
        terms["cls"] = out.aux_class_loss.item()
    if out.change_dense_loss is not None:
        terms["chgpx"] = out.change_dense_loss.item()
    if out.pixel_class_loss is not None:
        terms["clspx"] = out.pixel_class_loss.item()
    with torch.no_grad():  # per-task LM loss, for the progress bar and the log
        labels = inputs["labels"][:, 1:]
        per_token = F.cross_entropy(
            out.logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        counted = (labels != -100).float()
        per_sample = (per_token * counted).sum(1) / counted.sum(1).clamp(min=1)
        for task in set(tasks):
            chosen = torch.tensor([t is task for t in tasks], device=per_sample.device)
            terms[TASK_SHORT[task]] = float(per_sample[chosen].mean())
    return terms


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms, embeddings' positions or memories)."""
    decay, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 and "embed" not in name and "position" not in name else rest).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _tokenizer(work_dir: Path, config: TrainConfig, scenes: list, pairs: list) -> PreTrainedTokenizerFast:
    """The run's tokenizer: read back from ``work_dir/tokenizer`` or built from the corpus and saved there."""
    folder = work_dir / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    vocab = int(config.model_config().text_config.vocab_size)
    tokenizer = build_tokenizer(corpus(scenes, pairs), vocab_size=vocab)
    tokenizer.save_pretrained(folder)
    log.info("tokenizer: %d tokens (at most %d)", len(tokenizer), vocab)
    return tokenizer


def _read_checkpoint(work_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    path = work_dir / CHECKPOINT
    checkpoint = load_checkpoint(path)
    if checkpoint is not None:
        check_settings(path, checkpoint["config"], config.as_json(), RUN_KEYS)
    return checkpoint


def _write_checkpoint(
    work_dir: Path,
    config: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    elapsed: float,
) -> None:
    """Atomically (:func:`training.loop.write_checkpoint`)."""
    write_checkpoint(
        work_dir / CHECKPOINT,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,  # also the data position: the batch of step n depends on (seed, n) only
            "elapsed": elapsed,
            "rng": rng_state(),
            "config": config.as_json(),
        },
    )


def export(model: RSAForConditionalGeneration, processor: RSAProcessor, out: Path, log_path: Path) -> Path:
    """The shipped folder: fp16 safetensors, config, tokenizer, processor settings and the training log."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    copy.deepcopy(model).cpu().to(torch.float16).save_pretrained(out)
    processor.save_pretrained(out)
    shutil.copyfile(log_path, out / LOG_FILE)
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    if size_mb > MAX_SHIPPED_MB:
        raise RuntimeError(f"{out} holds {size_mb:.1f} MB; the shipped model may take at most {MAX_SHIPPED_MB} MB")
    log.info("exported %s (%.1f MB)", out, size_mb)
    return out
