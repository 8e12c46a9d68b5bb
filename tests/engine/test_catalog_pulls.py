"""`models pull` of the catalogue's SAM 2.1 and GeoRSCLIP entries against a stand-in Hub, then the engine answers.

The stub (tests/engine/hub_stub.py) serves tiny random-weight checkpoints under the catalogue's real
repository names, laid out as those repositories are: facebook/sam2.1-hiera-base-plus with the
transformers files *and* the original ``.pt``/``.yaml`` (which must not be fetched), Zilun/GeoRSCLIP
with several bare open_clip ``ckpt/*.pt`` files and openai/clip-vit-base-patch32 with the BPE
vocabulary beside its own weights. GeoRSCLIP's architecture config is catalogue data (ViT-B/32);
for the tiny weights the pull runs with that one generated file swapped for the tiny model's
config, everything else (repositories, patterns, companions, assembly) as in the catalogue.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rs_assistant.core.catalog import catalog_entry
from rs_assistant.engine import hub as hub_module
from tests.engine import rasters
from tests.engine.hub_stub import HubStub

ROOT = Path(__file__).resolve().parents[2]
SAM2 = catalog_entry("sam2.1-base-plus")
GEORSCLIP = catalog_entry("georsclip-vit-b-32")
VOCAB = GEORSCLIP.companions[0]
#: Runs `python -m rs_assistant.engine models ...` with GeoRSCLIP's generated config replaced by argv[1].
PATCHED_CLI = """
import dataclasses, sys
from rs_assistant.core import catalog
from rs_assistant.engine import models_cli
entry = catalog.catalog_entry("georsclip-vit-b-32")
patched = dataclasses.replace(entry, generated_files=(("open_clip_config.json", sys.argv[1]),))
catalog.CATALOG = models_cli.CATALOG = tuple(patched if e.name == entry.name else e for e in catalog.CATALOG)
sys.exit(models_cli.main(["models", *sys.argv[2:]]))
"""


@pytest.fixture(scope="module")
def repos(
    tmp_path_factory: pytest.TempPathFactory, tiny_sam2_path: Path, tiny_open_clip_path: Path, tiny_clip_path: Path
):
    root = tmp_path_factory.mktemp("hub-repos")
    sam2 = shutil.copytree(tiny_sam2_path, root / "sam2")
    (sam2 / "sam2.1_hiera_base_plus.pt").write_bytes(os.urandom(4096))  # Meta's original checkpoint: not pulled
    (sam2 / "sam2.1_hiera_b+.yaml").write_text("model: {}\n")
    (sam2 / "README.md").write_text("SAM 2.1\n")
    geo = root / "georsclip"
    (geo / "ckpt").mkdir(parents=True)
    weights = torch.load(tiny_open_clip_path / "open_clip_pytorch_model.bin", weights_only=True)
    torch.save(weights, geo / "ckpt" / "RS5M_ViT-B-32.pt")  # a bare state dict, as GeoRSCLIP's
    torch.save({k: v + 1 for k, v in weights.items()}, geo / "ckpt" / "RS5M_ViT-B-32_RET-2.pt")
    (geo / "README.md").write_text("GeoRSCLIP\n")
    vocab = root / "clip-vit-base-patch32"
    shutil.copytree(tiny_clip_path, vocab)  # config.json, model.safetensors, tokenizer.json...: not pulled
    tokenizer = json.loads((tiny_clip_path / "tokenizer.json").read_text())["model"]
    (vocab / "vocab.json").write_text(json.dumps(tokenizer["vocab"]))
    (vocab / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in tokenizer["merges"]) + "\n")
    return {SAM2.repo_id: sam2, GEORSCLIP.repo_id: geo, VOCAB.repo_id: vocab}


@pytest.fixture(scope="module")
def hub(repos):
    stub = HubStub()
    for repo_id, folder in repos.items():
        stub.add_repo(repo_id, folder)
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture
def env(tmp_path: Path, hub: HubStub) -> dict:
    hub.reset_counters()
    environment = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONPATH": str(ROOT),
    }
    environment.pop("HF_TOKEN", None)
    return environment


def engine(env: dict, *args: str, script: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", script] if script else [sys.executable, "-m", "rs_assistant.engine"]
    return subprocess.run([*head, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def progress_and_last(out: subprocess.CompletedProcess) -> tuple[list[list[str]], str]:
    lines = out.stdout.strip().splitlines()
    return [line.split(" ", 3) for line in lines if line.startswith("PROGRESS ")], lines[-1]


def test_sam2_pull_fetches_only_the_transformers_files_and_the_engine_segments_with_it(env, hub, repos, tmp_path):
    models = tmp_path / "models.toml"

    out = engine(env, "models", "pull", SAM2.name, "--models", str(models))

    assert out.returncode == 0, out.stdout + out.stderr
    progress, last = progress_and_last(out)
    wanted = ("config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json")
    total = sum((repos[SAM2.repo_id] / name).stat().st_size for name in wanted)
    assert progress and {int(p[2]) for p in progress} == {total} and int(progress[-1][1]) == total
    tag, name, folder = last.split(" ", 2)
    assert (tag, name) == ("PULLED", SAM2.name)
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(wanted)
    assert set(hub.served) == set(wanted)  # Meta's 324 MB original .pt never crossed the network

    listing = json.loads(engine(env, "models", "list", "--json", "--models", str(models)).stdout)
    row = next(r for r in listing["models"] if r["name"] == SAM2.name)
    assert row["on_disk"] and row["registered"] and row["backend"] == "sam" and row["licence"] == "Apache-2.0"

    image = rasters.rgb_uint8(tmp_path / "scene.tif", width=64, height=48)
    run = engine(env, "run", "--models", str(models), "--model", SAM2.name, "--task", "segment", "--image", str(image))
    assert run.returncode == 0, run.stdout + run.stderr
    response = json.loads(run.stdout)
    assert response["model"] == SAM2.name and response["text"].startswith("1 mask(s)")


def tiny_config(tiny_open_clip_path: Path) -> str:
    return (tiny_open_clip_path / "open_clip_config.json").read_text()


def pull_georsclip(env: dict, models: Path, tiny_open_clip_path: Path) -> subprocess.CompletedProcess:
    config = tiny_config(tiny_open_clip_path)
    return engine(env, config, "pull", GEORSCLIP.name, "--models", str(models), script=PATCHED_CLI)


def test_georsclip_pull_assembles_weights_vocabulary_and_config_into_one_folder_the_engine_loads(
    env, hub, repos, tmp_path, tiny_open_clip_path
):
    from rs_assistant.engine.backends.clip import ClipBackend

    models = tmp_path / "models.toml"

    out = pull_georsclip(env, models, tiny_open_clip_path)

    assert out.returncode == 0, out.stdout + out.stderr
    progress, last = progress_and_last(out)
    sizes = [repos[GEORSCLIP.repo_id] / "ckpt" / "RS5M_ViT-B-32.pt"] + [repos[VOCAB.repo_id] / f for f in VOCAB.files]
    total = sum(p.stat().st_size for p in sizes)
    assert progress and {int(p[2]) for p in progress} == {total} and int(progress[-1][1]) == total  # one bar
    tag, name, folder_text = last.split(" ", 2)
    folder = Path(folder_text)
    assert (tag, name) == ("PULLED", GEORSCLIP.name)
    cached = hub_module.repo_folder(GEORSCLIP.repo_id, tmp_path / "hf" / "hub")
    assert folder == cached / "rs_assistant" / GEORSCLIP.name
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["RS5M_ViT-B-32.pt", "merges.txt", "open_clip_config.json", "vocab.json"]
    assert set(hub.served) == {"ckpt/RS5M_ViT-B-32.pt", "vocab.json", "merges.txt"}  # no other *.pt, no CLIP weights
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no half-built folder left
    assert f'path = "{folder}"' in models.read_text()

    pulled = ClipBackend("georsclip", {"path": str(folder)}, "cpu")
    original = ClipBackend("original", {"path": str(tiny_open_clip_path)}, "cpu")
    windows = [np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8) for i in range(2)]
    assert np.allclose(pulled.embed_images(windows), original.embed_images(windows), atol=1e-6)
    assert np.allclose(pulled.embed_texts(["an airport"]), original.embed_texts(["an airport"]), atol=1e-6)

    image = rasters.rgb_uint8(tmp_path / "scene.tif", width=64, height=48)
    args = ("--models", str(models), "--model", GEORSCLIP.name, "--image", str(image))
    run = engine(env, "run", "--task", "classify", "--prompt", "airport, forest, river", *args)
    assert run.returncode == 0, run.stdout + run.stderr
    response = json.loads(run.stdout)
    assert response["model"] == GEORSCLIP.name
    best, *ranked = response["text"].splitlines()
    assert best in {"airport", "forest", "river"} and ranked[0].startswith(best + ": ")
    assert sum(float(line.rsplit(": ", 1)[1]) for line in ranked) == pytest.approx(1.0, abs=2e-3)

    # Found again without any request, and listed as on disk.
    hub.reset_counters()
    offline = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    again = pull_georsclip(offline, models, tiny_open_clip_path)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == last and hub.requests == []
    listing = json.loads(engine(env, "models", "list", "--json", "--models", str(models)).stdout)
    row = next(r for r in listing["models"] if r["name"] == GEORSCLIP.name)
    assert row["on_disk"] and row["tasks"] == ["classify", "retrieve"] and row["licence"] == "CC-BY-4.0"


def test_a_missing_companion_fails_the_pull_and_leaves_no_folder_that_looks_complete(
    env, hub, tmp_path, tiny_open_clip_path
):
    models = tmp_path / "models.toml"
    vocabulary = hub.repos.pop(VOCAB.repo_id)
    try:
        out = pull_georsclip(env, models, tiny_open_clip_path)
    finally:
        hub.repos[VOCAB.repo_id] = vocabulary

    assert out.returncode == 1
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("ERROR ") and VOCAB.repo_id in last and "not found" in last
    assert not (hub_module.repo_folder(GEORSCLIP.repo_id, tmp_path / "hf" / "hub") / "rs_assistant").exists()
    assert not models.exists()  # nothing registered

    again = pull_georsclip(env, models, tiny_open_clip_path)
    assert again.returncode == 0, again.stdout + again.stderr


def test_the_catalogued_georsclip_config_is_clip_vit_b_32() -> None:
    """The generated open_clip config builds OpenAI's CLIP ViT-B/32: 151,277,313 parameters, QuickGELU."""
    from transformers import CLIPModel, CLIPTokenizer

    from rs_assistant.engine.backends.clip import clip_config_from_open_clip, image_processor_from_open_clip

    ((name, text),) = GEORSCLIP.generated_files
    raw = json.loads(text)
    tokenizer = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}, merges=[])
    config = clip_config_from_open_clip(raw["model_cfg"], tokenizer)
    with torch.device("meta"):
        model = CLIPModel(config)
    assert name == "open_clip_config.json"
    assert sum(p.numel() for p in model.parameters()) == 151_277_313  # openai/clip-vit-base-patch32's count
    assert config.vision_config.hidden_act == "quick_gelu" and config.vision_config.patch_size == 32
    processor = image_processor_from_open_clip(raw["model_cfg"], raw["preprocess_cfg"])
    assert processor.crop_size == {"height": 224, "width": 224}
