"""The training loop the recipes share (all but ``default``, which keeps its own loop and shares the
config reading, checkpoint, random-state and signal helpers of this module).

    python -m training clip --config training/recipes/clip/tiny.toml          # one process
    torchrun --nproc_per_node 8 -m training clip --config training/recipes/clip/paper.toml
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 -m training clip --config ...

A recipe (:class:`Recipe`) says what to build, how to cut the data into batches, how to evaluate
and how to export; this module does the rest, the same way for every recipe:

- **config**: a frozen dataclass read from the TOML file (:class:`LoopConfig`, extended by each
  recipe); an unknown key is an error that lists the known ones.
- **data position = step**: the global batch of step ``n`` is a pure function of ``(seed, n)``
  (a seeded permutation per epoch over the data set's indices; :func:`map_batches`), so a resumed
  run sees exactly the batches an uninterrupted one would, and ``N`` processes see, between them,
  the batch one process would (process ``r`` takes the ``r``-th contiguous slice).
- **checkpoint** every ``checkpoint_every`` steps, on SIGINT/SIGTERM and at the end, in
  ``work_dir/checkpoint.pt``, written to a temporary file and renamed (atomic): the *trainable*
  parameters only (a frozen 7B language model is rebuilt from its own folder, not copied every
  time), optimizer, scheduler, step, elapsed time and every process's random states. The same
  command resumes from it; ``--fresh`` discards it; a checkpoint written with other run settings
  (``Recipe.run_keys``) is refused with the keys that differ.
- **device**: CUDA when available (bf16 autocast, TF32 matmuls; ``gradient_checkpointing = true``
  trades compute for memory), else CPU in fp32. A CUDA out-of-memory stops with the batch size
  tried and what to lower.
- **distributed**: plain ``torch.distributed`` + ``DistributedDataParallel``, started by
  ``torchrun`` (its ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` variables); backend
  NCCL on GPUs, gloo on CPUs. ``batch_size`` is the global batch (split evenly over processes);
  rank 0 alone writes checkpoints, logs, evaluates and exports.
- **progress**: a tqdm bar (rank 0) with the smoothed loss terms, and ``train_log.jsonl`` in
  ``work_dir`` (copied next to the exported model).
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"
METRICS_FILE = "metrics.json"
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


class TrainingError(RuntimeError):
    """A run cannot go on (out of memory, a diverged loss); the message says what to change."""


class ConfigFromDict:
    """``from_dict`` and ``as_json`` for a config dataclass read from a TOML file."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """The config of ``values``; an unknown key is an error that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class LoopConfig(ConfigFromDict):
    """Settings every recipe shares; a recipe's config class adds its own fields (all with defaults)."""

    out: str = "out/train/model"  # the exported model folder
    work_dir: str = "out/train/work"  # checkpoint, log, built tiny checkpoints; never inside ``out``
    seed: int = 0
    batch_size: int = 8  # global batch: split evenly over the processes of a distributed run
    max_steps: int = 100
    lr: float = 1e-4
    min_lr_ratio: float = 0.0  # the cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 0
    weight_decay: float = 0.0  # on matrices only
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0  # 0: no clipping
    checkpoint_every: int = 100
    log_every: int = 10
    fixed_batches: int = 0  # > 0: cycle over the first N batches (overfitting checks)
    num_workers: int = 0  # DataLoader worker processes preparing batches
    threads: int = 0  # torch CPU threads per process (0: torch's default)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    gradient_checkpointing: bool = False
    evaluate: bool = True  # evaluate the final model (metrics.json beside the export)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("batch_size, max_steps, checkpoint_every and log_every must be positive")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ValueError(
                f"lr must be positive and min_lr_ratio in [0, 1]; got lr={self.lr}, min_lr_ratio={self.min_lr_ratio}"
            )
        if self.device not in DEVICES or self.precision not in PRECISIONS:
            raise ValueError(
                f"device must be one of {', '.join(DEVICES)} and precision one of {', '.join(PRECISIONS)}; "
                f"got device={self.device!r}, precision={self.precision!r}"
            )
        out, work = Path(self.out).resolve(), Path(self.work_dir).resolve()
        if work == out or out in work.parents:
            raise ValueError(
                f"work_dir {self.work_dir} must lie outside out {self.out}: only the final model is exported"
            )
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))


