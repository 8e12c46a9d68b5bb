"""The mask export dialog: a polygon layer burned into a mask, or a mask turned into polygons.

Layout lives in resources/ui/mask_export_dialog.ui; this class owns its behaviour. The export
runs as the provider's Processing algorithm in a ``QgsProcessingAlgRunnerTask``, so QGIS stays
responsive; Cancel stops a running export, and an existing file is replaced only once the
person has agreed. The progress bar shows only while an export runs; on success the dialog
closes and says what it wrote in QGIS's message bar (a failure or a cancel keeps it open, with
the reason in place). A mask added to the project draws 0 transparent (``mask_style``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsFieldProxyModel,
    QgsMapLayerProxyModel,
    QgsProcessingAlgorithm,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsReferencedRectangle,
    QgsUnitTypes,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.gui import QgsFileWidget, QgsMapCanvas, QgsMessageBar
from qgis.PyQt import uic
from qgis.PyQt.QtCore import QCoreApplication, pyqtSignal
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QMessageBox, QWidget

from rs_assistant.core.paths import resource
from rs_assistant.processing.alg_layer_to_mask import COMPRESSIONS, LayerToMaskAlgorithm
from rs_assistant.processing.alg_mask_to_polygons import MaskToPolygonsAlgorithm
from rs_assistant.processing.mask_style import style_mask

log = logging.getLogger(__name__)

_FORM, _ = uic.loadUiType(str(resource("ui", "mask_export_dialog.ui")), from_imports=False, import_from="")

ConfirmOverwrite = Callable[[Path], bool]
MESSAGE_SECONDS = 10
DEFAULT_PIXEL = {True: 0.0001, False: 10.0}  # geographic CRS (degrees, about 10 m) or not (metres, feet)


def tr(text: str) -> str:
    return QCoreApplication.translate("MaskExportDialog", text)


class InputError(Exception):
    """A choice missing in the dialog; the message is shown in place."""


class _DialogFeedback(QgsProcessingFeedback):
    """Keeps the errors the algorithm reports, to show the last one in the dialog."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803 (QGIS's names)
        self.errors.append(error)
        super().reportError(error, fatalError)


