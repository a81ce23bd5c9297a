# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint system-deps ides clean bench soak

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/workbench serve

# Debian packages the tests need (PostgreSQL); installs only what is missing.
system-deps:
	scripts/install-system-deps.sh

# The IDEs sessions run, where every user can read them (default /opt/openworkbench).
IDE_PREFIX ?= /opt/openworkbench
ides:
	scripts/install-ides.sh $(IDE_PREFIX)

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: install system-deps ides lint
	scripts/with-postgres.sh scripts/with-slurm.sh $(BIN)/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .workbench .pytest_cache .mypy_cache .ruff_cache

# Ours against JupyterHub + configurable-http-proxy and the bare baselines, side by side in one run:
# results in bench/results/, the table in docs/performance.md. Installs the peers on first use.
bench: install system-deps ides
	bench/install-deps.sh $(IDE_PREFIX)
	PYTHONPATH=. $(BIN)/python -m bench.run

# The long form of the load and soak test of `make test` (issue 14): 10 minutes instead of 60 s, figures printed.
SOAK_SECONDS ?= 600
soak: install system-deps ides
	OWB_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -q -s -m soak tests/test_load_soak.py $(PYTEST_ARGS)
