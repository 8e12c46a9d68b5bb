"""The request service: one AnalyzeRequest in, one AnalyzeResponse (in map coordinates) out.

    engine = Engine(Registry.from_file("models.toml", device="cpu"))
    response = engine.analyze(AnalyzeRequest.from_json(body), cancel=threading.Event())

The steps, each timed into ``timing_ms``: check the model, the task and the CRSs (before any
pixel is read); ``read`` the windows (rs_assistant.engine.imagery; ``change`` reads the pair on
the before image's grid); ``infer`` under the model's lock, so requests to one model queue
instead of running over each other (a waiting request still notices its cancel Event); ``post``:
turn the detections into GeoJSON in ``output_crs`` (rs_assistant.engine.geo; a mask of several
objects gives one feature per object), those under ``options.score_threshold`` in the response's
``held_back`` rather than its ``features`` (the answer may count them; the person can ask to see them).

``segment`` on a model that only grounds but names a ``segmenter`` in the models file runs the
grounding model, then the segmenter's ``segment_boxes(image, boxes, cancel=...)`` on the boxes
that pass the threshold, giving one mask feature per box.

A detection belongs to the first window unless its ``properties["image"]`` gives the index of
another image of the request (retrieve ranks several tiles).

A request for model ``auto`` goes to the model the models file's [tasks] names for its task, else
``default`` (Registry.route); a ``segment`` routed to a model that only turns boxes into masks (SAM)
takes the boxes of the model routed for ``ground`` (Engine.chain). The response's ``model`` names
the model that answered, or both of a chain ("florence2-base + sam-vit-base").

Every failure is a ProtocolError: the caller's mistakes with their own codes, anything
unexpected as INTERNAL, logged here with its traceback and reported with a safe message.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from rs_assistant import __version__
from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    BatchRequest,
    ErrorCode,
    FeatureKind,
    Health,
    Message,
    ModelInfo,
    Options,
    ProtocolError,
    Task,
    Timing,
    feature_collection,
)
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult, Detection
from rs_assistant.engine.backends.decoding import STOP, Decoding, TextWatch
from rs_assistant.engine.crs import parse_crs
from rs_assistant.engine.device import describe, device_info
from rs_assistant.engine.geo import detections_to_features
from rs_assistant.engine.imagery import Window, read_image, read_pair
from rs_assistant.engine.registry import AUTO_MODEL, Registry
from rs_assistant.engine.sources import SourcePolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a request waiting for a busy model checks whether it was cancelled.
LOCK_POLL_S = 0.05
#: Tasks whose detections ``options.score_threshold`` filters; classify and retrieve rank instead (top_k).
THRESHOLDED_TASKS = frozenset({Task.GROUND, Task.SEGMENT, Task.CHANGE, Task.CHAT, Task.CAPTION})


@dataclass(frozen=True)
class ChatAnswer:
    """One answer of a chat: its text, why it ended (decoding.STOP or LENGTH) and its tokens (None: not counted)."""

    text: str
    finish_reason: str = STOP
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ChatReply:
    """The answers to a chat without map geometry (the OpenAI-compatible route): one per choice asked for."""

    answers: tuple[ChatAnswer, ...]
    model: str
    request_id: str
    timing_ms: Timing
    prompt_tokens: int | None = None  # the tokens the model read (images included), the same for every answer

    @property
    def text(self) -> str:
        return self.answers[0].text


class Engine:
    """Answers requests with the models of a Registry; safe to call from many threads at once."""

    def __init__(self, registry: Registry, sources: SourcePolicy | None = None):
        self.registry = registry
        self.sources = sources if sources is not None else SourcePolicy()  # where requests' rasters may be
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in registry.names}
        self._holders: dict[str, int] = {}  # model -> the thread (ident) holding its lock

    def busy_threads(self) -> set[int]:
        """The threads (idents) that hold a model's lock now: those answering a request."""
        return set(self._holders.values())

    def models(self) -> list[ModelInfo]:
        return self.registry.infos()

    def health(self) -> Health:
        device = self.registry.device
        return Health(status="ok", version=__version__, device=describe(device), device_info=device_info(device))

    def analyze(self, request: AnalyzeRequest, cancel: threading.Event | None = None) -> AnalyzeResponse:
        """Answer ``request``; setting ``cancel`` stops it (ProtocolError CANCELLED) at the next check."""
        request_id = uuid.uuid4().hex
        what = f"request {request_id} ({request.task.value} with model '{request.model}')"
        return self._guarded(what, lambda: self._analyze(request, request_id, cancel or threading.Event()))

    def chat(
        self,
        model: str,
        images: Sequence[np.ndarray],
        prompt: str,
        history: Sequence[Message] = (),
        options: Options | None = None,
        cancel: threading.Event | None = None,
        *,
        n: int = 1,
        decoding: Decoding | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[int, str], None] | None = None,
    ) -> ChatReply:
        """A ``chat`` turn on images that have no place on the map (already decoded RGB arrays), or on none.

        ``n`` answers, one after the other under the model's lock, each decoded by ``decoding`` (greedy by
        default; a seed gives answer i the seed + i), cut at the first of the ``stop`` strings; ``on_text(i,
        piece)`` receives answer i's text as it is written (pieces that join to the answer's final text;
        from the generating thread). BAD_IMAGE_COUNT for more than two images, or none when the model cannot
        chat without one; INVALID_VALUE (param ``temperature``) for sampling a model that only decodes greedily.
        """
        request_id = uuid.uuid4().hex
        what = f"chat request {request_id} (model '{model}')"
        decoding = decoding or Decoding()
        cancel = cancel or threading.Event()

        def answer() -> ChatReply:
            name = self.registry.route(Task.CHAT, model)
            self._check_task(name, Task.CHAT)
            self._check_chat(name, len(images), decoding)
            started = time.perf_counter()
            answers, prompt_tokens, counted = [], None, True
            for index in range(n):
                seeded = decoding if decoding.seed is None else replace(decoding, seed=decoding.seed + index)
                watch = TextWatch(stop, None if on_text is None else functools.partial(on_text, index))
                call = BackendCall(
                    Task.CHAT, list(images), prompt, tuple(history), options or Options(), cancel, seeded, watch
                )
                result = self._call(name, call)
                text = watch.finish(result.text)
                reason = STOP if watch.stopped else (result.finish_reason or STOP)
                answers.append(ChatAnswer(text, reason, result.completion_tokens))
                prompt_tokens = result.prompt_tokens
                counted = counted and result.prompt_tokens is not None and result.completion_tokens is not None
            return ChatReply(
                tuple(answers), name, request_id, Timing(infer=_ms_since(started)), prompt_tokens if counted else None
            )

        return self._guarded(what, answer)

    def _check_chat(self, name: str, images: int, decoding: Decoding) -> None:
        """What the model's backend cannot do for this chat, refused before it runs."""
        backend = type(self.registry.backend(name))
        where = f"model '{name}' (backend {self.registry.spec(name).backend})"
        if images > 2:
            raise ProtocolError(
                ErrorCode.BAD_IMAGE_COUNT, f"a chat takes at most two images (before, after), got {images}", "messages"
            )
        if images == 0 and not backend.chat_without_images:
            raise ProtocolError(
                ErrorCode.BAD_IMAGE_COUNT,
                f"{where} cannot chat without an image: it answers about one or two images; send one (an image_url "
                "content part), or ask a model that chats without images (backends rsa, qwen2_5_vl, openai)",
                "messages",
            )
        if not decoding.greedy and not backend.samples:
            raise ProtocolError(
                ErrorCode.INVALID_VALUE,
                f"{where} only decodes greedily: send temperature 0, or leave it out",
                "temperature",
            )

    # --- batch jobs (rs_assistant.engine.batch) ------------------------------------------------

    def check_batch(self, request: BatchRequest) -> int:
        """UNKNOWN_MODEL, UNSUPPORTED_TASK or BAD_CRS for a batch job, before any pixel is read; returns
        the job's batch size (the request's, or with ``batch_size`` 0 the model's ``tile_batch_size``)."""
        if request.task is Task.RETRIEVE:
            backend = self.registry.backend(self.registry.route(request.task, request.model))
            if not backend.searchable:
                raise backend.search_unsupported()
        else:
            backend = self.registry.backend(self.chain(request.task, request.model)[0])
        parse_crs(request.output_crs)
        if request.extent_crs is not None:
            parse_crs(request.extent_crs)
        return request.batch_size or backend.tile_batch_size

    def run_batch(self, model: str, calls: Sequence[BackendCall]) -> list[BackendResult]:
        """One batch of a job's tiles through the model, holding its lock for this batch only (so other requests
        interleave)."""
        if not calls:
            return []
        task, cancel = calls[0].task, calls[0].cancel
        name, segmenter = (
            self.chain(task, model) if task is not Task.RETRIEVE else (self.registry.route(task, model), None)
        )
        if segmenter is not None:
            return [self._ground_then_segment(name, segmenter, call) for call in calls]
        backend = self.registry.backend(name)
        with self._model_lock(name, cancel):
            self._ensure_loaded(backend)
            results = backend.run_batch(calls)
        _raise_if_cancelled(cancel)
        if len(results) != len(calls):
            raise RuntimeError(f"backend {backend.name} answered {len(results)} result(s) for {len(calls)} call(s)")
        return results

    def batch_limit(self, task: Task, model: str) -> int | None:
        """The most calls per forward pass that fit the device, for the model that answers ``task`` in a batch job
        (None while none has run out of memory; see Backend.in_batches)."""
        name = self.chain(task, model)[0] if task is not Task.RETRIEVE else self.registry.route(task, model)
        return self.registry.backend(name).batch_limit

    def embed_images(self, model: str, images: Sequence[np.ndarray], cancel: threading.Event) -> np.ndarray:
        """The model's image embeddings (layer search), under its lock."""
        model = self.registry.route(Task.RETRIEVE, model)
        backend = self.registry.backend(model)
        with self._model_lock(model, cancel):
            self._ensure_loaded(backend)
            return np.asarray(backend.embed_images(images, cancel))

    def score_text(self, model: str, embeddings: np.ndarray, text: str, cancel: threading.Event) -> np.ndarray:
        """How well ``text`` describes each embedded image (higher is better), under the model's lock."""
        model = self.registry.route(Task.RETRIEVE, model)
        backend = self.registry.backend(model)
        with self._model_lock(model, cancel):
            self._ensure_loaded(backend)
            return np.asarray(backend.score_text(embeddings, text, cancel), np.float64).reshape(-1)

    # --- the steps -----------------------------------------------------------------------------

    def chain(self, task: Task, requested: str) -> tuple[str, str | None]:
        """The model that answers ``task`` asked of ``requested`` and, for ``segment``, the model its boxes
        go through (None: it answers alone): a grounding model's own ``segmenter``; or, for ``auto``, a
        model that only turns boxes into masks (SAM) routed for segment takes the boxes of the model
        the [tasks] table names for ground. UNKNOWN_MODEL / UNSUPPORTED_TASK when nothing answers."""
        name = self.registry.route(task, requested)
        backend = self.registry.backend(name)
        own = type(backend).tasks
        if task is Task.SEGMENT and Task.SEGMENT not in own and self.registry.spec(name).segmenter is not None:
            return name, self.registry.spec(name).segmenter
        if (
            task is Task.SEGMENT
            and requested == AUTO_MODEL
            and Task.GROUND not in own
            and callable(getattr(backend, "segment_boxes", None))
        ):
            grounder = self.registry.routes.get(Task.GROUND.value)  # only a grounding model the person chose
            if grounder is not None and grounder != name and Task.GROUND in self.registry.tasks(grounder):
                return grounder, name
        self._check_task(name, task)
        return name, None

    def answered_by(self, task: Task, requested: str) -> str:
        """Who answers ``task`` asked of ``requested``, as responses name it: a model, or "grounder + segmenter"."""
        if task is Task.RETRIEVE:  # layer search: the model's embeddings (rs_assistant.engine.batch), no chain
            return self.registry.route(task, requested)
        name, segmenter = self.chain(task, requested)
        return name if segmenter is None else f"{name} + {segmenter}"

    def _analyze(self, request: AnalyzeRequest, request_id: str, cancel: threading.Event) -> AnalyzeResponse:
        name, segmenter = self.chain(request.task, request.model)
        answered_by = name if segmenter is None else f"{name} + {segmenter}"
        parse_crs(request.output_crs)
        for image in request.images:
            parse_crs(image.crs)
        _raise_if_cancelled(cancel)

        started = time.perf_counter()
        windows = self._read(request)
        read_ms = _ms_since(started)
        coverage = _check_coverage(request, windows)
        _raise_if_cancelled(cancel)

        started = time.perf_counter()
        call = BackendCall(
            task=request.task,
            images=[w.array for w in windows],
            prompt=request.prompt,
            history=request.history,
            options=request.options,
            cancel=cancel,
            pixel_size_m=windows[0].pixel_size_m if windows else None,
            land_cover=request.task is Task.CAPTION,
        )
        if segmenter is not None:
            result = self._ground_then_segment(name, segmenter, call)
        else:
            result = self._call(name, call)
        infer_ms = _ms_since(started)

        started = time.perf_counter()
        detections, held_back = result.detections, None
        if request.task in THRESHOLDED_TASKS:  # under the threshold: not drawn, but sent for the person to ask for
            threshold = request.options.score_threshold
            detections = [d for d in result.detections if d.score >= threshold]
            held_back = feature_collection(
                _features([d for d in result.detections if d.score < threshold], windows, request.output_crs)
            )
        features = _features(detections, windows, request.output_crs)
        post_ms = _ms_since(started)
        log.info(
            "request %s: %s with '%s' -> %d feature(s); read %.0f ms, infer %.0f ms, post %.0f ms",
            request_id, request.task.value, answered_by, len(features), read_ms, infer_ms, post_ms,
        )  # fmt: skip
        return AnalyzeResponse(
            text=result.text,
            features=feature_collection(features),
            crs=request.output_crs,
            model=answered_by,
            request_id=request_id,
            timing_ms=Timing(read=read_ms, infer=infer_ms, post=post_ms),
            held_back=held_back,
            coverage=coverage,
            pixel_size_m=call.pixel_size_m,
            model_pixel_size_m=result.model_pixel_size_m,
            land_cover=result.land_cover,
        )

    def _check_task(self, model: str, task: Task) -> None:
        tasks = self.registry.tasks(model)
        if task not in tasks:
            backend = self.registry.spec(model).backend
            supported = ", ".join(t.value for t in Task if t in tasks) or "nothing"
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_TASK,
                f"model '{model}' (backend {backend}) does not do '{task.value}'; it does: {supported}",
            )

    def _read(self, request: AnalyzeRequest) -> list[Window]:
        """The request's windows, its sources checked against this engine's SourcePolicy."""
        max_side = request.options.max_side
        if request.task is Task.CHANGE:
            before, after = request.images
            return list(read_pair(before, after, max_side, policy=self.sources))
        return [read_image(image, max_side, policy=self.sources) for image in request.images]

    def _call(self, model: str, call: BackendCall) -> BackendResult:
        """Run the model's backend on ``call``, loading it first, one call at a time per model."""
        backend = self.registry.backend(model)
        with self._model_lock(model, call.cancel):
            self._ensure_loaded(backend)
            result = backend.run(call)
        _raise_if_cancelled(call.cancel)
        return result

    def _ground_then_segment(self, model: str, segmenter_name: str, call: BackendCall) -> BackendResult:
        """``segment`` for a grounding model: its boxes (over the threshold) through its segmenter."""
        grounded = self._call(model, replace(call, task=Task.GROUND))
        found = [d for d in grounded.detections if d.box is not None and d.score >= call.options.score_threshold]
        if not found:
            return BackendResult(text=grounded.text, detections=[], model_pixel_size_m=grounded.model_pixel_size_m)
        segmenter = self.registry.backend(segmenter_name)
        segment_boxes = getattr(segmenter, "segment_boxes", None)
        if not callable(segment_boxes):
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{model}' names '{segmenter_name}' as its segmenter, but that model's backend "
                f"({self.registry.spec(segmenter_name).backend}) cannot turn boxes into masks",
            )
        with self._model_lock(segmenter_name, call.cancel):
            self._ensure_loaded(segmenter)
            masks = segment_boxes(call.images[0], [d.box for d in found], cancel=call.cancel)
        _raise_if_cancelled(call.cancel)
        detections = [
            Detection(
                FeatureKind.MASK, d.label, d.score, box=d.box, mask=mask, properties=dict(d.properties), one_object=True
            )  # one mask per box: one object, whatever its parts
            for d, mask in zip(found, masks)
            if mask.any()
        ]
        return BackendResult(text=grounded.text, detections=detections, model_pixel_size_m=grounded.model_pixel_size_m)

    @contextmanager
    def _model_lock(self, model: str, cancel: threading.Event) -> Iterator[None]:
        """Wait for the model (queued behind earlier requests), giving up if ``cancel`` is set."""
        lock = self._locks[model]
        while not lock.acquire(timeout=LOCK_POLL_S):
            _raise_if_cancelled(cancel)
        self._holders[model] = threading.get_ident()
        try:
            _raise_if_cancelled(cancel)
            yield
        finally:
            self._holders.pop(model, None)
            lock.release()

    @staticmethod
    def _ensure_loaded(backend: Backend) -> None:
        if backend.loaded:
            return
        started = time.perf_counter()
        try:
            backend.ensure_loaded()
        except ProtocolError:
            raise
        except Exception as exc:
            log.exception("loading model '%s' failed", backend.model_name)
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{backend.model_name}' (backend {backend.name}) failed to load: {type(exc).__name__}: {exc}",
            ) from None
        log.info("loaded model '%s' (%s) in %.1f s", backend.model_name, backend.name, time.perf_counter() - started)

    @staticmethod
    def _guarded(what: str, answer: Callable[[], T]) -> T:
        """``answer()``, with anything that is not a ProtocolError logged and turned into INTERNAL."""
        try:
            return answer()
        except ProtocolError as exc:
            log.info("%s: %s (%s)", what, exc.code.value, exc.message)
            raise
        except Exception as exc:
            log.exception("%s failed", what)
            raise ProtocolError(
                ErrorCode.INTERNAL,
                f"the engine failed on {what} ({type(exc).__name__}); the engine's log has the details",
            ) from None


