"""The one small interface every model backend implements.

A backend receives RGB windows as numpy arrays (H x W x 3, uint8) and answers in *pixels of
the window it was given*: boxes as (x0, y0, x1, y1) with x to the right and y down, masks as
H x W boolean arrays. It never sees CRSs or map coordinates: the engine alone turns pixels
into map geometry (rs_assistant.engine.geo).
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rs_assistant.core.protocol import BatchRequest, ErrorCode, FeatureKind, Message, Options, ProtocolError, Task
from rs_assistant.engine.backends.decoding import Decoding, TextWatch

log = logging.getLogger(__name__)


@dataclass
class Detection:
    """One object found in a window, in that window's pixel coordinates."""

    kind: FeatureKind
    label: str
    score: float
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in window pixels
    mask: np.ndarray | None = None  # H x W bool, same size as the window
    point: tuple[float, float] | None = None  # x, y in window pixels
    properties: dict[str, Any] = field(default_factory=dict)  # extra attributes (e.g. rank)
    one_object: bool = False  # a mask of one object (prompted by its box): its separate parts stay one feature

    def __post_init__(self) -> None:
        self.kind = FeatureKind(self.kind)
        if self.box is None and self.mask is None and self.point is None:
            raise ValueError("a detection needs a box, a mask or a point")


#: A mask's separate parts smaller than this many pixels are not drawn (geo.polygonize_mask drops them).
MIN_PART_PIXELS = 4


@dataclass
class BackendResult:
    text: str = ""
    detections: list[Detection] = field(default_factory=list)
    # What a generating backend knows of its answer (None: it does not say): the tokens it read (images
    # included) and wrote, and why it ended (decoding.STOP: the model ended it; decoding.LENGTH: the limit).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    # Ground metres per pixel of what the model was fed, when the backend resampled the window for the scale the
    # model was trained at (a window finer than it had seen); None: fed as read (or the pixel size is unknown).
    model_pixel_size_m: float | None = None
    # What covers the window, (class name, share 0..1) pairs, the largest first (protocol.LAND_COVER_SHARE and
    # more): a captioning backend with a class map says it; None: it does not.
    land_cover: tuple[tuple[str, float], ...] | None = None


@dataclass
class BackendCall:
    """Everything a backend needs for one request."""

    task: Task
    images: Sequence[np.ndarray]  # RGB uint8 windows; for change: before, after (pixel-aligned)
    prompt: str = ""
    history: Sequence[Message] = ()
    options: Options = field(default_factory=Options)
    cancel: threading.Event = field(default_factory=threading.Event)
    decoding: Decoding = field(default_factory=Decoding)  # chat: greedy or sampled (decoding.py)
    watch: TextWatch = field(default_factory=TextWatch)  # chat: stop strings and streamed text (decoding.py)
    # The windows' ground metres per pixel (imagery.Window.pixel_size_m), None when unknown (a chat's
    # pictures, a window whose CRS gives none): a backend that knows the scale its model was trained at
    # may resample to it, and then says so in BackendResult.model_pixel_size_m.
    pixel_size_m: float | None = None
    # A caption's land cover (BackendResult.land_cover) is wanted: /v1/analyze asks for it, a batch job's tiles
    # (which would pay for it in every tile and write only the caption) do not.
    land_cover: bool = False


