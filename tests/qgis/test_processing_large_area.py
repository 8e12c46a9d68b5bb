"""The "Large areas" Processing algorithms, run with ``processing.run()`` against a real engine
process on the test backend (tests/engine/fakes.py's TileBackend), writing GeoPackages.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/qgis/test_processing_large_area.py -q

The scene: 256 x 256 pixels of 10 m in UTM 33N, dark, with a white square (columns and rows
40-80) that crosses the seams of a 64-pixel grid with 16 pixels of overlap (5 x 5 tiles), and a
red patch (columns and rows 176-216) for the search. Most tests talk to one engine started for
the module (connect mode); the managed-mode test lets Processing start its own and kills it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis import processing
from qgis.core import (
    QgsApplication,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)

from rs_assistant.core.journal import Journal
from rs_assistant.core.settings import Settings
from rs_assistant.processing.engine_connection import ENGINE
from rs_assistant.processing.provider import RSAssistantProvider
from rs_assistant.ui.settings_store import SettingsStore

ROOT = Path(__file__).resolve().parents[2]
X0, Y0, PIXEL, SIZE = 500_000.0, 4_650_000.0, 10.0, 256
WHITE = (40, 40, 80, 80)  # col0, row0, col1, row1
RED = (176, 176, 216, 216)
GRID = {"TILE_SIZE": 64, "OVERLAP": 16}  # 5 x 5 tiles
TILES = 25
MODELS = """
[models.default]
backend = "tests.engine.fakes:TileBackend"

[models.slow]
backend = "tests.engine.fakes:TileBackend"
delay_s = 0.3
"""
FIELDS = ["label", "score", "kind", "tile", "text", "rank"]


# --- data ----------------------------------------------------------------------------------------
def write_scene(path: Path, white=WHITE, red=RED, size: int = SIZE) -> Path:
    data = np.full((3, size, size), 30, np.uint8)
    if white is not None:
        c0, r0, c1, r1 = white
        data[:, r0:r1, c0:c1] = 230
    if red is not None:
        c0, r0, c1, r1 = red
        data[:, r0:r1, c0:c1] = np.array([200, 40, 40], np.uint8)[:, None, None]
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte)
    dataset.SetGeoTransform((X0, PIXEL, 0.0, Y0, 0.0, -PIXEL))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset.SetProjection(srs.ExportToWkt())
    for band in range(3):
        dataset.GetRasterBand(band + 1).WriteArray(data[band])
    dataset = None
    return path


def pixel_rect(box) -> QgsRectangle:
    c0, r0, c1, r1 = box
    return QgsRectangle(X0 + c0 * PIXEL, Y0 - r1 * PIXEL, X0 + c1 * PIXEL, Y0 - r0 * PIXEL)


def read_layer(path) -> QgsVectorLayer:
    layer = QgsVectorLayer(str(path), "out", "ogr")
    assert layer.isValid(), path
    return layer


def rows(path) -> list[tuple]:
    """The output's features as comparable rows, in a stable order."""
    out = []
    for feature in read_layer(path).getFeatures():
        attributes = tuple(
            None if feature[name] is None or str(feature[name]) == "NULL" else feature[name] for name in FIELDS
        )
        attributes = attributes[:1] + (round(attributes[1], 6),) + attributes[2:]
        out.append((attributes, feature.geometry()))
    return sorted(out, key=lambda row: (str(row[0]), row[1].centroid().asPoint().x(), row[1].centroid().asPoint().y()))


def assert_same_features(path_a, path_b) -> None:
    a, b = rows(path_a), rows(path_b)
    assert [r[0] for r in a] == [r[0] for r in b]
    for (_, geometry_a), (_, geometry_b) in zip(a, b):
        assert geometry_a.symDifference(geometry_b).area() <= 1e-6 * max(geometry_a.area(), 1.0)