def _features(detections: Sequence[Detection], windows: Sequence[Window], output_crs: str) -> list[dict]:
    """GeoJSON features in ``output_crs``, each detection mapped through the window it was found in."""
    if all(d.properties.get("image", 0) == 0 for d in detections):
        return detections_to_features(detections, windows[0], output_crs)
    features = []
    for det in detections:  # one at a time, so that a ranking keeps its order
        index = det.properties.get("image", 0)
        if not isinstance(index, int) or not 0 <= index < len(windows):
            raise ValueError(f"detection {det.label!r} names image {index!r}, but the request has {len(windows)}")
        features.extend(detections_to_features([det], windows[index], output_crs))
    return features


def _check_coverage(request: AnalyzeRequest, windows: Sequence[Window]) -> tuple[float, ...]:
    """The share of each window the raster covers with data; MOSTLY_OUTSIDE when one is under
    ``options.min_coverage`` (an answer about a region the raster hardly touches would be about nothing)."""
    coverage = tuple(w.coverage for w in windows)
    least = request.options.min_coverage
    for index, (image, share) in enumerate(zip(request.images, coverage)):
        if share < least:
            name = repr(image.source) if image.source else "the PNG image"
            which = f"image {index + 1} ({name})" if len(windows) > 1 else name
            raise ProtocolError(
                ErrorCode.MOSTLY_OUTSIDE,
                f"{which} covers {_percent(share)} of the requested region [{_coordinates(image.extent)}] "
                f"({image.crs}) with data; the least is {least * 100:g}% (options.min_coverage). Choose a region "
                "over the raster.",
            )
    return coverage


def _coordinates(values: Sequence[float]) -> str:
    """Coordinates as a person reads them: whole units for projected ones (metres), 6 digits for degrees."""
    return ", ".join(f"{v:.0f}" if abs(v) >= 1000 else f"{v:.6g}" for v in values)


def _percent(share: float) -> str:
    """0.5 -> "only 50%", 0.0004 -> "only 0.04%", 1e-7 -> "less than 0.01%"."""
    percent = share * 100
    if percent == 0:
        return "none"
    if percent < 0.01:
        return "less than 0.01%"
    return f"only {percent:.2g}%" if percent < 10 else f"only {percent:.0f}%"


def _raise_if_cancelled(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise ProtocolError(ErrorCode.CANCELLED, "the request was cancelled")


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
