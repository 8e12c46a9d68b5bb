"""The Qwen2.5-VL backend on a tiny random-weight checkpoint folder made by the test session.

Random weights answer arbitrary text, so runs are checked for types and shapes; the box path is
checked by feeding known answers through the backend's own parser with the sizes its processor
really produced.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from rs_assistant.core.protocol import ErrorCode, FeatureKind, Message, Options, ProtocolError, Role, Task
from rs_assistant.engine.backends.base import BackendCall, BackendResult
from rs_assistant.engine.backends.qwen2_5_vl import Qwen25VLBackend
from tests.engine.tiny_models.qwen2_5_vl import MAX_PIXELS

# A 64 x 48 window (width x height): the processor resizes it to 56 x 56, 4 x 4 patches, 4 tokens.
WINDOW = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def backend(tiny_qwen_path: Path) -> Qwen25VLBackend:
    loaded = Qwen25VLBackend("q", {"path": str(tiny_qwen_path), "max_pixels": MAX_PIXELS}, "cpu")
    loaded.ensure_loaded()
    return loaded


def call(
    task: Task, prompt: str = "", images=(WINDOW,), history=(), max_new_tokens: int = 12, cancel=None
) -> BackendCall:
    return BackendCall(
        task=task,
        images=list(images),
        prompt=prompt,
        history=tuple(history),
        options=Options(max_new_tokens=max_new_tokens),
        cancel=cancel or threading.Event(),
    )


def test_loads_fp32_sdpa_on_cpu(backend):
    assert backend.loaded
    assert backend.model.dtype == torch.float32
    assert backend.model.config._attn_implementation == "sdpa"
    assert backend.tasks == {Task.CAPTION, Task.GROUND, Task.CHAT, Task.CHANGE}


@pytest.mark.parametrize(
    "task, images", [(Task.CAPTION, (WINDOW,)), (Task.CHAT, (WINDOW,)), (Task.CHANGE, (WINDOW, WINDOW))]
)
def test_text_tasks_answer_text_only(backend, task, images):
    result = backend.run(call(task, "what is here?" if task is Task.CHAT else "", images))
    assert isinstance(result, BackendResult)
    assert isinstance(result.text, str)
    assert result.detections == []


def test_ground_answers_boxes_inside_the_window(backend):
    result = backend.run(call(Task.GROUND, "find the storage tanks", max_new_tokens=24))
    assert isinstance(result.text, str)
    for det in result.detections:
        assert det.kind is FeatureKind.BOX and det.score == 1.0 and det.label
        x0, y0, x1, y1 = det.box
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48


def test_unsupported_task_is_refused(backend):
    with pytest.raises(ProtocolError) as err:
        backend.run(call(Task.SEGMENT, "buildings"))
    assert err.value.code is ErrorCode.UNSUPPORTED_TASK


# --- the prompt the model sees -------------------------------------------------------------------


def test_prompt_uses_the_chat_template_history_and_image_tokens(backend):
    history = (Message(Role.USER, "Is there water?"), Message(Role.ASSISTANT, "Yes, a river."))
    prepared = backend._prepare(call(Task.CHAT, "How wide is it?", history=history))
    text = backend.tokenizer.decode(prepared.inputs["input_ids"][0])
    assert text.startswith("<|im_start|>system\n")
    assert (
        "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>Is there water?<|im_end|>\n"
        "<|im_start|>assistant\nYes, a river.<|im_end|>\n<|im_start|>user\nHow wide is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ) in text
    assert prepared.inputs["mm_token_type_ids"].sum() == 4
    assert prepared.inputs["image_grid_thw"].tolist() == [[1, 4, 4]]


def test_change_puts_both_images_in_one_message(backend):
    prepared = backend._prepare(call(Task.CHANGE, images=(WINDOW, WINDOW)))
    text = backend.tokenizer.decode(prepared.inputs["input_ids"][0])
    assert text.count("<|vision_start|>") == 2 and "Picture 1: " in text and "Picture 2: " in text
    assert "Picture 1 was taken before and Picture 2 after" in text
    assert len(prepared.resized) == 2


def test_grounding_prompt_asks_for_json_boxes(backend):
    prepared = backend._prepare(call(Task.GROUND, "Find all the storage tanks."))
    text = backend.tokenizer.decode(prepared.inputs["input_ids"][0])
    assert "Locate every storage tanks in the image and output their bbox coordinates in JSON format" in text
    assert '"bbox_2d": [x1, y1, x2, y2]' in text


def test_window_is_resized_within_max_pixels(backend):
    # smart_resize(192, 256, factor 28, max 112*112): 196 x 252 is too many pixels, so beta =
    # sqrt(192*256 / 12544) = 1.98 and the sides become floor(192/1.98/28)*28 = 84, floor(256/1.98/28)*28 = 112.
    big = np.zeros((192, 256, 3), np.uint8)
    prepared = backend._prepare(call(Task.GROUND, "cars", images=(big,)))
    assert prepared.resized == [(112, 84)]
    assert prepared.inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert int((prepared.inputs["input_ids"] == backend.model.config.image_token_id).sum()) == 6 * 8 // 4


def test_region_too_elongated_for_the_processor_is_a_bad_extent(backend):
    with pytest.raises(ProtocolError) as err:
        backend.run(call(Task.CAPTION, images=(np.zeros((2, 600, 3), np.uint8),)))
    assert err.value.code is ErrorCode.BAD_EXTENT and "aspect ratio" in err.value.message


# --- box parsing with the processor's real sizes -------------------------------------------------


def test_known_answer_is_scaled_from_the_resized_image_to_the_window(backend):
    big = np.zeros((192, 256, 3), np.uint8)
    resized = backend._prepare(call(Task.GROUND, "tanks", images=(big,))).resized[0]  # (112, 84)
    answer = '```json\n[\n\t{"bbox_2d": [28, 21, 56, 42], "label": "tank"},\n\t{"bbox_2d": [0, 0, 112, 84]}\n]\n```'
    detections = backend._parse_boxes(answer, (256, 192), resized, "storage tank")
    # 256 / 112 = 192 / 84 = 16 / 7
    assert [(d.box, d.label, d.kind) for d in detections] == [
        ((64.0, 48.0, 128.0, 96.0), "tank", FeatureKind.BOX),
        ((0.0, 0.0, 256.0, 192.0), "storage tank", FeatureKind.BOX),
    ]


def test_known_qwen2_style_answer_is_read_as_thousandths(backend):
    answer = "<|object_ref_start|>ship<|object_ref_end|><|box_start|>(250,500),(750,1000)<|box_end|><|im_end|>"
    detections = backend._parse_boxes(answer, (256, 192), (112, 84), "boat")
    assert [(d.box, d.label) for d in detections] == [((64.0, 96.0, 192.0, 192.0), "ship")]


def test_garbage_answer_gives_no_boxes(backend):
    assert backend._parse_boxes('```json\n[{"bbox_2d": [1, 2', (64, 48), (56, 56), "x") == []


# --- limits and cancel ---------------------------------------------------------------------------


def test_prompt_longer_than_the_context_is_refused(backend):
    history = [Message(Role.USER, "zq xv " * 400), Message(Role.ASSISTANT, "ok")]
    with pytest.raises(ProtocolError) as err:
        backend.run(call(Task.CHAT, "and now?", history=history))
    assert err.value.code is ErrorCode.PROMPT_TOO_LONG
    assert "context is 1024" in err.value.message


def test_cancel_stops_generation_at_the_next_token(backend):
    cancel = threading.Event()
    cancel.set()
    request = call(Task.CAPTION, max_new_tokens=64, cancel=cancel)
    tokens = backend._generate(backend._prepare(request), request)
    assert len(tokens) == 1 < 64
    with pytest.raises(ProtocolError) as err:
        backend.run(request)
    assert err.value.code is ErrorCode.CANCELLED


# --- checkpoint folders that cannot be loaded ----------------------------------------------------


def load_error(path: Path, **config) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        Qwen25VLBackend("q", {"path": str(path), **config}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    return err.value


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "checkpoint"))


def test_missing_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    assert str(missing) in load_error(missing).message


def test_no_path_in_the_models_file():
    with pytest.raises(ProtocolError) as err:
        Qwen25VLBackend("q", {}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED and "'path'" in err.value.message


def test_folder_without_weights(tiny_qwen_path, tmp_path):
    folder = copy_of(tiny_qwen_path, tmp_path)
    (folder / "model.safetensors").unlink()
    message = load_error(folder).message
    assert str(folder) in message and "no weights" in message


def test_folder_without_tokenizer(tiny_qwen_path, tmp_path):
    folder = copy_of(tiny_qwen_path, tmp_path)
    (folder / "tokenizer.json").unlink()
    message = load_error(folder).message
    assert str(folder) in message and "tokenizer" in message


def test_folder_without_config(tiny_qwen_path, tmp_path):
    folder = copy_of(tiny_qwen_path, tmp_path)
    (folder / "config.json").unlink()
    message = load_error(folder).message
    assert str(folder) in message and "config.json" in message


def test_folder_of_another_architecture(tiny_qwen_path, tmp_path):
    folder = copy_of(tiny_qwen_path, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "florence2"}))
    message = load_error(folder).message
    assert str(folder) in message and "florence2" in message and "qwen2_5_vl" in message


def test_folder_with_corrupt_weights(tiny_qwen_path, tmp_path):
    folder = copy_of(tiny_qwen_path, tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    assert str(folder) in load_error(folder).message


# --- served through a models file ----------------------------------------------------------------


class ScriptedQwen25VLBackend(Qwen25VLBackend):
    """The real backend whose model "writes" a known answer: everything but the forward pass runs."""

    ANSWER = '```json\n[{"bbox_2d": [14, 14, 42, 28], "label": "storage tank"}]\n```'

    def _generate(self, prepared, call):
        return torch.tensor(self.tokenizer(self.ANSWER, add_special_tokens=False)["input_ids"])


def test_served_through_a_models_file(tiny_qwen_path, tmp_path):
    from shapely.geometry import box, shape

    from rs_assistant.core.protocol import AnalyzeRequest, ImageRef
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine
    from tests.engine import rasters

    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.q]\nbackend = "qwen2_5_vl"\npath = "{tiny_qwen_path}"\nmax_pixels = {MAX_PIXELS}\n'
        f'[models.scripted]\nbackend = "{__name__}:ScriptedQwen25VLBackend"\npath = "{tiny_qwen_path}"\n'
        f"max_pixels = {MAX_PIXELS}\n",
        encoding="utf-8",
    )
    engine = Engine(Registry.from_file(models, device="cpu"))
    source = rasters.rgb_uint8(tmp_path / "rgb.tif")  # 64 x 48 pixels of 10 m, UTM 33N
    extent = rasters.pixel_extent(rasters.utm_transform(), 0, 0, 64, 48)
    image = ImageRef(extent=extent, crs=rasters.UTM, source=str(source))

    def analyze(model: str, task: Task, images=(image,)):
        request = AnalyzeRequest(
            task=task,
            model=model,
            prompt="storage tanks",
            images=images,
            output_crs=rasters.UTM,
            options=Options(max_new_tokens=16),
        )
        response = engine.analyze(request)
        assert response.model == model and response.crs == rasters.UTM and isinstance(response.text, str)
        assert response.features["type"] == "FeatureCollection"
        return response

    for task, images in ((Task.GROUND, (image,)), (Task.CAPTION, (image,)), (Task.CHANGE, (image, image))):
        response = analyze("q", task, images)
        for feature in response.feature_list:  # random weights rarely write JSON boxes; any box must lie on the window
            assert feature["properties"]["kind"] == "box"
            assert box(*extent).buffer(1e-6).contains(shape(feature["geometry"]))

    # The window (64 x 48) reaches the model as 56 x 56, so [14, 14, 42, 28] is window pixels
    # x 64/56, y 48/56 -> (16, 12, 48, 24), and on the 10 m grid from (500000, 4650000):
    (feature,) = analyze("scripted", Task.GROUND).feature_list
    assert feature["properties"]["kind"] == "box" and feature["properties"]["label"] == "storage tank"
    assert shape(feature["geometry"]).bounds == pytest.approx((500_160.0, 4_649_760.0, 500_480.0, 4_649_880.0))


def test_chat_template_of_an_early_release_is_read_from_chat_template_json(tiny_qwen_path, tmp_path):
    folder = copy_of(tiny_qwen_path, tmp_path)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    early = Qwen25VLBackend("q", {"path": str(folder)}, "cpu")
    early.ensure_loaded()
    assert early.tokenizer.chat_template == template


def test_folder_without_chat_template(tiny_qwen_path, tmp_path):
    folder = copy_of(tiny_qwen_path, tmp_path)
    (folder / "chat_template.jinja").unlink()
    message = load_error(folder).message
    assert str(folder) in message and "chat template" in message


def test_bad_max_pixels(tiny_qwen_path):
    assert "max_pixels" in load_error(tiny_qwen_path, max_pixels="many").message
