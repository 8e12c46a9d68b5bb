"""The chat dock's controls say what they are, and the dock holds in a narrow dock area.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/qgis/test_dock_polish.py -q

Issue 21: "the model combo has no label, the settings button no text, the region button is a
black square"; "the layout holds in a narrow dock beside the Processing toolbox".
"""

from __future__ import annotations

import pytest
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor, QIcon
from qgis.PyQt.QtWidgets import QAbstractButton, QApplication, QComboBox, QPlainTextEdit

from rs_assistant.core.paths import resource

NARROW = 300  # px: the dock beside the Processing toolbox


@pytest.fixture
def usual_font():
    """QGIS's usual interface font size (10 pt), whatever the test platform's default is."""
    app = QApplication.instance()
    old = app.font()
    font = app.font()
    font.setPointSizeF(10.0)
    app.setFont(font)
    yield
    app.setFont(old)


def dark_share(icon: QIcon, size: int = 48) -> float:
    image = icon.pixmap(size, size).toImage()
    dark = 0
    for x in range(size):
        for y in range(size):
            colour = QColor.fromRgba(image.pixel(x, y))
            dark += colour.alpha() > 128 and colour.lightness() < 40
    return dark / size / size


def test_the_region_icon_is_drawn_not_a_black_square():
    icon = QIcon(str(resource("icons", "select_region.svg")))
    assert not icon.isNull()
    assert dark_share(icon) < 0.1  # the old #rrggbbaa fill painted a third of it black


def test_every_control_has_a_label_a_tooltip_and_text_or_an_icon(make_assistant):
    dock = make_assistant().dock
    chat = [
        w
        for w in dock.dockContents.findChildren((QAbstractButton, QComboBox, QPlainTextEdit))
        if w.isVisibleTo(dock) and (dock.setup_panel is None or not dock.setup_panel.isAncestorOf(w))
    ]
    assert len(chat) >= 14
    for widget in chat:
        name = widget.objectName()
        if isinstance(widget, QAbstractButton):
            assert widget.text().strip() or not widget.icon().isNull(), f"{name} shows neither text nor icon"
            if not widget.text().strip() or len(widget.text().strip()) < 2:
                assert widget.toolTip() and widget.accessibleName(), (
                    f"{name}: an icon or a glyph needs a tooltip and a name"
                )
        assert widget.toolTip() or (isinstance(widget, QAbstractButton) and widget is dock.sendButton), (
            f"{name} has no tooltip"
        )
    assert dock.modelLabel.text() == "Model" and dock.modelLabel.buddy() is dock.modelCombo
    assert not dock.settingsButton.icon().isNull() and dock.settingsButton.text() == "Settings"
    assert dock.settingsButton.toolButtonStyle() == Qt.ToolButtonStyle.ToolButtonIconOnly  # not a ⚙ glyph
    assert dark_share(dock.settingsButton.icon()) < 0.5


def test_the_dock_holds_in_a_narrow_dock_area(usual_font, make_assistant, qtbot):
    assistant = make_assistant()
    dock = assistant.dock
    assert dock.minimumSizeHint().width() <= NARROW, "the dock cannot be made as narrow as the Processing toolbox"
    window = assistant.iface.mainWindow()
    window.resizeDocks([dock], [NARROW], Qt.Orientation.Horizontal)
    qtbot.waitUntil(lambda: dock.width() <= NARROW + 2)
    for button in (
        dock.describeButton,
        dock.findButton,
        dock.segmentButton,
        dock.compareButton,
        dock.newChatButton,
        dock.manageModelsButton,
        dock.useViewButton,
        dock.sendButton,
    ):
        assert button.width() >= button.fontMetrics().horizontalAdvance(button.text()), (
            f"{button.objectName()} is clipped"
        )
