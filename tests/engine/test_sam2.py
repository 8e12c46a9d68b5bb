"""The sam backend on SAM 2.1 checkpoints: a tiny random-weight folder laid out as facebook/sam2.1-hiera-*.

(tests/engine/tiny_models/sam2.py.) Same contract as SAM (tests/engine/test_sam.py): one window-sized
bool mask per box, box prompts in the ``segment`` prompt, the whole window without one, and
``segment_boxes`` for grounding models that name it as their segmenter.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import Sam2Model

from rs_assistant.core.protocol import AnalyzeRequest, ErrorCode, FeatureKind, ImageRef, Options, ProtocolError, Task
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.sam import SamBackend
from tests.engine import rasters
from tests.engine.fakes import bright_box
from tests.engine.tiny_models.sam2 import IMAGE_SIZE, MEAN, STD


@pytest.fixture(scope="module")
def backend(tiny_sam2_path: Path) -> SamBackend:
    sam = SamBackend("sam2", {"path": str(tiny_sam2_path), "box_batch_size": 2}, "cpu")
    sam.ensure_loaded()
    return sam


def window(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference_pixels(image: np.ndarray, mean=MEAN, std=STD) -> torch.Tensor:
    """Sam2ImageProcessor's steps, written out: resize to the square input (antialiased bilinear, back to
    8 bits), x 1/255, normalise."""
    chw = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(chw, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    resized = resized.round().clamp(0, 255)
    return (resized / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_the_backend_loads_the_image_part_of_the_video_checkpoint(backend: SamBackend, tiny_sam2_path: Path) -> None:
    assert json.loads((tiny_sam2_path / "config.json").read_text())["model_type"] == "sam2_video"  # as on the Hub
    assert isinstance(backend.model, Sam2Model)
    assert backend.sam2 is not None
    assert (backend.sam2.mean, backend.sam2.std) == (MEAN, STD)  # read from preprocessor_config.json


@pytest.mark.parametrize("shape", [(50, 90), (90, 50), (64, 64)])
def test_one_bool_mask_per_box_at_the_window_size(backend: SamBackend, shape: tuple[int, int]) -> None:
    height, width = shape
    boxes = [(2, 3, 30, 40), (0, 0, width, height), (10.5, 7.25, 45.0, 48.0), (20, 20, 21, 22), (1, 1, 12, 9)]
    masks = backend.segment_boxes(window(height, width), boxes)
    assert len(masks) == len(boxes)
    for mask in masks:
        assert mask.shape == (height, width) and mask.dtype == bool
    assert len({m.tobytes() for m in masks}) > 1  # the boxes reached the decoder: not one answer for all


def test_masks_are_those_of_sam2model_used_by_hand(backend: SamBackend, tiny_sam2_path: Path) -> None:
    """Box by box, from the pixels, as transformers' SAM 2 example does (embeddings reused, chunks of 2)."""
    image = window(50, 90, seed=1)
    boxes = [[4.0, 3.0, 60.0, 45.0], [30.0, 10.0, 88.0, 49.0], [0.0, 0.0, 90.0, 50.0]]
    model = Sam2Model.from_pretrained(tiny_sam2_path).eval()
    masks = backend.segment_boxes(image, boxes)
    result = backend.run(BackendCall(Task.SEGMENT, [image], prompt=" ".join(str(b) for b in boxes)))
    scale = torch.tensor([IMAGE_SIZE / 90, IMAGE_SIZE / 50] * 2)
    for box, mask, detection in zip(boxes, masks, result.detections):
        with torch.no_grad():
            prompt = (torch.tensor(box) * scale)[None, None]
            out = model(pixel_values=reference_pixels(image), input_boxes=prompt, multimask_output=False)
        logits = torch.nn.functional.interpolate(out.pred_masks[0], (50, 90), mode="bilinear", align_corners=False)
        expected = logits[0, 0] > 0
        assert np.array_equal(mask, expected.numpy())
        assert detection.score == pytest.approx(float(out.iou_scores[0, 0, 0].clamp(0, 1)), abs=1e-5)


class FakeSam2:
    """Stands in for Sam2Model: records pixels and prompts, answers each box with its own rectangle.

    The low-resolution logits are positive exactly inside the prompt box, which the backend gives in
    the model's IMAGE_SIZE square (the window squashed into it, each axis scaled on its own), so the
    masks land back on their boxes only if boxes and masks are scaled per axis both ways.
    """

    def __init__(self, cancel_after: int | None = None, cancel: threading.Event | None = None):
        self.boxes: list[torch.Tensor] = []
        self.pixels: list[torch.Tensor] = []
        self.cancel_after, self.cancel = cancel_after, cancel

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        self.pixels.append(pixel_values)
        return [torch.zeros(1, 1, 1, 1)]

    def __call__(
        self, image_embeddings: list[torch.Tensor], input_boxes: torch.Tensor, multimask_output: bool
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


def test_boxes_are_scaled_per_axis_and_masks_come_back_onto_them(tiny_sam2_path: Path) -> None:
    sam = SamBackend("sam2", {"path": str(tiny_sam2_path), "box_batch_size": 2}, "cpu")
    sam.ensure_loaded()
    sam.model = fake = FakeSam2()  # type: ignore[assignment]
    height, width = 60, 100
    boxes = [(10, 5, 60, 40), (0, 0, 100, 60), (70.5, 20, 98, 58)]
    masks = sam.segment_boxes(np.full((height, width, 3), 128, np.uint8), boxes)

    (pixels,) = fake.pixels
    assert pixels.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)  # squashed, not padded
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(pixels[0, :, 0, 0], expected, atol=1e-5)  # the checkpoint's own normalisation
    sent = torch.cat(fake.boxes, dim=1)[0].double()
    scale = torch.tensor([IMAGE_SIZE / width, IMAGE_SIZE / height] * 2, dtype=torch.float64)
    assert torch.allclose(sent, torch.tensor(boxes, dtype=torch.float64) * scale, atol=1e-4)
    assert [b.shape[1] for b in fake.boxes] == [2, 1]  # chunks of box_batch_size
    for box, mask in zip(boxes, masks):  # each mask's extent is its box, up to one low-resolution cell
        rows, cols = np.nonzero(mask)
        extent = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        cell = (4 * width / IMAGE_SIZE, 4 * height / IMAGE_SIZE) * 2
        assert all(abs(e - b) <= c for e, b, c in zip(extent, box, cell)), (box, extent)
    result = sam.run(BackendCall(Task.SEGMENT, [np.zeros((height, width, 3), np.uint8)], prompt="[10, 5, 60, 40]"))
    assert result.detections[0].score == 1.0  # the predicted IoU, clamped


