"""What people read: the plugin's codes (errors, problems, engine states) in translated words.

Only this UI layer translates; ``rs_assistant.core`` hands over enums and codes. Each string is
a literal ``QCoreApplication.translate("Messages", ...)`` call so pylupdate5 finds it.
"""

from __future__ import annotations

from collections.abc import Sequence

from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.core.commands import CommandErrorCode
from rs_assistant.core.conversation import Problem, TurnError
from rs_assistant.core.engine_state import EngineFault, EngineState, EngineStatus
from rs_assistant.core.protocol import DeviceInfo, DeviceType, ErrorCode
from rs_assistant.core.search_ranking import Place, SearchRanking


def error_text(error: TurnError) -> str:
    translate = QCoreApplication.translate
    texts = {
        CommandErrorCode.UNKNOWN_COMMAND: translate("Messages", "Unknown command. Type /help for the list."),
        CommandErrorCode.MISSING_ARGUMENT: translate(
            "Messages", "This command needs to know what to look for, e.g. /find storage tanks."
        ),
        Problem.NO_IMAGE_LAYER: translate("Messages", "Choose an image layer first."),
        Problem.NO_BEFORE_AFTER: translate("Messages", "Choose a before and an after layer to compare."),
        Problem.SAME_BEFORE_AFTER: translate("Messages", "The before and the after layer are the same layer."),
        Problem.REGION_OUTSIDE_LAYER: translate(
            "Messages", "The region does not overlap the chosen layer. Draw a region over it or use the current view."
        ),
        Problem.ENGINE_NOT_READY: translate(
            "Messages", "The engine is not ready yet. Wait until its status says ready, or check the settings."
        ),
        Problem.RENDER_FAILED: translate("Messages", "The layer could not be rendered for the region."),
        Problem.LAYER_WRITE_FAILED: translate("Messages", "The answer arrived but its layer could not be written."),
        Problem.NOT_A_LOCAL_FILE: translate(
            "Messages",
            "A search runs over a raster file on this computer; this layer is not one (web, virtual or in-memory). "
            "Save it as a GeoTIFF first.",
        ),
        Problem.REGION_NO_PIXELS: translate(
            "Messages", "The region is smaller than one pixel of the layer. Draw a larger region."
        ),
        Problem.REGION_NOT_TRANSFORMABLE: translate(
            "Messages",
            "The region cannot be converted to the layer's or the project's CRS. Draw the region again or use the "
            "current view.",
        ),
        Problem.LAYER_REMOVED: translate(
            "Messages",
            "The layer was removed from the project, so its request was stopped. Choose a layer and ask again.",
        ),
        ErrorCode.ENGINE_UNREACHABLE: translate("Messages", "The engine cannot be reached."),
        ErrorCode.TIMEOUT: translate(
            "Messages", "The engine did not answer in time. Try a smaller region or a longer timeout."
        ),
        ErrorCode.CANCELLED: translate("Messages", "Cancelled."),
        ErrorCode.UNAUTHORIZED: translate("Messages", "The engine refused the token. Check the token in the settings."),
        ErrorCode.EXTENT_OUTSIDE: translate("Messages", "The region lies outside the raster."),
        ErrorCode.REGION_TOO_LARGE: translate("Messages", "The region is too large for the engine."),
        ErrorCode.SOURCE_NOT_FOUND: translate("Messages", "The engine cannot find the raster file."),
        ErrorCode.UNREADABLE_SOURCE: translate("Messages", "The engine cannot read the raster."),
        ErrorCode.UNKNOWN_MODEL: translate("Messages", "The engine does not know this model."),
        ErrorCode.UNSUPPORTED_TASK: translate("Messages", "This model cannot do that. Choose another model."),
        ErrorCode.MODEL_LOAD_FAILED: translate("Messages", "The engine could not load the model."),
        ErrorCode.PROMPT_TOO_LONG: translate("Messages", "The question is too long."),
        ErrorCode.MOSTLY_OUTSIDE: translate(
            "Messages",
            "The image covers only a small part of the region. Zoom to the layer, or draw a region over the image.",
        ),
        ErrorCode.REMOTE_SOURCE_REFUSED: translate(
            "Messages", "The engine reads only raster files on this computer (it was not started with --allow-remote)."
        ),
        ErrorCode.BUSY: translate("Messages", "The engine is busy with other requests. Ask again in a moment."),
    }
    return texts.get(error, translate("Messages", "The engine reported an error."))


