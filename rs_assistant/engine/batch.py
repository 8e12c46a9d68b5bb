"""Batch jobs over whole layers: tile the raster, read each tile by window, run tiles through the model in batches,
stream events.

    for event in run_job(engine, BatchRequest(task=Task.SEGMENT, sources=("/data/city.tif",), output_crs="EPSG:3857")):
        print(event)        # start, tile ..., merged, (ranked,) done -- or error

Memory does not grow with the raster: a batch's windows are read, answered and streamed, then
dropped; only the pieces waiting at seams (rs_assistant.engine.seams) and, for a search, the
``top_k`` best tiles are kept until the end. The work is split into picklable :class:`TileWork`
items answered by :func:`run_tiles` (:func:`read_tiles`, then :func:`answer_tiles`), which a
:class:`TileExecutor` runs in this process (:class:`LocalExecutor`, which reads the next batch while
the model answers this one) or elsewhere (rs_assistant.engine.distributed's Ray executor).

Search (``retrieve``) embeds each tile once per model, raster file and grid and keeps the
embeddings on disk (``RS_ASSISTANT_CACHE_DIR``, default the user's cache folder), so a second
search of the same layer with another prompt only scores the cached embeddings.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import shapely.geometry

from rs_assistant.core.protocol import (
    BatchEvent,
    BatchRequest,
    ErrorCode,
    FeatureKind,
    ImageRef,
    ProtocolError,
    Task,
)
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult
from rs_assistant.engine.geo import detections_to_features
from rs_assistant.engine.imagery import DatasetCache, Window, read_image, read_pair
from rs_assistant.engine.seams import Piece, Reprojector, from_pending, merge, split_tile, to_feature
from rs_assistant.engine.service import THRESHOLDED_TASKS, Engine
from rs_assistant.engine.sources import SourcePolicy, is_remote
from rs_assistant.engine.tiling import Tile, TileGrid, make_grid

log = logging.getLogger(__name__)

#: Tasks whose tiles are also features of their own (a polygon per tile with the tile's text).
TILE_TEXT_TASKS = frozenset({Task.CAPTION, Task.CHANGE})
CACHE_ENV = "RS_ASSISTANT_CACHE_DIR"

_local = threading.local()


# --- the work items -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TileWork:
    """One tile to answer: its place in the grid (window, core, neighbours) and, for a search, its cache key."""

    tile: Tile
    grid: TileGrid
    cache_key: str | None = None  # retrieve: the job's embedding cache folder name

    @property
    def id(self) -> int:
        return self.tile.id

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The window in the grid's CRS (what is read)."""
        return self.grid.bounds(self.tile.window)

    @property
    def core(self) -> tuple[float, float, float, float]:
        """The part of the map this tile owns, in the grid's CRS."""
        return self.grid.bounds(self.tile.core)


@dataclass
class TileOutput:
    """What one tile gave: final features and pending seam pieces (GeoJSON in the output CRS), text and timing (ms)."""

    tile: int
    text: str = ""
    features: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "infer": 0.0, "post": 0.0})
    embedding: np.ndarray | None = None  # retrieve: the tile's image embedding
    score: float | None = None  # retrieve: how well the prompt describes the tile
    batch_limit: int | None = None  # the most tiles per model call that fit the device (None: no limit found)


# --- running tiles ------------------------------------------------------------------------------


def run_tiles(
    engine: Engine,
    request: BatchRequest,
    works: Sequence[TileWork],
    cancel: threading.Event | None = None,
    datasets: DatasetCache | None = None,
) -> list[TileOutput]:
    """Answer ``works`` as one batch: read their windows, run the model once, split what it found at the seams.

    ``datasets``: the rasters the job keeps open between batches (never shared by two jobs: a job
    closes its own when it ends); without it, this thread's cache (a Ray actor's single thread).
    """
    datasets = datasets if datasets is not None else _datasets()
    return answer_tiles(engine, request, works, read_tiles(request, works, datasets, engine.sources), cancel)


