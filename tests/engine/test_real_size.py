"""Issue 25: the batched paths answer as the one-at-a-time ones, SAM reuses a window's embedding, a model too
large for the memory is refused at load, and a batch too large for the GPU is split.

On tiny random-weight checkpoints of the real architectures (tests/engine/tiny_models); the speed of the
real-size ones is measured by benchmarks/real_size.py, never here.
"""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from rs_assistant.core.protocol import ErrorCode, Options, ProtocolError, Task
from rs_assistant.engine.backends import hf
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult
from rs_assistant.engine.backends.clip import ClipBackend
from rs_assistant.engine.backends.florence2 import Florence2Backend
from rs_assistant.engine.backends.qwen2_5_vl import Qwen25VLBackend
from rs_assistant.engine.backends.sam import SamBackend
from rs_assistant.engine.registry import ModelSpec, Registry


def windows(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 4 * i, 48 + 2 * i, 3), dtype=np.uint8) for i in range(count)]


def answers(results: list[BackendResult]) -> list[tuple]:
    """What a user sees of each result: the text and every feature's label, score, box and mask."""
    return [
        (
            r.text,
            [
                (d.kind, d.label, round(d.score, 5), d.box, None if d.mask is None else d.mask.tobytes())
                for d in r.detections
            ],
        )
        for r in results
    ]


# --- batched == one at a time -----------------------------------------------------------------------


def test_florence2_batch_answers_as_one_at_a_time(tiny_florence2_path: Path) -> None:
    backend = Florence2Backend("f", {"path": str(tiny_florence2_path)}, "cpu")
    cancel = threading.Event()
    prompts = [
        (Task.CAPTION, ""),
        (Task.GROUND, "find the storage tanks"),
        (Task.GROUND, ""),
        (Task.SEGMENT, "a building"),
        (Task.CAPTION, "briefly"),
    ]  # different prompts: different lengths, so the batch is padded
    calls = [
        BackendCall(task=task, images=[image], prompt=prompt, options=Options(max_new_tokens=20), cancel=cancel)
        for (task, prompt), image in zip(prompts, windows(len(prompts)))
    ]
    one_by_one = [backend.run(call) for call in calls]
    batched = backend.run_batch(calls)
    assert answers(batched) == answers(one_by_one)
    assert any(r.detections for r in batched)  # the comparison covers features, not only texts


def test_qwen2_5_vl_batch_answers_as_one_at_a_time(tiny_qwen_path: Path) -> None:
    backend = Qwen25VLBackend("q", {"path": str(tiny_qwen_path)}, "cpu")
    cancel = threading.Event()
    images = windows(3, seed=5) + [np.random.default_rng(9).integers(0, 256, (90, 60, 3), dtype=np.uint8)]
    prompts = [
        (Task.CAPTION, ""),
        (Task.GROUND, "storage tanks"),
        (Task.CAPTION, "Describe the roads."),
        (Task.GROUND, ""),
    ]
    calls = [
        BackendCall(task=task, images=[image], prompt=prompt, options=Options(max_new_tokens=12), cancel=cancel)
        for (task, prompt), image in zip(prompts, images)
    ]  # different prompts and image sizes: prompts of different lengths, padded on the left
    one_by_one = [backend.run(call) for call in calls]
    batched = backend.run_batch(calls)
    assert answers(batched) == answers(one_by_one)
    assert [(r.prompt_tokens, r.completion_tokens, r.finish_reason) for r in batched] == [
        (r.prompt_tokens, r.completion_tokens, r.finish_reason) for r in one_by_one
    ]
    assert len({r.prompt_tokens for r in batched}) > 1  # the batch really was padded


def test_florence2_batch_stops_when_cancelled(tiny_florence2_path: Path) -> None:
    backend = Florence2Backend("f", {"path": str(tiny_florence2_path)}, "cpu")
    cancel = threading.Event()
    cancel.set()
    calls = [BackendCall(task=Task.CAPTION, images=[image], cancel=cancel) for image in windows(2)]
    with pytest.raises(ProtocolError) as error:
        backend.run_batch(calls)
    assert error.value.code is ErrorCode.CANCELLED


def test_clip_classify_batch_answers_as_one_at_a_time(tiny_clip_path: Path) -> None:
    backend = ClipBackend("c", {"path": str(tiny_clip_path), "batch_size": 3}, "cpu")
    labels = Options(labels=("forest", "water", "city"))
    calls = [BackendCall(task=Task.CLASSIFY, images=[image], options=labels) for image in windows(5)]
    calls.append(BackendCall(task=Task.CLASSIFY, images=windows(1, seed=3), prompt="roads, fields"))
    calls.append(BackendCall(task=Task.RETRIEVE, images=windows(3, seed=4), prompt="a harbour"))
    one_by_one = [backend.run(call) for call in calls]
    batched = backend.run_batch(calls)
    assert answers(batched) == answers(one_by_one)
    assert {r.detections[0].label for r in batched[:6]} <= {"forest", "water", "city", "roads", "fields"}