def engine_status_text(status: EngineStatus) -> str:
    translate = QCoreApplication.translate
    if status.state is EngineState.STARTING:
        if status.detail:
            return translate("Messages", "Engine: restarting after a failure ({detail})").format(detail=status.detail)
        return translate("Messages", "Engine: starting…")
    if status.state is EngineState.READY:
        return translate("Messages", "Engine: ready")
    if status.state is EngineState.STOPPED:
        return translate("Messages", "Engine: stopped")
    if status.fault is EngineFault.NOT_SET_UP:
        return translate("Messages", "Engine: not set up yet")
    if status.fault is EngineFault.MISSING_PACKAGES:
        if status.detail:
            return translate("Messages", "Engine: a package is missing ({detail}); set up the engine again").format(
                detail=status.detail
            )
        return translate("Messages", "Engine: packages are missing; set up the engine again")
    if status.fault is EngineFault.BAD_CONFIG:
        return translate(
            "Messages",
            "Engine: its configuration has an error: {detail}. Correct it (Manage models…, or the "
            "settings), then Restart",
        ).format(detail=status.detail)
    faults = {
        EngineFault.INTERPRETER_NOT_FOUND: translate(
            "Messages", "the engine's Python interpreter was not found ({detail})"
        ),
        EngineFault.EXITED: translate("Messages", "the engine stopped: {detail}"),
        EngineFault.START_TIMEOUT: translate("Messages", "the engine did not start within {detail}"),
        EngineFault.NO_TOKEN: translate("Messages", "the engine wrote no token to {detail}"),
        EngineFault.UNREACHABLE: translate("Messages", "the engine cannot be reached ({detail})"),
    }
    reason = faults[status.fault].format(detail=status.detail)
    if status.fault is EngineFault.EXITED and status.restarts_left:
        return translate("Messages", "Engine: error: {reason}. Restarting…").format(reason=reason)
    return translate("Messages", "Engine: error: {reason}").format(reason=reason)


def device_text(info: DeviceInfo | None) -> str:
    """What the engine computes on, in a few words: "GPU: NVIDIA H100, 80 GB, bfloat16", "CPU, float32"."""
    if info is None:
        return ""
    translate = QCoreApplication.translate
    if info.type is DeviceType.CPU:
        return translate("Messages", "CPU, {dtype}").format(dtype=info.dtype)
    parts = [info.name]
    if info.type is DeviceType.CUDA and info.memory_gb is not None:
        parts.append(translate("Messages", "{size} GB").format(size=f"{info.memory_gb:.0f}"))
    parts.append(info.dtype)
    return translate("Messages", "GPU: {what}").format(what=", ".join(parts))


def device_warning_text(info: DeviceInfo | None) -> str:
    """The engine's warning about an unused NVIDIA GPU (what is wrong and what to do); "" when none."""
    if info is None or not info.warning:
        return ""
    return QCoreApplication.translate("Messages", "The GPU is not used: {warning}").format(warning=info.warning)


def busy_text() -> str:
    return QCoreApplication.translate("Messages", "Engine: busy")


def queued_text() -> str:
    """After the engine's status while a question waits for it to start."""
    return QCoreApplication.translate("Messages", "your question will run when it is ready")


