"""Keeps an engine available: starts it (QProcess) or connects to one, watches its health, and
restarts it a bounded number of times after a crash.

Managed mode runs ``<engine python> -m rs_assistant.engine serve --port 0 --token-file F``,
waits for its ``READY http://HOST:PORT`` line and reads the token the engine wrote to F.
Connect mode talks to ``engine_url`` with ``engine_token``. Either way, ``clientChanged``
hands the controller a ready :class:`EngineClient` (or None while there is none), and
``healthChanged`` the engine's last :class:`Health` (its device and any warning about it).

The engine's Python is the setting, else the one the engine set-up made (rs_assistant.ui.profile):
with neither, the status is an error with fault NOT_SET_UP and no process starts. An engine that
exits because a package is missing (ModuleNotFoundError/ImportError on its stderr) is not restarted
(MISSING_PACKAGES): only the set-up can help. On both faults the dock offers the set-up.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from qgis.PyQt.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, pyqtSignal

from rs_assistant.core.client import EngineClient
from rs_assistant.core.engine_state import (
    EngineFault,
    EngineState,
    EngineStatus,
    RestartBudget,
    config_error,
    missing_module,
    parse_ready_line,
)
from rs_assistant.core.paths import PACKAGE_DIR, engine_environment
from rs_assistant.core.protocol import Health, ProtocolError
from rs_assistant.core.settings import EngineMode, Settings
from rs_assistant.ui import profile
from rs_assistant.ui.background import BackgroundCall

log = logging.getLogger(__name__)


def engine_process(parent: QObject, python: str, arguments: list[str]) -> QProcess:
    """A QProcess (not started) of the engine's Python, run as the plugin runs every such process:
    from the plugin's folder, with it on PYTHONPATH (rs_assistant.core.paths.engine_environment)."""
    process = QProcess(parent)
    env = QProcessEnvironment()
    for name, value in engine_environment(os.environ).items():
        env.insert(name, value)
    process.setProcessEnvironment(env)
    process.setWorkingDirectory(str(PACKAGE_DIR.parent))
    process.setProgram(python)
    process.setArguments(arguments)
    return process