class Backend(abc.ABC):
    """Base class: subclasses set ``name`` and ``tasks`` and implement ``load`` and ``run``."""

    name: ClassVar[str] = ""
    tasks: ClassVar[frozenset[Task]] = frozenset()
    #: Tiles per model call of a batch job that asks for the model's own batch size (``batch_size`` 0);
    #: a models file overrides it with ``tile_batch_size = N``.
    TILE_BATCH_SIZE: ClassVar[int] = 4
    #: Chat: whether the backend answers a conversation with no image, and whether it honours a sampling
    #: ``call.decoding`` (temperature > 0; otherwise the engine refuses one). A backend that streams calls
    #: ``call.watch.update(text)`` after each step when ``call.watch.wants_updates`` (decoding.py).
    chat_without_images: ClassVar[bool] = False
    samples: ClassVar[bool] = False

    def __init__(self, model_name: str, config: Mapping[str, Any], device: str = "cpu"):
        self.model_name = model_name
        self.config = dict(config)
        self.device = device
        self._loaded = False
        #: The most calls one batched forward pass has been found to fit in the device's memory (None: no limit
        #: found yet); set by :meth:`in_batches` when a batch ran out of GPU memory, and kept for later batches.
        self.batch_limit: int | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights from local paths only; raise ProtocolError(MODEL_LOAD_FAILED) naming the path."""

    @abc.abstractmethod
    def run(self, call: BackendCall) -> BackendResult:
        """Answer one call. Check ``call.cancel`` between generation steps where possible."""

    def run_batch(self, calls: Sequence[BackendCall]) -> list[BackendResult]:
        """Answer several calls of one task (the tiles of a batch job), one result per call, in order.

        This default answers them one at a time; backends that can batch their forward pass override it.
        """
        results = []
        for call in calls:
            if call.cancel.is_set():
                raise ProtocolError(ErrorCode.CANCELLED, f"model '{self.model_name}': the batch was cancelled")
            results.append(self.run(call))
        return results

    def in_batches(
        self, calls: Sequence[BackendCall], answer: Callable[[Sequence[BackendCall]], list[Any]]
    ) -> list[Any]:
        """``answer`` (one batched forward pass) on ``calls``, split into pieces of at most :attr:`batch_limit`.

        A piece that runs out of GPU memory is halved and tried again (down to one call, whose out-of-memory error
        is raised); the smaller size is kept for the rest of this backend's batches and logged as a warning, so a
        batch size too large for the GPU is reduced automatically instead of failing the job.
        """
        results: list[Any] = []
        start = 0
        while start < len(calls):
            if calls[start].cancel.is_set():
                raise ProtocolError(ErrorCode.CANCELLED, f"model '{self.model_name}': the batch was cancelled")
            size = min(len(calls) - start, self.batch_limit or len(calls))
            try:
                answered = answer(calls[start : start + size])
            except out_of_memory_errors() as exc:
                if size == 1:
                    raise
                self.batch_limit = size // 2
                log.warning(
                    "model '%s': a batch of %d did not fit in %s memory (%s); running %d at a time from now on",
                    self.model_name,
                    size,
                    self.device,
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                    self.batch_limit,
                )
                free_accelerator_cache()
                continue
            results.extend(answered)
            start += size
        return results

    @property
    def tile_batch_size(self) -> int:
        """Tiles per model call of a batch job that leaves the batch size to the model: the models file's
        ``tile_batch_size``, else the backend's TILE_BATCH_SIZE (large for a small model, small for a VLM)."""
        value = self.config.get("tile_batch_size", self.TILE_BATCH_SIZE)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= BatchRequest.MAX_BATCH_SIZE:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"model '{self.model_name}': tile_batch_size must be an integer from 1 to "
                f"{BatchRequest.MAX_BATCH_SIZE}, got {value!r}",
            )
        return value

    @property
    def searchable(self) -> bool:
        """Whether the backend can rank a layer's tiles by text (it implements embed_images and score_text)."""
        cls = type(self)
        return cls.embed_images is not Backend.embed_images and cls.score_text is not Backend.score_text

    def embed_images(self, images: Sequence[np.ndarray], cancel: threading.Event | None = None) -> np.ndarray:
        """N x ... float32 embeddings of RGB windows, for searching a layer by text (cached by the engine)."""
        raise self.search_unsupported()

    def score_text(self, embeddings: np.ndarray, text: str, cancel: threading.Event | None = None) -> np.ndarray:
        """N similarities (higher is better) of ``text`` to images given by their :meth:`embed_images` embeddings."""
        raise self.search_unsupported()

    def search_unsupported(self) -> ProtocolError:
        return ProtocolError(
            ErrorCode.UNSUPPORTED_TASK,
            f"model '{self.model_name}' (backend {self.name}) cannot search a layer by text: it has no image "
            f"embeddings",
        )

    def check_task(self, task: Task) -> None:
        if task not in self.tasks:
            supported = ", ".join(sorted(t.value for t in self.tasks))
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_TASK,
                f"model '{self.model_name}' (backend {self.name}) does not do '{task.value}'; it does: {supported}",
            )

    def local_path(self, key: str = "path", required_files: Sequence[str] = ("config.json",)) -> Path:
        """The checkpoint folder named by ``config[key]``, checked to exist and be complete."""
        raw = self.config.get(key)
        if not raw:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED, f"model '{self.model_name}': the models file gives no '{key}'"
            )
        path = Path(str(raw)).expanduser()
        if not path.is_dir():
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED, f"model '{self.model_name}': checkpoint folder {path} does not exist"
            )
        missing = [f for f in required_files if not (path / f).exists()]
        if missing:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': checkpoint folder {path} is incomplete, missing {', '.join(missing)}",
            )
        return path


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a forward pass ran out of accelerator memory (torch's CUDA OOM, when torch is here)."""
    try:
        import torch
    except ImportError:  # a backend without torch (e.g. the OpenAI one) never runs out of GPU memory here
        return ()
    errors: list[type[BaseException]] = [torch.cuda.OutOfMemoryError]
    mps_error = getattr(getattr(torch, "mps", None), "OutOfMemoryError", None)
    if isinstance(mps_error, type) and issubclass(mps_error, BaseException):
        errors.append(mps_error)
    return tuple(errors)


def free_accelerator_cache() -> None:
    """Give the memory a failed batch held back to the device, so that the smaller batch can use it."""
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