@dataclass
class TileReads:
    """What :func:`read_tiles` read for a batch: per tile its window(s) (None where a change's after raster has
    no pixels, or a search found the tile's embedding cached), a search's cached embeddings, and the time it took."""

    windows: list[list[Window] | None]
    embeddings: list[np.ndarray | None] | None = None  # retrieve: from the cache, None where the model must embed
    read_ms: float = 0.0  # per tile


def read_tiles(
    request: BatchRequest, works: Sequence[TileWork], datasets: DatasetCache, policy: SourcePolicy | None = None
) -> TileReads:
    """The batch's pixels (no model involved, so it can run ahead of the model on another thread), read from
    sources that ``policy`` allows (default: local files only).

    A search first looks each tile up in the embedding cache and reads only the tiles it lacks.
    """
    started = time.perf_counter()
    if request.task is Task.RETRIEVE:
        cache = EmbeddingCache(embedding_cache_dir())
        embeddings = [cache.load(w.cache_key, w.id) for w in works]
        windows = [None if e is not None else _read(request, w, datasets, policy) for w, e in zip(works, embeddings)]
        return TileReads(windows, embeddings, _ms_since(started) / max(len(works), 1))
    windows = [_read(request, work, datasets, policy) for work in works]
    return TileReads(windows, None, _ms_since(started) / max(len(works), 1))


def answer_tiles(
    engine: Engine,
    request: BatchRequest,
    works: Sequence[TileWork],
    reads: TileReads,
    cancel: threading.Event | None = None,
) -> list[TileOutput]:
    """The model's answers for a batch whose pixels :func:`read_tiles` read, as final features and pending seam
    pieces."""
    cancel = cancel or threading.Event()
    if not works:
        return []
    if request.task is Task.RETRIEVE:
        return _retrieve_tiles(engine, request, works, reads, cancel)
    windows, read_ms = reads.windows, reads.read_ms
    readable = [i for i, pair in enumerate(windows) if pair is not None]
    calls = [_call(request, windows[i], cancel) for i in readable]  # type: ignore[arg-type]
    started = time.perf_counter()
    results = dict(zip(readable, engine.run_batch(request.model, calls)))
    infer_ms = _ms_since(started) / len(works)
    limit = engine.batch_limit(request.task, request.model)
    outputs = []
    for i, work in enumerate(works):
        started = time.perf_counter()
        pair = windows[i]
        if pair is None:
            output = _tile_output(request, work, None, BackendResult(text="the after raster does not cover this tile"))
        else:
            output = _tile_output(request, work, pair[0], results[i])
        output.timing = {"read": read_ms, "infer": infer_ms, "post": _ms_since(started)}
        output.batch_limit = limit
        outputs.append(output)
    return outputs


def _read(
    request: BatchRequest, work: TileWork, datasets: DatasetCache, policy: SourcePolicy | None
) -> list[Window] | None:
    """The tile's window(s): one, or before and after on the before grid (None where the after raster has no pixels)."""
    refs = [
        ImageRef(extent=work.bounds, crs=work.grid.crs, source=source, bands=request.bands)
        for source in request.sources
    ]
    if request.task is not Task.CHANGE:
        return [read_image(refs[0], request.tile_size, datasets, policy)]
    try:
        return list(read_pair(refs[0], refs[1], request.tile_size, datasets, policy))
    except ProtocolError as exc:
        if exc.code is ErrorCode.EXTENT_OUTSIDE:
            return None
        raise


def _datasets() -> DatasetCache:
    """This thread's open rasters (reopening one costs several milliseconds per tile)."""
    cache = getattr(_local, "datasets", None)
    if cache is None:
        cache = _local.datasets = DatasetCache()
    return cache


def _call(request: BatchRequest, windows: Sequence[Window], cancel: threading.Event) -> BackendCall:
    return BackendCall(
        request.task, [w.array for w in windows], request.prompt, (), request.options, cancel,
        pixel_size_m=windows[0].pixel_size_m if windows else None,
    )  # fmt: skip