@dataclass(frozen=True)
class TrainResult:
    """How a run ended: the step reached, whether it finished (and exported), where things are."""

    step: int
    finished: bool
    work_dir: Path
    out: Path | None
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among ``world`` processes, its device and autocast dtype."""

    rank: int
    world: int
    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


class Recipe(abc.ABC):
    """What a recipe gives the loop. ``build`` returns the module trained: its ``forward(**batch)``
    returns a dict with a scalar ``loss`` (and other scalar terms for the log); parameters with
    ``requires_grad`` are optimised and checkpointed."""

    name: ClassVar[str] = ""
    #: Config keys whose change makes a checkpoint unusable (beside LoopConfig's seed and batch size).
    run_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: LoopConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def build(self, runtime: Runtime) -> nn.Module:
        """The training module on ``runtime.device`` (pretrained weights loaded, frozen parts frozen)."""

    @abc.abstractmethod
    def batches(self, start_step: int, runtime: Runtime) -> Iterator[dict[str, Any]]:
        """This process's share of the batches of steps ``start_step, start_step + 1, ...`` (CPU tensors)."""

    def evaluate(self, model: nn.Module, runtime: Runtime) -> dict[str, float]:
        """Metrics of the trained model (rank 0 only); none by default."""
        return {}

    @abc.abstractmethod
    def export(self, model: nn.Module, out: Path) -> Path:
        """Write the folder the engine serves (rank 0 only)."""

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        """Turn on activation checkpointing in every transformers sub-model that supports it."""
        for module in model.modules():
            if (
                module is not model
                and hasattr(module, "gradient_checkpointing_enable")
                and getattr(module, "supports_gradient_checkpointing", False)
            ):
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Weight decay on trainable matrices; none on biases, norms, embeddings and scalars."""
        decay, rest = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                no_decay = param.dim() < 2 or "embed" in name or "norm" in name or "logit_scale" in name
                (rest if no_decay else decay).append(param)
        return [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": rest, "weight_decay": 0.0}]


# --- data: the batch of a step is a function of (seed, step) -----------------------------------


def local_batch_size(config: LoopConfig, world: int) -> int:
    if config.batch_size % world:
        raise ValueError(
            f"batch_size {config.batch_size} does not split over {world} processes; use a multiple of {world}"
        )
    return config.batch_size // world


def step_indices(config: LoopConfig, step: int, num_samples: int, rank: int = 0, world: int = 1) -> list[int]:
    """The data set indices of process ``rank``'s share of the global batch of ``step``."""
    if num_samples < 1:
        raise ValueError("the training data set is empty")
    position = step % config.fixed_batches if config.fixed_batches else step
    local = local_batch_size(config, world)
    first = position * config.batch_size + rank * local
    out = []
    for p in range(first, first + local):
        epoch, i = divmod(p, num_samples)
        out.append(int(_permutation(config.seed, epoch, num_samples)[i]))
    return out


_PERMUTATIONS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (seed, epoch, n)
    if key not in _PERMUTATIONS:
        if len(_PERMUTATIONS) > 4:
            _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERMUTATIONS[key]


class _StepBatches(torch.utils.data.Dataset):
    """Item ``i`` = the collated batch of step ``start + i`` (so DataLoader workers build whole batches)."""

    def __init__(
        self,
        config: LoopConfig,
        start: int,
        num_samples: int,
        collate: Callable[[list[int], int], dict],
        rank: int,
        world: int,
    ) -> None:
        self.config, self.start, self.num_samples, self.collate = config, start, num_samples, collate
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return max(self.config.max_steps - self.start, 0)

    def __getitem__(self, i: int) -> dict:
        step = self.start + i
        return self.collate(step_indices(self.config, step, self.num_samples, self.rank, self.world), step)


def map_batches(
    config: LoopConfig, start_step: int, runtime: Runtime, num_samples: int, collate: Callable[[list[int], int], dict]
) -> Iterator[dict]:
    """Batches of a map-style data set: ``collate(indices, step)`` builds one from data set indices."""
    data = _StepBatches(config, start_step, num_samples, collate, runtime.rank, runtime.world)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,
        shuffle=False,
        num_workers=config.num_workers,
        persistent_workers=False,
        pin_memory=runtime.device.type == "cuda",
    )
    return iter(loader)