def help_lines() -> list[tuple[str, str]]:
    translate = QCoreApplication.translate
    return [
        ("/describe", translate("Messages", "describe the region")),
        ("/find <what>", translate("Messages", "draw boxes around objects, e.g. /find storage tanks")),
        ("/segment <what>", translate("Messages", "outline objects as polygons, e.g. /segment buildings")),
        ("/change", translate("Messages", "compare the before and the after layer")),
        ("/ask <question>", translate("Messages", "ask about the region (plain text does the same)")),
        (
            "/search <description>",
            translate(
                "Messages",
                "rank the layer's tiles (in the region, else the whole layer) by a description, e.g. /search a "
                "harbour with many boats",
            ),
        ),
        ("/help", translate("Messages", "this list")),
    ]


def place_text(place: Place) -> str:
    """Where a tile lies in the searched area, for the transcript."""
    translate = QCoreApplication.translate
    return {
        Place.NORTH_WEST: translate("Messages", "north-west"),
        Place.NORTH: translate("Messages", "north"),
        Place.NORTH_EAST: translate("Messages", "north-east"),
        Place.WEST: translate("Messages", "west"),
        Place.CENTRE: translate("Messages", "centre"),
        Place.EAST: translate("Messages", "east"),
        Place.SOUTH_WEST: translate("Messages", "south-west"),
        Place.SOUTH: translate("Messages", "south"),
        Place.SOUTH_EAST: translate("Messages", "south-east"),
    }[place]


def search_answer(description: str, ranking: SearchRanking, whole_layer: bool = False) -> str:
    """The transcript text of a search: the kept tiles by rank, place and similarity, and what was left out."""
    translate = QCoreApplication.translate
    if not ranking.hits:
        return translate("Messages", "No tile matches “{description}”.").format(description=description)
    area = translate("Messages", "of the layer") if whole_layer else translate("Messages", "of the region")
    items = [
        translate("Messages", "#{rank} {place} ({percent}%)").format(
            rank=hit.rank, place=place_text(hit.place), percent=hit.percent
        )
        for hit in ranking.hits
    ]
    head = translate(
        "Messages", "Best matches for “{description}” ({count} of {searched} tiles {area}): {matches}."
    ).format(
        description=description, count=len(ranking.hits), searched=ranking.searched, area=area, matches=", ".join(items)
    )
    if ranking.searched <= 1:
        return (
            head
            + " "
            + translate(
                "Messages",
                "The region is a single tile: draw a larger region, or clear it to "
                "search the whole layer, to compare tiles.",
            )
        )
    return (
        head
        + " "
        + translate(
            "Messages",
            "Similarity is relative to the tiles searched (100% = the best); tiles under {floor}% are not shown.",
        ).format(floor=round(100 * ranking.floor))
    )


def metres(size: float) -> str:
    """A pixel size as people write it: 0.12 m, 0.5 m, 2 m, 10 m."""
    return f"{size:.2g} m" if size < 1 else f"{size:.3g} m"


def land_cover_text(land_cover: Sequence[tuple[str, float]]) -> str:
    """What covers the region, largest first, in whole percent: "Land cover: grass areas 44%, roads 14%." """
    if not land_cover:
        return ""
    covers = ", ".join(f"{name} {share:.0%}" for name, share in land_cover)
    return QCoreApplication.translate("Messages", "Land cover: {covers}.").format(covers=covers)


def resampled_text(pixel_size_m: float | None, model_pixel_size_m: float) -> str:
    """What the engine did when the model was trained on coarser imagery than the window's."""
    translate = QCoreApplication.translate
    if pixel_size_m is None:
        return translate(
            "Messages", "(The model read this imagery at {model} a pixel, nearer the imagery it was trained on.)"
        ).format(model=metres(model_pixel_size_m))
    return translate(
        "Messages",
        "(This imagery has {pixel} pixels; the model read it at {model}, nearer the imagery it was trained on.)",
    ).format(pixel=metres(pixel_size_m), model=metres(model_pixel_size_m))