class Recorder(QgsProcessingFeedback):
    """Records progress and messages; runs ``at_tile(feedback)`` once progress passes ``percent``."""

    def __init__(self, percent: float | None = None, at_tile=None):
        super().__init__()
        self.progress: list[float] = []
        self.infos: list[str] = []
        self._percent, self._at_tile = percent, at_tile
        self.progressChanged.connect(self._on_progress)

    def _on_progress(self, value: float) -> None:
        self.progress.append(value)
        if self._percent is not None and value >= self._percent and self._at_tile is not None:
            action, self._at_tile = self._at_tile, None
            action(self)

    def pushInfo(self, info: str) -> None:  # noqa: N802 (QGIS's name)
        self.infos.append(info)
        super().pushInfo(info)


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def provider(qgis_processing):
    registry = QgsApplication.processingRegistry()
    provider = RSAssistantProvider()
    assert registry.addProvider(provider)
    yield provider
    registry.removeProvider(provider)
    ENGINE.shutdown()


@pytest.fixture(scope="module")
def models_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("engine") / "models.toml"
    path.write_text(MODELS, encoding="utf-8")
    return path


def start_engine(models_file: Path, folder: Path) -> tuple[subprocess.Popen, str, str]:
    token_file = folder / "token"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rs_assistant.engine",
            "serve",
            "--port",
            "0",
            "--models",
            str(models_file),
            "--token-file",
            str(token_file),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(folder / "engine.log", "w"),  # noqa: SIM115
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RS_ASSISTANT_CACHE_DIR": str(folder / "cache")},
    )
    line = process.stdout.readline()
    assert line.startswith("READY "), line
    return process, line.split()[1], token_file.read_text().strip()


@pytest.fixture(scope="module")
def engine(models_file, tmp_path_factory):
    process, url, token = start_engine(models_file, tmp_path_factory.mktemp("engine_run"))
    yield url, token
    process.terminate()
    process.wait(10)


@pytest.fixture
def connect(engine, provider):
    """Processing talks to the module's engine (the plugin's settings in connect mode)."""
    url, token = engine
    SettingsStore().save(Settings(engine_url=url, engine_token=token, timeout_s=60))
    yield url, token
    SettingsStore().clear()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_scene(tmp_path_factory.mktemp("scene") / "scene.tif")


@pytest.fixture
def raster(qgis_new_project, scene) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(scene), "scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def run(algorithm: str, parameters: dict, feedback: QgsProcessingFeedback | None = None) -> dict:
    return processing.run(f"rs_assistant:{algorithm}", {**GRID, **parameters}, feedback=feedback or Recorder())


# --- the algorithms ------------------------------------------------------------------------------
def test_describe_tiles_writes_the_grid_with_a_caption_per_tile(connect, raster, tmp_path):
    feedback = Recorder()
    result = run("describetiles", {"INPUT": raster, "OUTPUT": str(tmp_path / "captions.gpkg")}, feedback)
    assert result["TILES"] == TILES and result["FEATURES"] == TILES
    layer = read_layer(tmp_path / "captions.gpkg")
    assert layer.crs().authid() == "EPSG:32633"  # the raster's CRS
    assert [f.name() for f in layer.fields() if f.name() != "fid"] == FIELDS
    assert layer.geometryType() == QgsWkbTypes.GeometryType.PolygonGeometry
    features = list(layer.getFeatures())
    assert sorted(f["tile"] for f in features) == list(range(TILES))
    assert {f["kind"] for f in features} == {"tile"}
    top_right = next(f for f in features if f["tile"] == 4)
    assert top_right["text"] == "64x64 image, mean colour (30, 30, 30)"  # it sees only the dark field
    top_left = next(f for f in features if f["tile"] == 0)
    assert top_left["text"] == "64x64 image, mean colour (58, 58, 58)"  # a corner of the white square
    whole = QgsGeometry.unaryUnion([f.geometry() for f in features])  # the tiles' cores tile the raster exactly
    assert abs(whole.area() - (SIZE * PIXEL) ** 2) < 1e-3
    assert whole.boundingBox().toString(3) == pixel_rect((0, 0, SIZE, SIZE)).toString(3)
    assert abs(sum(f.geometry().area() for f in features) - whole.area()) < 1e-3  # no overlap between them
    assert feedback.progress == sorted(feedback.progress) and feedback.progress[-1] == 100
    assert len(feedback.progress) >= TILES // 4  # progress followed the tiles
    assert not Journal.path_for(tmp_path / "captions.gpkg").exists()  # a finished job leaves no journal


