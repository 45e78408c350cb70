# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv, start the
# embedded PostgreSQL (unless DATABASE_URL is set) and bring the schema to head.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME := $(CURDIR)/.state/dagster_home

.PHONY: setup run test lint dev db-start db-stop clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed
	@mkdir -p $(DAGSTER_HOME) && ln -sf $(CURDIR)/config/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m winiswin_pipelines.db start

run: setup
	$(PY) -m winiswin_pipelines.demo

# The import contracts first: a wrong import fails in a second, before the suite starts.
test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check winiswin_pipelines winiswin_pipelines_tests benchmarks scripts
	$(VENV)/bin/lint-imports

# The Dagster UI (webserver and daemon) on 127.0.0.1:3000; Ctrl-C stops everything.
dev: setup
	exec $(PY) -m winiswin_pipelines.dev

db-start: setup

db-stop:
	$(PY) -m winiswin_pipelines.db stop

# Stops the embedded server and deletes its data (also when it lives in a temporary folder).
clean:
	-$(PY) -m winiswin_pipelines.db destroy
	rm -rf .state
