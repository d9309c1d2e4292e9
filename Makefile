# Two commands: `make run` and `make test`. Everything they need is installed from this repo.
# `make lint` (ruff) and `make typecheck` (mypy) run in CI before the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
PYTEST_ARGS ?=

.PHONY: run test test-fast lint typecheck install lock clean-venv

# Every version comes from requirements.lock (pip constraints), so a fresh clone installs what the suite
# passed with; `make lock` regenerates it from pyproject.toml's ranges.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip setuptools wheel
	# torch first, pinned: the CPU wheel; nothing may pull another build
	$(PY) -m pip install -q -c $(LOCK) torch==2.13.0
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/sdpo serve

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest $(PYTEST_ARGS)

# the suite without the tests marked slow, for iteration (CI runs `make test`)
test-fast: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check sdpo sdpo_sandbox backend workers app tests bench

# mypy on sdpo/, sdpo_sandbox/ and backend/ ([tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	$(VENV)/bin/mypy

lock:
	PYTHON=$(PYTHON) .ci/lock

clean-venv:
	rm -rf $(VENV)
