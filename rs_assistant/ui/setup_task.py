"""A command-line process as a QgsTask: listed in QGIS's task manager, cancelable, with progress.

The set-up (``python -m rs_assistant.setup_engine``) and the model manager's verbs
(``python -m rs_assistant.engine models pull|import|export``) run this way. ``run()`` starts the
process with :class:`subprocess.Popen` (stderr merged into stdout), reads its lines, turns the
progress lines into :meth:`QgsTask.setProgress` and hands every line to the UI thread through
``lineReceived``. ``cancel()`` kills the process and its children (pip runs as one). When the task
ends, ``ended`` carries a :class:`ProcessOutcome` on the UI thread.

    task = SetupTask(command, env)
    task.lineReceived.connect(log_view.appendPlainText)
    task.progressChanged.connect(bar.setValue)
    task.ended.connect(on_outcome)
    QgsApplication.taskManager().addTask(task)
"""

from __future__ import annotations

import enum
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from qgis.core import QgsApplication, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

log = logging.getLogger(__name__)

STEP_LINE = re.compile(r"^STEP (\d+)/(\d+)\b\s*(.*)$")
PROGRESS_LINE = re.compile(r"^PROGRESS (\d+) (\d+)\b\s*(.*)$")
ERROR_PREFIX = "ERROR "


class Ending(str, enum.Enum):
    DONE = "done"  # exit code 0
    FAILED = "failed"  # non-zero exit, or the process could not start
    CANCELLED = "cancelled"  # the person cancelled it


@dataclass(frozen=True)
class ProcessOutcome:
    ending: Ending
    returncode: int | None = None  # None: it never started, or it was killed before it ended
    error: str = ""  # the process's ``ERROR <message>`` line (without the prefix), or why it did not start
    results: tuple[tuple[str, str], ...] = ()  # (keyword, value) of the result lines it printed, in order

    def __post_init__(self) -> None:
        if not isinstance(self.ending, Ending):
            raise ValueError(f"ending must be an Ending, got {self.ending!r}")

    def result(self, keyword: str) -> str | None:
        """The value of the last ``<keyword> <value>`` result line, e.g. ``ENGINE_PYTHON``."""
        values = [value for key, value in self.results if key == keyword]
        return values[-1] if values else None


def step_progress(line: str) -> float | None:
    """``STEP k/N what`` -> the percentage done when step k starts ((k-1)/N); other lines -> None."""
    match = STEP_LINE.match(line.strip())
    if match is None:
        return None
    k, n = int(match.group(1)), int(match.group(2))
    if n <= 0 or not 1 <= k <= n:
        return None
    return 100.0 * (k - 1) / n


def step_title(line: str) -> str:
    """``STEP 2/5 installing PyTorch`` -> ``2/5: installing PyTorch``; other lines -> ""."""
    match = STEP_LINE.match(line.strip())
    if match is None:
        return ""
    what = match.group(3).strip()
    return f"{match.group(1)}/{match.group(2)}" + (f": {what}" if what else "")


def download_progress(line: str) -> float | None:
    """``PROGRESS done total file`` -> done/total as a percentage; other lines -> None."""
    match = PROGRESS_LINE.match(line.strip())
    if match is None:
        return None
    done, total = int(match.group(1)), int(match.group(2))
    return min(100.0, 100.0 * done / total) if total > 0 else None


class ProcessTask(QgsTask):
    """Runs ``command``; subclasses say which lines are progress and which carry a result."""

    lineReceived = pyqtSignal(str)  # every line the process printed (UI thread)
    ended = pyqtSignal(object)  # ProcessOutcome (UI thread)

    RESULT_KEYWORDS: tuple[str, ...] = ()
    KILL_WAIT_S = 10.0

    def __init__(
        self, description: str, command: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None
    ):
        super().__init__(description, QgsTask.Flag.CanCancel)
        if not command:
            raise ValueError("a process task needs a command")
        self.command = [str(part) for part in command]
        self._env = env
        self._cwd = cwd
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._returncode: int | None = None
        self._error = ""
        self._results: list[tuple[str, str]] = []

    def progress_of(self, line: str) -> float | None:  # worker thread
        return None

    @property
    def pid(self) -> int | None:
        """The process's id (also its process group's on POSIX) once it started."""
        with self._lock:
            return self._process.pid if self._process is not None else None

    # --- worker thread --------------------------------------------------------------------------
    def run(self) -> bool:
        if self.isCanceled():
            return False
        log.info("running %s", " ".join(self.command))
        try:
            process = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **_own_process_group(),
            )
        except OSError as exc:
            self._error = f"{self.command[0]}: {exc.strerror or exc}"
            return False
        with self._lock:
            self._process = process
        if self.isCanceled():  # cancelled while it was starting
            self._kill()
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\r\n")
            self._read(line)
            try:
                self.lineReceived.emit(line)
            except RuntimeError:  # the receiver is gone (plugin unloaded): keep draining the pipe
                pass
        self._returncode = process.wait()
        return self._returncode == 0 and not self.isCanceled()

    def _read(self, line: str) -> None:
        progress = self.progress_of(line)
        if progress is not None:
            self.setProgress(progress)
        stripped = line.strip()
        if stripped.startswith(ERROR_PREFIX):
            self._error = stripped[len(ERROR_PREFIX) :].strip()
        keyword, _, value = stripped.partition(" ")
        if keyword in self.RESULT_KEYWORDS and value:
            self._results.append((keyword, value.strip()))

    # --- UI thread ------------------------------------------------------------------------------
    def cancel(self) -> None:
        super().cancel()
        self._kill()

    def _kill(self) -> None:
        with self._lock:
            process = self._process
        if process is None or process.poll() is not None:
            return
        log.info("stopping %s (pid %s)", self.command[0], process.pid)
        try:
            if os.name == "nt":
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                    capture_output=True,
                    creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
                    check=False,
                )
            else:
                os.killpg(process.pid, signal.SIGKILL)  # the process and its children (pip)
        except OSError as exc:
            log.warning("could not stop process %s: %s", process.pid, exc)
            process.kill()

    def finished(self, result: bool) -> None:
        if result:
            ending = Ending.DONE
        elif self.isCanceled():
            ending = Ending.CANCELLED
        else:
            ending = Ending.FAILED
        error = self._error
        if ending is Ending.FAILED and not error:
            error = f"exit code {self._returncode}" if self._returncode is not None else "the process did not start"
        outcome = ProcessOutcome(
            ending, self._returncode, error if ending is Ending.FAILED else "", tuple(self._results)
        )
        try:
            self.ended.emit(outcome)
        except RuntimeError:
            log.debug("process task ended after its receiver was deleted")


class SetupTask(ProcessTask):
    """``python -m rs_assistant.setup_engine ...``: progress from ``STEP k/N``, result ``ENGINE_PYTHON``."""

    RESULT_KEYWORDS = ("ENGINE_PYTHON",)

    def progress_of(self, line: str) -> float | None:
        return step_progress(line)


class ModelsTask(ProcessTask):
    """``python -m rs_assistant.engine models pull|import|export ...``: progress from ``PROGRESS``."""

    RESULT_KEYWORDS = ("PULLED", "IMPORTED", "EXPORTED")

    def progress_of(self, line: str) -> float | None:
        return download_progress(line)


def _own_process_group() -> dict:
    """Popen arguments that give the process its own group (so cancel can stop its children) and no console."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def submit(task: QgsTask) -> None:
    """Hands ``task`` to QGIS's task manager (which runs it and lists it)."""
    QgsApplication.taskManager().addTask(task)