def _tile_output(request: BatchRequest, work: TileWork, window: Window | None, result: BackendResult) -> TileOutput:
    """The tile's final features and pending pieces, in the output CRS."""
    reproject = Reprojector(work.grid, request.output_crs)
    detections = result.detections
    if request.task in THRESHOLDED_TASKS:
        detections = [d for d in detections if d.score >= request.options.score_threshold]
    final: list[Piece] = []
    pending: list[Piece] = []
    if window is not None and detections:
        final, pending = split_tile(detections_to_features(detections, window, work.grid.crs), work.tile, work.grid)
    features = [to_feature(p, reproject) for p in final]
    if request.task in TILE_TEXT_TASKS:
        features.append(to_feature(_tile_piece(work, request.task.value, 1.0, {"text": result.text}), reproject))
    return TileOutput(work.id, result.text, features, [to_feature(p, reproject, pending=True) for p in pending])


def _tile_piece(work: TileWork, label: str, score: float, properties: dict[str, Any] | None = None) -> Piece:
    return Piece(FeatureKind.TILE, label, score, work.id, shapely.geometry.box(*work.core), dict(properties or {}))


# --- search -------------------------------------------------------------------------------------


def _retrieve_tiles(
    engine: Engine, request: BatchRequest, works: Sequence[TileWork], reads: TileReads, cancel: threading.Event
) -> list[TileOutput]:
    """Embeddings from the cache (or the model, then cached), scored against the prompt; each tile a pending ranked
    candidate."""
    cache = EmbeddingCache(embedding_cache_dir())
    embeddings: list[np.ndarray | None] = list(reads.embeddings or [None] * len(works))
    missing = [i for i, e in enumerate(embeddings) if e is None]
    images = [reads.windows[i][0].array for i in missing]  # type: ignore[index]
    started = time.perf_counter()
    if missing:
        computed = engine.embed_images(request.model, images, cancel)
        for i, embedding in zip(missing, computed):
            embeddings[i] = np.asarray(embedding, np.float32)
            cache.save(works[i].cache_key, works[i].id, embeddings[i])
    stacked = np.stack(embeddings)  # type: ignore[arg-type]
    scores = engine.score_text(request.model, stacked, request.prompt, cancel)
    infer_ms = _ms_since(started) / len(works)
    outputs = []
    for work, embedding, score in zip(works, stacked, scores):
        reproject = Reprojector(work.grid, request.output_crs)
        candidate = to_feature(_tile_piece(work, request.prompt, float(score)), reproject, pending=True)
        timing = {"read": reads.read_ms, "infer": infer_ms, "post": 0.0}
        outputs.append(TileOutput(work.id, "", [], [candidate], timing, embedding, float(score)))
    return outputs


