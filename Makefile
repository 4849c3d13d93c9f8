# Every target creates .venv on first use; only python3 and make are needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean docs

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The benchmarks get a venv of their own, with the bench extra only: the peers they compare
# against pin versions (coredis pins packaging<26) that do not resolve with the test tools.
BENCH_VENV := .venv-bench
BENCH := $(BENCH_VENV)/bin

$(BENCH)/python:
	$(PY) -m venv $(BENCH_VENV)
	$(BENCH)/python -m pip install --quiet --upgrade pip

$(BENCH_VENV)/.installed-bench: pyproject.toml | $(BENCH)/python
	$(BENCH)/python -m pip install --quiet -e '.[bench]'
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/ratekeeper demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests $(wildcard benchmarks examples)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks examples)
	$(BIN)/mypy --strict src

test: lint
	$(BIN)/python -m pytest -q

.PHONY: soak
# The fault suite's long form: every fault x policy x front end, bounds asserted (minutes).
# The table of its figures: python -m tests.faults.table
soak: $(VENV)/.installed-test
	RATEKEEPER_SOAK=1 $(BIN)/python -m pytest -q -s tests/faults

# The documentation site in site/, built in strict mode (a broken link or reference fails).
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Each script prints its tables; targets.py then sums up the headline targets of the run.
bench: $(BENCH_VENV)/.installed-bench
	mkdir -p .bench
	$(BENCH)/python benchmarks/bench_core.py --json .bench/core.json
	$(BENCH)/python benchmarks/bench_redis.py --json .bench/redis.json
	$(BENCH)/python benchmarks/bench_window.py
	$(BENCH)/python benchmarks/bench_metrics.py
	$(BENCH)/python benchmarks/bench_web.py --json .bench/web.json
	$(BENCH)/python benchmarks/bench_clients.py
	$(BENCH)/python benchmarks/targets.py .bench/core.json .bench/redis.json .bench/web.json

clean:
	rm -rf $(VENV) $(BENCH_VENV) .bench .pytest_cache .mypy_cache .ruff_cache .hypothesis site

.PHONY: dist
# The release artefacts in dist/, built offline (the test extra installs the backend), checked.
dist: $(VENV)/.installed-test
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .
	$(BIN)/twine check --strict dist/*
