"""The sam backend on a tiny random-weight SAM folder (tests/engine/tiny_models/sam.py)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import SamModel, SamProcessor

from rs_assistant.core.protocol import AnalyzeRequest, ErrorCode, FeatureKind, ImageRef, Options, ProtocolError, Task
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.sam import SamBackend, parse_box_prompt
from tests.engine import rasters
from tests.engine.fakes import bright_box
from tests.engine.tiny_models.sam import IMAGE_SIZE


@pytest.fixture(scope="module")
def backend(tiny_sam_path: Path) -> SamBackend:
    sam = SamBackend("sam", {"path": str(tiny_sam_path), "box_batch_size": 2}, "cpu")
    sam.ensure_loaded()
    return sam


def window(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def resized(height: int, width: int) -> tuple[int, int]:
    """SAM's resize of a window so that its longest side is IMAGE_SIZE (rounded half up)."""
    scale = IMAGE_SIZE / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


@pytest.mark.parametrize("shape", [(50, 90), (90, 50), (64, 64)])
def test_one_bool_mask_per_box_at_the_window_size(backend: SamBackend, shape: tuple[int, int]) -> None:
    height, width = shape
    boxes = [(2, 3, 30, 40), (0, 0, width, height), (10.5, 7.25, 45.0, 48.0), (20, 20, 21, 22), (1, 1, 12, 9)]
    masks = backend.segment_boxes(window(height, width), boxes)
    assert len(masks) == len(boxes)
    for mask in masks:
        assert mask.shape == (height, width)
        assert mask.dtype == bool


def test_masks_are_those_of_the_transformers_pipeline(backend: SamBackend, tiny_sam_path: Path) -> None:
    """Same masks as SamProcessor + SamModel + post_process_masks used by hand, box by box."""
    image = window(50, 90, seed=1)
    boxes = [[4.0, 3.0, 60.0, 45.0], [30.0, 10.0, 88.0, 49.0], [0.0, 0.0, 90.0, 50.0]]
    processor = SamProcessor.from_pretrained(tiny_sam_path)
    model = SamModel.from_pretrained(tiny_sam_path).eval()
    masks = backend.segment_boxes(image, boxes)
    for box, mask in zip(boxes, masks):
        inputs = processor(images=image, input_boxes=[[box]], return_tensors="pt")
        with torch.no_grad():
            out = model(
                pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"].float(), multimask_output=False
            )
        expected = processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]
        assert np.array_equal(mask, expected[0, 0].numpy())


class FakeSam:
    """Stands in for SamModel: records the prompts and answers each box with its own rectangle.

    The low-resolution logits it returns are positive exactly inside the prompt box (which the
    processor gives in pixels of the padded IMAGE_SIZE square), so post-processing must bring
    each mask back onto its box in window pixels.
    """

    def __init__(self, cancel_after: int | None = None, cancel: threading.Event | None = None):
        self.boxes: list[torch.Tensor] = []
        self.cancel_after, self.cancel = cancel_after, cancel

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        assert pixel_values.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        return torch.zeros(1, 1, 1, 1)

    def __call__(
        self, image_embeddings: torch.Tensor, input_boxes: torch.Tensor, multimask_output: bool
    ) -> SimpleNamespace:
        assert multimask_output is False
        self.boxes.append(input_boxes.clone())
        if self.cancel is not None and len(self.boxes) == self.cancel_after:
            self.cancel.set()
        low = IMAGE_SIZE // 4
        centres = (torch.arange(low, dtype=torch.float32) + 0.5) * (IMAGE_SIZE / low)
        masks = []
        for x0, y0, x1, y1 in input_boxes[0].tolist():
            inside_x = (centres >= x0) & (centres <= x1)
            inside_y = (centres >= y0) & (centres <= y1)
            masks.append(torch.where(inside_y[:, None] & inside_x[None, :], 10.0, -10.0))
        n = input_boxes.shape[1]
        return SimpleNamespace(pred_masks=torch.stack(masks)[None, :, None], iou_scores=torch.full((1, n, 1), 1.7))


def test_boxes_are_rescaled_and_masks_come_back_onto_them(tiny_sam_path: Path) -> None:
    sam = SamBackend("sam", {"path": str(tiny_sam_path), "box_batch_size": 2}, "cpu")
    sam.ensure_loaded()
    sam.model = fake = FakeSam()  # type: ignore[assignment]
    height, width = 60, 100
    boxes = [(10, 5, 60, 40), (0, 0, 100, 60), (70.5, 20, 98, 58)]
    masks = sam.segment_boxes(window(height, width), boxes)

    new_h, new_w = resized(height, width)
    assert (new_h, new_w) == (77, 128)
    sent = torch.cat(fake.boxes, dim=1)[0].double()
    scale = torch.tensor([new_w / width, new_h / height, new_w / width, new_h / height], dtype=torch.float64)
    assert torch.allclose(sent, torch.tensor(boxes, dtype=torch.float64) * scale, atol=1e-4)
    assert [b.shape[1] for b in fake.boxes] == [2, 1]  # chunks of box_batch_size

    # Each mask's extent is its box, up to one low-resolution cell (4 model pixels) of rounding.
    cell = 4 * width / new_w
    for box, mask in zip(boxes, masks):
        rows, cols = np.nonzero(mask)
        extent = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert np.allclose(extent, box, atol=cell), (box, extent)


def test_cancel_stops_between_chunks(tiny_sam_path: Path) -> None:
    sam = SamBackend("sam", {"path": str(tiny_sam_path), "box_batch_size": 1}, "cpu")
    sam.ensure_loaded()
    cancel = threading.Event()
    sam.model = fake = FakeSam(cancel_after=2, cancel=cancel)  # type: ignore[assignment]
    with pytest.raises(ProtocolError) as err:
        sam.segment_boxes(window(40, 40), [(0, 0, 10, 10)] * 5, cancel=cancel)
    assert err.value.code is ErrorCode.CANCELLED
    assert len(fake.boxes) == 2