def test_sam_reuses_a_windows_embedding_for_every_prompt(tiny_sam_path: Path) -> None:
    cached = SamBackend("s", {"path": str(tiny_sam_path)}, "cpu")
    uncached = SamBackend("u", {"path": str(tiny_sam_path), "embedding_cache": 0}, "cpu")
    image, other = windows(2)
    prompts = ["roof [4, 4, 30, 20]", "[10, 12, 40, 36] [0, 0, 20, 20]", "field"]
    for backend in (cached, uncached):
        backend.ensure_loaded()
    first = [cached.run(BackendCall(task=Task.SEGMENT, images=[image], prompt=p)) for p in prompts]
    assert cached.encoder_runs == 1  # one window: encoded once for its three prompts
    fresh = [uncached.run(BackendCall(task=Task.SEGMENT, images=[image], prompt=p)) for p in prompts]
    assert uncached.encoder_runs == 3
    assert answers(first) == answers(fresh)
    cached.segment_boxes(other, [(1, 1, 20, 20)])
    assert cached.encoder_runs == 2  # another window is encoded
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    cached.run(BackendCall(task=Task.SEGMENT, images=[changed], prompt=prompts[0]))
    assert cached.encoder_runs == 3  # one changed pixel is another window


def test_sam_embedding_cache_setting_is_checked(tiny_sam_path: Path) -> None:
    backend = SamBackend("s", {"path": str(tiny_sam_path), "embedding_cache": -1}, "cpu")
    with pytest.raises(ProtocolError) as error:
        backend.ensure_loaded()
    assert error.value.code is ErrorCode.MODEL_LOAD_FAILED and "embedding_cache" in error.value.message


# --- a batch too large for the GPU is split ------------------------------------------------------------


class Splitting(Backend):
    """Answers a batch in one pass unless it holds more than ``fits`` calls (then CUDA is out of memory)."""

    name = "splitting"
    tasks = frozenset({Task.CAPTION})

    def __init__(self, fits: int):
        super().__init__("big", {}, "cuda")
        self.fits = fits
        self.passes: list[int] = []

    def load(self) -> None:
        pass

    def run(self, call: BackendCall) -> BackendResult:
        return self.run_batch([call])[0]

    def run_batch(self, calls: list[BackendCall]) -> list[BackendResult]:
        return self.in_batches(calls, self.answer)

    def answer(self, calls: list[BackendCall]) -> list[BackendResult]:
        if len(calls) > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory trying {len(calls)}")
        self.passes.append(len(calls))
        return [BackendResult(text=call.prompt) for call in calls]


def test_a_batch_too_large_for_the_gpu_is_reduced_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    backend = Splitting(fits=3)
    calls = [BackendCall(task=Task.CAPTION, images=[], prompt=str(i)) for i in range(8)]
    with caplog.at_level("WARNING"):
        results = backend.run_batch(calls)
    assert [r.text for r in results] == [str(i) for i in range(8)]  # every call answered, in order
    assert backend.batch_limit == 2 and max(backend.passes) <= 3
    assert "a batch of 8 did not fit" in caplog.text and "running 4 at a time" in caplog.text
    backend.passes.clear()
    backend.run_batch(calls)
    assert backend.passes == [2, 2, 2, 2]  # the reduced size is kept for later batches


def test_one_call_that_does_not_fit_raises_out_of_memory() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        Splitting(fits=0).run_batch([BackendCall(task=Task.CAPTION, images=[])])


# --- a model too large for the memory is refused at load ---------------------------------------------------


def write_safetensors_header(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file's header only (enough to size the weights; no data is read)."""
    header = {
        name: {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]} for name, (dtype, shape) in tensors.items()
    }
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_weights_are_sized_from_the_safetensors_header_in_the_engines_dtype(tmp_path: Path) -> None:
    write_safetensors_header(
        tmp_path / "model.safetensors", {"w": ("BF16", [1000, 1000]), "ids": ("I64", [10]), "b": ("F32", [1000])}
    )
    files = [tmp_path / "model.safetensors"]
    assert hf.weights_bytes(files, torch.float32) == 1_001_000 * 4 + 80
    assert hf.weights_bytes(files, torch.bfloat16) == 1_001_000 * 2 + 80


def test_a_model_too_large_for_the_memory_is_refused_at_load(
    tiny_florence2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = hf.weights_bytes(hf.weight_files(tiny_florence2_path), torch.float32)
    monkeypatch.setattr(hf, "free_memory_bytes", lambda device: weights // 2)
    registry = Registry({"f": ModelSpec("f", "florence2", {"path": str(tiny_florence2_path)})}, device="cpu")
    backend = registry.backend("f")
    with pytest.raises(ProtocolError) as error:
        backend.ensure_loaded()
    message = error.value.message
    assert error.value.code is ErrorCode.MODEL_LOAD_FAILED and not backend.loaded
    assert "needs about" in message and "is free" in message and "float32" in message
    monkeypatch.setattr(hf, "free_memory_bytes", lambda device: weights * 2)
    backend.ensure_loaded()  # with room, the same folder loads
    assert backend.loaded


@pytest.mark.parametrize(
    "backend_class, path_fixture", [(SamBackend, "tiny_sam_path"), (ClipBackend, "tiny_clip_path")]
)
def test_sam_and_clip_check_the_memory_too(
    backend_class: type[Backend], path_fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = request.getfixturevalue(path_fixture)
    monkeypatch.setattr(hf, "free_memory_bytes", lambda device: 1)
    with pytest.raises(ProtocolError) as error:
        backend_class("m", {"path": str(path)}, "cpu").ensure_loaded()
    assert error.value.code is ErrorCode.MODEL_LOAD_FAILED and "but only 0 MiB is free" in error.value.message
