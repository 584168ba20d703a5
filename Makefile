# Two commands from a fresh machine (see README):
#   make demo   -- installs into .venv, runs broker + collector + sample traffic, prints a DuckDB summary
#   make test   -- installs into .venv, runs the whole test suite (what .ci/run calls)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := common domains settings storage collector anomaly merger backfill trafficgen embedded

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m embedded.demo $(ARGS)

# Lint and type-check first (fast), then the suite.
test: lint
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy $(PACKAGES)

bench: $(STAMP)
	$(PY) -m bench.bench_decode --batch 20000
	$(PY) -m bench.bench_collector
	$(PY) -m bench.bench_alarms --rate 3000
	$(PY) -m bench.bench_merger
	$(PY) -m bench.bench_backfill

clean:
	rm -rf $(VENV) data .pytest_cache