class MaskExportDialog(QDialog, _FORM):
    exportFinished = pyqtSignal(bool, str)  # noqa: N815 (Qt style): success, the file written

    def __init__(
        self,
        parent: QWidget | None = None,
        canvas: QgsMapCanvas | None = None,
        confirm_overwrite: ConfirmOverwrite | None = None,
        message_bar: QgsMessageBar | None = None,
    ):
        super().__init__(parent)
        self.setupUi(self)
        self._confirm_overwrite = confirm_overwrite or self._ask_overwrite
        self._message_bar = message_bar
        self._canvas = canvas
        self._task: QgsProcessingAlgRunnerTask | None = None
        self._context: QgsProcessingContext | None = None
        self._feedback: _DialogFeedback | None = None
        self._set_up_widgets(canvas)
        self._connect()

    @staticmethod
    def action_text() -> str:
        return tr("Export masks…")

    # --- set-up ---------------------------------------------------------------------------------
    def _set_up_widgets(self, canvas: QgsMapCanvas | None) -> None:
        self.inputLayerCombo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.burnFieldCombo.setFilters(QgsFieldProxyModel.Filter.Int | QgsFieldProxyModel.Filter.LongLong)
        self.burnFieldCombo.setLayer(self.inputLayerCombo.currentLayer())
        for combo in (self.referenceLayerCombo, self.maskLayerCombo):
            combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        for compression in COMPRESSIONS:
            self.compressionCombo.addItem(compression.value, compression)
        project_crs = QgsProject.instance().crs()
        self.crsWidget.setCrs(project_crs)
        self.extentWidget.setOutputCrs(project_crs)
        if canvas is not None:
            self.extentWidget.setMapCanvas(canvas)
        self._start_extent()
        self._show_pixel_unit(project_crs)
        self.maskFileWidget.setFilter(tr("GeoTIFF (*.tif *.tiff)"))
        self.polygonsFileWidget.setFilter(QgsVectorFileWriter.fileFilterString())
        for file_widget in (self.maskFileWidget, self.polygonsFileWidget):
            file_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
            file_widget.setConfirmOverwrite(False)  # asked once, when the export starts

    def _connect(self) -> None:
        self.inputLayerCombo.layerChanged.connect(self.burnFieldCombo.setLayer)
        self.burnFieldCheck.toggled.connect(self.burnFieldCombo.setEnabled)
        self.nodataCheck.toggled.connect(self.nodataSpin.setEnabled)
        self.referenceRadio.toggled.connect(self.referenceLayerCombo.setEnabled)
        for widget in (self.extentWidget, self.resolutionSpin, self.crsWidget):
            self.extentRadio.toggled.connect(widget.setEnabled)
        self.crsWidget.crsChanged.connect(self.extentWidget.setOutputCrs)
        self.crsWidget.crsChanged.connect(self._show_pixel_unit)
        self.buttonBox.accepted.connect(self.start_export)
        self.buttonBox.rejected.connect(self.reject)

    def _start_extent(self) -> None:
        """The map view's extent (else the polygon layer's) instead of an empty 0,0,0,0."""
        if self._canvas is not None and not self._canvas.extent().isEmpty():
            self.extentWidget.setCurrentExtent(self._canvas.extent(), self._canvas.mapSettings().destinationCrs())
        elif self.inputLayerCombo.currentLayer() is not None:
            layer = self.inputLayerCombo.currentLayer()
            self.extentWidget.setCurrentExtent(layer.extent(), layer.crs())
        else:
            return
        self.extentWidget.setOutputExtentFromCurrent()

    def _show_pixel_unit(self, crs: QgsCoordinateReferenceSystem) -> None:
        """The pixel size in the CRS's unit (“10.00 m”, “0.000100 °”), a sensible size when the unit changes."""
        geographic = crs.isValid() and crs.isGeographic()
        unit = "°" if geographic else QgsUnitTypes.toAbbreviatedString(crs.mapUnits()) if crs.isValid() else ""
        was_geographic = self.resolutionSpin.decimals() > 2
        self.resolutionSpin.setDecimals(6 if geographic else 2)
        self.resolutionSpin.setSingleStep(DEFAULT_PIXEL[geographic])
        self.resolutionSpin.setSuffix(f" {unit}" if unit else "")
        self.resolutionSpin.setClearValue(DEFAULT_PIXEL[geographic])
        if geographic != was_geographic:
            self.resolutionSpin.setValue(DEFAULT_PIXEL[geographic])

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Opened again after an export: no message or progress left from the last one."""
        if not self.is_running():
            self._show("")
            self.progressBar.setVisible(False)
        super().showEvent(event)

    # --- behaviour ------------------------------------------------------------------------------
    def start_export(self) -> None:
        """Runs the current tab's export, after asking before replacing a file."""
        if self.is_running():
            return
        try:
            if self.tabs.currentWidget() is self.layerToMaskTab:
                algorithm, parameters, output = self._layer_to_mask_request()
            else:
                algorithm, parameters, output = self._mask_to_polygons_request()
        except InputError as error:
            self._show(str(error))
            return
        if output.exists() and not self._confirm_overwrite(output):
            self._show(tr("Not exported: {0} already exists.").format(output))
            return
        self._run(algorithm, parameters, output)

    def is_running(self) -> bool:
        return self._task is not None

    def reject(self) -> None:
        """Cancel stops a running export (the dialog stays open to show it); otherwise it closes."""
        if self.is_running():
            self._feedback.cancel()
            return
        super().reject()

    def shutdown(self) -> None:
        """Cancels a running export and waits for it to stop, so the dialog can be deleted (plugin unload)."""
        if self._task is None:
            return
        self._task.executed.disconnect()
        self._feedback.cancel()
        self._task.waitForFinished()
        self._task = None

    def _layer_to_mask_request(self) -> tuple[QgsProcessingAlgorithm, dict[str, Any], Path]:
        layer = self.inputLayerCombo.currentLayer()
        if layer is None:
            raise InputError(tr("Choose a polygon layer."))
        output = _output_path(self.maskFileWidget.filePath(), ".tif", tr("Choose where to write the mask."))
        alg = LayerToMaskAlgorithm
        parameters: dict[str, Any] = {
            alg.INPUT: QgsProcessingFeatureSourceDefinition(layer.id(), self.selectedOnlyCheck.isChecked()),
            alg.BURN_FIELD: self.burnFieldCombo.currentField() if self.burnFieldCheck.isChecked() else None,
            alg.NODATA: self.nodataSpin.value() if self.nodataCheck.isChecked() else None,
            alg.COMPRESSION: self.compressionCombo.currentIndex(),
            alg.ALL_TOUCHED: self.allTouchedCheck.isChecked(),
            alg.OUTPUT: str(output),
        }
        if self.referenceRadio.isChecked():
            reference = self.referenceLayerCombo.currentLayer()
            if reference is None:
                raise InputError(tr("Choose a reference raster."))
            parameters[alg.REFERENCE] = reference.id()
        else:
            extent = self.extentWidget.outputExtent()
            parameters[alg.EXTENT] = QgsReferencedRectangle(extent, self.extentWidget.outputCrs())
            parameters[alg.RESOLUTION] = self.resolutionSpin.value()
            parameters[alg.TARGET_CRS] = self.crsWidget.crs()
        return LayerToMaskAlgorithm(), parameters, output

    def _mask_to_polygons_request(self) -> tuple[QgsProcessingAlgorithm, dict[str, Any], Path]:
        mask = self.maskLayerCombo.currentLayer()
        if mask is None:
            raise InputError(tr("Choose a mask raster."))
        output = _output_path(self.polygonsFileWidget.filePath(), ".gpkg", tr("Choose where to write the polygons."))
        alg = MaskToPolygonsAlgorithm
        parameters = {
            alg.INPUT: mask.id(),
            alg.FIELD_NAME: self.fieldNameEdit.text().strip(),
            alg.NODATA_BACKGROUND: self.nodataBackgroundCheck.isChecked(),
            alg.ZERO_BACKGROUND: self.zeroBackgroundCheck.isChecked(),
            alg.EIGHT_CONNECTED: self.eightConnectedCheck.isChecked(),
            alg.OUTPUT: str(output),
        }
        return MaskToPolygonsAlgorithm(), parameters, output

    def _run(self, algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], output: Path) -> None:
        self._context = QgsProcessingContext()
        self._context.setProject(QgsProject.instance())
        self._feedback = _DialogFeedback()
        self._feedback.progressChanged.connect(lambda value: self.progressBar.setValue(int(value)))
        self._task = QgsProcessingAlgRunnerTask(algorithm, parameters, self._context, self._feedback)
        self._task.executed.connect(lambda ok, _results: self._finished(ok, output))
        self._set_running(True)
        self._show(tr("Exporting to {0}…").format(output))
        log.info("Export to %s started", output)
        QgsApplication.taskManager().addTask(self._task)

    def _finished(self, ok: bool, output: Path) -> None:
        canceled = self._feedback.isCanceled()
        errors = self._feedback.errors
        self._task = None
        self._set_running(False)
        if ok and not canceled:
            self.progressBar.setValue(100)
            self._show(tr("Written: {0}").format(output))
            added = self.addToProjectCheck.isChecked() and _add_to_project(output)
            self._announce(output, added)
            self.exportFinished.emit(True, str(output))
            self.accept()
            return
        if canceled:
            self._show(tr("Canceled: nothing was written."))
        else:
            self._show(errors[-1] if errors else tr("The export failed: see the RS Assistant log."))
        self.exportFinished.emit(ok and not canceled, str(output))

    def _announce(self, output: Path, added: bool) -> None:
        """Success, in QGIS's message bar: the dialog has closed by the time it is read."""
        bar = self._message_bar or _iface_message_bar()
        if bar is None:
            return
        text = (tr("{0} was written and added to the project.") if added else tr("{0} was written.")).format(output)
        bar.pushMessage(tr("Export done"), text, Qgis.MessageLevel.Success, MESSAGE_SECONDS)

    def _set_running(self, running: bool) -> None:
        self.tabs.setEnabled(not running)
        self.buttonBox.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not running)
        self.progressBar.setVisible(running)
        if running:
            self.progressBar.setValue(0)

    def _show(self, message: str) -> None:
        self.messageLabel.setText(message)

    def _ask_overwrite(self, path: Path) -> bool:
        answer = QMessageBox.question(
            self,
            tr("Replace file?"),
            tr("{0} already exists. Replace it?").format(path),
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes


def _output_path(text: str, default_suffix: str, missing: str) -> Path:
    if not text.strip():
        raise InputError(missing)
    path = Path(text.strip())
    if not path.suffix:
        path = path.with_suffix(default_suffix)
    if not path.parent.is_dir():
        raise InputError(tr("The folder {0} does not exist.").format(path.parent))
    return path


def _add_to_project(output: Path) -> bool:
    """Adds the written file as a layer (a mask with 0 transparent); returns whether it could."""
    if output.suffix.lower() in (".tif", ".tiff"):
        layer = QgsRasterLayer(str(output), output.stem)
        if layer.isValid():
            style_mask(layer)
    else:
        layer = QgsVectorLayer(str(output), output.stem, "ogr")
    if layer.isValid():
        QgsProject.instance().addMapLayer(layer)
        return True
    log.warning("Could not load %s into the project", output)
    return False


def _iface_message_bar() -> QgsMessageBar | None:
    """QGIS's message bar when the dialog was opened without one (None in a script)."""
    try:
        from qgis.utils import iface
    except ImportError:
        return None
    return iface.messageBar() if iface is not None else None
