"""Shared fixtures of the training tests: tiny checkpoints (built once per session) and data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.fixtures import write_scene_classes


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny_checkpoints import tiny_clip

    return tiny_clip(tmp_path_factory.mktemp("tiny-checkpoints") / "clip")


@pytest.fixture(scope="session")
def tiny_lm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny_checkpoints import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-checkpoints") / "lm")


@pytest.fixture(scope="session")
def scene_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four images, one per class, two captions each, all in split 'train' (a Karpathy JSON)."""
    return write_scene_classes(tmp_path_factory.mktemp("scene-classes"))
