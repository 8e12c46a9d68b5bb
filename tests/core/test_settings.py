"""Settings validate on creation; the mode follows from whether an engine URL is set."""

from __future__ import annotations

import pytest

from rs_assistant.core.engine_state import EngineFault, EngineState, EngineStatus, RestartBudget, parse_ready_line
from rs_assistant.core.protocol import ProtocolError
from rs_assistant.core.settings import EngineMode, Settings


def test_defaults_start_an_engine():
    settings = Settings()
    assert settings.mode is EngineMode.MANAGED
    assert settings.engine_python and settings.timeout_s > 0


def test_values_are_coerced_and_url_selects_connect_mode():
    settings = Settings(engine_url=" http://127.0.0.1:9000 ", timeout_s="30", max_restarts="2")
    assert settings.mode is EngineMode.CONNECT
    assert settings.engine_url == "http://127.0.0.1:9000"
    assert settings.timeout_s == 30.0 and settings.max_restarts == 2


@pytest.mark.parametrize(
    "kw",
    [{"timeout_s": 0}, {"timeout_s": "soon"}, {"max_restarts": -1}, {"engine_url": "ftp://x"},
     {"engine_python": ""}, {"max_side": 5}],
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
