"""Answers tied to their features, driven through the dock: the feature list in the transcript, a
click on a feature (zoom + flash), a selection on the map (its turn highlighted), "Show N more below
0.3", one polygon per object with its area on the ground, the attributes an analyst reads, and the
project's GeoPackage in a folder asked for once and never among the data."""

from __future__ import annotations

import re
import time
from pathlib import Path

from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsDateTimeFieldFormatter, QgsProject
from qgis.gui import QgsRubberBand
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QTextCursor
from qgis.PyQt.QtWidgets import QApplication, QFileDialog, QLineEdit, QListView

from rs_assistant.core.conversation import TurnState
from rs_assistant.core.settings import Settings
from rs_assistant.ui.results import FIELDS, GEOPACKAGE_KEY, SCOPE, TURN_PROPERTY
from rs_assistant.ui.transcript import HIGHLIGHT_COLOUR
from tests.qgis.fake_engine import FakeEngineClient
from tests.qgis.test_chat_dock import ask, select_region, wait_answer

EXPECTED_FIELDS = [
    "label",
    "score",
    "kind",
    "area_m2",
    "length_m",
    "model",
    "prompt",
    "source",
    "created",
    "extent",
    "crs",
    "turn",
]


def link_positions(view) -> dict[str, int]:
    """href -> document position of every link in the transcript."""
    out = {}
    block = view.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            href = fragment.charFormat().anchorHref()
            if href and href not in out:
                out[href] = fragment.position() + 1
            it += 1
        block = block.next()
    return out


def click_link(qtbot, view, href: str) -> None:
    """Scrolls the link into view and clicks it with the mouse, as a person would."""
    cursor = QTextCursor(view.document())
    cursor.setPosition(link_positions(view)[href])
    view.setTextCursor(cursor)
    view.ensureCursorVisible()
    point = view.cursorRect(cursor).center()
    assert view.viewport().rect().contains(point)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)


def utm_area(project: QgsProject, feature) -> float:
    """The feature's planar area in UTM 33N, computed here: within 0.1 % of the ground area at the central meridian."""
    geometry = feature.geometry()
    geometry.transform(QgsCoordinateTransform(project.crs(), QgsCoordinateReferenceSystem("EPSG:32633"), project))
    return geometry.area() / 0.9996**2


