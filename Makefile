# RS Assistant. The README's two commands: `make demo` and `make test`.
# Set-up is idempotent (scripts/setup.sh); a second run with nothing changed takes seconds.
SHELL := /bin/bash
PY := .venv/bin/python
VERSION := $(shell sed -n 's/^version=//p' metadata.txt)
PYTEST_NOQT := -p no:pytest_qgis -p no:pytest-qt
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup lint test test-core test-engine test-training test-qgis test-e2e test-api demo package translations lock clean help

help:
	@echo "make demo      set up, then run the plugin and the engine on the demo data"
	@echo "make test      set up, then run the lint check and every test tier (core, engine, training, qgis, e2e)"
	@echo "make package   build dist/rs_assistant-$(VERSION).zip for QGIS's 'Install from ZIP'"
	@echo "make setup     only the set-up (TORCH_VARIANT=cuda for a CUDA build of torch)"
	@echo "make lint      format the code and fix what ruff can (make test checks it)"

setup:
	@bash scripts/setup.sh

test: setup translations
	@bash scripts/run_tests.sh

# Formats and fixes in place; what it cannot fix, ruff prints (the lint tier of make test fails on it).
lint: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .
	.venv/bin/mypy rs_assistant/core

test-core: setup
	$(PY) -m pytest $(PYTEST_NOQT) tests/core
test-engine: setup
	$(PY) -m pytest $(PYTEST_NOQT) tests/engine
test-training: setup
	$(PY) -m pytest $(PYTEST_NOQT) tests/training
test-qgis: setup translations
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest tests/qgis
test-e2e: setup translations
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest tests/e2e
test-api: setup
	$(PY) -m pytest $(PYTEST_NOQT) tests/api

translations:
	@bash scripts/translations.sh

package: setup translations
	$(PY) scripts/package.py

demo: setup translations
	@bash scripts/demo.sh

lock:
	.venv/bin/pip freeze --local | sort > requirements/constraints.lock.new
	@echo "review requirements/constraints.lock.new and merge it into requirements/constraints.txt"

clean:
	rm -rf dist out build .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
