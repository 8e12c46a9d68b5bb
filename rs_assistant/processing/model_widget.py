"""The "Model" parameter's widget in the Processing dialog: an editable list of the engine's models.

The parameter stays a string (scripts pass any model name the engine knows, and an engine the
plugin only connects to may know models this computer's models file does not list), but the
dialog shows a list to choose from, read from the models file when the dialog opens: ``auto``
(the engine picks the model set for the task), ``default`` (the built-in model), then every
model the file registers. Typing another name is still possible.

Processing creates it from the parameter's metadata
(``{"widget_wrapper": {"class": "rs_assistant.processing.model_widget.ModelWidgetWrapper"}}``);
the module imports Processing's GUI, so only the dialog imports it.
"""

from __future__ import annotations

import logging

from processing.gui.wrappers import WidgetWrapper
from qgis.PyQt.QtCore import QCoreApplication, Qt
from qgis.PyQt.QtWidgets import QComboBox

from rs_assistant.core.models_file import AUTO_MODEL, DEFAULT_MODEL, ModelsFileError, read_models_file

log = logging.getLogger(__name__)


def tr(text: str) -> str:
    return QCoreApplication.translate("ModelWidgetWrapper", text)


def known_models() -> list[tuple[str, str]]:
    """(name, tooltip) for ``auto``, ``default`` and the models file's models, in the file's order."""
    out = [
        (AUTO_MODEL, tr("The engine chooses the model set for this task (Manage models…)")),
        (DEFAULT_MODEL, tr("The engine's built-in model")),
    ]
    try:
        from rs_assistant.ui import profile
        from rs_assistant.ui.settings_store import SettingsStore

        path = profile.models_file(SettingsStore().load())
        models = read_models_file(path).models if path else {}
    except (ModelsFileError, OSError) as error:
        log.warning("the models file cannot be read for the Model list: %s", error)
        models = {}
    for name, table in models.items():
        if name not in (AUTO_MODEL, DEFAULT_MODEL):
            out.append((name, tr("Backend: {backend}").format(backend=table.get("backend", "?"))))
    return out


class ModelWidgetWrapper(WidgetWrapper):
    """An editable combo box of model names; its value is the text shown."""

    def createWidget(self, **kwargs) -> QComboBox:  # noqa: N802 (Processing's name)
        combo = QComboBox()
        combo.setEditable(True)
        combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        for name, tooltip in known_models():
            combo.addItem(name, name)
            combo.setItemData(combo.count() - 1, tooltip, Qt.ItemDataRole.ToolTipRole)
        combo.setToolTip(self.parameterDefinition().help())
        return combo

    def setValue(self, value) -> None:  # noqa: N802
        self.setComboValue(AUTO_MODEL if value in (None, "") else str(value))

    def value(self) -> str:
        return self.widget.currentText().strip() or AUTO_MODEL
