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

# Most tests on TEST_WORKERS parallel workers, then those marked `serial` alone (scripts/test-phases.sh says why).
TEST_WORKERS ?= 4
test: install system-deps ides lint
	TEST_WORKERS=$(TEST_WORKERS) scripts/with-postgres.sh scripts/with-slurm.sh scripts/test-phases.sh \
		$(BIN)/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .workbench .pytest_cache .mypy_cache .ruff_cache

# Ours against JupyterHub + configurable-http-proxy and the bare baselines, side by side in one run:
# results in bench/results/, the table in docs/performance.md. Installs the peers on first use.
bench: install system-deps ides
	bench/install-deps.sh $(IDE_PREFIX)
	PYTHONPATH=. $(BIN)/python -m bench.run

# The long forms of issue 14's tests in `make test`: the load and soak for 10 minutes instead of 60 s, a storm of
# 100 sessions instead of 20, and 20 kills inside a store transaction per database instead of 3; figures printed.
SOAK_SECONDS ?= 600
soak: install system-deps ides
	OWB_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -q -s -m soak tests/test_load_soak.py $(PYTEST_ARGS)
	STORM_SESSIONS=100 CRASH_KILLS=20 scripts/with-postgres.sh $(BIN)/pytest -q -s tests/test_storm.py \
		tests/test_crash.py -k 'storm or transaction' $(PYTEST_ARGS)