def test_find_objects_keeps_one_box_for_an_object_seen_by_several_tiles(connect, raster, tmp_path):
    run("findobjects", {"INPUT": raster, "PROMPT": "white square", "OUTPUT": str(tmp_path / "found.gpkg")})
    boxes = list(read_layer(tmp_path / "found.gpkg").getFeatures())
    [box] = boxes  # seen by four tiles, kept once; the red patch is not bright (grey level below 128)
    assert box.geometry().intersects(pixel_rect(WHITE))
    assert box["label"] == "white square" and box["kind"] == "box" and box["score"] == pytest.approx(0.9)
    assert box.geometry().boundingBox().toString(0) == pixel_rect(WHITE).toString(0)


def test_segment_layer_merges_an_object_crossing_tile_seams_into_one_polygon(connect, raster, tmp_path):
    run("segmentlayer", {"INPUT": raster, "PROMPT": "roof", "OUTPUT": str(tmp_path / "roofs.gpkg")})
    features = [
        f for f in read_layer(tmp_path / "roofs.gpkg").getFeatures() if f.geometry().intersects(pixel_rect(WHITE))
    ]
    [roof] = features  # four tiles saw parts of it: one polygon
    assert roof["kind"] == "mask" and roof["label"] == "roof"
    assert roof.geometry().area() == pytest.approx(400 * 400, rel=1e-6)
    assert not roof.geometry().isMultipart() or len(roof.geometry().asMultiPolygon()) == 1


def test_change_over_area_gives_change_polygons_and_a_caption_per_tile(connect, qgis_new_project, scene, tmp_path):
    after = write_scene(tmp_path / "after.tif", white=(120, 120, 160, 160))  # the square moved
    result = run(
        "changeoverarea", {"BEFORE": str(scene), "AFTER": str(after), "OUTPUT": str(tmp_path / "changes.gpkg")}
    )
    assert result["TILES"] == TILES
    features = list(read_layer(tmp_path / "changes.gpkg").getFeatures())
    tiles = [f for f in features if f["kind"] == "tile"]
    changes = [f for f in features if f["kind"] == "change"]
    assert len(tiles) == TILES
    assert next(f for f in tiles if f["tile"] == 4)["text"] == "0 changed pixel(s)"
    assert any(f["text"] != "0 changed pixel(s)" for f in tiles)
    changed_area = sum(f.geometry().area() for f in changes)
    assert changed_area == pytest.approx(2 * 400 * 400, rel=1e-6)  # where it was and where it is now
    assert all(
        f.geometry().intersects(pixel_rect(WHITE)) or f.geometry().intersects(pixel_rect((120, 120, 160, 160)))
        for f in changes
    )


def test_search_returns_the_best_tiles_ranked(connect, raster, tmp_path):
    result = run(
        "searchlayer", {"INPUT": raster, "PROMPT": "a red roof", "TOP_K": 3, "OUTPUT": str(tmp_path / "red.gpkg")}
    )
    assert result["FEATURES"] == 3
    features = sorted(read_layer(tmp_path / "red.gpkg").getFeatures(), key=lambda f: f["rank"])
    assert [f["rank"] for f in features] == [1, 2, 3]
    assert [f["score"] for f in features] == sorted((f["score"] for f in features), reverse=True)
    assert features[0].geometry().intersects(pixel_rect(RED))
    assert {f["kind"] for f in features} == {"tile"}
    # a second search of the same layer reuses its embeddings (and ranks by the new description)
    run("searchlayer", {"INPUT": raster, "PROMPT": "white", "TOP_K": 1, "OUTPUT": str(tmp_path / "white.gpkg")})
    [best] = list(read_layer(tmp_path / "white.gpkg").getFeatures())
    assert best.geometry().intersects(pixel_rect(WHITE))


