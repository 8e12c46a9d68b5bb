"""The first-run set-up panel (layout: resources/ui/setup_panel.ui): makes the engine's own Python
environment without a terminal.

It says in one sentence what will be installed, how big it is and where; the person picks a
PyTorch build (and, under Advanced, a package index, a proxy, a folder of wheels for an offline
install, the environment's folder) and clicks ``setupEngineButton``. The set-up runs
``<base python> -m rs_assistant.setup_engine --target DIR ...`` in a :class:`SetupTask`
(QGIS's task manager lists it) with a progress bar and its log. Cancel kills it; the set-up is
idempotent, so the same button then resumes it. When it prints ``ENGINE_PYTHON <path>``, the
panel saves the settings (the engine's Python and the options used) through the settings store
and asks the engine supervisor to start the engine from it.

The dock shows the panel in place of the chat when the engine cannot start for want of an
environment (faults NOT_SET_UP, MISSING_PACKAGES, INTERPRETER_NOT_FOUND); the plugin's menu
action "Set up the engine…" shows it any time (a repair, another PyTorch build).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from qgis.PyQt import uic
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import QFileDialog, QWidget

from rs_assistant import setup_engine
from rs_assistant.core.engine_state import EngineFault, EngineStatus
from rs_assistant.core.paths import PACKAGE_DIR, engine_environment, resource
from rs_assistant.ui import profile
from rs_assistant.ui.setup_task import Ending, ProcessOutcome, SetupTask, step_title, submit

log = logging.getLogger(__name__)

_FORM, _ = uic.loadUiType(str(resource("ui", "setup_panel.ui")), from_imports=False, import_from="")

TORCH_CHOICES = ("auto", "cpu", "cuda")
ERROR_COLOUR = "#b00020"
DONE_COLOUR = "#2e7d32"

# The faults for which the dock shows this panel instead of an error line: the set-up helps, a restart does not.
SETUP_FAULTS = frozenset({EngineFault.NOT_SET_UP, EngineFault.MISSING_PACKAGES, EngineFault.INTERPRETER_NOT_FOUND})


def needs_setup(status: EngineStatus) -> bool:
    return status.fault in SETUP_FAULTS


class SetupPanel(QWidget, _FORM):
    """Takes its collaborators: ``store`` (load/save Settings) and ``supervisor`` (apply_settings, start, stop)."""

    settingsSaved = pyqtSignal(object)  # Settings: the set-up finished and the settings now name its Python
    closeRequested = pyqtSignal()  # "Back to the chat"
    runningChanged = pyqtSignal(bool)

    def __init__(self, store, supervisor, parent: QWidget | None = None):
        super().__init__(parent)
        self.setupUi(self)
        self.setObjectName("RSAssistantSetupPanel")
        self._store = store
        self._supervisor = supervisor
        self._task: SetupTask | None = None
        self._cancelled = False
        self._detected = setup_engine.detect_torch_variant()
        self.mainLayout.addStretch(1)  # holds the fields at the top while the log is hidden
        self._spacer_index = self.mainLayout.count() - 1

        names = {"cpu": self.tr("CPU"), "cuda": self.tr("NVIDIA CUDA")}
        self.torchCombo.addItem(self.tr("Automatic: {build}").format(build=names[self._detected]), "auto")
        self.torchCombo.addItem(names["cpu"], "cpu")
        self.torchCombo.addItem(names["cuda"], "cuda")

        self.advancedButton.toggled.connect(self._on_advanced)
        self.wheelhouseButton.clicked.connect(
            lambda: self._choose_folder(self.wheelhouseEdit, self.tr("Folder of wheels"))
        )
        self.envDirButton.clicked.connect(
            lambda: self._choose_folder(self.envDirEdit, self.tr("Folder of the engine's environment"))
        )
        self.torchCombo.currentIndexChanged.connect(self._explain)
        self.envDirEdit.textChanged.connect(self._explain)
        self.envDirEdit.textChanged.connect(self.envDirEdit.setToolTip)  # a long path shows whole on hover
        self.setupEngineButton.clicked.connect(self.start_setup)
        self.cancelButton.clicked.connect(self.cancel_setup)
        self.closeButton.clicked.connect(self.closeRequested)

        self.load_settings()
        self._on_advanced(False)
        self.show_reason(None)
        self._show_idle()

    # --- what the panel shows -------------------------------------------------------------------
    def load_settings(self) -> None:
        """Fills the fields from the stored settings (the options of the last set-up)."""
        settings = self._store.load()
        torch = settings.setup_torch if settings.setup_torch in TORCH_CHOICES else "auto"
        self.torchCombo.setCurrentIndex(TORCH_CHOICES.index(torch))
        self.indexUrlEdit.setText(settings.setup_index_url)
        self.proxyEdit.setText(settings.setup_proxy)
        self.wheelhouseEdit.setText(settings.setup_find_links)
        self.envDirEdit.setText(str(profile.env_dir(settings)))
        self._explain()

    def show_reason(self, status: EngineStatus | None, required: bool = True) -> None:
        """Says why the panel is shown (``status``: the engine's fault; None: the person asked for it)."""
        reason = ""
        if status is not None and status.fault is EngineFault.INTERPRETER_NOT_FOUND:
            reason = self.tr(
                "The engine's Python was not found ({path}). Set up the engine again, or choose another Python in "
                "the settings."
            ).format(path=status.detail)
        elif status is not None and status.fault is EngineFault.MISSING_PACKAGES:
            reason = self.tr(
                "The engine's environment lacks packages it needs ({detail}). Setting it up again repairs it."
            ).format(detail=status.detail)
        self.reasonLabel.setText(reason)
        self.reasonLabel.setVisible(bool(reason))
        self.closeButton.setVisible(not required)

    def torch_variant(self) -> str:
        """The build the set-up will install: the combo's choice, with Automatic resolved."""
        choice = self.torchCombo.currentData()
        return self._detected if choice == "auto" else choice

    def target(self) -> Path:
        text = self.envDirEdit.text().strip()
        return Path(os.path.expanduser(text)) if text else profile.env_dir(self._store.load())

    def _explain(self, *_args) -> None:
        variant = self.torch_variant()
        what = {
            "cpu": self.tr("PyTorch for the CPU, transformers, GDAL's rasterio…"),
            "cuda": self.tr("PyTorch for NVIDIA GPUs (CUDA), transformers, GDAL's rasterio…"),
        }[variant]
        self.explainLabel.setText(
            self.tr(
                "RS Assistant runs its models in a Python environment of its own: about {size} GB ({what}) will be "
                "installed in {folder}, which needs {free} GB free while it installs."
            ).format(
                size=f"{setup_engine.installed_gb(variant):g}",
                what=what,
                folder=str(self.target()),
                free=f"{setup_engine.disk_needed_gb(variant):g}",
            )
        )
        if not self.running:
            self._show_idle()

    def _on_advanced(self, shown: bool) -> None:
        self.advancedWidget.setVisible(shown)
        self.advancedButton.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def _choose_folder(self, edit, title: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, edit.text() or str(Path.home()))
        if folder:
            edit.setText(folder)

    def _show_idle(self) -> None:
        target = self.target()
        if self._cancelled or (target.exists() and not setup_engine.is_complete(target)):
            self.setupEngineButton.setText(self.tr("Resume set-up"))
        elif setup_engine.is_complete(target):
            self.setupEngineButton.setText(self.tr("Set up again"))
        else:
            self.setupEngineButton.setText(self.tr("Set up the engine"))
        self.setupEngineButton.setEnabled(True)
        self.cancelButton.setVisible(False)
        for widget in (self.torchCombo, self.advancedWidget):
            widget.setEnabled(True)
        self.progressBar.setVisible(self.progressBar.value() > 0)
        self._show_log(not self.logView.document().isEmpty())

    def _show_log(self, shown: bool) -> None:
        """The log takes the panel's free height while shown; else the fields stay together at the top."""
        self.logView.setVisible(shown)
        self.mainLayout.setStretch(self.mainLayout.indexOf(self.logView), 1 if shown else 0)
        self.mainLayout.setStretch(self._spacer_index, 0 if shown else 1)

    def _set_message(self, text: str, colour: str = "") -> None:
        self.statusLabel.setText(text)
        self.statusLabel.setStyleSheet(f"color: {colour};" if colour else "")
        self.statusLabel.setVisible(bool(text))

    # --- running --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def task(self) -> SetupTask | None:
        """The running set-up's task (None while none runs)."""
        return self._task

    def command(self) -> list[str]:
        """``<base python> -m rs_assistant.setup_engine --target DIR --torch V [options]``."""
        command = [
            setup_engine.find_base_python(),
            "-m",
            "rs_assistant.setup_engine",
            "--target",
            str(self.target()),
            "--torch",
            self.torchCombo.currentData(),
        ]
        for flag, edit in (
            ("--find-links", self.wheelhouseEdit),
            ("--index-url", self.indexUrlEdit),
            ("--proxy", self.proxyEdit),
        ):
            value = edit.text().strip()
            if value:
                command += [flag, value]
        return command

    @staticmethod
    def environment() -> dict[str, str]:
        """This process's environment with the plugin folder's parent first on PYTHONPATH."""
        return engine_environment(os.environ)

    def start_setup(self) -> None:
        if self.running:
            return
        target = self.target()
        try:
            command = self.command()
        except LookupError as exc:  # no Python to make the environment with
            self._set_message(self.tr("The set-up failed: {error}").format(error=str(exc)), ERROR_COLOUR)
            return
        self._stop_engine_inside(target)
        self.logView.clear()
        self._show_log(True)
        self.progressBar.setValue(0)
        self.progressBar.setVisible(True)
        self._set_message(self.tr("Setting up the engine in {folder}…").format(folder=str(target)))
        self.setupEngineButton.setEnabled(False)
        self.cancelButton.setVisible(True)
        self.cancelButton.setEnabled(True)
        for widget in (self.torchCombo, self.advancedWidget):
            widget.setEnabled(False)
        self.advancedButton.setChecked(False)  # the log gets the room while it runs
        task = SetupTask(
            self.tr("RS Assistant: setting up the engine"), command, self.environment(), str(PACKAGE_DIR.parent)
        )
        task.lineReceived.connect(self._on_line)
        task.progressChanged.connect(self._on_progress)
        task.ended.connect(self._on_ended)
        self._task = task
        self._cancelled = False
        self.runningChanged.emit(True)
        submit(task)
        log.info("set-up started: %s", " ".join(command))

    def cancel_setup(self) -> None:
        if self._task is not None:
            self.cancelButton.setEnabled(False)
            self._task.cancel()

    def _stop_engine_inside(self, target: Path) -> None:
        """A managed engine running from the folder being (re)installed is stopped first."""
        python = profile.engine_python(self._store.load())
        try:
            inside = bool(python) and Path(python).resolve().is_relative_to(target.resolve())
        except (OSError, ValueError):
            inside = False
        if inside:
            self._supervisor.stop()

    def _on_line(self, line: str) -> None:
        self.logView.appendPlainText(line)
        step = step_title(line)
        if step:
            self._set_message(self.tr("Step {step}").format(step=step))

    def _on_progress(self, percent: float) -> None:
        self.progressBar.setValue(int(percent))

    def _on_ended(self, outcome: ProcessOutcome) -> None:
        self._task = None
        self.runningChanged.emit(False)
        if outcome.ending is Ending.DONE and outcome.result("ENGINE_PYTHON"):
            self._on_done(outcome.result("ENGINE_PYTHON"))
        elif outcome.ending is Ending.CANCELLED:
            self._cancelled = True
            self._set_message(self.tr("Set-up cancelled. What is already installed is kept: it can be resumed."))
        else:
            error = outcome.error or self.tr("the set-up ended without naming the engine's Python")
            self._set_message(self.tr("The set-up failed: {error}").format(error=error), ERROR_COLOUR)
            log.warning("set-up failed: %s", error)
        self._show_idle()

    def _on_done(self, python: str) -> None:
        self.progressBar.setValue(100)
        target = self.target()
        settings = self._store.load()
        default_dir = profile.env_dir(replace(settings, engine_env_dir=""))
        settings = replace(
            settings,
            engine_python=python,
            engine_env_dir="" if _same_path(target, default_dir) else str(target),
            setup_torch=self.torchCombo.currentData(),
            setup_index_url=self.indexUrlEdit.text().strip(),
            setup_find_links=self.wheelhouseEdit.text().strip(),
            setup_proxy=self.proxyEdit.text().strip(),
            engine_url="",  # the engine just set up is the one to start
        )
        self._store.save(settings)
        self._set_message(self.tr("The engine is set up ({python}). Starting it…").format(python=python), DONE_COLOUR)
        log.info("set-up done: engine python %s", python)
        self.settingsSaved.emit(settings)
        self._supervisor.apply_settings(settings)
        self._supervisor.start()

    def shutdown(self) -> None:
        """Stops a running set-up (the plugin is unloading)."""
        if self._task is not None:
            self._task.ended.disconnect(self._on_ended)
            self._task.lineReceived.disconnect(self._on_line)
            self._task.cancel()
            self._task = None


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b
