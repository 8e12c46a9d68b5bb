"""How a chat answer is decoded and watched while it is written: sampling, stop strings, streamed text.

A chat call (``BackendCall`` of task ``chat``) carries a :class:`Decoding` (greedy unless
``temperature`` > 0; ``top_p``; ``seed``; whether the request named no length limit) and a
:class:`TextWatch`. A backend that generates token by token gives the watch the answer's text so far
after each step (``watch.update(text)``, only when ``watch.wants_updates``) and stops generating
once it returns True (a stop string was written). The engine then calls ``watch.finish(text)`` on
the backend's final text, which cuts it at the first stop string and sends whatever was not sent yet,
so that the streamed pieces always join to the final answer. A backend that never calls ``update``
still works: its whole answer is sent by ``finish`` as one piece. The first ``update`` sends an empty piece,
which tells a stream that the model has begun writing (any refusal before it is an ordinary error).

Pieces are sent only once they cannot change any more: text is held back while it ends in whitespace
(backends tidy spaces before punctuation and at the end), in an incomplete character (U+FFFD from a
partly decoded UTF-8 sequence) or in what could be the start of a stop string.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Why an answer ended, in OpenAI's words: the model ended it or wrote a stop string; or the token limit cut it.
STOP, LENGTH = "stop", "length"


@dataclass(frozen=True)
class Decoding:
    """How to pick each token: greedy (``temperature`` 0, the default) or sampled at ``temperature`` from the
    smallest set of tokens whose probability reaches ``top_p``, from a generator seeded with ``seed`` (None:
    a random seed). ``open_ended``: the request set no length limit, so ``options.max_new_tokens`` is only the
    engine's ceiling and the answer may run until the end of the model's context."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    open_ended: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class TextWatch:
    """Follows an answer's text while it is written: cuts it at the first of ``stop`` and sends the new text to
    ``on_text`` as it becomes final. One per answer; not thread-safe (the generating thread calls it)."""

    def __init__(self, stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None) -> None:
        self.stop = tuple(s for s in stop if s)
        self.on_text = on_text
        self.sent = ""  # the text sent so far
        self.stopped = False  # a stop string was written
        self.begun = False  # the backend has given a first update: the model is writing

    @property
    def wants_updates(self) -> bool:
        """Whether a backend should decode the text after every step (someone streams it, or it may stop early)."""
        return bool(self.stop) or self.on_text is not None

    def update(self, text: str) -> bool:
        """``text``: the whole answer so far. Sends what became final (the first update sends "" at once: the model
        has begun, so a stream can open before any text is settled); True once a stop string was written."""
        if self.stopped:
            return True
        if not self.begun:
            self.begun = True
            if self.on_text is not None:
                self.on_text("")
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            self._send(text[:cut])
            return True
        self._send(self._settled(text))
        return False

    def finish(self, text: str) -> str:
        """The final answer: ``text`` cut at the first stop string; sends what was not sent yet."""
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            text = text[:cut]
        if text.startswith(self.sent):
            self._send(text)
        else:  # a backend whose final text is not what it streamed: the stream cannot take text back
            log.warning("the streamed text (%d characters) is not the start of the final answer", len(self.sent))
        return text

    def _stop_at(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _settled(self, text: str) -> str:
        """The part of ``text`` that later tokens cannot change."""
        settled = text.rstrip().rstrip("\ufffd")
        held = 0
        for stop in self.stop:  # the longest end of the text that begins a stop string
            for size in range(min(len(stop) - 1, len(settled)), held, -1):
                if settled.endswith(stop[:size]):
                    held = size
                    break
        return settled[: len(settled) - held]

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent) :], text
            if self.on_text is not None:
                self.on_text(piece)