def test_an_extent_limits_the_job_and_any_ogr_format_works(connect, raster, tmp_path):
    extent = pixel_rect((0, 0, 128, 128))
    run(
        "describetiles",
        {
            "INPUT": raster,
            "EXTENT": f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},{extent.yMaximum()} [EPSG:32633]",
            "OUTPUT": str(tmp_path / "part.shp"),
        },
    )
    layer = read_layer(tmp_path / "part.shp")
    assert 0 < layer.featureCount() < TILES
    assert extent.buffered(1).contains(layer.extent())


# --- cancel, a dying engine, resume ---------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(engine, provider, tmp_path_factory, scene):
    """An uninterrupted segmentation of the scene (what any interrupted-then-resumed run must give)."""
    url, token = engine
    SettingsStore().save(Settings(engine_url=url, engine_token=token))
    path = tmp_path_factory.mktemp("reference") / "reference.gpkg"
    try:
        processing.run(
            "rs_assistant:segmentlayer", {**GRID, "INPUT": str(scene), "PROMPT": "roof", "OUTPUT": str(path)}
        )
    finally:
        SettingsStore().clear()
    return path


def test_cancel_keeps_valid_features_and_a_rerun_resumes_to_the_same_result(reference, connect, scene, tmp_path):
    out = tmp_path / "roofs.gpkg"
    parameters = {"INPUT": str(scene), "PROMPT": "roof", "MODEL": "slow", "BATCH_SIZE": 1, "OUTPUT": str(out)}
    feedback = Recorder(percent=4 * 100 / TILES, at_tile=lambda f: f.cancel())
    with pytest.raises(
        QgsProcessingException, match=r"Cancelled after \d+ of 25 tile\(s\)\. .* run the algorithm again"
    ):
        run("segmentlayer", parameters, feedback)
    journal = Journal.open(Journal.path_for(out), _request_of(parameters))
    assert journal is not None and 4 <= len(journal.tiles) < TILES
    assert read_layer(out).featureCount() == journal.written()  # valid, and holds what the journal says

    feedback = Recorder()
    result = run("segmentlayer", parameters, feedback)
    assert any(info.startswith(f"Resuming: {len(journal.tiles)} tile(s)") for info in feedback.infos)
    assert result["TILES"] == TILES
    assert_same_features(out, reference)
    assert not Journal.path_for(out).exists()


def test_resume_off_starts_afresh_and_a_damaged_output_is_redone(connect, scene, tmp_path):
    whole = tmp_path / "whole.gpkg"
    run("describetiles", {"INPUT": str(scene), "OUTPUT": str(whole)})
    out = tmp_path / "captions.gpkg"
    parameters = {"INPUT": str(scene), "MODEL": "slow", "BATCH_SIZE": 1, "OUTPUT": str(out)}
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("describetiles", parameters, Recorder(percent=3 * 100 / TILES, at_tile=lambda f: f.cancel()))
    layer = read_layer(out)  # a person deletes a tile meanwhile: that tile is done again
    assert 3 <= layer.featureCount() < TILES
    assert layer.dataProvider().deleteFeatures([next(layer.getFeatures()).id()])
    del layer
    feedback = Recorder()
    run("describetiles", parameters, feedback)
    assert any(info.startswith("Resuming") for info in feedback.infos)
    assert_same_features(out, whole)

    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("describetiles", parameters, Recorder(percent=3 * 100 / TILES, at_tile=lambda f: f.cancel()))
    feedback = Recorder()
    run("describetiles", {**parameters, "RESUME": False}, feedback)
    assert not any(info.startswith("Resuming") for info in feedback.infos)
    assert_same_features(out, whole)