class EngineSupervisor(QObject):
    statusChanged = pyqtSignal(object)  # EngineStatus
    clientChanged = pyqtSignal(object)  # EngineClient | None
    healthChanged = pyqtSignal(object)  # Health | None: the ready engine's last answer to /v1/health

    HEALTH_INTERVAL_MS = 5000
    HEALTH_TIMEOUT_S = 5.0
    HEALTH_FAILURES_TOLERATED = 1
    RESTART_DELAY_MS = 1000
    STOP_WAIT_MS = 3000

    def __init__(
        self,
        settings: Settings,
        parent: QObject | None = None,
        *,
        resolve_python: Callable[[Settings], str | None] = profile.engine_python,
        resolve_models: Callable[[Settings], str] = profile.models_file,
    ):
        """``resolve_python``/``resolve_models`` turn the settings into the engine's Python (None: not
        set up) and its models file ("" : none); tests pass their own instead of the QGIS profile's."""
        super().__init__(parent)
        self._settings = settings
        self._resolve_python = resolve_python
        self._resolve_models = resolve_models
        self._python = ""  # the interpreter of the process started last
        self._health: Health | None = None
        self._budget = RestartBudget(settings.max_restarts)
        self._status = EngineStatus(EngineState.STOPPED)
        self._client: EngineClient | None = None
        self._probe: EngineClient | None = None  # the engine the health watch asks, ready or not
        self._process: QProcess | None = None
        self._started_at = 0.0
        self._stdout = ""
        self._stderr = ""  # a line not yet ended (a process writes a traceback in pieces)
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._health_failures = 0
        self._token_dir: Path | None = None
        self._token = ""  # the token of the engine being verified or in use
        self._start_timer = QTimer(self, singleShot=True, timeout=self._on_start_timeout)
        self._restart_timer = QTimer(self, singleShot=True, timeout=self._launch)
        self._health_timer = QTimer(self, interval=self.HEALTH_INTERVAL_MS, timeout=self._check_health)

    # --- public ---------------------------------------------------------------------------------
    @property
    def status(self) -> EngineStatus:
        return self._status

    @property
    def client(self) -> EngineClient | None:
        return self._client

    @property
    def health(self) -> Health | None:
        """The ready engine's last health (``device_info`` says what it computes on); None while none is ready."""
        return self._health

    def connection(self) -> tuple[str, str] | None:
        """(URL, token) of the ready engine, for other users of it (Processing); None while there is none."""
        client = self._client
        return (client.url, self._token) if client is not None else None

    @property
    def process_id(self) -> int | None:
        return int(self._process.processId()) if self._process is not None else None

    def start(self) -> None:
        """Starts (or connects to) the engine unless it is already starting or ready."""
        if self._status.state in (EngineState.STARTING, EngineState.READY):
            return
        self._budget.reset()
        if self._settings.mode is EngineMode.CONNECT:
            self._connect()
        else:
            self._launch()

    def restart(self) -> None:
        self.stop()
        self.start()

    def apply_settings(self, settings: Settings) -> None:
        running = self._status.state is not EngineState.STOPPED
        self.stop()
        self._settings = settings
        self._budget = RestartBudget(settings.max_restarts)
        if running:
            self.start()

    def stop(self) -> None:
        self._probe = None
        for timer in (self._start_timer, self._restart_timer, self._health_timer):
            timer.stop()
        self._discard_process()
        self._set_client(None)
        if self._token_dir is not None:
            shutil.rmtree(self._token_dir, ignore_errors=True)
            self._token_dir = None
        self._set_status(EngineStatus(EngineState.STOPPED))

    # --- connect mode ---------------------------------------------------------------------------
    def _connect(self) -> None:
        settings = self._settings
        self._set_status(EngineStatus(EngineState.STARTING))
        try:
            client = EngineClient(settings.engine_url, settings.engine_token, settings.timeout_s)
        except ProtocolError as exc:
            self._set_status(EngineStatus(EngineState.ERROR, EngineFault.UNREACHABLE, exc.message))
            return
        self._probe = client
        self._token = settings.engine_token
        self._verify(client)
        self._health_timer.start()

    # --- managed mode ---------------------------------------------------------------------------
    def _token_file(self) -> Path:
        if self._token_dir is None:
            self._token_dir = Path(tempfile.mkdtemp(prefix="rs_assistant_"))  # mode 0700
        return self._token_dir / "engine.token"

    def _command(self) -> list[str]:
        settings = self._settings
        args = [
            "-m",
            "rs_assistant.engine",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--token-file",
            str(self._token_file()),
        ]
        models_file = self._resolve_models(settings)
        if models_file:
            args += ["--models", models_file]
        if settings.device:
            args += ["--device", settings.device]
        return args

    def _launch(self) -> None:
        self._discard_process()
        python = self._resolve_python(self._settings)
        if not python:
            self._fail(EngineFault.NOT_SET_UP, "")
            return
        self._python = python
        process = engine_process(self, python, self._command())
        process.readyReadStandardOutput.connect(self._on_stdout)
        process.readyReadStandardError.connect(self._on_stderr)
        process.errorOccurred.connect(self._on_process_error)
        process.finished.connect(self._on_finished)
        self._process = process
        self._stdout = ""
        self._stderr = ""
        self._stderr_tail.clear()
        self._started_at = time.monotonic()
        crash = self._status.detail if self._status.fault is EngineFault.EXITED else ""
        self._set_status(EngineStatus(EngineState.STARTING, detail=crash, restarts_left=self._budget.left))
        log.info("starting the engine: %s %s", python, " ".join(process.arguments()))
        process.start()
        self._start_timer.start(int(self._settings.start_timeout_s * 1000))

    def _discard_process(self) -> None:
        self._probe = None
        process, self._process = self._process, None
        if process is None:
            return
        for signal in (
            process.readyReadStandardOutput,
            process.readyReadStandardError,
            process.errorOccurred,
            process.finished,
        ):
            signal.disconnect()
        if process.state() != QProcess.ProcessState.NotRunning:
            process.terminate()
            if not process.waitForFinished(self.STOP_WAIT_MS):
                process.kill()
                process.waitForFinished(self.STOP_WAIT_MS)
            log.info("engine stopped")
        process.deleteLater()

    def _on_stdout(self) -> None:
        if self._process is None:
            return
        self._stdout += bytes(self._process.readAllStandardOutput()).decode("utf-8", "replace")
        *lines, self._stdout = self._stdout.split("\n")
        for line in lines:
            url = parse_ready_line(line)
            if url is not None and self._status.state is EngineState.STARTING:
                self._on_ready_line(url)
            elif line.strip():
                log.info("engine: %s", line.rstrip())

    def _on_stderr(self) -> None:
        if self._process is None:
            return
        self._stderr += bytes(self._process.readAllStandardError()).decode("utf-8", "replace")
        *lines, rest = self._stderr.split("\n")
        self._stderr = rest[-4000:]  # progress bars redraw one line with \r: keep its end only
        self._keep_stderr(lines)

    def _keep_stderr(self, lines: list[str]) -> None:
        for line in lines:
            if line.strip():
                self._stderr_tail.append(line.rstrip())
                log.debug("engine: %s", line.rstrip())

    def _on_ready_line(self, url: str) -> None:
        self._start_timer.stop()
        try:
            token = self._token_file().read_text(encoding="utf-8").strip()
        except OSError as exc:
            token = ""
            log.warning("cannot read the engine token: %s", exc)
        if not token:
            self._fail(EngineFault.NO_TOKEN, str(self._token_file()))
            return
        self._probe = EngineClient(url, token, self._settings.timeout_s)
        self._token = token
        self._verify(self._probe)
        self._health_timer.start()

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._process = None
            self._start_timer.stop()
            self._fail(EngineFault.INTERPRETER_NOT_FOUND, self._python)

    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        uptime = time.monotonic() - self._started_at
        self._on_stderr()  # what it wrote last, if not read yet
        self._keep_stderr([self._stderr])
        self._stderr = ""
        self._process = None
        self._probe = None
        self._start_timer.stop()
        self._health_timer.stop()
        self._set_client(None)
        how = "crashed" if exit_status == QProcess.ExitStatus.CrashExit else f"exited with code {exit_code}"
        last = self._stderr_tail[-1] if self._stderr_tail else ""
        detail = f"{how}: {last}" if last else how
        log.warning("engine %s", detail)
        module = missing_module(self._stderr_tail)
        if module is not None:  # restarting cannot install it: the set-up can
            self._set_status(EngineStatus(EngineState.ERROR, EngineFault.MISSING_PACKAGES, module or last))
            return
        mistake = config_error(exit_code, self._stderr_tail) if exit_status == QProcess.ExitStatus.NormalExit else None
        if mistake is not None:  # nor can it correct a models file or a setting: the person can
            self._set_status(EngineStatus(EngineState.ERROR, EngineFault.BAD_CONFIG, mistake or how))
            return
        restart = self._budget.take(uptime)
        self._set_status(
            EngineStatus(EngineState.ERROR, EngineFault.EXITED, detail, self._budget.left if restart else 0)
        )
        if restart:
            self._restart_timer.start(self.RESTART_DELAY_MS)

    def _on_start_timeout(self) -> None:
        self._discard_process()
        self._fail(EngineFault.START_TIMEOUT, f"{self._settings.start_timeout_s:g} s")

    # --- health ---------------------------------------------------------------------------------
    def _verify(self, client: EngineClient) -> None:
        BackgroundCall(
            lambda: client.health(timeout=self.HEALTH_TIMEOUT_S), lambda h, err: self._on_verified(client, h, err), self
        ).start()

    def _on_verified(self, client: EngineClient, health: Health | None, error: BaseException | None) -> None:
        if self._status.state is not EngineState.STARTING or client is not self._probe:
            return  # stopped, crashed or restarted meanwhile
        if error is not None:
            self._fail(EngineFault.UNREACHABLE, getattr(error, "message", str(error)))
            return
        self._health_failures = 0
        self._set_client(client)
        self._set_health(health)
        self._set_status(EngineStatus(EngineState.READY))
        log.info("engine ready at %s", client.url)

    def _check_health(self) -> None:
        client = self._probe
        if client is None:
            return
        BackgroundCall(
            lambda: client.health(timeout=self.HEALTH_TIMEOUT_S), lambda h, err: self._on_health(client, h, err), self
        ).start()

    def _on_health(self, client: EngineClient, health: Health | None, error: BaseException | None) -> None:
        if self._status.state in (EngineState.STOPPED, EngineState.STARTING) or client is not self._probe:
            return
        if error is None:
            self._health_failures = 0
            self._set_client(client)  # each of these only signals a change
            self._set_health(health)
            self._set_status(EngineStatus(EngineState.READY))
            return
        self._health_failures += 1
        if self._health_failures > self.HEALTH_FAILURES_TOLERATED and self._status.state is EngineState.READY:
            self._set_client(None)
            self._set_status(
                EngineStatus(EngineState.ERROR, EngineFault.UNREACHABLE, getattr(error, "message", str(error)))
            )

    # --- state ----------------------------------------------------------------------------------
    def _fail(self, fault: EngineFault, detail: str) -> None:
        log.warning("engine: %s (%s)", fault.value, detail)
        self._set_client(None)
        self._set_status(EngineStatus(EngineState.ERROR, fault, detail))

    def _set_client(self, client: EngineClient | None) -> None:
        if client is None:
            self._set_health(None)
        if client is not self._client:
            self._client = client
            self.clientChanged.emit(client)

    def _set_health(self, health: Health | None) -> None:
        if health != self._health:
            self._health = health
            self.healthChanged.emit(health)

    def _set_status(self, status: EngineStatus) -> None:
        if status != self._status:
            self._status = status
            self.statusChanged.emit(status)