def stream_batches(
    config: LoopConfig,
    start_step: int,
    runtime: Runtime,
    stream: Callable[[int], Iterator[Any]],
    collate: Callable[[list[Any], int], dict],
) -> Iterator[dict]:
    """Batches of a stream (WebDataset shards): ``stream(epoch)`` yields this process's samples.

    Resuming at step ``n`` skips the ``n * local batch`` samples read before (read, not decoded);
    ``fixed_batches`` replays the first batches.
    """
    local = local_batch_size(config, runtime.world)
    step, epoch, skip = (
        start_step,
        0,
        (start_step % config.fixed_batches if config.fixed_batches else start_step) * local,
    )
    kept: list[dict] = []
    while step < config.max_steps:
        batch: list[Any] = []
        seen = 0
        for sample in stream(epoch):
            if skip:
                skip -= 1
                continue
            batch.append(sample)
            seen += 1
            if len(batch) == local:
                collated = collate(batch, step)
                if config.fixed_batches:
                    kept.append(collated)
                yield collated
                step += 1
                batch = []
                if step >= config.max_steps or (config.fixed_batches and len(kept) == config.fixed_batches):
                    break
        if config.fixed_batches and kept:
            while step < config.max_steps:
                yield kept[step % len(kept)]
                step += 1
            return
        if seen == 0 and skip == 0:
            raise ValueError("the training stream yielded no samples")
        epoch += 1


# --- runtime ---------------------------------------------------------------------------------------


def setup_runtime(config: LoopConfig) -> tuple[Runtime, bool]:
    """Device, precision and (under torchrun) the process group; True when this call started the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device = 'cuda' but torch sees no CUDA device (a CPU build of torch, or no GPU)")
    device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1)) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.threads:
        torch.set_num_threads(config.threads)
    started = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", rank=rank, world_size=world, timeout=timedelta(minutes=30)
        )
        started = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if use_cuda else "fp32"
    if precision == "bf16" and not use_cuda:
        log.warning("precision = 'bf16' on a CPU: autocast runs, but most CPUs have no fast bf16 kernels")
    dtype = torch.bfloat16 if precision == "bf16" else None
    return Runtime(rank, world, device, dtype), started


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's random states (torch, python, numpy, and CUDA when there is one), for a checkpoint."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`'s states (a checkpoint without CUDA states leaves CUDA's as they are)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def learning_rate_factor(config: LoopConfig, step: int) -> float:
    """Linear warmup over ``warmup_steps``, then a cosine from 1 to ``min_lr_ratio`` at ``max_steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(config.max_steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in unwrap(model).named_parameters() if p.requires_grad}


# --- checkpoints -----------------------------------------------------------------------------------


def read_checkpoint(recipe: Recipe) -> dict[str, Any] | None:
    """The last checkpoint in ``work_dir``, checked to come from the same run settings."""
    path = Path(recipe.config.work_dir) / CHECKPOINT
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("recipe") != recipe.name:
        found = checkpoint.get("recipe") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} was written by recipe {found!r}, not {recipe.name!r}; use another work_dir or --fresh"
        )
    check_settings(
        path, checkpoint["config"], recipe.config.as_json(), ("seed", "batch_size", "fixed_batches", *recipe.run_keys)
    )
    return checkpoint


def load_checkpoint(path: Path) -> Any:
    """The checkpoint at ``path`` on the CPU, None when there is none; ValueError for a torn or foreign file."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: say which and what to do
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); delete it or run with --fresh"
        ) from exc


def check_settings(path: Path, saved: Mapping[str, Any], now: Mapping[str, Any], keys: Sequence[str]) -> None:
    """A checkpoint's config (``saved``) agrees with this run's on ``keys``; ValueError naming the ones that differ."""
    changed = [k for k in keys if saved.get(k) != now.get(k)]
    if changed:
        raise ValueError(
            f"{path} was written with other settings ({', '.join(f'{k}: {saved.get(k)!r}' for k in changed)}, "
            f"now {', '.join(f'{k}: {now.get(k)!r}' for k in changed)}); use the same config to resume, "
            "or --fresh to start over"
        )


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically: a temporary file renamed over the previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# --- the loop --------------------------------------------------------------------------------------


def train(recipe: Recipe, fresh: bool = False, stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Run (or resume) ``recipe``; ``stop(step)`` returning True checkpoints and returns early."""
    config = recipe.config
    runtime, started_group = setup_runtime(config)
    try:
        return _train(recipe, runtime, fresh, stop)
    finally:
        if started_group and dist.is_initialized():
            dist.destroy_process_group()


