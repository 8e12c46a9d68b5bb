"""The engine that Processing algorithms talk to, found or started once per QGIS session.

    client = ENGINE.client(feedback)      # a fresh EngineClient for one job (its cancel() is the job's own)

In order of preference:

1. the plugin's own engine, when its supervisor (the chat dock's) has one ready: same URL and token;
2. the engine at the URL in the plugin's settings (connect mode), with the settings' token;
3. an engine this module starts from the settings (``engine_python``, ``models_file``, ``device``),
   as the plugin does: ``-m rs_assistant.engine serve --port 0 --token-file F``, then the
   ``READY http://HOST:PORT`` line. It is kept for later jobs, started again if it died, and
   stopped when the plugin unloads or the interpreter exits.

Processing runs algorithms in a worker thread (or in a script without an event loop), so the
process is a plain ``subprocess.Popen`` read by two daemon threads, not a QProcess.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from qgis.core import QgsFeedback
from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.core.client import EngineClient
from rs_assistant.core.engine_state import parse_ready_line
from rs_assistant.core.paths import PACKAGE_DIR, engine_environment
from rs_assistant.core.protocol import ErrorCode, ProtocolError
from rs_assistant.core.settings import EngineMode, Settings

log = logging.getLogger(__name__)

STOP_WAIT_S = 5.0
HEALTH_TIMEOUT_S = 5.0


def tr(text: str) -> str:
    return QCoreApplication.translate("ProcessingEngine", text)


class EngineUnavailable(Exception):
    """No engine could be found or started; the message is translated and meant for the user."""


def _load_settings() -> Settings:
    """The plugin's settings, with an empty engine Python or models file resolved as the plugin does
    (the engine set-up's environment, the profile's models file; rs_assistant.ui.profile)."""
    from dataclasses import replace

    from rs_assistant.ui import profile
    from rs_assistant.ui.settings_store import SettingsStore

    settings = SettingsStore().load()
    return replace(
        settings, engine_python=profile.engine_python(settings) or "", models_file=profile.models_file(settings)
    )


def _command_key(settings: Settings) -> tuple[str, str, str]:
    return (settings.engine_python, settings.models_file, settings.device)


class _EngineProcess:
    """One ``serve`` process: its URL and token once ready, the tail of its stderr."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.command_key = _command_key(settings)
        self._token_dir = Path(tempfile.mkdtemp(prefix="rs_assistant_processing_"))  # mode 0700
        self.token_file = self._token_dir / "engine.token"
        self.command = [
            settings.engine_python,
            "-m",
            "rs_assistant.engine",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--token-file",
            str(self.token_file),
        ]
        if settings.models_file:
            self.command += ["--models", settings.models_file]
        if settings.device:
            self.command += ["--device", settings.device]
        self.url = ""
        self.token = ""
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._ready: queue.Queue[str] = queue.Queue()
        root = str(PACKAGE_DIR.parent)
        env = engine_environment(os.environ)
        log.info("starting an engine for Processing: %s", " ".join(self.command))
        self.process = subprocess.Popen(  # noqa: S603 (the interpreter the person configured)
            self.command,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
        threading.Thread(target=self._read_stdout, name="rs-engine-stdout", daemon=True).start()
        threading.Thread(target=self._read_stderr, name="rs-engine-stderr", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            url = parse_ready_line(line)
            if url is not None and not self.url:
                self._ready.put(url)
            elif line.strip():
                log.info("engine: %s", line.rstrip())

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            if line.strip():
                self.stderr_tail.append(line.rstrip())
                log.debug("engine: %s", line.rstrip())

    def wait_ready(self, feedback: QgsFeedback | None) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            try:
                url = self._ready.get(timeout=0.2)
                break
            except queue.Empty:
                pass
            if not self.alive():
                time.sleep(0.2)  # let the stderr reader catch the last words
                last = self.stderr_tail[-1] if self.stderr_tail else ""
                raise EngineUnavailable(
                    tr("The engine exited while starting (code {code}): {detail}").format(
                        code=self.process.returncode, detail=last or " ".join(self.command)
                    )
                )
            if feedback is not None and feedback.isCanceled():
                self.stop()
                raise ProtocolError(ErrorCode.CANCELLED, "cancelled while the engine was starting")
            if time.monotonic() > deadline:
                self.stop()
                raise EngineUnavailable(
                    tr("The engine did not start within {seconds:g} s.").format(seconds=self.settings.start_timeout_s)
                )
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError:
            token = ""
        if not token:
            self.stop()
            raise EngineUnavailable(tr("The engine wrote no token to {path}.").format(path=self.token_file))
        self.url, self.token = url, token
        log.info("engine for Processing ready at %s (pid %d)", url, self.pid)

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_WAIT_S)
            log.info("engine for Processing stopped")
        shutil.rmtree(self._token_dir, ignore_errors=True)


class ProcessingEngine:
    """Finds (or starts and keeps) the engine for Processing jobs. Thread-safe."""

    def __init__(self, load_settings: Callable[[], Settings] = _load_settings):
        self._load_settings = load_settings
        self._lock = threading.Lock()
        self._supervisor = None
        self._process: _EngineProcess | None = None

    def attach(self, supervisor) -> None:
        """Uses the plugin's engine (an object with ``connection() -> (url, token) | None``) when it is ready."""
        self._supervisor = supervisor

    def detach(self, supervisor) -> None:
        if self._supervisor is supervisor:
            self._supervisor = None

    @property
    def process_id(self) -> int | None:
        """The engine process this module started, if it runs."""
        process = self._process
        return process.pid if process is not None and process.alive() else None

    def client(self, feedback: QgsFeedback | None = None) -> EngineClient:
        settings = self._load_settings()
        supervisor = self._supervisor
        connection = supervisor.connection() if supervisor is not None else None
        if connection is not None:
            return EngineClient(connection[0], connection[1], settings.timeout_s)
        if settings.mode is EngineMode.CONNECT:
            return EngineClient(settings.engine_url, settings.engine_token, settings.timeout_s)
        with self._lock:
            process = self._process
            if process is not None and (
                not process.alive() or process.command_key != _command_key(settings) or not self._healthy(process)
            ):
                process.stop()
                process = self._process = None
            if process is None:
                if not settings.engine_python:
                    raise EngineUnavailable(
                        tr(
                            "The engine is not set up yet: click “Set up the engine” in the RS Assistant "
                            "panel, or choose the engine's Python in the settings."
                        )
                    )
                try:
                    process = _EngineProcess(settings)
                except OSError as exc:
                    raise EngineUnavailable(
                        tr("Cannot start the engine with {python}: {error}").format(
                            python=settings.engine_python, error=exc
                        )
                    ) from None
                try:
                    process.wait_ready(feedback)
                except BaseException:
                    process.stop()
                    raise
                self._process = process
        return EngineClient(process.url, process.token, settings.timeout_s)

    @staticmethod
    def _healthy(process: _EngineProcess) -> bool:
        try:
            EngineClient(process.url, process.token).health(timeout=HEALTH_TIMEOUT_S)
        except ProtocolError:
            return False
        return True

    def shutdown(self) -> None:
        """Stops the engine this module started (plugin unload, interpreter exit)."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            process.stop()


#: The one engine connection of this QGIS session.
ENGINE = ProcessingEngine()
atexit.register(ENGINE.shutdown)
