# Two commands from a clean clone: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# `make run BIND=0.0.0.0:8080 WORKERS=4`; without them REFERRAL_BIND and REFERRAL_WORKERS
# apply (defaults 127.0.0.1:8000 and 2): the flags are passed only when given.
BIND ?=
WORKERS ?=

.PHONY: run test lint typecheck check openapi seed clean bench

# The venv is rebuilt when the project's dependencies change.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/referral seed
	$(BIN)/referral serve $(if $(BIND),--bind $(BIND)) $(if $(WORKERS),--workers $(WORKERS))

test: $(BIN)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

check: lint typecheck test

# Regenerate openapi.yaml from the code (a test fails when they drift).
openapi: $(BIN)/.installed
	$(BIN)/flask --app referral openapi write --format=yaml openapi.yaml

# Benchmarks, not tests (docs/performance.md, bench/README.md): the service against a PostGIS
# peer and a bare Flask ping. Needs wrk (apt-get install wrk), Redis, and PostgreSQL on
# 127.0.0.1 for the peer (PostGIS is installed with apt-get when missing).
# E.g. BENCH_ARGS="--quick", "--sizes 10000,100000", "--database-url postgresql+psycopg://...".
bench: $(BIN)/.installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

seed: $(BIN)/.installed
	$(BIN)/referral seed

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache .hypothesis test-artifacts
