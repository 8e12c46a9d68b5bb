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
def tiny_sam2_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.tiny_models import sam2

    return sam2.make(tmp_path_factory.mktemp("tiny-models") / "sam2")


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.tiny_models import clip

    return clip.make(tmp_path_factory.mktemp("tiny-models") / "clip")


@pytest.fixture(scope="session")
def tiny_open_clip_path(tmp_path_factory: pytest.TempPathFactory, tiny_clip_path: Path) -> Path:
    """The CLIP of ``tiny_clip_path`` written in open_clip's layout (state dict, config, gzipped BPE)."""
    from tests.engine.tiny_models import clip

    return clip.make_open_clip(tmp_path_factory.mktemp("tiny-models") / "open_clip", tiny_clip_path)


# --- tiny RSA checkpoint (rsa backend, rs_assistant.engine.models.rsa) ------------------------------
# configs/tiny.json with random weights (seeded) and a tokenizer built from a few sentences, saved
# with save_pretrained as training/ will save the real one; tests copy the folder before changing it.

RSA_CORPUS = (
    "a residential area with twelve buildings along a road.",
    "two storage tanks next to a parking lot with vehicles.",
    "a river crosses fields with rows of crops and a forest.",
    "find storage tanks; segment water bodies; find the largest building",
    "what changed between the two images? two buildings were built near the road.",
    "describe the image. there is no change. how many vehicles are there? three.",
)


@pytest.fixture(scope="session")
def tiny_rsa_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete RSA checkpoint folder: config.json, model.safetensors, tokenizer, processor_config.json."""
    import torch

    from rs_assistant.engine.models.rsa import (
        RSAForConditionalGeneration,
        RSAProcessor,
        build_tokenizer,
        load_named_config,
    )

    folder = tmp_path_factory.mktemp("tiny-models") / "rsa"
    tokenizer = build_tokenizer(RSA_CORPUS, vocab_size=512)
    config = load_named_config("tiny")
    config.bind_tokenizer(tokenizer)
    torch.manual_seed(0)
    RSAForConditionalGeneration(config).save_pretrained(folder)
    RSAProcessor.for_model(tokenizer, config).save_pretrained(folder)
    return folder
