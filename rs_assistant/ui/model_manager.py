"""The model manager (layout: resources/ui/model_manager_dialog.ui): the catalogue and the models
this computer has, downloads, offline bundles and the default model of each task.

The plugin never imports the engine: the table is filled by running
``<engine python> -m rs_assistant.engine models list --json --models FILE`` in the background
(QProcess), and Download / Import / Export run ``models pull|import|export`` in a
:class:`ModelsTask` (QGIS's task manager lists it; Cancel kills it; a second download resumes).
The "Default model per task" grid writes the models file's ``[tasks]`` table with
rs_assistant.core.models_file. The models file is the settings' one, else the profile's
(``<profile>/rs_assistant/models.toml``). After a change the dialog emits ``modelsFileChanged``
and the plugin restarts the engine so that it reads the file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.PyQt import uic
from qgis.PyQt.QtCore import QProcess, Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHeaderView,
    QInputDialog,
    QLineEdit,
    QTableWidgetItem,
)

from rs_assistant.core.catalog import find_entry
from rs_assistant.core.models_file import (
    DEFAULT_MODEL,
    ModelsFile,
    ModelsFileError,
    read_models_file,
    write_models_file,
)
from rs_assistant.core.paths import PACKAGE_DIR, engine_environment, resource
from rs_assistant.core.protocol import Task
from rs_assistant.ui import profile
from rs_assistant.ui.engine import engine_process
from rs_assistant.ui.setup_task import Ending, ModelsTask, ProcessOutcome, submit

log = logging.getLogger(__name__)

_FORM, _ = uic.loadUiType(str(resource("ui", "model_manager_dialog.ui")), from_imports=False, import_from="")

ERROR_COLOUR = "#b00020"
# The tasks the grid routes, in its order (the combos are named <task>Combo in the .ui).
ROUTED_TASKS = (Task.CAPTION, Task.GROUND, Task.SEGMENT, Task.CHANGE, Task.CHAT, Task.RETRIEVE)
COLUMNS = ("name", "tasks", "size", "licence", "memory", "status")


@dataclass(frozen=True)
class ListedModel:
    """One entry of ``models list --json``."""

    name: str
    backend: str
    tasks: tuple[str, ...]
    in_catalog: bool
    on_disk: bool
    registered: bool
    path: str | None = None
    size_gb: float | None = None
    licence: str = ""
    gated: bool = False
    repo_id: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a listed model needs a name")
        object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ListedModel:
        return cls(
            name=str(data["name"]),
            backend=str(data.get("backend") or ""),
            tasks=tuple(data.get("tasks") or ()),
            in_catalog=bool(data.get("in_catalog")),
            on_disk=bool(data.get("on_disk")),
            registered=bool(data.get("registered")),
            path=data.get("path"),
            size_gb=float(data["size_gb"]) if data.get("size_gb") is not None else None,
            licence=str(data.get("licence") or ""),
            gated=bool(data.get("gated")),
            repo_id=data.get("repo_id"),
        )

    @property
    def usable(self) -> bool:
        """Registered and its files are there (or the built-in model)."""
        return self.registered and (self.on_disk or self.name == DEFAULT_MODEL)


@dataclass(frozen=True)
class Listing:
    models_file: str
    models: tuple[ListedModel, ...]
    tasks: dict[str, str]

    @classmethod
    def parse(cls, stdout: str) -> Listing:
        """The JSON object ``models list --json`` printed (its last line that is one)."""
        for line in reversed(stdout.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                data = json.loads(line)
                return cls(
                    str(data.get("models_file", "")),
                    tuple(ListedModel.from_dict(m) for m in data.get("models", [])),
                    {str(k): str(v) for k, v in (data.get("tasks") or {}).items()},
                )
        raise ValueError("the model list printed no JSON object")


def format_gb(gb: float | None) -> str:
    if gb is None:
        return ""
    if gb < 1:
        return f"{gb * 1000:.0f} MB"
    return f"{gb:.1f} GB"


class ModelManagerDialog(QDialog, _FORM):
    """Takes the settings store (the engine's Python and the models file come from the settings)."""

    modelsFileChanged = pyqtSignal()  # a model was registered or a task's default changed
    setupRequested = pyqtSignal()  # the engine is not set up and the person clicked "Set up the engine…"
    listed = pyqtSignal()  # the table was (re)filled, or the listing failed

    def __init__(self, store, parent=None):
        super().__init__(parent)
        self.setupUi(self)
        self._store = store
        self._listing: Listing | None = None
        self._list_process: QProcess | None = None
        self._task: ModelsTask | None = None
        self._task_kind = ""
        self.task_combos = {task: getattr(self, f"{task.value}Combo") for task in ROUTED_TASKS}

        header = self.modelsTable.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COLUMNS.index("licence"), QHeaderView.ResizeMode.Stretch)  # long ones elide
        header.setStretchLastSection(False)
        self.modelsTable.setTextElideMode(Qt.TextElideMode.ElideRight)
        for column in (1, 3, 5):
            self.tasksLayout.setColumnStretch(column, 1)
        self.modelsTable.itemSelectionChanged.connect(self._on_selection)
        self.downloadButton.clicked.connect(self.download_selected)
        self.importFolderButton.clicked.connect(self._import_folder)
        self.importBundleButton.clicked.connect(self._import_bundle)
        self.exportBundleButton.clicked.connect(self._export_bundle)
        self.refreshButton.clicked.connect(self.refresh)
        self.cancelButton.clicked.connect(self.cancel_task)
        self.setupButton.clicked.connect(self.setupRequested)
        self.buttonBox.button(QDialogButtonBox.StandardButton.Close).clicked.connect(self.close)
        for task, combo in self.task_combos.items():
            combo.activated.connect(lambda _index, task=task: self._on_route_chosen(task))
        self.segmentCombo.setToolTip(
            self.tr(
                "A model that only turns boxes into masks (SAM, SAM 2.1) segments the boxes of the model chosen for "
                "Find."
            )
        )
        self._show_progress(False)
        self._set_message("")
        self._on_selection()

    # --- where things are -----------------------------------------------------------------------
    def engine_python(self) -> str:
        """The engine's Python ("" while the engine is not set up)."""
        return profile.engine_python(self._store.load()) or ""

    def models_file(self) -> Path:
        """The settings' models file, else the profile's (the one the manager writes)."""
        settings = self._store.load()
        return Path(settings.models_file).expanduser() if settings.models_file else Path(profile.default_models_file())

    def is_set_up(self) -> bool:
        python = self.engine_python()
        return bool(python) and Path(python).is_file()

    def _engine_command(self, *args: str) -> list[str]:
        return ["-m", "rs_assistant.engine", "models", *args, "--models", str(self.models_file())]

    # --- listing --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Lists the catalogue and the registered models again (in the background)."""
        self.fileLabel.setText(self.tr("Models file: {path}").format(path=str(self.models_file())))
        set_up = self.is_set_up()
        self.notSetUpWidget.setVisible(not set_up)
        for button in (self.downloadButton, self.importFolderButton, self.importBundleButton, self.refreshButton):
            button.setEnabled(set_up and self._task is None)
        if not set_up:
            self.exportBundleButton.setEnabled(False)
            self._fill(self._catalogue_only())
            self.listed.emit()
            return
        if self._list_process is not None:
            return
        process = engine_process(self, self.engine_python(), self._engine_command("list", "--json"))
        process.finished.connect(lambda code, _status: self._on_listed(process, code))
        process.errorOccurred.connect(lambda error: self._on_list_error(process, error))
        self._list_process = process
        self._set_message(self.tr("Listing the models…"))
        process.start()

    def _on_list_error(self, process: QProcess, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and process is self._list_process:
            self._list_process = None
            self._set_message(
                self.tr("The engine's Python could not start ({python}).").format(python=self.engine_python()),
                ERROR_COLOUR,
            )
            self.listed.emit()

    def _on_listed(self, process: QProcess, code: int) -> None:
        if process is not self._list_process:
            return
        self._list_process = None
        stdout = bytes(process.readAllStandardOutput()).decode("utf-8", "replace")
        stderr = bytes(process.readAllStandardError()).decode("utf-8", "replace")
        process.deleteLater()
        if code != 0:
            self._set_message(
                self.tr("The model list failed: {error}").format(error=_last_error(stdout, stderr)), ERROR_COLOUR
            )
            log.warning("models list failed (%s): %s %s", code, stdout[-500:], stderr[-500:])
            self.listed.emit()
            return
        try:
            listing = Listing.parse(stdout)
        except (ValueError, KeyError, TypeError) as exc:
            self._set_message(self.tr("The model list failed: {error}").format(error=str(exc)), ERROR_COLOUR)
            self.listed.emit()
            return
        self._set_message("")
        self._fill(listing)
        self.listed.emit()

    def _catalogue_only(self) -> Listing:
        """What the dialog shows before the engine is set up: the catalogue (pure, read here)."""
        from rs_assistant.core.catalog import CATALOG

        models = [
            ListedModel(
                e.name,
                e.backend,
                tuple(t.value for t in e.tasks),
                True,
                False,
                False,
                None,
                e.size_gb,
                e.licence,
                e.gated,
                e.repo_id,
            )
            for e in CATALOG
        ]
        return Listing(str(self.models_file()), tuple(models), {})

    @property
    def listing(self) -> Listing | None:
        return self._listing

    def _fill(self, listing: Listing) -> None:
        self._listing = listing
        selected = self.selected_model()
        table = self.modelsTable
        table.setRowCount(len(listing.models))
        for row, model in enumerate(listing.models):
            entry = find_entry(model.name) if model.in_catalog else None
            memory = f"{entry.memory_cpu_gb:.1f} / {entry.memory_gpu_gb:.1f} GB" if entry is not None else ""
            size = format_gb(model.size_gb if model.size_gb is not None else (entry.size_gb if entry else None))
            values = (model.name, ", ".join(model.tasks), size, model.licence, memory, self.status_text(model))
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setData(Qt.ItemDataRole.UserRole, model.name)
                if column == 0 and entry is not None:
                    item.setToolTip(entry.description)
                if column == 3:
                    item.setToolTip(model.licence)
                if column == 5 and model.path:
                    item.setToolTip(model.path)
                table.setItem(row, column, item)
            if selected is not None and model.name == selected.name:
                table.selectRow(row)
        self._fill_routes(listing)
        self._on_selection()

    def status_text(self, model: ListedModel) -> str:
        if model.name == DEFAULT_MODEL and not model.in_catalog:
            return self.tr("Built in")
        if model.registered and model.on_disk:
            return self.tr("Ready")
        if model.registered:
            return self.tr("Files missing: download or import it again")
        if model.on_disk:
            return self.tr("Downloaded, not registered: download again to register it")
        if model.gated:
            return self.tr("Not downloaded: needs a Hugging Face token")
        return self.tr("Not downloaded")

    def _fill_routes(self, listing: Listing) -> None:
        for task, combo in self.task_combos.items():
            combo.clear()
            combo.addItem(self.tr("Built-in (default)"), "")
            for model in listing.models:
                if model.usable and task.value in model.tasks and model.name != DEFAULT_MODEL:
                    combo.addItem(model.name, model.name)
            current = listing.tasks.get(task.value, "")
            index = combo.findData(current)
            if index < 0 and current:  # routed to a model this list does not offer (e.g. its files are gone)
                combo.addItem(self.tr("{name} (not available)").format(name=current), current)
                index = combo.count() - 1
            combo.setCurrentIndex(max(0, index))
            combo.setEnabled(self._task is None)

    # --- the default model per task -------------------------------------------------------------
    def set_route(self, task: Task, model: str) -> None:
        """Writes ``[tasks] task = model`` to the models file ("" or default: removes the route)."""
        path = self.models_file()
        try:
            current = read_models_file(path)
            tasks = dict(current.tasks)
            if model and model != DEFAULT_MODEL:
                tasks[task.value] = model
            else:
                tasks.pop(task.value, None)
            write_models_file(ModelsFile(path, current.models, tasks))
        except (ModelsFileError, OSError) as exc:
            self._set_message(str(exc), ERROR_COLOUR)
            return
        if self._listing is not None:
            routes = dict(self._listing.tasks)
            if model and model != DEFAULT_MODEL:
                routes[task.value] = model
            else:
                routes.pop(task.value, None)
            self._listing = Listing(self._listing.models_file, self._listing.models, routes)
        label = model if model and model != DEFAULT_MODEL else self.tr("the built-in model")
        self._set_message(self.tr("{task} now uses {model}.").format(task=self._task_label(task), model=label))
        log.info("models file %s: [tasks] %s = %s", path, task.value, model or DEFAULT_MODEL)
        self.modelsFileChanged.emit()

    def _on_route_chosen(self, task: Task) -> None:
        combo = self.task_combos[task]
        chosen = combo.currentData() or ""
        if self._listing is not None and self._listing.tasks.get(task.value, "") == chosen:
            return
        self.set_route(task, chosen)

    def _task_label(self, task: Task) -> str:
        return getattr(self, f"{task.value}Label").text()

    # --- downloads, imports, exports ------------------------------------------------------------
    def selected_model(self) -> ListedModel | None:
        rows = (
            {index.row() for index in self.modelsTable.selectionModel().selectedRows()}
            if self.modelsTable.selectionModel()
            else set()
        )
        if not rows or self._listing is None:
            return None
        item = self.modelsTable.item(min(rows), 0)
        name = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        return next((m for m in self._listing.models if m.name == name), None)

    def select(self, name: str) -> None:
        for row in range(self.modelsTable.rowCount()):
            if self.modelsTable.item(row, 0).data(Qt.ItemDataRole.UserRole) == name:
                self.modelsTable.selectRow(row)
                return
        raise KeyError(name)

    def _on_selection(self) -> None:
        model = self.selected_model()
        idle = self._task is None and self.is_set_up()
        self.downloadButton.setEnabled(idle and model is not None and model.in_catalog)
        self.downloadButton.setText(
            self.tr("Download again")
            if model is not None and model.in_catalog and model.on_disk
            else self.tr("Download")
        )
        self.exportBundleButton.setEnabled(
            idle and model is not None and model.registered and model.on_disk and model.name != DEFAULT_MODEL
        )
        entry = find_entry(model.name) if model is not None and model.in_catalog else None
        if entry is not None:
            link = f'<a href="https://huggingface.co/{entry.repo_id}">{entry.repo_id}</a>'
            self.descriptionLabel.setText(f"<b>{model.name}</b>: {entry.description} ({link})")
        elif model is not None and model.path:
            self.descriptionLabel.setText(f"<b>{model.name}</b>: {model.path}")
        else:
            self.descriptionLabel.setText("")

    def download_selected(self) -> None:
        model = self.selected_model()
        if model is None or not model.in_catalog:
            return
        env = {}
        if model.gated and not os.environ.get("HF_TOKEN"):
            token, ok = QInputDialog.getText(
                self,
                self.tr("Hugging Face token"),
                self.tr(
                    "{name} is gated: accept its licence on https://huggingface.co/{repo} with your account, then "
                    "paste a "
                    "read token from https://huggingface.co/settings/tokens (used for this download only)."
                ).format(name=model.name, repo=model.repo_id or ""),
                QLineEdit.EchoMode.Password,
            )
            if not ok or not token.strip():
                return
            env["HF_TOKEN"] = token.strip()
        self.run_verb("pull", [model.name], self.tr("Downloading {name}").format(name=model.name), env)

    def _import_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.tr("Checkpoint folder to import"), str(Path.home()))
        if folder:
            self.run_verb("import", [folder], self.tr("Importing {path}").format(path=folder))

    def _import_bundle(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, self.tr("Model bundle to import"), str(Path.home()), self.tr("Zip bundles (*.zip)")
        )
        if path:
            self.run_verb("import", [path], self.tr("Importing {path}").format(path=path))

    def _export_bundle(self) -> None:
        model = self.selected_model()
        if model is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self,
            self.tr("Export {name} as a bundle").format(name=model.name),
            str(Path.home() / f"{model.name}.zip"),
            self.tr("Zip bundles (*.zip)"),
        )
        if path:
            self.run_verb("export", [model.name, path], self.tr("Exporting {name}").format(name=model.name))

    def run_verb(self, verb: str, args: list[str], description: str, extra_env: dict[str, str] | None = None) -> None:
        """Runs ``models VERB ARGS --models FILE`` with the engine's Python in a ModelsTask."""
        if self._task is not None or not self.is_set_up():
            return
        env = {**engine_environment(os.environ), **(extra_env or {})}
        command = [self.engine_python(), *self._engine_command(verb, *args)]
        task = ModelsTask(f"RS Assistant: {description}", command, env, str(PACKAGE_DIR.parent))
        task.progressChanged.connect(lambda percent: self.progressBar.setValue(int(percent)))
        task.lineReceived.connect(self._on_task_line)
        task.ended.connect(self._on_task_ended)
        self._task = task
        self._task_kind = verb
        self.progressBar.setValue(0)
        self.progressBar.setMaximum(100 if verb == "pull" else 0)  # imports and exports report no measure
        self._show_progress(True)
        self._set_message(description + "…")
        self._set_idle(False)
        submit(task)

    def cancel_task(self) -> None:
        if self._task is not None:
            self.cancelButton.setEnabled(False)
            self._task.cancel()

    def _on_task_line(self, line: str) -> None:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "PROGRESS" and parts[1].isdigit() and parts[2].isdigit():
            done, total = int(parts[1]), int(parts[2])
            self._set_message(
                self.tr("Downloaded {done} of {total}").format(done=format_gb(done / 1e9), total=format_gb(total / 1e9))
            )
        elif line.strip():
            log.info("models: %s", line.rstrip())

    def _on_task_ended(self, outcome: ProcessOutcome) -> None:
        verb, self._task, self._task_kind = self._task_kind, None, ""
        self._show_progress(False)
        self._set_idle(True)
        if outcome.ending is Ending.DONE:
            done = {
                "pull": self.tr("Downloaded and registered."),
                "import": self.tr("Imported and registered."),
                "export": self.tr("Bundle written: {path}").format(
                    path=(outcome.result("EXPORTED") or "").partition(" ")[2]
                ),
            }[verb]
            self._set_message(done)
            if verb in ("pull", "import"):
                self.modelsFileChanged.emit()
        elif outcome.ending is Ending.CANCELLED:
            self._set_message(
                self.tr("Cancelled. Download again to resume where it stopped.")
                if verb == "pull"
                else self.tr("Cancelled.")
            )
        else:
            self._set_message(self.tr("It failed: {error}").format(error=outcome.error), ERROR_COLOUR)
        self.refresh()

    # --- state ----------------------------------------------------------------------------------
    def _set_idle(self, idle: bool) -> None:
        for widget in (self.importFolderButton, self.importBundleButton, self.refreshButton, self.tasksGroup):
            widget.setEnabled(idle)
        self.cancelButton.setEnabled(not idle)
        self._on_selection()

    def _show_progress(self, shown: bool) -> None:
        self.progressBar.setVisible(shown)
        self.cancelButton.setVisible(shown)

    def _set_message(self, text: str, colour: str = "") -> None:
        self.statusLabel.setText(text)
        self.statusLabel.setStyleSheet(f"color: {colour};" if colour else "")
        self.statusLabel.setVisible(bool(text))

    def shutdown(self) -> None:
        """Stops what is running (the plugin is unloading)."""
        if self._task is not None:
            self._task.ended.disconnect(self._on_task_ended)
            self._task.cancel()
            self._task = None
        if self._list_process is not None:
            process, self._list_process = self._list_process, None
            process.kill()
            process.waitForFinished(3000)


def _last_error(stdout: str, stderr: str) -> str:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("ERROR "):
            return line[len("ERROR ") :].strip()
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
