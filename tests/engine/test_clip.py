"""The clip backend on tiny random-weight CLIPs: a transformers folder and its open_clip twin.

The open_clip folder (tests/engine/tiny_models/clip.py) holds the transformers model's own
weights rewritten under open_clip's names, so converting it back must give the same embeddings,
which checks the mapping of every tensor (the q/k/v split and the transposed projections
included), the tokenizer built from the gzipped merges, and the preprocessing read from the config.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import shapely.geometry
import torch
from transformers import CLIPModel, CLIPProcessor

from rs_assistant.core.protocol import AnalyzeRequest, ErrorCode, FeatureKind, ImageRef, Options, ProtocolError, Task
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.clip import DEFAULT_TEMPLATE, ClipBackend
from tests.engine import rasters
from tests.engine.tiny_models import clip as tiny_clip

LABELS = ("airport", "harbor", "forest", "farmland", "storage tanks")
TEXTS = ["a satellite image of an airport.", "forest", "Storage   TANKS near the river, 2 ships!", "runway " * 30]


@pytest.fixture(scope="module")
def hf_backend(tiny_clip_path: Path) -> ClipBackend:
    backend = ClipBackend("clip", {"path": str(tiny_clip_path)}, "cpu")
    backend.ensure_loaded()
    return backend


@pytest.fixture(scope="module")
def open_clip_backend(tiny_open_clip_path: Path) -> ClipBackend:
    backend = ClipBackend("georsclip", {"path": str(tiny_open_clip_path), "batch_size": 3}, "cpu")
    backend.ensure_loaded()
    return backend


@pytest.fixture(scope="module")
def reference(tiny_clip_path: Path) -> tuple[CLIPModel, CLIPProcessor]:
    """The tiny checkpoint loaded by hand, the way its model card would say."""
    return CLIPModel.from_pretrained(tiny_clip_path).eval(), CLIPProcessor.from_pretrained(tiny_clip_path)


def windows(count: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    shapes = [(40, 60), (33, 33), (64, 48), (20, 90), (32, 32), (50, 51)]
    return [rng.integers(0, 256, (*shapes[i % len(shapes)], 3), dtype=np.uint8) for i in range(count)]


def probabilities(text: str) -> tuple[str, dict[str, float]]:
    """The best label and the ``label: p`` lines of a classify answer, in their order."""
    best, *lines = text.splitlines()
    return best, {label: float(p) for label, p in (line.rsplit(": ", 1) for line in lines)}


# --- classify ------------------------------------------------------------------------------------


def test_classify_is_a_distribution_over_the_given_labels(hf_backend: ClipBackend, reference) -> None:
    model, processor = reference
    image = windows()[0]
    result = hf_backend.run(BackendCall(Task.CLASSIFY, [image], options=Options(labels=LABELS)))
    best, probs = probabilities(result.text)

    texts = processor(
        text=[DEFAULT_TEMPLATE.format(label=label) for label in LABELS], padding=True, return_tensors="pt"
    )
    pixels = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        expected = model(**texts, **pixels).logits_per_image.softmax(dim=-1)[0].numpy()
    assert list(probs) == [LABELS[i] for i in np.argsort(-expected)]
    assert sum(probs.values()) == pytest.approx(1.0, abs=len(LABELS) * 5e-4)
    assert [probs[label] for label in LABELS] == pytest.approx(expected.tolist(), abs=5e-4)

    (det,) = result.detections
    assert best == det.label == LABELS[int(np.argmax(expected))]
    assert det.kind is FeatureKind.BOX
    assert det.box == (0.0, 0.0, 60.0, 40.0)
    assert det.score == pytest.approx(float(expected.max()), abs=1e-5)


def test_classify_takes_comma_separated_labels_from_the_prompt(hf_backend: ClipBackend) -> None:
    image = windows()[1]
    from_prompt = hf_backend.run(BackendCall(Task.CLASSIFY, [image], prompt=" harbor, forest,,airport , harbor"))
    from_labels = hf_backend.run(
        BackendCall(Task.CLASSIFY, [image], options=Options(labels=("harbor", "forest", "airport")))
    )
    assert from_prompt.text == from_labels.text
    assert set(probabilities(from_prompt.text)[1]) == {"harbor", "forest", "airport"}


def test_classify_uses_the_configured_template(tiny_clip_path: Path, hf_backend: ClipBackend) -> None:
    plain = ClipBackend("clip", {"path": str(tiny_clip_path), "template": "{label}"}, "cpu")
    image = windows()[2]
    result = plain.run(BackendCall(Task.CLASSIFY, [image], options=Options(labels=LABELS)))
    scores = hf_backend.logit_scale * (hf_backend.embed_images([image]) @ hf_backend.embed_texts(list(LABELS)).T)[0]
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    assert [probabilities(result.text)[1][label] for label in LABELS] == pytest.approx(expected.tolist(), abs=5e-4)


@pytest.mark.parametrize("template", ["a satellite image", "a {kind} image of {label}", "{label} {"])
def test_a_template_without_label_or_with_other_fields_is_refused(tiny_clip_path: Path, template: str) -> None:
    with pytest.raises(ProtocolError) as err:
        ClipBackend("clip", {"path": str(tiny_clip_path), "template": template}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED and "{label}" in err.value.message


# --- embeddings and retrieve ---------------------------------------------------------------------


def test_embeddings_are_clipmodel_features_normalised(hf_backend: ClipBackend, reference) -> None:
    model, processor = reference
    images = windows()
    with torch.no_grad():
        image_features = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        tokens = processor(
            text=TEXTS, padding=True, truncation=True, max_length=tiny_clip.CONTEXT_LENGTH, return_tensors="pt"
        )
        text_features = model.get_text_features(**tokens).pooler_output
    image_embeds, text_embeds = hf_backend.embed_images(images), hf_backend.embed_texts(TEXTS)
    assert image_embeds.shape == (len(images), tiny_clip.EMBED_DIM) and image_embeds.dtype == np.float32
    assert np.linalg.norm(image_embeds, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert np.linalg.norm(text_embeds, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(image_embeds, torch.nn.functional.normalize(image_features, dim=-1).numpy(), atol=1e-5)
    assert np.allclose(text_embeds, torch.nn.functional.normalize(text_features, dim=-1).numpy(), atol=1e-5)


def test_retrieve_ranks_the_images_by_cosine_similarity(hf_backend: ClipBackend) -> None:
    images = windows(6)
    query = "storage tanks near a harbor"
    result = hf_backend.run(BackendCall(Task.RETRIEVE, images, prompt=query, options=Options(top_k=4)))

    similarity = hf_backend.embed_images(images) @ hf_backend.embed_texts([query])[0]
    order = np.argsort(-similarity)
    scaled = hf_backend.logit_scale * similarity
    share = np.exp(scaled - scaled.max()) / np.exp(scaled - scaled.max()).sum()
    assert [d.properties["image"] for d in result.detections] == order[:4].tolist()
    assert [d.properties["rank"] for d in result.detections] == [1, 2, 3, 4]
    for det in result.detections:
        index = det.properties["image"]
        height, width = images[index].shape[:2]
        assert det.kind is FeatureKind.BOX and det.label == query
        assert det.box == (0.0, 0.0, float(width), float(height))
        assert det.properties["similarity"] == pytest.approx(float(similarity[index]), abs=1e-5)
        assert det.score == pytest.approx(float(share[index]), abs=1e-5)
    assert result.text.splitlines()[0].startswith(f"1. image {order[0]}: similarity")
    assert len(result.text.splitlines()) == 4


def test_retrieve_needs_a_prompt(hf_backend: ClipBackend) -> None:
    with pytest.raises(ProtocolError) as err:
        hf_backend.run(BackendCall(Task.RETRIEVE, windows(2), prompt="  "))
    assert err.value.code is ErrorCode.INVALID_VALUE


def test_cancel_stops_embedding(hf_backend: ClipBackend) -> None:
    call = BackendCall(Task.RETRIEVE, windows(3), prompt="tanks")
    call.cancel.set()
    with pytest.raises(ProtocolError) as err:
        hf_backend.run(call)
    assert err.value.code is ErrorCode.CANCELLED


# --- open_clip checkpoints -----------------------------------------------------------------------


def test_open_clip_folder_gives_the_embeddings_of_the_model_it_came_from(
    hf_backend: ClipBackend, open_clip_backend: ClipBackend
) -> None:
    images = windows()

    def ids(backend: ClipBackend) -> list[list[int]]:
        return backend.tokenizer(TEXTS, truncation=True, max_length=tiny_clip.CONTEXT_LENGTH)["input_ids"]

    assert ids(open_clip_backend) == ids(hf_backend)
    assert np.allclose(open_clip_backend.embed_images(images), hf_backend.embed_images(images), atol=1e-5)
    assert np.allclose(open_clip_backend.embed_texts(TEXTS), hf_backend.embed_texts(TEXTS), atol=1e-5)
    assert open_clip_backend.logit_scale == pytest.approx(hf_backend.logit_scale)
    image = images[0]
    call = BackendCall(Task.CLASSIFY, [image], options=Options(labels=LABELS))
    assert open_clip_backend.run(call).text == hf_backend.run(call).text


def test_open_clip_training_checkpoint_bare_config_and_hf_vocabulary(
    tiny_open_clip_path: Path, tiny_clip_path: Path, hf_backend: ClipBackend, tmp_path: Path
) -> None:
    """A ``{"state_dict": {"module.…"}}`` *.pt, open_clip's bare model config, vocab.json + merges.txt."""
    folder = tmp_path / "skyclip"
    folder.mkdir()
    state_dict = torch.load(tiny_open_clip_path / "open_clip_pytorch_model.bin", weights_only=True)
    torch.save({"epoch": 20, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, folder / "epoch_20.pt")
    config = json.loads((tiny_open_clip_path / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"].update(image_mean=list(tiny_clip.MEAN), image_std=list(tiny_clip.STD))
    (folder / "open_clip_config.json").write_text(json.dumps(config["model_cfg"]))
    tokenizer = json.loads((tiny_clip_path / "tokenizer.json").read_text())["model"]
    (folder / "vocab.json").write_text(json.dumps(tokenizer["vocab"]))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in tokenizer["merges"]) + "\n")

    backend = ClipBackend("skyclip", {"path": str(folder)}, "cpu")
    images = windows(3)
    assert np.allclose(backend.embed_images(images), hf_backend.embed_images(images), atol=1e-5)
    assert np.allclose(backend.embed_texts(TEXTS), hf_backend.embed_texts(TEXTS), atol=1e-5)


# --- bad folders ---------------------------------------------------------------------------------


def _open_clip_copy(source: Path, target: Path, edit: Callable[[Path], None]) -> Path:
    shutil.copytree(source, target)
    edit(target)
    return target


def _edit_state_dict(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        state_dict = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
        change(state_dict)
        torch.save(state_dict, folder / "open_clip_pytorch_model.bin")

    return edit


def _edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "open_clip_config.json").read_text())
        change(config["model_cfg"])
        (folder / "open_clip_config.json").write_text(json.dumps(config))

    return edit


