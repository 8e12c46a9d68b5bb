"""Shared fixtures of the engine tests. Keep each engineer's fixtures in their own section."""

from __future__ import annotations

from pathlib import Path

import pytest

# --- tiny transformers checkpoints (qwen2_5_vl, florence2) -----------------------------------------
# Each is built once per session with save_pretrained into a temporary folder, exactly as a user's
# checkpoint folder looks; tests must not write into these folders (copy them first).


@pytest.fixture(scope="session")
def tiny_qwen_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.tiny_models import qwen2_5_vl

    return qwen2_5_vl.make(tmp_path_factory.mktemp("tiny-models") / "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_florence2_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.tiny_models import florence2

    return florence2.make(tmp_path_factory.mktemp("tiny-models") / "florence2")


# --- tiny SAM and CLIP checkpoints (sam, clip) ------------------------------------------------------
# Built once per session like the ones above; tests copy a folder before changing anything in it.


@pytest.fixture(scope="session")
def tiny_sam_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.tiny_models import sam

    return sam.make(tmp_path_factory.mktemp("tiny-models") / "sam")


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.tiny_models import clip

    return clip.make(tmp_path_factory.mktemp("tiny-models") / "clip")


@pytest.fixture(scope="session")
def tiny_open_clip_path(tmp_path_factory: pytest.TempPathFactory, tiny_clip_path: Path) -> Path:
    """The CLIP of ``tiny_clip_path`` written in open_clip's layout (state dict, config, gzipped BPE)."""
    from tests.engine.tiny_models import clip

    return clip.make_open_clip(tmp_path_factory.mktemp("tiny-models") / "open_clip", tiny_clip_path)
