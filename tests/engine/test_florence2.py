"""The Florence-2 backend on a tiny random-weight checkpoint folder made by the test session.

Random weights answer arbitrary tokens, so runs are checked for types and shapes; boxes and masks
are checked by feeding known answers through the backend's own parsers.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from rs_assistant.core.protocol import ErrorCode, FeatureKind, Options, ProtocolError, Task
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.florence2 import Florence2Backend, polygon_mask

WINDOW = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # 64 x 48


@pytest.fixture(scope="module")
def backend(tiny_florence2_path: Path) -> Florence2Backend:
    loaded = Florence2Backend("f", {"path": str(tiny_florence2_path)}, "cpu")
    loaded.ensure_loaded()
    return loaded


def call(task: Task, prompt: str = "", max_new_tokens: int = 24, cancel=None) -> BackendCall:
    return BackendCall(
        task=task,
        images=[WINDOW],
        prompt=prompt,
        options=Options(max_new_tokens=max_new_tokens),
        cancel=cancel or threading.Event(),
    )


def test_loads_fp32_sdpa_on_cpu(backend):
    assert backend.model.dtype == torch.float32
    assert backend.model.config._attn_implementation == "sdpa"
    assert backend.tasks == {Task.CAPTION, Task.GROUND, Task.SEGMENT}


def test_caption_answers_text_only(backend):
    result = backend.run(call(Task.CAPTION))
    assert isinstance(result.text, str) and "</s>" not in result.text and "<pad>" not in result.text
    assert result.detections == []


def test_ground_answers_boxes_inside_the_window(backend):
    for prompt in ("find the storage tanks", ""):
        result = backend.run(call(Task.GROUND, prompt))
        assert isinstance(result.text, str) and result.text
        for det in result.detections:
            x0, y0, x1, y1 = det.box
            assert det.kind is FeatureKind.BOX and det.score == 1.0
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48


def test_segment_answers_window_sized_masks(backend):
    result = backend.run(call(Task.SEGMENT, "the building", max_new_tokens=40))
    for det in result.detections:
        assert det.kind is FeatureKind.MASK
        assert det.mask.shape == (48, 64) and det.mask.dtype == bool and det.mask.any()


def test_segment_needs_a_phrase(backend):
    with pytest.raises(ProtocolError) as err:
        backend.run(call(Task.SEGMENT, "  "))
    assert err.value.code is ErrorCode.INVALID_VALUE


def test_unsupported_task_is_refused(backend):
    with pytest.raises(ProtocolError) as err:
        backend.run(call(Task.CHAT, "hello"))
    assert err.value.code is ErrorCode.UNSUPPORTED_TASK


# --- task tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, prompt, expected",
    [
        (Task.CAPTION, "", ("<DETAILED_CAPTION>", "")),
        (Task.CAPTION, "describe it briefly", ("<CAPTION>", "")),
        (Task.CAPTION, "describe it in detail", ("<DETAILED_CAPTION>", "")),
        (Task.CAPTION, "write a paragraph about it", ("<MORE_DETAILED_CAPTION>", "")),
        (Task.CAPTION, "<MORE_DETAILED_CAPTION>", ("<MORE_DETAILED_CAPTION>", "")),
        (Task.GROUND, "Find all the storage tanks.", ("<CAPTION_TO_PHRASE_GROUNDING>", "storage tanks")),
        (Task.GROUND, "", ("<OD>", "")),
        (Task.GROUND, "detect all objects", ("<OD>", "")),
        (Task.SEGMENT, "segment the buildings", ("<REFERRING_EXPRESSION_SEGMENTATION>", "buildings")),
        (Task.GROUND, "find <OD> ships", ("<CAPTION_TO_PHRASE_GROUNDING>", "ships")),
    ],
)
def test_task_prompt(backend, task, prompt, expected):
    assert backend._task_prompt(call(task, prompt)) == expected


def test_models_file_chooses_the_default_caption(tiny_florence2_path):
    brief = Florence2Backend("f", {"path": str(tiny_florence2_path), "caption": "brief"}, "cpu")
    brief.ensure_loaded()
    assert brief._task_prompt(call(Task.CAPTION)) == ("<CAPTION>", "")


def test_unknown_caption_setting_is_a_load_error(tiny_florence2_path):
    with pytest.raises(ProtocolError) as err:
        Florence2Backend("f", {"path": str(tiny_florence2_path), "caption": "long"}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED and "brief, detailed, more_detailed" in err.value.message


# --- parsing known answers -------------------------------------------------------------------------


def test_known_grounding_answer_in_window_pixels(backend):
    # window 200 x 100: bin N -> (N + 0.5) / 1000 of the side
    answer = "</s><s>storage tank<loc_100><loc_200><loc_500><loc_600><loc_0><loc_0><loc_999><loc_999></s>"
    detections = backend._parse_boxes(answer, (200, 100), "tanks")
    assert [(tuple(round(v, 6) for v in d.box), d.label) for d in detections] == [
        ((20.1, 20.05, 100.1, 60.05), "storage tank"),
        ((0.1, 0.05, 199.9, 99.95), "storage tank"),
    ]
    unlabelled = backend._parse_boxes("<loc_100><loc_200><loc_500><loc_600>", (200, 100), "tanks")
    assert [d.label for d in unlabelled] == ["tanks"]


def test_known_segmentation_answer_is_rasterised(backend):
    # window 100 x 50: x bins 99 and 499 -> 9.95 and 49.95; y bins 199 and 599 -> 9.975 and 29.975.
    # Pixel centres inside: columns 10..49 and rows 10..29, so a 40 x 20 block.
    answer = "</s><s><loc_99><loc_199><loc_499><loc_199><loc_499><loc_599><loc_99><loc_599></s>"
    (det,) = backend._parse_mask(answer, (100, 50), "roof")
    assert det.kind is FeatureKind.MASK and det.label == "roof"
    assert det.mask.shape == (50, 100) and det.mask.sum() == 40 * 20
    assert det.mask[10:30, 10:50].all()
    assert det.box == (10.0, 10.0, 50.0, 30.0)
    assert backend._parse_mask("</s><s>nothing</s>", (100, 50), "roof") == []


def test_polygon_mask_unites_rings_by_pixel_centres():
    mask = polygon_mask([((2, 2), (8, 2), (8, 6), (2, 6)), ((10, 0), (12, 0), (12, 1), (10, 1))], (20, 10))
    assert mask.shape == (10, 20)
    assert mask.sum() == 6 * 4 + 2
    assert mask[2:6, 2:8].all() and mask[0, 10:12].all()


# --- limits and cancel -----------------------------------------------------------------------------


def test_prompt_longer_than_the_context_is_refused(backend):
    with pytest.raises(ProtocolError) as err:
        backend.run(call(Task.GROUND, "find the " + "zq xv " * 60))
    assert err.value.code is ErrorCode.PROMPT_TOO_LONG


def test_cancel_stops_generation_at_the_next_token(backend):
    cancel = threading.Event()
    cancel.set()
    request = call(Task.CAPTION, max_new_tokens=64, cancel=cancel)
    inputs = backend.processor(text="<CAPTION>", images=WINDOW, return_tensors="pt")
    tokens = backend._generate(inputs, request)
    assert len(tokens) - 1 == 1 < 64  # the decoder start token, then one generated token
    with pytest.raises(ProtocolError) as err:
        backend.run(request)
    assert err.value.code is ErrorCode.CANCELLED


# --- checkpoint folders that cannot be loaded ------------------------------------------------------


def load_error(path: Path) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        Florence2Backend("f", {"path": str(path)}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    return err.value


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "checkpoint"))


def test_missing_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    assert str(missing) in load_error(missing).message


def test_folder_without_weights(tiny_florence2_path, tmp_path):
    folder = copy_of(tiny_florence2_path, tmp_path)
    (folder / "model.safetensors").unlink()
    message = load_error(folder).message
    assert str(folder) in message and "no weights" in message


def test_folder_without_processor_config(tiny_florence2_path, tmp_path):
    folder = copy_of(tiny_florence2_path, tmp_path)
    (folder / "processor_config.json").unlink()
    message = load_error(folder).message
    assert str(folder) in message and "image processor" in message


def test_folder_of_another_architecture(tiny_florence2_path, tmp_path):
    folder = copy_of(tiny_florence2_path, tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    message = load_error(folder).message
    assert str(folder) in message and "qwen2_5_vl" in message and "florence2" in message


def test_original_remote_code_release_is_refused_with_a_hint(tiny_florence2_path, tmp_path):
    folder = copy_of(tiny_florence2_path, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}
    (folder / "config.json").write_text(json.dumps(config))
    message = load_error(folder).message
    assert str(folder) in message and "remote code" in message and "florence-community" in message


# --- served through a models file ----------------------------------------------------------------


class ScriptedFlorence2Backend(Florence2Backend):
    """The real backend whose model "writes" known answers: everything but the forward pass runs."""

    ANSWERS = {
        Task.GROUND: "</s><s>storage tank<loc_250><loc_250><loc_750><loc_500></s>",
        Task.SEGMENT: "</s><s><loc_250><loc_250><loc_750><loc_250><loc_750><loc_750><loc_250><loc_750></s>",
    }

    def _generate(self, inputs, call):
        return torch.tensor(self.processor.tokenizer(self.ANSWERS[call.task], add_special_tokens=False)["input_ids"])


def test_served_through_a_models_file(tiny_florence2_path, tmp_path):
    from shapely.geometry import box, shape

    from rs_assistant.core.protocol import AnalyzeRequest, ImageRef
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine
    from tests.engine import rasters

    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.f]\nbackend = "florence2"\npath = "{tiny_florence2_path}"\n'
        f'[models.scripted]\nbackend = "{__name__}:ScriptedFlorence2Backend"\npath = "{tiny_florence2_path}"\n',
        encoding="utf-8",
    )
    engine = Engine(Registry.from_file(models, device="cpu"))
    source = rasters.rgb_uint8(tmp_path / "rgb.tif")  # 64 x 48 pixels of 10 m, UTM 33N
    extent = rasters.pixel_extent(rasters.utm_transform(), 0, 0, 64, 48)
    image = ImageRef(extent=extent, crs=rasters.UTM, source=str(source))

    def analyze(model: str, task: Task, prompt: str):
        request = AnalyzeRequest(
            task=task,
            model=model,
            prompt=prompt,
            images=(image,),
            output_crs=rasters.UTM,
            options=Options(max_new_tokens=40),
        )
        response = engine.analyze(request)
        assert response.model == model and response.crs == rasters.UTM and isinstance(response.text, str)
        assert response.features["type"] == "FeatureCollection"
        return response

    for task, prompt in ((Task.GROUND, "find the storage tanks"), (Task.SEGMENT, "the buildings"), (Task.CAPTION, "")):
        for feature in analyze("f", task, prompt).feature_list:
            assert feature["properties"]["kind"] == ("box" if task is Task.GROUND else "mask")
            assert box(*extent).buffer(1e-6).contains(shape(feature["geometry"]))  # map coordinates of the window

    # Bins 250 / 500 / 750 of 64 x 48 pixels: x 16.032, 48.032; y 12.024, 24.024, 36.024.
    (feature,) = analyze("scripted", Task.GROUND, "storage tanks").feature_list
    assert feature["properties"]["label"] == "storage tank"
    assert shape(feature["geometry"]).bounds == pytest.approx((500_160.32, 4_649_759.76, 500_480.32, 4_649_879.76))
    # The polygon covers the centres of columns 16..47 and rows 12..35: a 32 x 24 pixel block.
    (feature,) = analyze("scripted", Task.SEGMENT, "storage tanks").feature_list
    assert feature["properties"]["kind"] == "mask" and feature["properties"]["label"] == "storage tanks"
    assert shape(feature["geometry"]).bounds == pytest.approx((500_160.0, 4_649_640.0, 500_480.0, 4_649_880.0))
    assert shape(feature["geometry"]).area == pytest.approx(320 * 240)
