"""Renders the conversation into the transcript view: turns, thumbnails, answers, errors in place."""

from __future__ import annotations

import html

from qgis.PyQt.QtCore import QObject, QUrl
from qgis.PyQt.QtGui import QImage, QTextCursor, QTextDocument
from qgis.PyQt.QtWidgets import QTextBrowser

from rs_assistant.core.conversation import Turn, TurnState
from rs_assistant.ui import texts

ERROR_COLOUR = "#b00020"
MUTED_COLOUR = "#777777"


def _text(value: str) -> str:
    return html.escape(value).replace("\n", "<br>")


class TranscriptRenderer(QObject):
    def __init__(self, view: QTextBrowser):
        super().__init__(view)
        self._view = view

    def render(self, turns: list[Turn], thumbnails: dict[int, list[QImage]]) -> None:
        document = self._view.document()
        parts = []
        for turn in turns:
            images = []
            for index, image in enumerate(thumbnails.get(turn.id, [])):
                url = f"rsa-thumb://{turn.id}/{index}"
                document.addResource(QTextDocument.ResourceType.ImageResource, QUrl(url), image)
                images.append(f'<img src="{url}" width="{image.width()}" height="{image.height()}"> ')
            parts.append(self._question(turn, images))
            parts.append(self._answer(turn))
        self._view.setHtml("".join(parts))
        self._view.moveCursor(QTextCursor.MoveOperation.End)
        self._view.ensureCursorVisible()

    def _question(self, turn: Turn, images: list[str]) -> str:
        about = ""
        if turn.layer_names:
            about = f'<br><span style="color:{MUTED_COLOUR}">{_text(", ".join(turn.layer_names))}</span>'
        pictures = f"<br>{''.join(images)}" if images else ""
        you = self.tr("You")
        return f"<p><b>{you}</b><br>{_text(turn.question)}{about}{pictures}</p>"

    def _answer(self, turn: Turn) -> str:
        who = self.tr("Assistant")
        if turn.model:
            who += f' <span style="color:{MUTED_COLOUR}">({_text(turn.model)})</span>'
        if turn.is_help:
            rows = "".join(f"<li><tt>{_text(cmd)}</tt>: {_text(what)}</li>" for cmd, what in texts.help_lines())
            title = self.tr("Commands:")
            body = f"{title}<ul>{rows}</ul>"
        elif turn.state is TurnState.PENDING:
            working = self.tr("Working…")
            body = f'<i style="color:{MUTED_COLOUR}">{working}</i>'
        elif turn.state is TurnState.CANCELLED:
            body = f'<i style="color:{MUTED_COLOUR}">{_text(texts.error_text(turn.error))}</i>'
        elif turn.state is TurnState.FAILED:
            detail = f"<br><small>{_text(turn.error_detail)}</small>" if turn.error_detail else ""
            body = f'<span style="color:{ERROR_COLOUR}">{_text(texts.error_text(turn.error))}{detail}</span>'
        else:
            body = _text(turn.answer) if turn.answer else ""
            if turn.result_layers:
                found = self.tr("{count} feature(s) added as layer(s): {names}").format(
                    count=turn.feature_count, names=", ".join(turn.result_layers))
                body += f'{"<br>" if body else ""}<span style="color:{MUTED_COLOUR}">{_text(found)}</span>'
            elif not body:
                nothing = self.tr("No answer and nothing found.")
                body = f'<i style="color:{MUTED_COLOUR}">{nothing}</i>'
        return f"<p><b>{who}</b><br>{body}</p><hr>"