def test_an_engine_killed_mid_job_gives_a_clear_message_and_a_rerun_resumes(provider, models_file, scene, tmp_path):
    """Managed mode: Processing starts its own engine from the settings, keeps it, and starts it again after it died."""
    SettingsStore().save(Settings(engine_python=sys.executable, models_file=str(models_file), start_timeout_s=120))
    try:
        whole = tmp_path / "whole.gpkg"
        run("describetiles", {"INPUT": str(scene), "OUTPUT": str(whole)})
        first = ENGINE.process_id
        assert first is not None
        out = tmp_path / "captions.gpkg"
        parameters = {"INPUT": str(scene), "MODEL": "slow", "BATCH_SIZE": 1, "OUTPUT": str(out)}
        killed = []

        def kill(_feedback):
            killed.append(ENGINE.process_id)
            os.kill(ENGINE.process_id, signal.SIGKILL)

        with pytest.raises(QgsProcessingException, match=r"engine stopped answering after \d+ of 25 tile\(s\).*resume"):
            run("describetiles", parameters, Recorder(percent=5 * 100 / TILES, at_tile=kill))
        assert killed == [first]  # the same engine served both jobs
        assert 5 <= read_layer(out).featureCount() < TILES  # the tiles written before it died are kept

        feedback = Recorder()
        run("describetiles", parameters, feedback)
        assert any(info.startswith("Resuming") for info in feedback.infos)
        assert ENGINE.process_id not in (None, first)  # a new engine, kept for later jobs
        assert_same_features(out, whole)
    finally:
        ENGINE.shutdown()
        SettingsStore().clear()
    assert ENGINE.process_id is None


def test_the_plugins_own_engine_is_used_when_it_runs(engine, provider, raster, tmp_path):
    class Supervisor:
        def connection(self):
            return engine

    SettingsStore().save(Settings(engine_url="http://127.0.0.1:9"))  # nothing listens there
    ENGINE.attach(supervisor := Supervisor())
    try:
        result = run("describetiles", {"INPUT": raster, "OUTPUT": str(tmp_path / "captions.gpkg")})
        assert result["FEATURES"] == TILES
    finally:
        ENGINE.detach(supervisor)
        SettingsStore().clear()
    with pytest.raises(QgsProcessingException, match="engine cannot be reached"):
        SettingsStore().save(Settings(engine_url="http://127.0.0.1:9"))
        try:
            run("describetiles", {"INPUT": raster, "OUTPUT": str(tmp_path / "again.gpkg")})
        finally:
            SettingsStore().clear()


# --- bad input -----------------------------------------------------------------------------------
def test_bad_input_ends_with_a_clear_message(connect, raster, tmp_path):
    out = str(tmp_path / "out.gpkg")
    vector = QgsVectorLayer("Polygon?crs=EPSG:32633", "parcels", "memory")
    QgsProject.instance().addMapLayer(vector)
    with pytest.raises(QgsProcessingException, match="“parcels” is not a raster layer"):
        run("describetiles", {"INPUT": vector, "OUTPUT": out})

    gdal.Translate("/vsimem/remote.tif", raster.source())  # stands in for a web layer: no file on disk
    remote = QgsRasterLayer("/vsimem/remote.tif", "remote")
    QgsProject.instance().addMapLayer(remote)
    with pytest.raises(QgsProcessingException, match="“remote” is not a raster file on this computer"):
        run("describetiles", {"INPUT": remote, "OUTPUT": out})
    gdal.Unlink("/vsimem/remote.tif")

    with pytest.raises(QgsProcessingException, match=r"The extent lies outside the raster\."):
        run("describetiles", {"INPUT": raster, "EXTENT": "0,1000,0,1000 [EPSG:32633]", "OUTPUT": out})
    with pytest.raises(QgsProcessingException, match=r"The tile size is larger than the engine allows\. \(.*2048"):
        run("describetiles", {"INPUT": raster, "TILE_SIZE": 4096, "OUTPUT": out})
    with pytest.raises(QgsProcessingException, match="The engine does not know this model"):
        run("describetiles", {"INPUT": raster, "MODEL": "nope", "OUTPUT": out})
    with pytest.raises(QgsProcessingException):  # a search needs its description
        run("searchlayer", {"INPUT": raster, "OUTPUT": out})