def _two_pt_files(folder: Path) -> None:
    (folder / "open_clip_pytorch_model.bin").rename(folder / "a.pt")
    shutil.copy(folder / "a.pt", folder / "b.pt")


BAD_OPEN_CLIP_FOLDERS = {
    "no-weights": (lambda f: (f / "open_clip_pytorch_model.bin").unlink(), "no weights"),
    "two-pt-files": (_two_pt_files, "several *.pt files (a.pt, b.pt)"),
    "no-vocabulary": (lambda f: (f / "bpe_simple_vocab_16e6.txt.gz").unlink(), "no BPE vocabulary"),
    "missing-tensor": (_edit_state_dict(lambda sd: sd.pop("visual.ln_post.bias")), "no 'visual.ln_post.bias'"),
    "layer-scale": (
        _edit_state_dict(lambda sd: sd.update({"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32)})),
        "visual.transformer.resblocks.0.ls_1.gamma",
    ),
    "wrong-width": (_edit_config(lambda cfg: cfg["vision_cfg"].update(width=64, head_width=32)), "size mismatch"),
    "resnet": (_edit_config(lambda cfg: cfg["vision_cfg"].update(layers=[3, 4, 6, 3])), "ResNet image tower"),
    "hf-text-tower": (
        _edit_config(lambda cfg: cfg["text_cfg"].update(hf_model_name="xlm-roberta-base")),
        "text_cfg.hf_model_name",
    ),
    "no-vision-cfg": (_edit_config(lambda cfg: cfg.pop("vision_cfg")), "has no vision_cfg and text_cfg"),
}


@pytest.mark.parametrize("case", BAD_OPEN_CLIP_FOLDERS, ids=list(BAD_OPEN_CLIP_FOLDERS))
def test_bad_open_clip_folder(tiny_open_clip_path: Path, tmp_path: Path, case: str) -> None:
    edit, expected = BAD_OPEN_CLIP_FOLDERS[case]
    folder = _open_clip_copy(tiny_open_clip_path, tmp_path / "open_clip", edit)
    with pytest.raises(ProtocolError) as err:
        ClipBackend("georsclip", {"path": str(folder)}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(folder) in err.value.message and expected in err.value.message


def test_folder_with_neither_layout(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ProtocolError) as err:
        ClipBackend("clip", {"path": str(tmp_path)}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert f"{tmp_path} holds weights.safetensors" in err.value.message
    assert "open_clip_config.json" in err.value.message and "model_type 'clip'" in err.value.message


def test_transformers_folder_of_another_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ProtocolError) as err:
        ClipBackend("clip", {"path": str(tmp_path)}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(tmp_path) in err.value.message and "'siglip'" in err.value.message


def test_partial_transformers_folder(tiny_clip_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_path, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    with pytest.raises(ProtocolError) as err:
        ClipBackend("clip", {"path": str(folder)}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED and str(folder) in err.value.message


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as err:
        ClipBackend("clip", {"path": str(tmp_path / "nowhere")}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED and "nowhere does not exist" in err.value.message


# --- through the engine --------------------------------------------------------------------------


def test_engine_serves_classify_and_retrieve_from_a_models_file(tiny_open_clip_path: Path, tmp_path: Path) -> None:
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine

    models = tmp_path / "models.toml"
    models.write_text(f'[models.georsclip]\nbackend = "clip"\npath = "{tiny_open_clip_path}"\ntemplate = "{{label}}"\n')
    engine = Engine(Registry.from_file(models, device="cpu"))
    images = windows(3)
    extents = []  # side by side, 2 m pixels
    for i, array in enumerate(images):
        height, width = array.shape[:2]
        extents.append((1000.0 + 500 * i, 2000.0, 1000.0 + 500 * i + 2 * width, 2000.0 + 2 * height))
    refs = tuple(ImageRef.from_png(rasters.png_bytes(a), e, rasters.MERCATOR) for a, e in zip(images, extents))

    request = AnalyzeRequest(
        Task.CLASSIFY, refs[:1], rasters.MERCATOR, model="georsclip", options=Options(labels=LABELS)
    )
    response = engine.analyze(request)
    (feature,) = response.feature_list
    assert response.text.splitlines()[0] == feature["properties"]["label"]
    assert feature["properties"]["kind"] == "box"
    assert shapely.geometry.shape(feature["geometry"]).bounds == pytest.approx(extents[0])

    request = AnalyzeRequest(
        Task.RETRIEVE, refs, rasters.MERCATOR, model="georsclip", prompt="airport", options=Options(top_k=3)
    )
    response = engine.analyze(request)
    assert [f["properties"]["rank"] for f in response.feature_list] == [1, 2, 3]
    for feature in response.feature_list:
        bounds = shapely.geometry.shape(feature["geometry"]).bounds
        assert bounds == pytest.approx(extents[feature["properties"]["image"]])
