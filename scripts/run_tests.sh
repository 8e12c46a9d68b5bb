#!/usr/bin/env bash
# Runs every test tier, each in its own pytest process, and fails if any tier fails.
#   bash scripts/run_tests.sh        (what `make test` calls after the set-up)
# setup (tests/setup) makes real engine environments with python -m rs_assistant.setup_engine from a
# wheelhouse cached in ~/.cache/rs_assistant-tests (built once per machine: see tests/wheelhouse.py).
# lint runs first: ruff format --check, ruff check (make lint fixes most) and mypy on rs_assistant/core.
# api runs schemathesis against a served engine (fixed seed and example count; tests/api/schemathesis.toml).
# core/engine/training/setup/api run without the Qt plugins (no QGIS in those processes);
# qgis/e2e run against Debian's QGIS with an offscreen Qt platform.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
status=0
run_tier() {
  local name=$1; shift
  echo "=== tier: $name ==="
  "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then echo "=== tier $name FAILED (exit $rc) ==="; status=1; fi
}
# All three run (and print their findings) even when one fails.
run_tier lint     bash -c 'rc=0; .venv/bin/ruff format --check . || rc=1; .venv/bin/ruff check . || rc=1; .venv/bin/mypy rs_assistant/core || rc=1; exit $rc'
run_tier core     $PY -m pytest -p no:pytest_qgis -p no:pytest-qt tests/core
run_tier engine   $PY -m pytest -p no:pytest_qgis -p no:pytest-qt tests/engine
run_tier training $PY -m pytest -p no:pytest_qgis -p no:pytest-qt tests/training
run_tier setup    $PY -m pytest -p no:pytest_qgis -p no:pytest-qt tests/setup
run_tier api      $PY -m pytest -p no:pytest_qgis -p no:pytest-qt tests/api
run_tier qgis     env QT_QPA_PLATFORM=offscreen $PY -m pytest tests/qgis tests/e2e
exit $status