def embedding_cache_dir() -> Path:
    """Where tile embeddings are kept: $RS_ASSISTANT_CACHE_DIR, else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rs_assistant" / "embeddings"


class EmbeddingCache:
    """One ``.npy`` per tile under a folder per job key; written atomically, so a cancelled job leaves only whole
    files."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def key(request: BatchRequest, grid: TileGrid, model_files: Sequence[Sequence[Any]] = ()) -> str:
        """Model (its name and ``model_files``: the weights' paths, sizes and modification times), raster
        files (the same), tile grid and bands: what the embeddings depend on."""
        files = []
        for source in request.sources[:1]:
            if is_remote(source):  # allowed by --allow-remote: named as given, its changes unknown
                files.append([source, -1, -1])
                continue
            path = os.path.realpath(source)
            info = os.stat(path)
            files.append([path, info.st_size, info.st_mtime_ns])
        identity = {
            "model": request.model,
            "weights": [list(f) for f in model_files],
            "files": files,
            "crs": grid.crs,
            "transform": list(grid.transform)[:6],
            "size": [grid.width, grid.height],
            "tile_size": grid.tile_size,
            "overlap": grid.overlap,
            "bands": list(request.bands or ()),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def load(self, key: str | None, tile: int) -> np.ndarray | None:
        if key is None:
            return None
        path = self.root / key / f"{tile}.npy"
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def save(self, key: str | None, tile: int, embedding: np.ndarray) -> None:
        if key is None:
            return
        folder = self.root / key
        try:
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / f".{tile}.{uuid.uuid4().hex}.npy"
            np.save(temporary, embedding, allow_pickle=False)
            os.replace(temporary, folder / f"{tile}.npy")
        except OSError as exc:
            log.warning("cannot cache the embedding of tile %d in %s: %s", tile, folder, exc)


# --- executors ----------------------------------------------------------------------------------


class TileExecutor(abc.ABC):
    """Runs batches of tiles somewhere; results may come back in any order."""

    def check(self, request: BatchRequest) -> int:
        """Refuse a job the models cannot run (UNKNOWN_MODEL, UNSUPPORTED_TASK) before it starts, and return
        its batch size (the request's; for ``batch_size`` 0 the model's own). Default: no check, 0 means 4."""
        return request.batch_size or Backend.TILE_BATCH_SIZE

    @abc.abstractmethod
    def map(
        self, request: BatchRequest, batches: Iterable[list[TileWork]], cancel: threading.Event
    ) -> Iterator[list[TileOutput]]:
        """One list of outputs per batch, as batches finish; stops early once ``cancel`` is set."""

    def close(self) -> None:  # noqa: B027 (optional hook: executors without resources keep it)
        """Release what the executor holds (workers, open files)."""


class LocalExecutor(TileExecutor):
    """Batches one after another in this process, on ``engine``, the next batches' windows read while the model works.

    ``read_ahead``: how many batches a reader thread reads ahead of the model (0: read each batch just
    before its model call). Reading is I/O and GDAL decompression, which release the GIL, so on a
    machine with a spare core it costs the job no time; memory holds ``read_ahead`` more batches of windows.

    One executor serves one job: the rasters it opens stay open for the job's batches (which may be
    pulled from different server threads, one at a time; every read happens on the executor's own
    reader thread) and are closed by :meth:`close`.
    """

    def __init__(self, engine: Engine, read_ahead: int = 1):
        if read_ahead < 0:
            raise ValueError(f"read_ahead must be 0 or more, got {read_ahead}")
        self.engine = engine
        self.read_ahead = read_ahead
        self.datasets = DatasetCache()
        self._reader: ThreadPoolExecutor | None = None

    def check(self, request: BatchRequest) -> int:
        return self.engine.check_batch(request)

    def map(
        self, request: BatchRequest, batches: Iterable[list[TileWork]], cancel: threading.Event
    ) -> Iterator[list[TileOutput]]:
        if self.read_ahead == 0:
            for works in batches:
                if cancel.is_set():
                    return
                reads = read_tiles(request, works, self.datasets, self.engine.sources)
                yield answer_tiles(self.engine, request, works, reads, cancel)
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsa-batch-read")
        reader, todo = self._reader, iter(batches)
        reading: deque[tuple[list[TileWork], Future[TileReads]]] = deque()

        def read_more() -> None:
            while len(reading) < self.read_ahead and not cancel.is_set():
                works = next(todo, None)
                if works is None:
                    return
                reading.append((works, reader.submit(read_tiles, request, works, self.datasets, self.engine.sources)))

        try:
            read_more()
            while reading:
                if cancel.is_set():
                    return
                works, future = reading.popleft()
                read_more()  # the next batch is read while the model answers this one
                yield answer_tiles(self.engine, request, works, future.result(), cancel)
        finally:
            for _, future in reading:
                future.cancel()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)  # no read in flight when the files close
            self._reader = None
        self.datasets.close()


# --- the job ------------------------------------------------------------------------------------


@dataclass
class JobPlan:
    """A checked job: its grid, the tiles still to do and the pending pieces it resumes with."""

    request: BatchRequest
    grid: TileGrid
    job_id: str
    todo: int
    pending: list[Piece]
    cache_key: str | None = None
    answered_by: str = ""  # the model (or "grounder + segmenter") that answers, for the start event

    def works(self) -> Iterator[TileWork]:
        skip = set(self.request.skip_tiles)
        for tile in self.grid.tiles():
            if tile.id not in skip:
                yield TileWork(tile, self.grid, self.cache_key)

    def batches(self) -> Iterator[list[TileWork]]:
        batch: list[TileWork] = []
        for work in self.works():
            batch.append(work)
            if len(batch) == self.request.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


