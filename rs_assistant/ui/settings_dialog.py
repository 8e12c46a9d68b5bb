"""The settings dialog (layout: resources/ui/settings_dialog.ui): edits one :class:`Settings`.

Its Test button checks the engine these settings give, once, in the background: in managed mode
it runs ``<engine python> -m rs_assistant.engine selftest [--device D]`` (a QProcess, with the
plugin folder's parent on PYTHONPATH as the supervisor starts the engine) and reads its one JSON
line; in connect mode it asks ``GET /v1/health`` of the URL. The label under it then says the
device, the PyTorch and CUDA versions and any warning, or why the engine cannot start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace

from qgis.gui import QgsFileWidget
from qgis.PyQt import uic
from qgis.PyQt.QtCore import QProcess, QTimer
from qgis.PyQt.QtWidgets import QDialog

from rs_assistant.core.client import EngineClient
from rs_assistant.core.engine_state import missing_module
from rs_assistant.core.paths import resource
from rs_assistant.core.protocol import DeviceInfo, DeviceType, ProtocolError
from rs_assistant.core.settings import EngineMode, Settings
from rs_assistant.ui import profile, texts
from rs_assistant.ui.background import BackgroundCall
from rs_assistant.ui.engine import engine_process

log = logging.getLogger(__name__)

_FORM, _ = uic.loadUiType(str(resource("ui", "settings_dialog.ui")), from_imports=False, import_from="")

OK_COLOUR = "#2e7d32"
WARNING_COLOUR = "#b26a00"
ERROR_COLOUR = "#b00020"


class SettingsDialog(QDialog, _FORM):
    TEST_TIMEOUT_S = 120.0  # importing torch on a cold disk can take a while

    def __init__(
        self,
        settings: Settings,
        parent=None,
        *,
        resolve_python: Callable[[Settings], str | None] = profile.engine_python,
        default_models_file: Callable[[], object] = profile.default_models_file,
    ):
        """``resolve_python`` finds the engine's Python when the field is empty (the set-up's); tests
        pass their own instead of the QGIS profile's."""
        super().__init__(parent)
        self.setupUi(self)
        self._resolve_python = resolve_python
        self._test_process: QProcess | None = None
        self._test_output = ""
        self._test_timer = QTimer(self, singleShot=True, timeout=self._on_test_timeout)
        self.outputWidget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.pythonWidget.lineEdit().setPlaceholderText(self.tr("Set up by the plugin (leave empty)"))
        self.modelsWidget.lineEdit().setPlaceholderText(str(default_models_file()))
        self.deviceCombo.lineEdit().setPlaceholderText(self.tr("auto: CUDA, else MPS, else CPU"))
        self.outputWidget.lineEdit().setPlaceholderText(self.tr("Next to the project (a GeoPackage)"))
        self.urlEdit.setPlaceholderText("http://127.0.0.1:8765")
        self.managedRadio.toggled.connect(self._on_mode)
        self.testEngineButton.clicked.connect(self.test_engine)
        self.buttonBox.accepted.connect(self.accept)
        self.buttonBox.rejected.connect(self.reject)
        self.finished.connect(lambda _result: self._stop_test())
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
        """The edited settings (the ones this dialog does not show kept as they were); raises
        ProtocolError when they are not valid."""
        managed = self.managedRadio.isChecked()
        url = self.urlEdit.text().strip()
        if not managed and not url.startswith("http://"):
            raise ProtocolError(
                "bad_request", self.tr("Give the URL of the running engine, e.g. http://127.0.0.1:8765.")
            )
        return replace(
            self._base,
            engine_python=self.pythonWidget.filePath(),
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

    # --- the Test button --------------------------------------------------------------------------
    @property
    def testing(self) -> bool:
        return not self.testEngineButton.isEnabled()

    def test_engine(self) -> None:
        """Checks the engine of the edited settings once, in the background; the label says the outcome."""
        if self.testing:
            return
        try:
            settings = self.settings()
        except ProtocolError as exc:
            self._report(exc.message, ERROR_COLOUR)
            return
        if settings.mode is EngineMode.CONNECT:
            self._test_url(settings)
        else:
            self._test_python(settings)

    def _test_python(self, settings: Settings) -> None:
        python = self._resolve_python(settings)
        if not python:
            self._report(self.tr("Set up the engine first (button in the dock)."), ERROR_COLOUR)
            return
        arguments = ["-m", "rs_assistant.engine", "selftest"]
        if settings.device:
            arguments += ["--device", settings.device]
        process = engine_process(self, python, arguments)
        process.errorOccurred.connect(lambda error: self._on_test_error(process, python, error))
        process.finished.connect(lambda code, _status: self._on_test_finished(process, code))
        self._test_process = process
        self._busy(self.tr("Testing the engine…"))
        log.info("testing the engine: %s %s", python, " ".join(arguments))
        process.start()
        self._test_timer.start(int(self.TEST_TIMEOUT_S * 1000))

    def _on_test_error(self, process: QProcess, python: str, error: QProcess.ProcessError) -> None:
        if process is not self._test_process or error != QProcess.ProcessError.FailedToStart:
            return
        self._stop_test()
        self._report(self.tr("The engine's Python could not be started: {python}").format(python=python), ERROR_COLOUR)

    def _on_test_finished(self, process: QProcess, exit_code: int) -> None:
        if process is not self._test_process:
            return
        stdout = bytes(process.readAllStandardOutput()).decode("utf-8", "replace")
        stderr = bytes(process.readAllStandardError()).decode("utf-8", "replace")
        self._stop_test()
        self._report(*self._selftest_outcome(exit_code, stdout, stderr))

    def _on_test_timeout(self) -> None:
        self._stop_test()
        text = self.tr("The test did not finish within {seconds:g} s.").format(seconds=self.TEST_TIMEOUT_S)
        self._report(text, ERROR_COLOUR)

    def _stop_test(self) -> None:
        self._test_timer.stop()
        process, self._test_process = self._test_process, None
        if process is not None:
            process.errorOccurred.disconnect()
            process.finished.disconnect()
            if process.state() != QProcess.ProcessState.NotRunning:
                process.kill()
                process.waitForFinished(3000)
            process.deleteLater()
        self.testEngineButton.setEnabled(True)

    def _selftest_outcome(self, exit_code: int, stdout: str, stderr: str) -> tuple[str, str]:
        """(text, colour) for what ``engine selftest`` printed."""
        answer = _last_json_line(stdout)
        if answer is not None and answer.get("ok") is True:
            try:
                return self._device_report(DeviceInfo.from_dict(answer))
            except ProtocolError as exc:
                text = self.tr("The engine answered something unexpected: {error}").format(error=exc.message)
                return text, ERROR_COLOUR
        error = answer.get("error") if answer is not None and isinstance(answer.get("error"), dict) else {}
        module = error.get("module") if error.get("code") == "missing_package" else missing_module(stderr.splitlines())
        if module is not None:
            return self._missing_report(module), ERROR_COLOUR
        message = error.get("message") or _last_line(stderr) or _last_line(stdout)
        text = self.tr("The engine cannot start (exit code {code}): {message}").format(code=exit_code, message=message)
        return text, ERROR_COLOUR

    def _missing_report(self, module: str) -> str:
        if module:
            return self.tr(
                "The engine's environment lacks the package “{module}”. Set up the engine again (button in the dock)."
            ).format(module=module)
        return self.tr("The engine's environment lacks a package. Set up the engine again (button in the dock).")

    def _device_report(self, info: DeviceInfo) -> tuple[str, str]:
        cuda = (
            self.tr("CUDA {version}").format(version=info.cuda) if info.cuda else self.tr("no CUDA (a CPU-only build)")
        )
        device = texts.device_text(info)
        if info.type is DeviceType.CPU and info.name:
            device = f"{device} ({info.name})"
        text = self.tr("The engine works: {device} · PyTorch {torch} · {cuda}").format(
            device=device, torch=info.torch, cuda=cuda
        )
        warning = texts.device_warning_text(info)
        return (f"{text}\n{warning}", WARNING_COLOUR) if warning else (text, OK_COLOUR)

    def _test_url(self, settings: Settings) -> None:
        url = settings.engine_url

        def ask():
            return EngineClient(url, settings.engine_token, timeout=10.0).health(timeout=10.0)

        self._busy(self.tr("Asking {url}…").format(url=url))
        BackgroundCall(ask, lambda health, error: self._on_url_tested(url, health, error), self).start()

    def _on_url_tested(self, url: str, health, error: BaseException | None) -> None:
        self.testEngineButton.setEnabled(True)
        if error is not None:
            message = getattr(error, "message", str(error))
            text = self.tr("The engine at {url} cannot be reached: {error}").format(url=url, error=message)
            self._report(text, ERROR_COLOUR)
        elif health.device_info is not None:
            self._report(*self._device_report(health.device_info))
        else:
            self._report(self.tr("The engine works: {device}").format(device=health.device), OK_COLOUR)

    def _busy(self, text: str) -> None:
        self.testEngineButton.setEnabled(False)
        self._report(text, "")

    def _report(self, text: str, colour: str) -> None:
        self.testResultLabel.setStyleSheet(f"color: {colour}" if colour else "")
        self.testResultLabel.setText(text)


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
