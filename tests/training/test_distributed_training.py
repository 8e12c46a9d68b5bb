"""The shared loop across processes: two CPU processes (torchrun, gloo) reach the single-process weights;
the batch of a step splits over ranks; an out-of-memory and an unknown recipe stop with a clear message."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from training.__main__ import main as training_main
from training.loop import CHECKPOINT, LoopConfig, Recipe, Runtime, TrainingError, step_indices, train

ROOT = Path(__file__).parents[2]
TINY = ROOT / "training" / "recipes" / "clip" / "tiny.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_clip(tmp: Path, processes: int, clip: Path, data: Path) -> dict[str, torch.Tensor]:
    args = [
        "--config",
        str(TINY),
        "--set",
        f"out={tmp / 'model'}",
        "--set",
        f"work_dir={tmp / 'work'}",
        "--set",
        f"model_path={clip}",
        "--set",
        f"data_root={data}",
        "--set",
        "max_steps=6",
        "--set",
        "evaluate=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        f"--master_port={free_port()}",
        "--master_addr=127.0.0.1",
    ]
    done = subprocess.run(
        [*launcher, "-m", "training", "clip", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp / "work" / CHECKPOINT, weights_only=False)["trainable"]


def test_two_gloo_processes_match_one_process(tmp_path, tiny_clip_folder, scene_classes):
    one = run_clip(tmp_path / "one", 1, tiny_clip_folder, scene_classes)
    two = run_clip(tmp_path / "two", 2, tiny_clip_folder, scene_classes)
    assert one.keys() == two.keys()
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_the_batch_of_a_step_splits_over_ranks():
    config = LoopConfig(batch_size=6, out="/tmp/x/out", work_dir="/tmp/x/work")
    for step in (0, 1, 7):
        whole = step_indices(config, step, 10)
        assert len(whole) == 6
        assert step_indices(config, step, 10, 0, 2) + step_indices(config, step, 10, 1, 2) == whole
        assert sum((step_indices(config, step, 10, r, 3) for r in range(3)), []) == whole
    epoch = [i for step in range(5) for i in step_indices(LoopConfig(batch_size=2), step, 10)]
    assert sorted(epoch) == list(range(10))  # one epoch: every sample once
    with pytest.raises(ValueError, match="does not split over 4 processes"):
        step_indices(config, 0, 10, 0, 4)


class _OutOfMemory(Recipe):
    name = "oom"

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def build(self, runtime: Runtime) -> nn.Module:
        return self.Model()

    def batches(self, start_step: int, runtime: Runtime) -> Iterator[dict[str, Any]]:
        while True:
            yield {"x": torch.zeros(1)}

    def export(self, model: nn.Module, out: Path) -> Path:
        return out


def test_out_of_memory_names_the_batch_and_what_to_lower(tmp_path):
    config = LoopConfig(out=str(tmp_path / "out"), work_dir=str(tmp_path / "work"), batch_size=64)
    with pytest.raises(
        TrainingError,
        match=r"out of memory at step 1 .*64 sample\(s\) per process .*Lower batch_size "
        r"\(--set batch_size=32\), set gradient_checkpointing = true",
    ):
        train(_OutOfMemory(config))


def test_an_unknown_recipe_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exited:
        training_main(["nosuch"])
    assert exited.value.code == 2
    assert (
        "unknown recipe 'nosuch'; known recipes: default, clip, capret, grounding, segment, change, moe, rag"
        in capsys.readouterr().err
    )