Runner = Union[Engine, TileExecutor]  # noqa: UP007 (a runtime alias: Union reads as one)


def plan_job(runner: Runner, request: BatchRequest) -> JobPlan:
    """Check the job (model, task, CRSs, sources, extent, pending pieces) before anything is streamed; ProtocolError
    if it cannot run."""
    executor = _executor(runner)
    batch_size = executor.check(request)
    if batch_size != request.batch_size:
        request = dataclasses.replace(request, batch_size=batch_size)
    grid = make_grid(request, _sources(runner))
    skipped = sum(1 for t in request.skip_tiles if t < grid.count)
    pending = [from_pending(f, grid) for f in request.pending]
    key = (
        EmbeddingCache.key(request, grid, _model_files(runner, request.model))
        if request.task is Task.RETRIEVE
        else None
    )
    engine = _engine(runner)  # who answers (model "auto" resolved); a Ray driver leaves that to its workers
    answered_by = engine.answered_by(request.task, request.model) if engine is not None else request.model
    return JobPlan(request, grid, uuid.uuid4().hex, grid.count - skipped, pending, key, answered_by)


def _engine(runner: Runner) -> Engine | None:
    """The engine behind ``runner``, None where this process has none (a Ray driver: its workers hold the engines)."""
    engine = runner if isinstance(runner, Engine) else getattr(runner, "engine", None)
    return engine if isinstance(engine, Engine) else None


def _sources(runner: Runner) -> SourcePolicy:
    """Where the job's rasters may be: the engine's policy, or the executor's (a Ray driver: its own ``sources``)."""
    engine = _engine(runner)
    if engine is not None:
        return engine.sources
    policy = getattr(runner, "sources", None)
    return policy if isinstance(policy, SourcePolicy) else SourcePolicy()


def _model_files(runner: Runner, model: str, task: Task = Task.RETRIEVE) -> list[list[Any]]:
    """Path, size and modification time of the files behind ``model``'s path settings (its checkpoint
    folder's files), so that new weights under the same model name do not reuse old embeddings.
    Empty where this process has no registry to ask (a Ray driver: its workers hold the engines)."""
    engine = _engine(runner)
    if engine is None:
        return []
    stamps = []
    for _, value in sorted(engine.registry.spec(engine.registry.route(task, model)).config.items()):
        path = Path(value) if isinstance(value, str) and value else None
        if path is None or not path.exists():
            continue
        for file in [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file()):
            info = file.stat()
            stamps.append([str(file), info.st_size, info.st_mtime_ns])
    return stamps


