"""What a person sees when the engine is not set up, lacks packages, or runs on the wrong device:
the supervisor's faults (no process, no pointless restarts), the settings dialog's placeholders
and its Test button, and the dock's device line and GPU warning.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/qgis/test_engine_setup_state.py -q

"A Python that lacks the engine's packages" is a bare virtual environment made from this one
(``python -m venv --without-pip``): it has the standard library and nothing else.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.core.engine_state import EngineFault, EngineState
from rs_assistant.core.protocol import DeviceInfo, Health
from rs_assistant.core.settings import Settings
from rs_assistant.ui import texts
from rs_assistant.ui.engine import EngineSupervisor
from rs_assistant.ui.settings_dialog import SettingsDialog

TORCH_VERSION = importlib.metadata.version("torch")
GPU_UNUSED = DeviceInfo(
    type="cpu",
    name="AMD EPYC",
    memory_gb=64.0,
    dtype="float32",
    torch="2.5.1+cpu",
    cuda=None,
    warning="This computer has an NVIDIA GPU, but the engine's torch is a CPU-only build.",
)
H100 = DeviceInfo(
    type="cuda", name="NVIDIA H100 80GB HBM3", memory_gb=79.2, dtype="bfloat16", torch="2.5.1+cu124", cuda="12.4"
)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A Python with the standard library only: none of the engine's packages."""
    env = tmp_path_factory.mktemp("bare") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    assert python.is_file()
    return str(python)


def lacks(python: str, module: str) -> bool:
    """True when ``python`` cannot import ``module`` (the module a report named really is missing)."""
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60).returncode != 0


def recorded(supervisor: EngineSupervisor) -> list:
    statuses = []
    supervisor.statusChanged.connect(statuses.append)
    return statuses


# --- the supervisor ---------------------------------------------------------------------------


def test_no_engine_python_and_no_set_up_is_not_set_up_and_starts_nothing(qtbot):
    supervisor = EngineSupervisor(Settings(), resolve_python=lambda settings: None)
    statuses = recorded(supervisor)
    supervisor.start()
    assert supervisor.status.state is EngineState.ERROR and supervisor.status.fault is EngineFault.NOT_SET_UP
    assert supervisor.status.fault.needs_setup
    assert supervisor.process_id is None and supervisor.client is None
    assert [s.state for s in statuses] == [EngineState.ERROR]  # never "starting"
    qtbot.wait(2 * EngineSupervisor.RESTART_DELAY_MS)
    assert len(statuses) == 1 and supervisor.process_id is None  # and no retries
    supervisor.stop()


def test_an_engine_python_lacking_packages_is_missing_packages_without_retries(qtbot, bare_python):
    supervisor = EngineSupervisor(Settings(max_restarts=3), resolve_python=lambda settings: bare_python)
    statuses = recorded(supervisor)
    supervisor.start()
    qtbot.waitUntil(lambda: supervisor.status.state is EngineState.ERROR, timeout=60000)
    status = supervisor.status
    assert status.fault is EngineFault.MISSING_PACKAGES and status.restarts_left == 0
    assert status.detail and lacks(bare_python, status.detail)  # names a module that is really missing
    qtbot.wait(3 * EngineSupervisor.RESTART_DELAY_MS)
    assert [s.state for s in statuses].count(EngineState.STARTING) == 1  # started once, not restarted
    assert supervisor.process_id is None
    supervisor.stop()


def test_a_models_file_with_an_error_is_bad_config_named_without_retries(qtbot, tmp_path):
    models = tmp_path / "models.toml"
    models.write_text('[models.x]\nbackend = "nope"\n', encoding="utf-8")  # edited by hand, wrongly
    supervisor = EngineSupervisor(
        Settings(max_restarts=3), resolve_python=lambda s: sys.executable, resolve_models=lambda s: str(models)
    )
    statuses = recorded(supervisor)
    supervisor.start()
    qtbot.waitUntil(lambda: supervisor.status.state is EngineState.ERROR, timeout=120000)
    status = supervisor.status
    assert status.fault is EngineFault.BAD_CONFIG and not status.fault.needs_setup and status.restarts_left == 0
    assert status.detail.startswith(f"models file {models}: [models.x] backend = 'nope' is unknown")
    text = texts.engine_status_text(status)
    assert "configuration has an error" in text and "Restart" in text and "ERROR rs_assistant" not in text
    qtbot.wait(3 * EngineSupervisor.RESTART_DELAY_MS)
    assert [s.state for s in statuses].count(EngineState.STARTING) == 1  # started once: a restart cannot fix the file
    supervisor.stop()


def test_a_ready_engine_reports_its_device_through_health(qtbot, tmp_path):
    supervisor = EngineSupervisor(
        Settings(device="cpu", start_timeout_s=120),
        resolve_python=lambda s: sys.executable,
        resolve_models=lambda s: "",
    )
    healths = []
    supervisor.healthChanged.connect(healths.append)
    supervisor.start()
    try:
        qtbot.waitUntil(lambda: supervisor.status.state is EngineState.READY, timeout=120000)
        assert supervisor.health is not None and healths[-1] == supervisor.health
        info = supervisor.health.device_info
        assert info.type.value == "cpu" and info.torch == TORCH_VERSION
    finally:
        supervisor.stop()
    assert supervisor.health is None and healths[-1] is None  # no engine, no device to show


