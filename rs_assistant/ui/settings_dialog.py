"""The settings dialog (layout: resources/ui/settings_dialog.ui): edits one :class:`Settings`."""

from __future__ import annotations

import logging

from qgis.gui import QgsFileWidget
from qgis.PyQt import uic
from qgis.PyQt.QtWidgets import QDialog

from rs_assistant.core.paths import resource
from rs_assistant.core.protocol import ProtocolError
from rs_assistant.core.settings import EngineMode, Settings

log = logging.getLogger(__name__)

_FORM, _ = uic.loadUiType(str(resource("ui", "settings_dialog.ui")), from_imports=False, import_from="")


class SettingsDialog(QDialog, _FORM):
    def __init__(self, settings: Settings, parent=None):
        super().__init__(parent)
        self.setupUi(self)
        self.outputWidget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.managedRadio.toggled.connect(self._on_mode)
        self.buttonBox.accepted.connect(self.accept)
        self.buttonBox.rejected.connect(self.reject)
        self._base = settings
        self._show(settings)

    def _show(self, settings: Settings) -> None:
        self.pythonWidget.setFilePath(settings.engine_python)
        self.modelsWidget.setFilePath(settings.models_file)
        self.deviceCombo.setCurrentText(settings.device)
        self.restartsSpin.setValue(settings.max_restarts)
        self.startTimeoutSpin.setValue(settings.start_timeout_s)
        self.urlEdit.setText(settings.engine_url)
        self.tokenEdit.setText(settings.engine_token)
        self.timeoutSpin.setValue(settings.timeout_s)
        self.maxSideSpin.setValue(settings.max_side)
        self.outputWidget.setFilePath(settings.output_folder)
        connect = settings.mode is EngineMode.CONNECT
        self.connectRadio.setChecked(connect)
        self.managedRadio.setChecked(not connect)
        self._on_mode()

    def _on_mode(self, *_args) -> None:
        managed = self.managedRadio.isChecked()
        self.managedGroup.setEnabled(managed)
        self.connectGroup.setEnabled(not managed)

    def settings(self) -> Settings:
        """The edited settings; raises ProtocolError when they are not valid."""
        managed = self.managedRadio.isChecked()
        url = self.urlEdit.text().strip()
        if not managed and not url.startswith("http://"):
            raise ProtocolError("bad_request", self.tr("Give the URL of the running engine, e.g. http://127.0.0.1:8765."))
        return Settings(
            engine_python=self.pythonWidget.filePath() or self._base.engine_python,
            models_file=self.modelsWidget.filePath(),
            device=self.deviceCombo.currentText(),
            engine_url="" if managed else url,
            engine_token=self.tokenEdit.text(),
            timeout_s=self.timeoutSpin.value(),
            start_timeout_s=self.startTimeoutSpin.value(),
            max_restarts=self.restartsSpin.value(),
            output_folder=self.outputWidget.filePath(),
            max_side=self.maxSideSpin.value(),
        )

    def accept(self) -> None:
        try:
            self.settings()
        except ProtocolError as exc:
            self.errorLabel.setText(exc.message)
            return
        super().accept()