def run_job(runner: Runner, request: BatchRequest, cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
    """The job's BatchEvent dicts (protocol.BatchEvent): start, tile..., merged, ranked (retrieve), done; or an error
    event."""
    try:
        plan = plan_job(runner, request)
    except ProtocolError as exc:
        yield _error_event(exc)
        return
    yield from stream_job(runner, plan, cancel)


def stream_job(runner: Runner, plan: JobPlan, cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
    """The events of a planned job; a failure ends the stream with an error event (what was streamed stays valid)."""
    cancel = cancel or threading.Event()
    executor = _executor(runner)
    try:
        yield from _events(executor, plan, cancel)
    except ProtocolError as exc:
        log.info("batch job %s: %s (%s)", plan.job_id, exc.code.value, exc.message)
        yield _error_event(exc)
    except Exception as exc:  # an engine bug: logged with its traceback, reported without details
        log.exception("batch job %s failed", plan.job_id)
        yield _error_event(
            ProtocolError(
                ErrorCode.INTERNAL,
                f"the engine failed on batch job {plan.job_id} ({type(exc).__name__}); its log has the details",
            )
        )
    finally:
        if executor is not runner:
            executor.close()


def _events(executor: TileExecutor, plan: JobPlan, cancel: threading.Event) -> Iterator[dict[str, Any]]:
    request, grid = plan.request, plan.grid
    yield {
        "event": BatchEvent.START.value, "job_id": plan.job_id, "model": plan.answered_by, "tiles": grid.count,
        "todo": plan.todo, "crs": request.output_crs, "tile_size": request.tile_size, "overlap": request.overlap,
        "batch_size": request.batch_size,
    }  # fmt: skip
    ranking = _Ranking(request.options.top_k)
    seams: list[Piece] = []
    for piece in plan.pending:
        (ranking.add(piece) if request.task is Task.RETRIEVE else seams.append(piece))
    done, written = 0, 0
    timing = {"read": 0.0, "infer": 0.0, "post": 0.0}
    in_force = request.batch_size
    _check(cancel, done, plan.todo)
    for outputs in executor.map(request, plan.batches(), cancel):
        for output in sorted(outputs, key=lambda o: o.tile):
            done += 1
            written += len(output.features)
            for key in timing:
                timing[key] += output.timing.get(key, 0.0)
            for feature in output.pending:
                piece = from_pending(feature, grid)
                (ranking.add(piece) if request.task is Task.RETRIEVE else seams.append(piece))
            event = {
                "event": BatchEvent.TILE.value, "tile": output.tile, "done": done, "todo": plan.todo,
                "text": output.text, "features": output.features, "pending": output.pending,
            }  # fmt: skip
            if output.batch_limit is not None and output.batch_limit < in_force:
                event["batch_size"] = output.batch_limit
                event["notice"] = (
                    f"{in_force} tiles per model call did not fit in the GPU's memory; the model runs "
                    f"{output.batch_limit} at a time from now on"
                )
                in_force = output.batch_limit
            yield event
        _check(cancel, done, plan.todo)
    if done < plan.todo:
        _check(cancel, done, plan.todo)
        raise ProtocolError(ErrorCode.INTERNAL, f"the executor stopped after {done} of {plan.todo} tiles")
    started = time.perf_counter()
    reproject = Reprojector(grid, request.output_crs)
    merged = [to_feature(p, reproject) for p in merge(seams, grid)]
    written += len(merged)
    yield {"event": BatchEvent.MERGED.value, "features": merged}
    if request.task is Task.RETRIEVE:
        ranked = ranking.features(reproject)
        written += len(ranked)
        yield {"event": BatchEvent.RANKED.value, "features": ranked}
    timing["post"] += _ms_since(started)
    yield {
        "event": BatchEvent.DONE.value, "tiles_done": done, "features": written,
        "timing_ms": {k: round(v, 3) for k, v in timing.items()},
    }  # fmt: skip


class _Ranking:
    """The ``top_k`` best tiles seen so far (best score first, then the lower tile id)."""

    def __init__(self, top_k: int):
        self.top_k = top_k
        self._heap: list[tuple[float, int, Piece]] = []  # min-heap of (score, -tile)

    def add(self, piece: Piece) -> None:
        entry = (piece.score, -piece.tile, piece)
        if len(self._heap) < self.top_k:
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def features(self, reproject: Reprojector) -> list[dict[str, Any]]:
        best = sorted(self._heap, key=lambda e: (-e[0], -e[1]))
        out = []
        for rank, (_, _, piece) in enumerate(best, start=1):
            piece = Piece(
                piece.kind, piece.label, piece.score, piece.tile, piece.geometry, {**piece.properties, "rank": rank}
            )
            out.append(to_feature(piece, reproject))
        return out


def _executor(runner: Runner) -> TileExecutor:
    if isinstance(runner, TileExecutor):
        return runner
    if isinstance(runner, Engine):
        return LocalExecutor(runner)
    raise TypeError(f"a batch job runs on an Engine or a TileExecutor, not {type(runner).__name__}")


def _check(cancel: threading.Event, done: int, todo: int) -> None:
    if cancel.is_set():
        raise ProtocolError(ErrorCode.CANCELLED, f"the batch job was cancelled after {done} of {todo} tiles")


def _error_event(exc: ProtocolError) -> dict[str, Any]:
    return {"event": BatchEvent.ERROR.value, **exc.to_dict()}


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