def _request_of(parameters: dict) -> dict:
    """The batch request a segmentlayer run with ``parameters`` sends (to open its journal)."""
    from rs_assistant.core.protocol import BatchRequest, Options, Task

    return BatchRequest(
        task=Task.SEGMENT,
        sources=(parameters["INPUT"],),
        output_crs="EPSG:32633",
        model=parameters["MODEL"],
        prompt=parameters["PROMPT"],
        tile_size=GRID["TILE_SIZE"],
        overlap=GRID["OVERLAP"],
        options=Options(score_threshold=0.3),
    ).to_dict()


def test_processing_lists_the_large_area_algorithms(provider):
    names = {a.id(): a for a in provider.algorithms()}
    for name in ("describetiles", "findobjects", "segmentlayer", "changeoverarea", "searchlayer"):
        algorithm = names[f"rs_assistant:{name}"]
        assert algorithm.group() == "Large areas"
        assert algorithm.parameterDefinition("OUTPUT") is not None and algorithm.shortHelpString()
    assert "rs_assistant:layertomask" in names


def test_a_temporary_output_is_added_without_a_not_generated_error(connect, raster):
    """The Processing dialog's default output (a temporary layer), run and loaded as the dialog does."""
    errors: list[str] = []

    class Errors(Recorder):
        def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803 (QGIS's names)
            errors.append(error)
            super().reportError(error, fatalError)

    before = set(QgsProject.instance().mapLayers())
    result = processing.runAndLoadResults(
        "rs_assistant:segmentlayer",
        {**GRID, "INPUT": raster, "PROMPT": "roof", "OUTPUT": "TEMPORARY_OUTPUT"},
        feedback=Errors(),
    )
    assert errors == []  # was: "The following layers were not correctly generated. memory:Outlines"
    added = [QgsProject.instance().mapLayer(i) for i in set(QgsProject.instance().mapLayers()) - before]
    assert [layer.name() for layer in added] == ["Outlines"]
    assert added[0].featureCount() == result["FEATURES"] > 0


def test_the_dialog_offers_the_models_in_a_list_and_keeps_resume_for_file_outputs(
    provider, models_file, qgis_iface, monkeypatch
):
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.gui import QgsBrowserGuiModel

    browser = QgsBrowserGuiModel()
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)  # the stub iface has none
    SettingsStore().save(Settings(models_file=str(models_file)))
    try:
        algorithm = QgsApplication.processingRegistry().createAlgorithmById("rs_assistant:segmentlayer")
        dialog = AlgorithmDialog(algorithm, parent=qgis_iface.mainWindow())
        combo = dialog.mainWidget().wrappers["MODEL"].widget
        assert [combo.itemText(i) for i in range(combo.count())] == ["auto", "default", "slow"]
        assert combo.isEditable() and combo.currentText() == "auto"  # the engine picks the task's model
        combo.setEditText("a-model-on-a-remote-engine")  # a name the file does not know may still be typed
        assert dialog.mainWidget().wrappers["MODEL"].parameterValue() == "a-model-on-a-remote-engine"
        dialog.close()
    finally:
        SettingsStore().clear()
    resume = algorithm.parameterDefinition("RESUME")
    assert resume.flags() & resume.Flag.FlagAdvanced  # not beside a temporary output, where it cannot apply
    assert "file outputs only" in resume.description()
