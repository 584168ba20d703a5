# Two commands from a fresh machine (see README):
#   make demo   -- installs into .venv, runs broker + collector + sample traffic, prints a DuckDB summary
#   make test   -- installs into .venv, runs the whole test suite (what .ci/run calls)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := common domains settings storage collector anomaly merger backfill trafficgen embedded bench

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
	$(PY) -m bench.bench_alarms --rate 3000 --broker mock
	$(PY) -m bench.bench_alarms --rate 3000 --broker tansu
	$(PY) -m bench.bench_merger
	$(PY) -m bench.bench_backfill

clean:
	rm -rf $(VENV) data .pytest_cache

# Dependency audit: pip-audit over the pinned runtime dependencies (requirements.lock), in its own
# venv so the project's environment stays as tested. --strict fails when a package could not be
# audited, so an unreachable vulnerability service (pypi.org JSON API, or osv.dev with
# AUDIT_ARGS="-s osv") is a failure, never a silent pass. See SECURITY.md for where it can run.
AUDIT_VENV ?= .venv-audit
.PHONY: audit
audit:
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install --quiet pip-audit
	$(AUDIT_VENV)/bin/pip-audit --strict --no-deps --disable-pip -r requirements.lock $(AUDIT_ARGS)

# Long failure-injection runs, by hand (RELIABILITY.md): 50 kill -9 trials, a 60 s storage outage, new
# partitions found without help. CHAOS_TRIALS and CHAOS_SEED override; the bounded versions run in `make test`.
.PHONY: chaos
chaos: $(STAMP)
	CHAOS_TRIALS=$${CHAOS_TRIALS:-50} $(PY) -m pytest tests/reliability -m chaos -s -p no:cacheprovider $(ARGS)
