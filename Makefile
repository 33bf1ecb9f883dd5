# bookrec: `make up` sets everything up and starts the services; `make test` runs every test.
# Both create the virtual environment themselves (make setup), from the pinned requirements.lock.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: setup test lint up pipeline data repro lock clean-venv system-test-deps

setup: $(STAMP)  ## create .venv and install the pinned dependencies (idempotent)

# uv installs the lock (a complete pip freeze, hence --no-deps) in about a third of pip's time; torch's
# CPU wheel comes from the folder pip's own configuration names (find-links). Where uv cannot do it
# (no such folder, an index uv does not reach), pip installs the same lock. uv compiles the bytecode
# at install as pip does: without it every process compiles pandas, torch and MLflow from source
# (about 6 s a start, 4.2 against 9.9 s to import them), since PYTHONDONTWRITEBYTECODE is often set.
UV_VERSION := 0.13.9
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)

# The recipe is part of what the stamp stands for: a venv installed by an older one is installed again
# (--reinstall: uv compiles only what it installs, so a venv installed without bytecode gets it then).
$(STAMP): requirements.lock pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25" wheel "setuptools>=69" "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --reinstall --compile-bytecode $(addprefix --find-links ,$(FIND_LINKS)) \
		-r requirements.lock || $(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

lock:  ## re-resolve the direct dependencies and pin them again (needs network)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -e "^-e" -e "^uv==" > requirements.lock

system-test-deps:  ## what the browser and scale-out tests need from Debian (root only; skipped otherwise)
	@bash scripts/install-system-test-deps.sh

test: setup system-test-deps  ## every test: code, data, model behaviour, services
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

data: setup  ## fetch the raw Book-Crossing files (verified) and record them in DVC
	$(BIN)/bookrec data fetch

repro: data  ## rebuild every stage whose inputs changed
	$(BIN)/dvc repro

up: setup  ## install, train once if there is no production model, start Airflow, MLflow, dashboard, API
	$(BIN)/bookrec up

pipeline: setup  ## run the whole training DAG once, in the foreground
	$(BIN)/bookrec pipeline run

clean-venv:
	rm -rf $(VENV)