# --- the settings dialog ----------------------------------------------------------------------


def test_every_field_says_what_empty_means(qtbot):
    dialog = SettingsDialog(Settings(), default_models_file=lambda: Path("/profile/rs_assistant/models.toml"))
    qtbot.addWidget(dialog)
    assert dialog.pythonWidget.lineEdit().placeholderText() == "Set up by the plugin (leave empty)"
    assert dialog.modelsWidget.lineEdit().placeholderText() == str(Path("/profile/rs_assistant/models.toml"))
    assert dialog.urlEdit.placeholderText() == "http://127.0.0.1:8765"
    assert "auto" in dialog.deviceCombo.lineEdit().placeholderText()
    assert dialog.tokenEdit.placeholderText() and dialog.outputWidget.lineEdit().placeholderText()


def test_the_dialog_keeps_an_empty_engine_python_and_the_set_up_options(qtbot):
    base = Settings(engine_env_dir="/opt/rsa-env", setup_torch="cuda", setup_proxy="http://proxy:3128")
    dialog = SettingsDialog(base)
    qtbot.addWidget(dialog)
    dialog.timeoutSpin.setValue(42)
    edited = dialog.settings()
    assert edited.engine_python == "" and edited.timeout_s == 42
    assert (edited.engine_env_dir, edited.setup_torch, edited.setup_proxy) == (
        "/opt/rsa-env",
        "cuda",
        "http://proxy:3128",
    )


def click_test(qtbot, dialog: SettingsDialog) -> str:
    dialog.testEngineButton.click()
    qtbot.waitUntil(lambda: not dialog.testing, timeout=120000)
    return dialog.testResultLabel.text()


def test_the_test_button_reports_the_device_and_torch_of_a_working_engine(qtbot):
    dialog = SettingsDialog(Settings(engine_python=sys.executable, device="cpu"))
    qtbot.addWidget(dialog)
    text = click_test(qtbot, dialog)
    assert "The engine works" in text and "CPU" in text and f"PyTorch {TORCH_VERSION}" in text


def test_the_test_button_names_the_package_a_python_lacks(qtbot, bare_python):
    dialog = SettingsDialog(Settings(engine_python=bare_python))
    qtbot.addWidget(dialog)
    text = click_test(qtbot, dialog)
    assert "lacks the package" in text and "Set up the engine again" in text
    module = text.split("“", 1)[1].split("”", 1)[0]
    assert lacks(bare_python, module)


def test_the_test_button_without_an_engine_python_says_to_set_up_first(qtbot):
    dialog = SettingsDialog(Settings(), resolve_python=lambda settings: None)
    qtbot.addWidget(dialog)
    dialog.testEngineButton.click()
    assert dialog.testResultLabel.text() == "Set up the engine first (button in the dock)."
    assert not dialog.testing


def test_the_test_button_with_a_python_that_does_not_exist(qtbot, tmp_path):
    dialog = SettingsDialog(Settings(engine_python=str(tmp_path / "no-python")))
    qtbot.addWidget(dialog)
    text = click_test(qtbot, dialog)
    assert "could not be started" in text and "no-python" in text


class _HealthOnly(BaseHTTPRequestHandler):
    body: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        data = json.dumps(self.body).encode()
        self.send_response(200 if self.path == "/v1/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_the_test_button_in_connect_mode_asks_the_engines_health_and_shows_its_warning(qtbot):
    _HealthOnly.body = Health(status="ok", version="0.2.0", device="cpu (float32)", device_info=GPU_UNUSED).to_dict()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dialog = SettingsDialog(Settings(engine_url=f"http://127.0.0.1:{server.server_port}"))
        qtbot.addWidget(dialog)
        text = click_test(qtbot, dialog)
    finally:
        server.shutdown()
    assert "PyTorch 2.5.1+cpu" in text and "CPU-only build" in text and "AMD EPYC" in text


# --- the dock -------------------------------------------------------------------------------


def test_the_dock_shows_the_device_when_ready_and_an_unused_gpu_in_amber(make_assistant):
    from rs_assistant.core.engine_state import EngineStatus

    dock = make_assistant().dock
    ready = EngineStatus(EngineState.READY)
    dock.set_engine_status(ready)
    dock.set_engine_health(Health(status="ok", version="0.2.0", device="cuda", device_info=H100))
    assert "Engine: ready · GPU: NVIDIA H100 80GB HBM3, 79 GB, bfloat16" in dock.engineStatusLabel.text()
    assert dock.deviceWarningLabel.isHidden()
    dock.set_engine_health(Health(status="ok", version="0.2.0", device="cpu", device_info=GPU_UNUSED))
    assert "Engine: ready · CPU, float32" in dock.engineStatusLabel.text()
    assert not dock.deviceWarningLabel.isHidden() and "CPU-only build" in dock.deviceWarningLabel.text()
    dock.set_engine_status(EngineStatus(EngineState.STOPPED))  # no engine: neither device nor warning
    assert "CPU, float32" not in dock.engineStatusLabel.text() and dock.deviceWarningLabel.isHidden()
    QCoreApplication.processEvents()