def test_cancel_stops_between_chunks(tiny_sam2_path: Path) -> None:
    sam = SamBackend("sam2", {"path": str(tiny_sam2_path), "box_batch_size": 1}, "cpu")
    sam.ensure_loaded()
    cancel = threading.Event()
    sam.model = fake = FakeSam2(cancel_after=2, cancel=cancel)  # type: ignore[assignment]
    with pytest.raises(ProtocolError) as err:
        sam.segment_boxes(window(40, 40), [(0, 0, 10, 10)] * 5, cancel=cancel)
    assert err.value.code is ErrorCode.CANCELLED
    assert len(fake.boxes) == 2


def test_segment_task_with_box_prompts_and_without(backend: SamBackend) -> None:
    image = window(50, 90)
    result = backend.run(BackendCall(Task.SEGMENT, [image], prompt="roofs [10, 5, 40, 30] and [50.5,0,200,49]"))
    assert [d.box for d in result.detections] == [(10.0, 5.0, 40.0, 30.0), (50.5, 0.0, 90.0, 49.0)]  # clipped
    for det in result.detections:
        assert det.kind is FeatureKind.MASK and det.label == "roofs and"
        assert det.mask is not None and det.mask.shape == (50, 90) and det.mask.dtype == bool
        assert 0.0 <= det.score <= 1.0
    (whole,) = backend.run(BackendCall(Task.SEGMENT, [window(30, 70)], prompt="")).detections
    assert whole.box == (0.0, 0.0, 70.0, 30.0) and whole.label == "object" and whole.mask.shape == (30, 70)
    with pytest.raises(ProtocolError) as err:
        backend.run(BackendCall(Task.SEGMENT, [window(30, 70)], prompt="[80, 0, 90, 10]"))
    assert err.value.code is ErrorCode.INVALID_VALUE and "70x30" in err.value.message


def test_a_folder_without_preprocessor_config_uses_sam2_defaults_and_one_without_weights_is_named(
    tiny_sam2_path: Path, tmp_path: Path
) -> None:
    bare = shutil.copytree(tiny_sam2_path, tmp_path / "bare", ignore=shutil.ignore_patterns("*processor_config.json"))
    sam = SamBackend("sam2", {"path": str(bare)}, "cpu")
    sam.ensure_loaded()
    assert sam.sam2 is not None and sam.sam2.mean == (0.485, 0.456, 0.406) and sam.sam2.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert sam.segment_boxes(window(20, 30), [(0, 0, 30, 20)])[0].shape == (20, 30)

    empty = shutil.copytree(tiny_sam2_path, tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ProtocolError) as err:
        SamBackend("sam2", {"path": str(empty)}, "cpu").ensure_loaded()
    assert err.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(empty) in err.value.message and "has no weights" in err.value.message


def test_engine_chains_a_grounding_model_into_sam2(tiny_sam2_path: Path, tmp_path: Path) -> None:
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine

    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.echo]\nbackend = "tests.engine.fakes:EchoBackend"\nsegmenter = "sam2"\n'
        f'[models.sam2]\nbackend = "sam"\npath = "{tiny_sam2_path}"\n'
    )
    engine = Engine(Registry.from_file(models, device="cpu"))
    image = np.full((40, 64, 3), 20, np.uint8)
    image[8:30, 10:40] = 230
    ref = ImageRef.from_png(rasters.png_bytes(image), (0.0, 0.0, 64.0, 40.0), rasters.MERCATOR)
    options = Options(score_threshold=0.0)
    request = AnalyzeRequest(Task.SEGMENT, (ref,), rasters.MERCATOR, model="echo", prompt="roof", options=options)

    chained = engine.analyze(request)

    sam = engine.registry.backend("sam2")
    assert isinstance(sam, SamBackend) and sam.sam2 is not None
    by_hand = sam.segment_boxes(image, [bright_box(image), (0, 0, 64, 40)])
    assert all(mask.any() for mask in by_hand)
    # the grounding model's two boxes, each as one SAM 2 mask feature (one object per box, whatever its parts)
    assert len(chained.feature_list) == len(by_hand)
    assert {f["properties"]["kind"] for f in chained.feature_list} == {"mask"}
