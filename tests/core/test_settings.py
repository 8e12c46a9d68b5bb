"""Settings validate on creation; the mode follows from whether an engine URL is set."""

from __future__ import annotations

import pytest

from rs_assistant.core.engine_state import (
    EngineFault,
    EngineState,
    EngineStatus,
    RestartBudget,
    missing_module,
    parse_ready_line,
)
from rs_assistant.core.protocol import ProtocolError
from rs_assistant.core.settings import EngineMode, Settings, TorchBuild


def test_defaults_start_the_engine_the_set_up_made():
    settings = Settings()
    assert settings.mode is EngineMode.MANAGED
    assert settings.engine_python == ""  # the set-up environment's Python, found by the plugin
    assert settings.engine_env_dir == "" and settings.models_file == ""  # the profile folder's
    assert settings.setup_torch == TorchBuild.AUTO.value and settings.timeout_s > 0


def test_set_up_options_are_kept_and_checked():
    settings = Settings(
        setup_torch="cuda",
        setup_index_url=" https://pypi.example/simple ",
        setup_find_links="/wheels",
        setup_proxy="http://proxy:3128",
        engine_env_dir="/opt/env",
    )
    assert settings.setup_torch == "cuda" and settings.setup_index_url == "https://pypi.example/simple"
    assert settings.setup_find_links == "/wheels" and settings.setup_proxy == "http://proxy:3128"
    with pytest.raises(ProtocolError, match="auto, cpu, cuda"):
        Settings(setup_torch="rocm")
    with pytest.raises(ProtocolError, match="http"):
        Settings(setup_index_url="pypi.example/simple")


def test_values_are_coerced_and_url_selects_connect_mode():
    settings = Settings(engine_url=" http://127.0.0.1:9000 ", timeout_s="30", max_restarts="2")
    assert settings.mode is EngineMode.CONNECT
    assert settings.engine_url == "http://127.0.0.1:9000"
    assert settings.timeout_s == 30.0 and settings.max_restarts == 2


@pytest.mark.parametrize(
    "kw",
    [{"timeout_s": 0}, {"timeout_s": "soon"}, {"max_restarts": -1}, {"engine_url": "ftp://x"}, {"max_side": 5}],
)
def test_bad_settings_are_refused(kw):
    with pytest.raises(ProtocolError):
        Settings(**kw)


def test_frozen():
    with pytest.raises(AttributeError):
        Settings().timeout_s = 1


def test_ready_line():
    assert parse_ready_line("READY http://127.0.0.1:40123\n") == "http://127.0.0.1:40123"
    assert parse_ready_line("INFO loading") is None
    assert parse_ready_line("READY nonsense") is None


def test_restart_budget_is_bounded_and_refills_after_a_healthy_run():
    budget = RestartBudget(limit=2, healthy_after_s=100)
    assert budget.take(uptime_s=1) and budget.take(uptime_s=1)
    assert not budget.take(uptime_s=1)
    assert budget.left == 0
    assert budget.take(uptime_s=500)  # it ran fine for a while: a fresh budget
    assert budget.left == 1


def test_status_needs_a_fault_exactly_when_in_error():
    assert EngineStatus(EngineState.ERROR, EngineFault.EXITED, "exit 1").fault is EngineFault.EXITED
    with pytest.raises(ValueError):
        EngineStatus(EngineState.ERROR)
    with pytest.raises(ValueError):
        EngineStatus(EngineState.READY, EngineFault.EXITED)


def test_the_module_an_engine_could_not_import_is_read_from_its_stderr():
    tail = [
        "Traceback (most recent call last):",
        '  File "server.py", line 44, in <module>',
        "    import uvicorn",
        "ModuleNotFoundError: No module named 'uvicorn'",
    ]
    assert missing_module(tail) == "uvicorn"
    assert (
        missing_module(["ImportError: DLL load failed while importing _C: The specified module could not be found."])
        == ""
    )
    assert missing_module(["RuntimeError: CUDA out of memory", "engine stopped"]) is None
    # an import error it logged and survived is not what it died of
    assert missing_module(["WARNING ImportError: No module named 'flash_attn'", "RuntimeError: boom"]) is None


def test_only_set_up_faults_ask_for_the_set_up():
    assert EngineFault.NOT_SET_UP.needs_setup and EngineFault.MISSING_PACKAGES.needs_setup
    assert not any(
        f.needs_setup for f in EngineFault if f not in (EngineFault.NOT_SET_UP, EngineFault.MISSING_PACKAGES)
    )
