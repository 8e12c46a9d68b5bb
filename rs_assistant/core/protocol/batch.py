"""Whole-layer jobs (``POST /v1/batch``): the tiled :class:`BatchRequest`, the tasks a job runs and the
:class:`BatchEvent` lines it streams back."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from rs_assistant.core.protocol.analyze import (
    FORBID_EXTRA,
    MAX_CRS_CHARS,
    MAX_PATH_CHARS,
    MAX_PROMPT_CHARS,
    AnalyzeRequest,
    ImageRef,
    Options,
)
from rs_assistant.core.protocol.errors import (
    ErrorCode,
    ProtocolError,
    parse_json,
    reject_unknown_fields,
    validate_crs,
    validate_extent,
)
from rs_assistant.core.protocol.schema import Limits
from rs_assistant.core.protocol.vocabulary import Task

MAX_TILE_SIZE = 2048
MAX_BATCH_SIZE = 64
MAX_TILE_IDS = 1_000_000  # skip_tiles: a layer of a million tiles is far beyond any one job
MAX_PENDING = 100_000  # seam pieces carried over from an interrupted run

#: Tasks a batch job runs, and how many rasters each takes (change: before, after).
BATCH_SOURCES: dict[Task, int] = {
    Task.CAPTION: 1,  # "describe tiles": one caption per tile, as a tile polygon
    Task.GROUND: 1,  # "find objects": boxes, duplicates across tiles merged
    Task.SEGMENT: 1,  # masks, objects crossing a tile seam merged into one polygon
    Task.CHANGE: 2,  # change polygons (merged across seams) and a change caption per tile
    Task.RETRIEVE: 1,  # "search by text": tiles ranked by similarity to the prompt
}


class BatchEvent(str, enum.Enum):
    """The ``event`` field of each NDJSON line that ``POST /v1/batch`` streams back.

    - ``start``: ``job_id``, ``model`` (the model that answers: ``auto`` resolved), ``tiles`` (tiles in the
      grid), ``todo`` (tiles this run will do, after ``skip_tiles``), ``crs`` (of every feature), ``tile_size``,
    ``overlap``, ``batch_size`` (in force).
    - ``tile``: ``tile`` (its id), ``done`` / ``todo`` (progress of this run), ``text`` (caption, may be
      empty), ``features`` (final GeoJSON features for the output layer, each with ``properties.tile``),
      ``pending`` (pieces that touch the tile's seam: not final; keep them to resume, wait for ``merged``);
      once, on the first tile after the model found the batch too large for the GPU's memory and halved it,
      also ``batch_size`` (the tiles per model call from then on) and ``notice`` (that, in a sentence).
    - ``merged``: ``features``: the pending pieces of the whole job (this run's and the request's),
      merged across seams; final. Sent once, after the last tile.
    - ``ranked``: ``features``: retrieve only, the ``top_k`` tiles as polygons with ``properties.rank``
      (1 = best) and ``score``. Sent once, after the last tile.
    - ``done``: ``tiles_done``, ``features`` (count written by the job), ``timing_ms`` ({read, infer, post}).
    - ``error``: ``error`` ({code, message}) as in :class:`ProtocolError`; the job stops. What was
      already streamed stays valid; a rerun with ``skip_tiles`` and ``pending`` resumes.
    """

    START = "start"
    TILE = "tile"
    MERGED = "merged"
    RANKED = "ranked"
    DONE = "done"
    ERROR = "error"


@dataclass(frozen=True)
class BatchRequest:
    """A whole-layer job: the engine tiles ``sources`` (local raster paths), reads each tile by window,
    batches tiles through the model and streams :class:`BatchEvent` lines back.

    ``tile_size`` and ``overlap`` are in pixels of the first source at full resolution; the grid
    steps by ``tile_size - overlap`` and each tile owns the central part of its window, so that
    every map point belongs to exactly one tile. ``extent`` (in ``extent_crs``, default the first
    source's CRS) limits the job to part of the raster. ``skip_tiles`` and ``pending`` (the seam
    pieces an interrupted run streamed) resume a job: the same request with them gives the same
    result as an uninterrupted run. ``batch_size`` is the tiles per model call; 0 (the default)
    leaves it to the model (its backend's ``tile_batch_size``: 16 for the built-in model), and the
    start event says the one in force.
    """

    task: Task
    sources: Annotated[
        tuple[Annotated[str, Limits(min_length=1, max_length=MAX_PATH_CHARS)], ...],
        Limits(min_length=1, max_length=2, code="bad_image_count"),
    ]
    output_crs: Annotated[str, Limits(min_length=1, max_length=MAX_CRS_CHARS)]
    model: Annotated[str, Limits(min_length=1, max_length=200)] = "default"
    prompt: Annotated[str, Limits(max_length=MAX_PROMPT_CHARS, code="prompt_too_long")] = ""
    extent: tuple[float, float, float, float] | None = None
    extent_crs: Annotated[str, Limits(min_length=1, max_length=MAX_CRS_CHARS)] | None = None
    tile_size: Annotated[int, Limits(ge=32, le=MAX_TILE_SIZE)] = 512
    overlap: Annotated[int, Limits(ge=0, le=MAX_TILE_SIZE // 2)] = 64
    batch_size: Annotated[int, Limits(ge=0, le=MAX_BATCH_SIZE)] = 0
    bands: Annotated[tuple[Annotated[int, Limits(ge=1)], ...], Limits(min_length=1, max_length=3)] | None = None
    skip_tiles: Annotated[tuple[Annotated[int, Limits(ge=0)], ...], Limits(max_length=MAX_TILE_IDS)] = ()
    pending: Annotated[tuple[dict[str, Any], ...], Limits(max_length=MAX_PENDING)] = ()
    options: Options = field(default_factory=Options)

    MAX_TILE_SIZE = MAX_TILE_SIZE
    MAX_BATCH_SIZE = MAX_BATCH_SIZE
    __pydantic_config__ = FORBID_EXTRA

    def __post_init__(self) -> None:
        try:
            task = Task(self.task)
        except ValueError:
            raise ProtocolError(ErrorCode.UNKNOWN_TASK, f"unknown task {self.task!r}") from None
        if task not in BATCH_SOURCES:
            known = ", ".join(t.value for t in BATCH_SOURCES)
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_TASK, f"a batch job does not run '{task.value}'; it runs: {known}"
            )
        object.__setattr__(self, "task", task)
        sources = (self.sources,) if isinstance(self.sources, str) else tuple(self.sources)
        if len(sources) != BATCH_SOURCES[task] or not all(isinstance(s, str) and s for s in sources):
            want = BATCH_SOURCES[task]
            raise ProtocolError(
                ErrorCode.BAD_IMAGE_COUNT,
                f"batch '{task.value}' takes {want} raster path(s), got {len(sources)}"
                + (" (give the before and the after raster)" if task is Task.CHANGE else ""),
            )
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "output_crs", validate_crs(self.output_crs))
        if not isinstance(self.model, str) or not self.model:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'model' must be a non-empty string")
        if not isinstance(self.prompt, str) or len(self.prompt) > AnalyzeRequest.MAX_PROMPT_CHARS:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"'prompt' must be a string of at most {AnalyzeRequest.MAX_PROMPT_CHARS} characters",
            )
        if task is Task.RETRIEVE and not self.prompt.strip():
            raise ProtocolError(
                ErrorCode.INVALID_VALUE, "a search needs a description to rank the tiles by (the prompt)"
            )
        if self.extent is not None:
            object.__setattr__(self, "extent", validate_extent(self.extent))
        if self.extent_crs is not None:
            object.__setattr__(self, "extent_crs", validate_crs(self.extent_crs))
        try:
            tile, overlap, batch = int(self.tile_size), int(self.overlap), int(self.batch_size)
            skip = tuple(sorted({int(t) for t in self.skip_tiles}))
        except (TypeError, ValueError):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "tile_size, overlap, batch_size and skip_tiles must be integers"
            ) from None
        if not 32 <= tile <= self.MAX_TILE_SIZE:
            raise ProtocolError(
                ErrorCode.REGION_TOO_LARGE, f"tile_size must be between 32 and {self.MAX_TILE_SIZE} pixels, got {tile}"
            )
        if not 0 <= overlap <= tile // 2:
            raise ProtocolError(
                ErrorCode.INVALID_VALUE,
                f"overlap must be between 0 and half the tile size ({tile // 2}), got {overlap}",
            )
        if not 0 <= batch <= self.MAX_BATCH_SIZE:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"batch_size must be between 1 and {self.MAX_BATCH_SIZE} (or 0: the model's own), got {batch}",
            )
        if any(t < 0 for t in skip):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "skip_tiles must be tile ids (0 or more)")
        object.__setattr__(self, "tile_size", tile)
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "batch_size", batch)
        object.__setattr__(self, "skip_tiles", skip)
        pending = tuple(self.pending)
        if not all(isinstance(f, Mapping) and f.get("type") == "Feature" for f in pending):
            raise ProtocolError(
                ErrorCode.INVALID_VALUE, "'pending' must be GeoJSON features from an earlier run of the job"
            )
        object.__setattr__(self, "pending", tuple(dict(f) for f in pending))
        if self.bands is not None:
            # the same rule as a single image's bands
            object.__setattr__(
                self, "bands", ImageRef(extent=(0, 0, 1, 1), crs="EPSG:3857", source="x", bands=self.bands).bands
            )
        if not isinstance(self.options, Options):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "options must be an Options object")

    _FIELDS = {
        "task",
        "model",
        "prompt",
        "sources",
        "output_crs",
        "extent",
        "extent_crs",
        "tile_size",
        "overlap",
        "batch_size",
        "bands",
        "skip_tiles",
        "pending",
        "options",
    }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.task.value,
            "model": self.model,
            "prompt": self.prompt,
            "sources": list(self.sources),
            "output_crs": self.output_crs,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "skip_tiles": list(self.skip_tiles),
            "pending": list(self.pending),
            "options": self.options.to_dict(),
        }
        if self.extent is not None:
            out["extent"] = list(self.extent)
        if self.extent_crs is not None:
            out["extent_crs"] = self.extent_crs
        if self.bands is not None:
            out["bands"] = list(self.bands)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> BatchRequest:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "request body must be a JSON object")
        reject_unknown_fields(data, cls._FIELDS, "batch request")
        for key in ("task", "sources", "output_crs"):
            if key not in data:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"batch request is missing '{key}'")
        return cls(
            task=data["task"],
            sources=data["sources"],
            output_crs=data["output_crs"],
            model=data.get("model", "default"),
            prompt=data.get("prompt") or "",
            extent=data.get("extent"),
            extent_crs=data.get("extent_crs"),
            tile_size=data.get("tile_size", 512),
            overlap=data.get("overlap", 64),
            batch_size=data.get("batch_size", 0),
            bands=data.get("bands"),
            skip_tiles=tuple(data.get("skip_tiles") or ()),
            pending=tuple(data.get("pending") or ()),
            options=Options.from_dict(data.get("options")),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchRequest:
        return cls.from_dict(parse_json(text))