def _barrier(runtime: Runtime) -> None:
    if runtime.world > 1:
        dist.barrier()


def _train(recipe: Recipe, runtime: Runtime, fresh: bool, stop: Callable[[int], bool] | None) -> TrainResult:
    config = recipe.config
    work_dir = Path(config.work_dir)
    if runtime.main:
        if fresh:
            for name in (CHECKPOINT, LOG_FILE):
                (work_dir / name).unlink(missing_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
    _barrier(runtime)
    local_batch_size(config, runtime.world)  # fails early when the batch does not split
    checkpoint = read_checkpoint(recipe)

    set_seed(config.seed)
    model = recipe.build(runtime)
    if config.gradient_checkpointing:
        recipe.enable_gradient_checkpointing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"recipe {recipe.name}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(recipe.param_groups(model), lr=config.lr, betas=config.betas, eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(config, s))
    step, elapsed = 0, 0.0
    if checkpoint is not None:
        missing = set(trainable_state(model)) ^ set(checkpoint["trainable"])
        if missing:
            raise ValueError(
                f"{work_dir / CHECKPOINT} holds other trainable parameters than this model "
                f"(differing: {', '.join(sorted(missing)[:5])}); use the same config, or --fresh"
            )
        model.load_state_dict(checkpoint["trainable"], strict=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        step, elapsed = int(checkpoint["step"]), float(checkpoint["elapsed"])
        states = checkpoint["rng"]
        if len(states) == runtime.world:
            set_rng_state(states[runtime.rank])
        else:
            log.warning(
                "checkpoint from %d process(es), now %d: random states restarted from the seed",
                len(states),
                runtime.world,
            )
            set_seed(config.seed + 1000 * step + runtime.rank)
        if runtime.main:
            log.info("resumed from %s at step %d (%.0f s trained)", work_dir / CHECKPOINT, step, elapsed)
    if runtime.world > 1:
        ddp_args = {"device_ids": [runtime.device.index]} if runtime.device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_args)
    if runtime.main:
        total = sum(p.numel() for p in unwrap(model).parameters())
        log.info(
            "recipe %s: %.2fM parameters, %.2fM trainable, on %s x%d (%s), global batch %d",
            recipe.name,
            total / 1e6,
            sum(p.numel() for p in trainable) / 1e6,
            runtime.device,
            runtime.world,
            runtime.autocast_dtype or torch.float32,
            config.batch_size,
        )

    def save() -> None:
        states = [None] * runtime.world
        if runtime.world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if runtime.main:
            write_checkpoint(
                work_dir / CHECKPOINT,
                {
                    "recipe": recipe.name,
                    "trainable": trainable_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "elapsed": elapsed,
                    "rng": states,
                    "config": config.as_json(),
                },
            )
        _barrier(runtime)

    model.train()
    smoothed: dict[str, float] = {}
    bar = tqdm(
        total=config.max_steps,
        initial=step,
        desc=f"train {recipe.name}",
        unit="step",
        dynamic_ncols=True,
        disable=not runtime.main,
    )
    session_start = time.perf_counter() - elapsed
    log_file = (work_dir / LOG_FILE).open("a", encoding="utf-8") if runtime.main else None
    try:
        batches = recipe.batches(step, runtime)
        while step < config.max_steps:
            batch = _to_device(next(batches), runtime.device)
            terms = _step(model, optimizer, scheduler, batch, runtime, config, step, recipe)
            step += 1
            elapsed = time.perf_counter() - session_start
            for key, value in terms.items():
                smoothed[key] = value if key not in smoothed else 0.9 * smoothed[key] + 0.1 * value
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in smoothed.items()}, refresh=False)
            if log_file is not None and (step % config.log_every == 0 or step == config.max_steps):
                record = {
                    "step": step,
                    **{k: round(v, 6) for k, v in terms.items()},
                    "lr": scheduler.get_last_lr()[0],
                    "elapsed": round(elapsed, 2),
                    "samples": step * config.batch_size,
                }
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            stopping = _agree(stop is not None and stop(step), runtime)
            if step % config.checkpoint_every == 0 or stopping:
                save()
            if stopping and step < config.max_steps:
                bar.close()
                if runtime.main:
                    log.info("stopped at step %d; checkpoint saved, run the same command to resume", step)
                return TrainResult(step, False, work_dir, None, {})
    except KeyboardInterrupt:
        save()
        if runtime.main:
            log.info("interrupted at step %d; checkpoint saved, run the same command to resume", step)
        raise
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    if step % config.checkpoint_every:
        save()
    metrics: dict[str, float] = {}
    out = Path(config.out)
    if runtime.main:
        base = unwrap(model).eval()
        if config.evaluate:
            with torch.no_grad(), runtime.autocast():
                metrics = recipe.evaluate(base, runtime)
            if metrics:
                log.info("evaluation: %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if out.exists():
            shutil.rmtree(out)
        recipe.export(base, out)
        shutil.copyfile(work_dir / LOG_FILE, out / LOG_FILE)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        log.info("trained %d steps in %.0f s; model written to %s", step, elapsed, out)
    _barrier(runtime)
    return TrainResult(step, True, work_dir, out, metrics)


def _agree(flag: bool, runtime: Runtime) -> bool:
    """True on every process when any process wants to stop (a signal may reach only one)."""
    if runtime.world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=runtime.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: dict[str, Any],
    runtime: Runtime,
    config: LoopConfig,
    step: int,
    recipe: Recipe,
) -> dict[str, float]:
    try:
        with runtime.autocast():
            out = model(**batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise TrainingError(
                f"recipe {recipe.name}: the loss is {loss.item()} at step {step + 1}; lower lr "
                f"(now {config.lr}) or raise warmup_steps (now {config.warmup_steps})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
        optimizer.step()
        scheduler.step()
    except torch.cuda.OutOfMemoryError as exc:
        on_gpu = runtime.device.type == "cuda"
        where = (
            f"{torch.cuda.get_device_name(runtime.device)}, "
            f"{torch.cuda.get_device_properties(runtime.device).total_memory / 2**30:.1f} GiB"
            if on_gpu
            else str(runtime.device)
        )
        raise TrainingError(
            f"CUDA out of memory at step {step + 1} of recipe {recipe.name}: {local_batch_size(config, runtime.world)} "
            f"sample(s) per process (batch_size {config.batch_size} over {runtime.world} process(es)) on "
            f"{where}. Lower batch_size "
            f"(--set batch_size={max(config.batch_size // 2, runtime.world)}), "
            + ("" if config.gradient_checkpointing else "set gradient_checkpointing = true, ")
            + ("" if runtime.autocast_dtype is not None else "use precision = 'bf16', ")
            + "or spread the batch over more GPUs (torchrun --nproc_per_node N). The last checkpoint is kept."
        ) from exc
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in out.items()}


def install_signal_stop() -> Callable[[int], bool]:
    """A ``stop`` for :func:`train`: SIGTERM or a first SIGINT asks for a checkpoint-and-return
    after the current step; a second SIGINT interrupts at once (still saving a checkpoint)."""
    requested = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        log.warning("signal %d: stopping after this step (Ctrl-C again to stop at once)", signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return lambda step: requested.is_set()


# --- helpers for recipes ---------------------------------------------------------------------------


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` (equal shapes) concatenated in rank order, with gradients flowing back.

    Each process then computes the loss of the *global* batch; the backward sums every process's
    gradient of its slice, so after DistributedDataParallel's averaging the update equals the
    single-process one on the same global batch (exactly: the contrastive loss is not a mean of
    per-process losses).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor.contiguous())


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(ctx.world)[ctx.rank]


def main_first(runtime: Runtime, make: Callable[[], Any]) -> Any:
    """``make()`` on rank 0, then on the others (which find what rank 0 wrote, e.g. a built tiny checkpoint)."""
    if not runtime.main:
        _barrier(runtime)
    result = make()
    if runtime.main:
        _barrier(runtime)
    return result


def describe_found(folder: Path, limit: int = 10) -> str:
    """What a folder holds, for error messages."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(folder).iterdir())
    except OSError:
        return "nothing readable"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "") or "nothing"


def seeded(*keys: int) -> np.random.Generator:
    """A generator seeded by integers (e.g. seed, epoch, index): the same draws on every process and resume."""
    return np.random.default_rng([int(k) for k in keys])