def test_segment_gives_one_polygon_per_object_with_ground_areas_and_provenance(make_assistant, qtbot):
    assistant = make_assistant(FakeEngineClient(multipart=True))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    region = select_region(qtbot, assistant)
    ask(qtbot, assistant, "/segment buildings")
    turn = wait_answer(qtbot, assistant)
    assert turn.state is TurnState.ANSWERED

    [layer] = assistant.controller.last_layers
    assert layer.fields().names()[1:] == EXPECTED_FIELDS  # fid first, then what an analyst reads; nothing internal
    assert int(layer.customProperty(TURN_PROPERTY)) == turn.id
    features = list(layer.getFeatures())
    assert len(features) == 3  # three buildings, not one multipolygon of three parts
    for feature in features:
        assert len(feature.geometry().asMultiPolygon()) == 1
        ground = utm_area(assistant.project, feature)
        assert abs(feature["area_m2"] - ground) / ground < 0.002  # on the ground ...
        assert feature["area_m2"] < 0.7 * feature.geometry().area()  # ... not in Web-Mercator square metres
        assert (
            feature["length_m"] is None
            or feature["length_m"] != feature["length_m"]
            or str(feature["length_m"]) == "NULL"
        )
        assert feature["score"] == 0.8 and feature["label"] == "buildings" and feature["kind"] == "mask"
        assert feature["prompt"] == "buildings" and feature["model"] == "default"
        assert feature["source"] == "utm image" and feature["crs"] == "EPSG:3857" and feature["turn"] == turn.id
        assert feature["created"].isValid()
        index = layer.fields().indexOf("created")  # the attribute table shows it to the second, no ".000"
        setup = layer.editorWidgetSetup(index)
        shown = QgsDateTimeFieldFormatter().representValue(layer, index, setup.config(), None, feature["created"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d( \(UTC\))?", shown), shown
        extent = [float(v) for v in feature["extent"].split(",")]
        assert feature["extent"] == ",".join(
            f"{v:.2f}" for v in (region.xMinimum(), region.yMinimum(), region.xMaximum(), region.yMaximum())
        )
        assert len(extent) == 4

    transcript = assistant.dock.transcriptView.toPlainText()
    assert "3 feature(s): buildings × 3" in transcript
    area = round(features[0]["area_m2"])
    assert f"1. buildings · {area:,} m² · 0.80" in transcript


def test_a_multipolygon_of_an_old_engine_is_split_on_the_plugin_side_too(make_assistant, qtbot):
    assistant = make_assistant(FakeEngineClient(multipart=True))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/segment roofs")
    turn = wait_answer(qtbot, assistant)
    assert turn.feature_count == 3 and len(turn.features) == 3
    assert sorted({ref.fid for ref in turn.features}) == sorted(
        f.id() for f in assistant.controller.last_layers[0].getFeatures()
    )


def test_clicking_a_feature_in_the_answer_zooms_to_it_and_flashes_it(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    select_region(qtbot, assistant)
    ask(qtbot, assistant, "/find tanks")
    turn = wait_answer(qtbot, assistant)
    [layer] = assistant.controller.last_layers
    small = min(turn.features, key=lambda ref: ref.area_m2)
    canvas = assistant.canvas
    before = canvas.extent()
    qtbot.wait(1600)  # the flash of the answer's arrival is over
    click_link(qtbot, assistant.dock.transcriptView, f"feature:{layer.id()}:{small.fid}")

    bbox = layer.getFeature(small.fid).geometry().boundingBox()
    after = canvas.extent()
    assert after.contains(bbox) and after.width() < before.width() / 2  # zoomed to it, with its surroundings
    assert abs(after.center().x() - bbox.center().x()) < bbox.width() * 0.01
    flashes = [item for item in canvas.scene().items() if isinstance(item, QgsRubberBand)]
    assert flashes, "the feature is flashed"


def test_selecting_a_feature_on_the_map_highlights_its_turn(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/find tanks")
    first = wait_answer(qtbot, assistant)
    [tanks] = assistant.controller.last_layers
    for question in ("/find ships", "/describe", "/find cars"):
        ask(qtbot, assistant, question)
        wait_answer(qtbot, assistant)
    view = assistant.dock.transcriptView
    assert HIGHLIGHT_COLOUR not in view.toHtml()
    bar = view.verticalScrollBar()
    assert bar.maximum() - bar.value() <= 8  # the last answer in view (to the document's bottom margin)

    tanks.selectByIds([first.features[0].fid])
    html = view.toHtml()
    assert html.count(HIGHLIGHT_COLOUR) == 1
    assert html.index(HIGHLIGHT_COLOUR) < html.index("/find ships")  # the first turn is the one shaded
    assert view.verticalScrollBar().value() < view.verticalScrollBar().maximum()  # and scrolled into view

    tanks.removeSelection()
    assert HIGHLIGHT_COLOUR not in view.toHtml()


def test_show_more_below_the_threshold_adds_the_held_back_detections(make_assistant, qtbot):
    assistant = make_assistant(FakeEngineClient(held_back=14))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/find building")
    turn = wait_answer(qtbot, assistant)
    [layer] = assistant.controller.last_layers
    assert layer.featureCount() == 2 and turn.held_back == 14
    view = assistant.dock.transcriptView
    assert "Show 14 more below 0.3" in view.toPlainText()

    click_link(qtbot, view, f"heldback:{turn.id}")
    turn = assistant.controller.conversation.get(turn.id)
    assert layer.featureCount() == 16 and turn.feature_count == 16 and turn.held_back == 0
    scores = sorted(f["score"] for f in layer.getFeatures())
    assert scores[:3] == [0.1, 0.11, 0.12] and {f["turn"] for f in layer.getFeatures()} == {turn.id}
    text = view.toPlainText()
    assert "Show 14 more" not in text and "16 feature(s): building × 16" in text
    assert "… and 6 more in the layer’s attribute table" in text


def test_held_back_detections_of_an_answer_that_drew_nothing_make_a_layer(make_assistant, qtbot):
    assistant = make_assistant(FakeEngineClient(held_back=3, drawn=0))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/find cars")
    turn = wait_answer(qtbot, assistant)
    assert (
        assistant.controller.last_layers == []
        and "Show 3 more below 0.3" in assistant.dock.transcriptView.toPlainText()
    )
    click_link(qtbot, assistant.dock.transcriptView, f"heldback:{turn.id}")
    turn = assistant.controller.conversation.get(turn.id)
    assert turn.feature_count == 3 and turn.result_layers == ("find cars",)
    layer = assistant.project.mapLayer(turn.features[0].layer_id)
    assert layer.featureCount() == 3 and int(layer.customProperty(TURN_PROPERTY)) == turn.id


def _answer_modal(qtbot, steps: list) -> list[str]:
    """Answers the modal dialogs as they come: each step gets the dialog and acts on it; returns what was seen."""
    seen: list[str] = []

    def poll():
        widget = QApplication.activeModalWidget()
        if widget is not None and steps:
            seen.append(
                f"{type(widget).__name__}: {widget.windowTitle() if isinstance(widget, QFileDialog) else widget.text()}"
            )
            steps.pop(0)(widget)
        if steps:
            QTimer.singleShot(50, poll)

    QTimer.singleShot(50, poll)
    return seen


def type_folder(dialog: QFileDialog, folder: Path) -> None:
    """Types a folder's path in the dialog's name box and accepts it, as a person would: once the dialog has
    listed its folder and selected the proposal (a listing that lands after the typing would select the
    proposal over what was typed, a race a person, who reads the list first, never runs)."""
    listing = dialog.findChild(QListView, "listView")
    deadline = time.monotonic() + 10
    while not listing.selectionModel().hasSelection() and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)
    listing.clearSelection()  # typing replaces the proposal, as it does for a person who selects the name box's text
    dialog.findChild(QLineEdit, "fileNameEdit").setText(str(folder))
    QApplication.processEvents()
    assert dialog.selectedFiles() == [str(folder)], dialog.selectedFiles()
    dialog.accept()


def test_the_results_folder_is_asked_once_per_project_and_never_the_data_folder(make_assistant, qtbot, tmp_path):
    assistant = make_assistant(settings=Settings(output_folder=""))
    project = assistant.project
    project_file = tmp_path / "survey.qgz"  # the project lives beside its raster (tmp_path/utm.tif)
    assert project.write(str(project_file))
    results = tmp_path / "my results"
    results.mkdir()
    proposals = []

    def choose_data_folder(dialog):
        proposals.append(dialog.selectedFiles()[0])
        type_folder(dialog, tmp_path)

    def choose_results(dialog):
        type_folder(dialog, results)

    steps = [choose_data_folder, lambda box: box.accept(), choose_results]
    seen = _answer_modal(qtbot, steps)
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/find tanks")
    turn = wait_answer(qtbot, assistant)
    assert turn.state is TurnState.ANSWERED and steps == []
    assert proposals == [str(tmp_path / "rs_assistant_results")]  # beside the project, but not among its data
    assert not (tmp_path / "rs_assistant_results").exists()  # proposed, not chosen: not left behind
    assert seen[0].startswith("QFileDialog: RS Assistant: where should this project's results go?")
    assert seen[1].startswith(f"QMessageBox: {tmp_path} holds the data of utm image")
    [layer] = assistant.controller.last_layers
    assert Path(layer.source().split("|")[0]) == results / "survey_rs_assistant.gpkg"
    stored, _ = project.readEntry(SCOPE, GEOPACKAGE_KEY, "")
    assert Path(project.readPath(stored)) == results / "survey_rs_assistant.gpkg"

    ask(qtbot, assistant, "/find ships")  # no question this time: the project remembers
    assert wait_answer(qtbot, assistant).state is TurnState.ANSWERED
    assert Path(assistant.controller.last_layers[0].source().split("|")[0]) == results / "survey_rs_assistant.gpkg"


def test_declining_to_choose_a_folder_is_a_message_in_the_turn(make_assistant, qtbot):
    assistant = make_assistant(settings=Settings(output_folder=""))
    assistant.controller.answers.ask_folder = lambda proposed, why_not: None
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/find tanks")
    turn = wait_answer(qtbot, assistant)
    assert turn.state is TurnState.FAILED
    assert "no folder was chosen for this project's results" in assistant.dock.transcriptView.toPlainText()


def test_fields_are_what_the_contract_lists():
    assert [spec.split(":")[0].removeprefix("field=") for spec in FIELDS.split("&")] == EXPECTED_FIELDS