def test_segment_task_with_box_prompts(backend: SamBackend) -> None:
    image = window(50, 90)
    result = backend.run(BackendCall(Task.SEGMENT, [image], prompt="roofs [10, 5, 40, 30] and [50.5,0,200,49]"))
    assert [d.box for d in result.detections] == [
        (10.0, 5.0, 40.0, 30.0),
        (50.5, 0.0, 90.0, 49.0),
    ]  # clipped to the window
    for det in result.detections:
        assert det.kind is FeatureKind.MASK
        assert det.label == "roofs and"
        assert det.mask is not None and det.mask.shape == (50, 90) and det.mask.dtype == bool
        assert 0.0 <= det.score <= 1.0


def test_segment_task_without_a_box_covers_the_window(backend: SamBackend) -> None:
    result = backend.run(BackendCall(Task.SEGMENT, [window(30, 70)], prompt=""))
    (det,) = result.detections
    assert det.box == (0.0, 0.0, 70.0, 30.0)
    assert det.label == "object"
    assert det.mask is not None and det.mask.shape == (30, 70)


def test_box_prompt_outside_the_window_is_refused(backend: SamBackend) -> None:
    with pytest.raises(ProtocolError) as err:
        backend.run(BackendCall(Task.SEGMENT, [window(30, 70)], prompt="[80, 0, 90, 10]"))
    assert err.value.code is ErrorCode.INVALID_VALUE
    assert "70x30" in err.value.message


def test_segment_boxes_gives_an_empty_mask_for_a_box_outside_the_window(backend: SamBackend) -> None:
    masks = backend.segment_boxes(window(30, 70), [(80, 0, 90, 10), (5, 5, 30, 25), (3, 3, 3, 9)])
    assert len(masks) == 3
    assert not masks[0].any() and not masks[2].any()
    assert masks[1].shape == (30, 70)


def test_parse_box_prompt() -> None:
    assert parse_box_prompt("tank [1,2,3,4]; [ 5.5 , -6 , 7 , 8 ].") == (
        [(1.0, 2.0, 3.0, 4.0), (5.5, -6.0, 7.0, 8.0)],
        "tank",
    )
    assert parse_box_prompt("the buildings") == ([], "the buildings")


def _copy(source: Path, target: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*drop))
    return target


@pytest.mark.parametrize(
    "prepare, expected",
    [
        (lambda src, dst: dst, "does not exist"),
        (lambda src, dst: _copy(src, dst, ("config.json",)), "missing config.json"),
        (lambda src, dst: _copy(src, dst, ("model.safetensors",)), "has no weights"),
        (
            lambda src, dst: _copy(src, dst, ("processor_config.json", "preprocessor_config.json")),
            "has no processor config",
        ),
    ],
    ids=["missing", "no-config", "no-weights", "no-processor"],
)
def test_missing_or_partial_folder(tiny_sam_path: Path, tmp_path: Path, prepare, expected: str) -> None:
    folder = prepare(tiny_sam_path, tmp_path / "sam")
    with pytest.raises(ProtocolError) as err:
        SamBackend("sam", {"path": str(folder)}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(folder) in err.value.message and expected in err.value.message


def test_folder_of_another_architecture(tiny_sam_path: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_sam_path, tmp_path / "sam")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "clip"}))
    with pytest.raises(ProtocolError) as err:
        SamBackend("sam", {"path": str(folder)}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(folder) in err.value.message and "'clip'" in err.value.message


def test_corrupt_weights_name_the_folder(tiny_sam_path: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_sam_path, tmp_path / "sam")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ProtocolError) as err:
        SamBackend("sam", {"path": str(folder)}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(folder) in err.value.message


def test_engine_chains_a_grounding_model_into_sam(tiny_sam_path: Path, tmp_path: Path) -> None:
    """``segment`` on a model that only grounds: its boxes go through SamBackend.segment_boxes."""
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine

    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.echo]\nbackend = "tests.engine.fakes:EchoBackend"\nsegmenter = "sam"\n'
        f'[models.sam]\nbackend = "sam"\npath = "{tiny_sam_path}"\n'
    )
    engine = Engine(Registry.from_file(models, device="cpu"))
    image = np.full((40, 64, 3), 20, np.uint8)
    image[8:30, 10:40] = 230
    ref = ImageRef.from_png(rasters.png_bytes(image), (0.0, 0.0, 64.0, 40.0), rasters.MERCATOR)
    options = Options(score_threshold=0.0)

    def segment(model: str, prompt: str):
        return engine.analyze(
            AnalyzeRequest(Task.SEGMENT, (ref,), rasters.MERCATOR, model=model, prompt=prompt, options=options)
        )

    chained = segment("echo", "roof")
    direct = segment("sam", "[10, 8, 40, 30]")

    sam = engine.registry.backend("sam")
    assert isinstance(sam, SamBackend)
    by_hand = sam.segment_boxes(image, [bright_box(image), (0, 0, 64, 40)])
    # one feature per box (a box-prompted mask is one object, however speckled the tiny random SAM's masks); empty
    # ones dropped
    assert len(chained.feature_list) == sum(mask.any() for mask in by_hand)
    assert len(direct.feature_list) == int(sam.segment_boxes(image, [(10, 8, 40, 30)])[0].any())
    assert {f["properties"]["kind"] for f in chained.feature_list + direct.feature_list} == {"mask"}
