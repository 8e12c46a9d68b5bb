"""Renders the conversation into the transcript view: turns, thumbnails, answers, errors in place.

An answer that drew features lists them (class, area or length on the ground, score), each a link
``feature:<layer id>:<feature id>`` (the dock zooms to it and flashes it); detections held back
under the score threshold are offered as a link ``heldback:<turn id>`` ("Show 14 more below 0.3").
The highlighted turn (a feature of it selected on the map) is shaded and scrolled into view.
"""

from __future__ import annotations

import html
from collections import Counter
from urllib.parse import quote, unquote

from qgis.PyQt.QtCore import QObject, QUrl
from qgis.PyQt.QtGui import QImage, QTextCursor, QTextDocument
from qgis.PyQt.QtWidgets import QTextBrowser

from rs_assistant.core.conversation import FeatureRef, Turn, TurnState
from rs_assistant.ui import texts

ERROR_COLOUR = "#b00020"
MUTED_COLOUR = "#777777"
HIGHLIGHT_COLOUR = "#fff3c4"
FEATURE_SCHEME = "feature"
HELD_BACK_SCHEME = "heldback"
MAX_LISTED = 10  # features listed per answer; the rest are counted


def _text(value: str) -> str:
    return html.escape(value).replace("\n", "<br>")


def feature_link(ref: FeatureRef) -> str:
    return f"{FEATURE_SCHEME}:{quote(ref.layer_id, safe='')}:{ref.fid}"


def parse_link(url: QUrl | str) -> tuple[str, str, int] | None:
    """("feature", layer id, fid) or ("heldback", "", turn id) for the transcript's links; None for others."""
    text = url.toString() if isinstance(url, QUrl) else str(url)
    scheme, _, rest = text.partition(":")
    try:
        if scheme == FEATURE_SCHEME:
            layer, _, fid = rest.rpartition(":")
            return FEATURE_SCHEME, unquote(layer), int(fid)
        if scheme == HELD_BACK_SCHEME:
            return HELD_BACK_SCHEME, "", int(rest)
    except ValueError:
        return None
    return None


def area_text(area_m2: float) -> str:
    """412 m², 38.5 m², 12,400 m², 1.24 km²: ground units a person reads at a glance."""
    if area_m2 >= 1_000_000:
        return f"{area_m2 / 1_000_000:,.2f} km²"
    if area_m2 >= 100:
        return f"{area_m2:,.0f} m²"
    return f"{area_m2:.1f} m²"


def length_text(length_m: float) -> str:
    return f"{length_m / 1000:,.2f} km" if length_m >= 1000 else f"{length_m:,.1f} m"


def measure_text(ref: FeatureRef) -> str:
    if ref.area_m2 is not None:
        return area_text(ref.area_m2)
    if ref.length_m is not None:
        return length_text(ref.length_m)
    return ""


class TranscriptRenderer(QObject):
    def __init__(self, view: QTextBrowser):
        super().__init__(view)
        self._view = view

    def render(
        self,
        turns: list[Turn],
        thumbnails: dict[int, list[QImage]],
        highlighted: int | None = None,
        scroll_to: int | None = None,
    ) -> None:
        """Shows ``turns``: ``highlighted`` (a turn id) shaded; the view scrolled to ``scroll_to``, else to the last
        turn."""
        document = self._view.document()
        parts = []
        for turn in turns:
            images = []
            for index, image in enumerate(thumbnails.get(turn.id, [])):
                url = f"rsa-thumb://{turn.id}/{index}"
                document.addResource(QTextDocument.ResourceType.ImageResource, QUrl(url), image)
                images.append(f'<img src="{url}" width="{image.width()}" height="{image.height()}"> ')
            body = self._question(turn, images) + self._answer(turn)
            if turn.id == highlighted:
                body = (
                    f'<table width="100%" cellpadding="4" cellspacing="0" bgcolor="{HIGHLIGHT_COLOUR}">'
                    f"<tr><td>{body}</td></tr></table>"
                )
            parts.append(f'<a name="turn-{turn.id}"></a>{body}<hr>')
        self._view.setHtml("".join(parts))
        if scroll_to is not None and any(t.id == scroll_to for t in turns):
            self._view.scrollToAnchor(f"turn-{scroll_to}")
        else:
            self._view.moveCursor(QTextCursor.MoveOperation.End)
            bar = self._view.verticalScrollBar()
            bar.setValue(bar.maximum())

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
        elif turn.state is TurnState.ANSWERED:
            body = _text(turn.answer) if turn.answer else ""
            found = self._features(turn)
            if found:
                body += ("<br>" if body else "") + found
            elif not body:
                nothing = self.tr("No answer and nothing found.")
                body = f'<i style="color:{MUTED_COLOUR}">{nothing}</i>'
        else:  # queued: asked while the engine starts
            waiting = self.tr("Waiting for the engine to start…")
            body = f'<i style="color:{MUTED_COLOUR}">{waiting}</i>'
        return f"<p><b>{who}</b><br>{body}</p>"

    def _features(self, turn: Turn) -> str:
        """The answer's features, one link each, and the offer of those held back under the threshold."""
        lines = []
        refs = turn.features
        if refs and all(ref.kind == "tile" for ref in refs):  # /search: ranked tiles, by similarity (not area)
            lines.append(f"<b>{_text(self.tr('{count} tile(s), best first').format(count=len(refs)))}</b>")
            tip = self.tr("Zoom to it on the map")
            for number, ref in enumerate(refs[:MAX_LISTED], start=1):
                what = f"#{number} · {ref.score:.0%}"
                lines.append(f'<a href="{feature_link(ref)}" title="{_text(tip)}">{_text(what)}</a>')
        elif refs:
            classes = Counter(ref.label or ref.kind for ref in refs)
            summary = ", ".join(f"{label} × {count}" for label, count in classes.most_common())
            total = sum(ref.area_m2 for ref in refs if ref.area_m2 is not None)
            heading = self.tr("{count} feature(s): {classes}").format(count=len(refs), classes=summary)
            if total > 0 and len(refs) > 1:
                heading += " · " + self.tr("{area} in all").format(area=area_text(total))
            lines.append(f"<b>{_text(heading)}</b>")
            for number, ref in enumerate(refs[:MAX_LISTED], start=1):
                what = " · ".join(
                    part for part in (ref.label or ref.kind, measure_text(ref), f"{ref.score:.2f}") if part
                )
                tip = self.tr("Zoom to it on the map")
                lines.append(f'{number}. <a href="{feature_link(ref)}" title="{_text(tip)}">{_text(what)}</a>')
            if len(refs) > MAX_LISTED:
                more = self.tr("… and {count} more in the layer’s attribute table").format(count=len(refs) - MAX_LISTED)
                lines.append(f'<span style="color:{MUTED_COLOUR}">{_text(more)}</span>')
        elif turn.result_layers:  # an answer saved before features were listed
            found = self.tr("{count} feature(s) added as layer(s): {names}").format(
                count=turn.feature_count, names=", ".join(turn.result_layers)
            )
            lines.append(f'<span style="color:{MUTED_COLOUR}">{_text(found)}</span>')
        if turn.held_back:
            show = self.tr("Show {count} more below {threshold}").format(
                count=turn.held_back, threshold=f"{turn.score_threshold:g}"
            )
            lines.append(f'<a href="{HELD_BACK_SCHEME}:{turn.id}">{_text(show)}</a>')
        return "<br>".join(lines)
