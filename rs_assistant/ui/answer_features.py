"""Answers tied to their features, both ways: an answer's features become result layers listed in its
turn; a link in the transcript zooms to a feature and flashes it; a feature selected on the map
names its turn (``turnHighlighted``); detections held back under the score threshold are added to
the answer's layer when the person asks for them.

The controller owns one (``controller.answers``); the dock forwards the transcript's link clicks
to :meth:`AnswerFeatures.open_link` and shades the turn that ``turnHighlighted`` names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsMapLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QObject, pyqtSignal

from rs_assistant.core.conversation import FeatureRef, Turn
from rs_assistant.core.protocol import AnalyzeResponse, Options
from rs_assistant.ui.results import (
    FolderQuestion,
    Provenance,
    ResultLayerWriter,
    ask_for_folder,
    layer_turn,
    written_features,
)
from rs_assistant.ui.transcript import FEATURE_SCHEME, HELD_BACK_SCHEME, parse_link

if TYPE_CHECKING:
    from rs_assistant.ui.controller import AssistantController

log = logging.getLogger(__name__)

ZOOM_CONTEXT = 4.0  # a feature zoomed to fills a quarter of the view's width, with its surroundings around it
MIN_ZOOM_M = 60.0  # the smallest view (metres on the ground, roughly) a feature is shown in


@dataclass
class _HeldBack:
    features: list[dict]
    provenance: Provenance
    title: str
    layer_ids: list[str] = field(default_factory=list)  # the answer's layers (one per kind)


class AnswerFeatures(QObject):
    turnHighlighted = pyqtSignal(int)  # the turn whose feature is selected on the map; 0: none

    def __init__(self, controller: AssistantController):
        super().__init__(controller)
        self._controller = controller
        self._held_back: dict[int, _HeldBack] = {}
        self._watched: set[str] = set()
        self.ask_folder: FolderQuestion | None = ask_for_folder(
            controller.canvas.window() if controller.canvas else None
        )
        controller.project.layersAdded.connect(self._on_layers_added)  # result layers of a project read again
        self._on_layers_added(list(controller.project.mapLayers().values()))

    # --- writing an answer ----------------------------------------------------------------------
    def writer(self) -> ResultLayerWriter:
        c = self._controller
        rasters = [c.layer(role) for role in ("image", "before", "after")]
        return ResultLayerWriter(c.project, c.settings.output_folder, rasters, self.ask_folder)

    def provenance(self, turn: Turn, model: str, text: str) -> Provenance:
        """What every feature of the turn's answer records: the model, the prompt as typed, the layers, the region."""
        command = turn.command
        prompt = command.argument if command is not None and turn.question.startswith("/") else turn.question
        region = turn.region
        crs = QgsCoordinateReferenceSystem(region.crs) if region is not None else self._controller.project.crs()
        if region is not None and not crs.isValid():
            crs = QgsCoordinateReferenceSystem.fromWkt(region.crs)
        return Provenance(
            turn=turn.id,
            model=model,
            prompt=prompt,
            source=", ".join(turn.layer_names),
            extent=region.extent if region is not None else None,
            crs=crs,
            text=text,
        )

    def write(
        self, turn_id: int, response: AnalyzeResponse, threshold: float | None = None
    ) -> tuple[list[QgsVectorLayer], dict]:
        """The answer's result layers and the turn's details (features listed, held back) for
        ``conversation.answer``."""
        turn = self._controller.conversation.get(turn_id)
        provenance = self.provenance(turn, response.model, response.text)
        layers, details = self.write_features(turn, response.feature_list, provenance)
        held = response.held_back_list
        if held:
            self._held_back[turn_id] = _HeldBack(held, provenance, turn.command.title, [l.id() for l in layers])
        details.update(
            held_back=len(held), score_threshold=Options().score_threshold if threshold is None else threshold
        )
        return layers, details

    def write_features(
        self, turn: Turn, features: list[dict], provenance: Provenance
    ) -> tuple[list[QgsVectorLayer], dict]:
        layers = self.writer().write_features(features, turn.command.title, provenance) if features else []
        refs = [ref for layer in layers for ref in written_features(layer)]
        refs.sort(key=lambda ref: -ref.score)
        self.watch(layers)
        return layers, {"features": tuple(refs), "feature_count": len(refs)}

    def show_held_back(self, turn_id: int) -> list[QgsVectorLayer]:
        """Adds the turn's held-back detections to its layers (a new layer when it drew none); returns the layers
        changed."""
        controller = self._controller
        held = self._held_back.pop(turn_id, None)
        turn = controller.conversation.get(turn_id)
        if held is None:  # e.g. a transcript read back with its project: the detections were not kept
            controller.conversation.update(turn_id, held_back=0)
            controller.turnChanged.emit(turn_id)
            return []
        by_kind: dict[str, list[dict]] = {}
        for feature in held.features:
            by_kind.setdefault(feature["properties"]["kind"], []).append(feature)
        writer = self.writer()
        changed: list[QgsVectorLayer] = []
        new_refs: list[FeatureRef] = []
        names = list(turn.result_layers)
        for kind, features in by_kind.items():
            layer = next(
                (
                    l
                    for l in (controller.project.mapLayer(i) for i in held.layer_ids)
                    if isinstance(l, QgsVectorLayer) and self._kind_of(l) == kind
                ),
                None,
            )
            if layer is None:
                made = writer.write_features(features, held.title, held.provenance)
                self.watch(made)
                changed.extend(made)
                names.extend(l.name() for l in made)
                new_refs.extend(ref for l in made for ref in written_features(l))
            else:
                fids = writer.append_features(layer, features, held.provenance)
                changed.append(layer)
                new_refs.extend(written_features(layer, fids))
        refs = tuple(turn.features) + tuple(sorted(new_refs, key=lambda r: -r.score))
        controller.conversation.update(
            turn_id, features=refs, feature_count=len(refs), held_back=0, result_layers=tuple(names)
        )
        controller.turnChanged.emit(turn_id)
        if controller.canvas is not None:
            for layer in changed:
                controller.canvas.flashFeatureIds(layer, [r.fid for r in new_refs if r.layer_id == layer.id()])
        return changed

    @staticmethod
    def _kind_of(layer: QgsVectorLayer) -> str:
        feature = next(layer.getFeatures(), None)
        return str(feature["kind"]) if feature is not None and "kind" in layer.fields().names() else ""

    # --- links -----------------------------------------------------------------------------------
    def open_link(self, url) -> bool:
        """Follows a transcript link (QUrl or text); False for a link that is not the transcript's own or leads
        nowhere."""
        link = parse_link(url)
        if link is None:
            return False
        scheme, layer_id, number = link
        if scheme == HELD_BACK_SCHEME:
            self.show_held_back(number)
            return True
        if scheme == FEATURE_SCHEME:
            return self.zoom_to(layer_id, number)
        return False

    def zoom_to(self, layer_id: str, fid: int) -> bool:
        """Zooms the canvas to a feature (with its surroundings) and flashes it; False when it is gone."""
        canvas = self._controller.canvas
        layer = self._controller.project.mapLayer(layer_id)
        if canvas is None or not isinstance(layer, QgsVectorLayer):
            log.info("feature %s of layer %s: the layer is no longer in the project", fid, layer_id)
            return False
        feature = layer.getFeature(fid)
        if not feature.isValid() or not feature.hasGeometry():
            return False
        rect = feature.geometry().boundingBox()
        target = canvas.mapSettings().destinationCrs()
        try:
            if layer.crs().isValid() and target.isValid() and layer.crs() != target:
                rect = QgsCoordinateTransform(layer.crs(), target, self._controller.project).transformBoundingBox(rect)
        except QgsCsException as exc:
            log.info("cannot show feature %s in the canvas CRS: %s", fid, exc)
            return False
        canvas.setExtent(self._with_context(rect, target))
        canvas.refresh()
        canvas.flashFeatureIds(layer, [fid])
        return True

    @staticmethod
    def _with_context(rect: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> QgsRectangle:
        minimum = MIN_ZOOM_M / 111_320.0 if crs.isGeographic() else MIN_ZOOM_M
        centre = rect.center()
        half = max(rect.width(), rect.height(), minimum / ZOOM_CONTEXT) * ZOOM_CONTEXT / 2
        return QgsRectangle(centre.x() - half, centre.y() - half, centre.x() + half, centre.y() + half)

    # --- the map's selection -> the turn ------------------------------------------------------------
    def watch(self, layers) -> None:
        for layer in layers:
            if layer.id() in self._watched:
                continue
            self._watched.add(layer.id())
            layer.selectionChanged.connect(
                lambda selected, _deselected, _clear, layer=layer: self._on_selection(layer, selected)
            )
            layer.willBeDeleted.connect(lambda layer_id=layer.id(): self._watched.discard(layer_id))  # noqa: B008

    def _on_layers_added(self, layers: list[QgsMapLayer]) -> None:
        self.watch([l for l in layers if isinstance(l, QgsVectorLayer) and layer_turn(l) is not None])

    def _on_selection(self, layer: QgsVectorLayer, selected: list[int]) -> None:
        turn = layer_turn(layer)
        if turn is None:
            return
        if selected or layer.selectedFeatureCount():
            self.turnHighlighted.emit(turn)
        else:
            self.turnHighlighted.emit(0)

    def forget(self) -> None:
        """The conversation was cleared: held-back detections go with it."""
        self._held_back.clear()
