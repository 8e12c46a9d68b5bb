"""Test backends whose answers are deterministic functions of the pixels, and a server running in a thread.

Name them in a models file like any backend::

    [models.echo]
    backend = "tests.engine.fakes:EchoBackend"
    segmenter = "seg"          # segment = echo's boxes -> BoxSegmenter's masks
    delay_s = 0.3              # optional: each call takes this long (checking for cancellation)
    fail_load = true           # optional: load() raises RuntimeError
    fail_run = "/secret/path"  # optional: run() raises ValueError naming this (an engine bug)
    [models.seg]
    backend = "tests.engine.fakes:BoxSegmenter"

EchoBackend:
- caption/chat: ``"<W>x<H> image, mean colour (r, g, b)"`` (chat adds ``", <n> earlier message(s)"``).
  A chat prompt that asks for ``bbox_2d`` boxes (the ``openai`` backend's ground prompt) gets a
  JSON answer with the bright blob's box in 0-1000 coordinates, as Qwen2-VL would write it.
- ground: the box around the *bright* pixels (grey level at least half-way between the window's
  darkest and brightest, when they differ by 32 or more) with score BRIGHT_SCORE and the prompt
  as label, plus the whole window as "background" with score BACKGROUND_SCORE.
- change: a mask of the pixels whose RGB differs by more than 30 (summed) between before and after.
BoxSegmenter.segment_boxes: the bright pixels inside each box.
RankingBackend (retrieve): the images as whole-window boxes, brightest first, each naming its image.
TileBackend (batch jobs): every batch task from the pixels, batched, with search embeddings (see its docstring).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError, Task
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult, Detection
from rs_assistant.engine.server import Server, bind_socket, socket_url

BRIGHT_SCORE = 0.9
BACKGROUND_SCORE = 0.1


def bright_mask(image: np.ndarray) -> np.ndarray:
    """Pixels at least half-way from the darkest to the brightest grey level (none if the window is flat)."""
    grey = image.astype(np.float32).mean(axis=2)
    lo, hi = float(grey.min()), float(grey.max())
    if hi - lo < 32:
        return np.zeros(grey.shape, bool)
    return grey >= (lo + hi) / 2


def bright_box(image: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) in pixels around the bright pixels, edges on pixel boundaries."""
    rows, cols = np.nonzero(bright_mask(image))
    if rows.size == 0:
        return None
    return (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


def describe(image: np.ndarray) -> str:
    height, width = image.shape[:2]
    r, g, b = (int(round(v)) for v in image.reshape(-1, 3).mean(axis=0))
    return f"{width}x{height} image, mean colour ({r}, {g}, {b})"


class EchoBackend(Backend):
    name = "echo"
    tasks = frozenset({Task.CAPTION, Task.CHAT, Task.GROUND, Task.CHANGE})

    def __init__(self, model_name: str, config: Any, device: str = "cpu"):
        super().__init__(model_name, config, device)
        self.delay_s = float(self.config.get("delay_s", 0.0))
        self.calls = 0
        self.cancelled = 0
        self.active = 0
        self.max_active = 0
        self._count = threading.Lock()

    def load(self) -> None:
        if self.config.get("fail_load"):
            raise RuntimeError("weights are corrupt (fail_load)")

    def run(self, call: BackendCall) -> BackendResult:
        self.check_task(call.task)
        with self._count:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self._wait(call.cancel)
            return self._answer(call)
        finally:
            with self._count:
                self.active -= 1

    def _wait(self, cancel: threading.Event) -> None:
        """Sleep ``delay_s`` in small steps, like generation checking for cancellation between tokens."""
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline:
            if cancel.is_set():
                with self._count:
                    self.cancelled += 1
                raise ProtocolError(ErrorCode.CANCELLED, "echo was cancelled")
            time.sleep(0.01)

    def _answer(self, call: BackendCall) -> BackendResult:
        if self.config.get("fail_run"):
            raise ValueError(f"a bug that leaks {self.config['fail_run']}")
        image = call.images[0]
        height, width = image.shape[:2]
        if call.task is Task.GROUND:
            detections = [
                Detection(FeatureKind.BOX, "background", BACKGROUND_SCORE, box=(0.0, 0.0, float(width), float(height)))
            ]
            box = bright_box(image)
            if box is not None:
                detections.insert(0, Detection(FeatureKind.BOX, call.prompt or "bright", BRIGHT_SCORE, box=box))
            return BackendResult(text=f"{len(detections)} found", detections=detections)
        if call.task is Task.CHANGE:
            before, after = (img.astype(np.int32) for img in call.images)
            changed = np.abs(after - before).sum(axis=2) > 30
            found = [Detection(FeatureKind.CHANGE, "change", 1.0, mask=changed)] if changed.any() else []
            return BackendResult(text=f"{int(changed.sum())} changed pixel(s)", detections=found)
        if call.task is Task.CHAT and "bbox_2d" in call.prompt:
            box = bright_box(image)
            items = [] if box is None else [{"label": "bright", "bbox_2d": _per_mille(box, width, height)}]
            return BackendResult(text=f"```json\n{json.dumps(items)}\n```")
        text = describe(image)
        if call.task is Task.CHAT:
            text += f", {len(call.history)} earlier message(s)"
        return BackendResult(text=text)


def _per_mille(box: Sequence[float], width: int, height: int) -> list[int]:
    x0, y0, x1, y1 = box
    return [round(x0 * 1000 / width), round(y0 * 1000 / height), round(x1 * 1000 / width), round(y1 * 1000 / height)]


class BoxSegmenter(Backend):
    """A stand-in for SAM: ``segment_boxes`` gives the bright pixels inside each box."""

    name = "box_segmenter"
    tasks = frozenset({Task.SEGMENT})

    def __init__(self, model_name: str, config: Any, device: str = "cpu"):
        super().__init__(model_name, config, device)
        self.boxes_seen: list[tuple[float, ...]] = []

    def load(self) -> None:
        pass

    def run(self, call: BackendCall) -> BackendResult:
        image = call.images[0]
        height, width = image.shape[:2]
        (mask,) = self.segment_boxes(image, [(0, 0, width, height)], cancel=call.cancel)
        return BackendResult(detections=[Detection(FeatureKind.MASK, call.prompt or "object", 1.0, mask=mask)])

    def segment_boxes(
        self, image: np.ndarray, boxes: Sequence[Sequence[float]], cancel: threading.Event | None = None
    ) -> list[np.ndarray]:
        bright = bright_mask(image)
        masks = []
        for box in boxes:
            self.boxes_seen.append(tuple(box))
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = np.zeros_like(bright)
            inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
            masks.append(bright & inside)
        return masks


class RankingBackend(Backend):
    """retrieve: every image as a whole-window box, brightest first; score = mean grey level / 255."""

    name = "ranking"
    tasks = frozenset({Task.RETRIEVE})

    def load(self) -> None:
        pass

    def run(self, call: BackendCall) -> BackendResult:
        means = [float(image.mean()) / 255 for image in call.images]
        order = sorted(range(len(means)), key=lambda i: -means[i])[: call.options.top_k]
        detections = []
        for rank, index in enumerate(order, start=1):
            height, width = call.images[index].shape[:2]
            box = (0.0, 0.0, float(width), float(height))
            detections.append(
                Detection(
                    FeatureKind.BOX, call.prompt, means[index], box=box, properties={"image": index, "rank": rank}
                )
            )
        return BackendResult(detections=detections)


class NotABackend:
    """Named in a models file to check that the engine refuses a class that is not a Backend."""


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    sock = bind_socket("127.0.0.1", 0)
    ready = threading.Event()
    server = Server(app, sock, on_ready=ready.set)
    thread = threading.Thread(target=server.run_on_socket, name="test-server", daemon=True)
    thread.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the test server did not start in 30 s")
        yield socket_url(sock)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


#: The fake backends as models: echo (fast, segments through seg), slow (takes slow_s), broken (fails to load),
#: buggy (fails to run), ranking (retrieve).
MODELS_TOML = """
[models.echo]
backend = "tests.engine.fakes:EchoBackend"
segmenter = "seg"
[models.seg]
backend = "tests.engine.fakes:BoxSegmenter"
[models.slow]
backend = "tests.engine.fakes:EchoBackend"
delay_s = {slow_s}
[models.broken]
backend = "tests.engine.fakes:EchoBackend"
fail_load = true
[models.buggy]
backend = "tests.engine.fakes:EchoBackend"
fail_run = "/secret/path"
[models.ranking]
backend = "tests.engine.fakes:RankingBackend"
"""

#: The batch-job fake as a model named ``tiles``: ``write_models_file(path, extra=TILES_TOML)``.
TILES_TOML = """
[models.tiles]
backend = "tests.engine.fakes:TileBackend"
"""


def write_models_file(path: Any, slow_s: float = 0.3, extra: str = "") -> Any:
    """MODELS_TOML (plus ``extra`` TOML) written to ``path``; returns ``path``."""
    path.write_text(MODELS_TOML.format(slow_s=slow_s) + extra, encoding="utf-8")
    return path


class TileBackend(Backend):
    """A batch-job stand-in answering every batch task from the pixels, deterministically, one batch per call.

    - caption: describe(image); segment: one mask of the bright pixels (grey level 128 or more, whatever the
      rest of the window; labelled with the prompt or "bright"); ground: one box per 4-connected bright blob
      (score BRIGHT_SCORE); change: the pixels whose RGB differs by more than 30 (summed), text
      ``"<n> changed pixel(s)"``.
    - search: the embedding of a window is its mean red, green and blue (0-1); ``score_text`` is the mean of
      the colour the text names ("red", "green", "blue") minus the mean of the other two, or the brightness.
    - counters: ``batches`` (run_batch calls), ``batch_sizes``, ``embedded`` (images embedded).
    - config: ``delay_s`` (per batch, checking cancel), ``fail_after`` (raise ValueError once that many
      tiles were answered: the model failing mid-job), ``kill_after`` (SIGKILL this process instead: a run
      killed mid-job), ``calls_log`` (a file that gets one line per tile answered, whichever process answers).
    """

    name = "tiles"
    tasks = frozenset({Task.CAPTION, Task.GROUND, Task.SEGMENT, Task.CHANGE})

    def __init__(self, model_name: str, config: Any, device: str = "cpu"):
        super().__init__(model_name, config, device)
        self.delay_s = float(self.config.get("delay_s", 0.0))
        self.fail_after = self.config.get("fail_after")
        self.kill_after = self.config.get("kill_after")
        self.calls_log = self.config.get("calls_log")
        self.batches = 0
        self.batch_sizes: list[int] = []
        self.answered = 0
        self.embedded = 0

    def load(self) -> None:
        pass

    def run(self, call: BackendCall) -> BackendResult:
        return self.run_batch([call])[0]

    def run_batch(self, calls: Sequence[BackendCall]) -> list[BackendResult]:
        self.batches += 1
        self.batch_sizes.append(len(calls))
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline:
            if calls and calls[0].cancel.is_set():
                raise ProtocolError(ErrorCode.CANCELLED, "tiles was cancelled")
            time.sleep(0.01)
        if self.fail_after is not None and self.answered + len(calls) > int(self.fail_after):
            raise ValueError(f"the model broke after {self.answered} tiles (fail_after)")
        if self.kill_after is not None and self.answered + len(calls) > int(self.kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
        self.answered += len(calls)
        results = [self._answer(call) for call in calls]
        if self.calls_log:
            with open(self.calls_log, "a", encoding="utf-8") as log:
                log.writelines(f"{describe(call.images[0])}\n" for call in calls)
        return results

    def _answer(self, call: BackendCall) -> BackendResult:
        self.check_task(call.task)
        image = call.images[0]
        label = call.prompt or "bright"
        if call.task is Task.CAPTION:
            return BackendResult(text=describe(image))
        bright = image.astype(np.float32).mean(axis=2) >= 128
        if call.task is Task.SEGMENT:
            mask = bright
            found = [Detection(FeatureKind.MASK, label, BRIGHT_SCORE, mask=mask)] if mask.any() else []
            return BackendResult(text=f"{len(found)} found", detections=found)
        if call.task is Task.GROUND:
            found = [Detection(FeatureKind.BOX, label, BRIGHT_SCORE, box=box) for box in blob_boxes(bright)]
            return BackendResult(text=f"{len(found)} found", detections=found)
        before, after = (img.astype(np.int32) for img in call.images)
        changed = np.abs(after - before).sum(axis=2) > 30
        found = [Detection(FeatureKind.CHANGE, "change", 1.0, mask=changed)] if changed.any() else []
        return BackendResult(text=f"{int(changed.sum())} changed pixel(s)", detections=found)

    def embed_images(self, images: Sequence[np.ndarray], cancel: threading.Event | None = None) -> np.ndarray:
        self.embedded += len(images)
        return np.array([image.reshape(-1, 3).mean(axis=0) / 255.0 for image in images], np.float32)

    def score_text(self, embeddings: np.ndarray, text: str, cancel: threading.Event | None = None) -> np.ndarray:
        words = text.lower().split()
        for index, colour in enumerate(("red", "green", "blue")):
            if colour in words:
                others = [i for i in range(3) if i != index]
                return embeddings[:, index] - embeddings[:, others].mean(axis=1)
        return embeddings.mean(axis=1)


def blob_boxes(mask: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) pixel boxes of the 4-connected blobs of ``mask``, in reading order."""
    import rasterio.features
    import shapely.geometry

    pixels = mask.astype(np.uint8)
    boxes = [
        shapely.geometry.shape(shape).bounds for shape, _ in rasterio.features.shapes(pixels, mask=mask, connectivity=4)
    ]
    return sorted((float(x0), float(y0), float(x1), float(y1)) for x0, y0, x1, y1 in boxes)
