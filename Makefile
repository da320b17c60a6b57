# The two commands a newcomer needs: `make demo` and `make test`. Both install what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit system deps venv dist dist-windows windows-deps bench faults clean

deps:
	@scripts/install-deps.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	@$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: deps $(STAMP)

# Wine, the embeddable Windows CPython and the Windows wheels, cached under $VMWRAPPER_CACHE
# (docs/windows.md). Without them (no network, no apt) the Windows suite is skipped.
windows-deps: venv
	@scripts/windows-toolchain.sh >/dev/null || echo "make: no Windows toolchain; tests/windows will be skipped"

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit tests/lifecycle

system: venv
	$(BIN)/pytest -q -m system tests/system

# Two workers, a test file each (its module fixtures stay in one process): the suite spends
# half its time waiting on guests and clients, so two files at once halve the wall time.
test: lint typecheck windows-deps
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=15

demo: venv
	@scripts/demo.sh

dist: venv
	@$(BIN)/pip install -q -e '.[dist]'
	@scripts/build-dist.sh

# dist/vmwrapper.exe for Windows hosts, built under Wine (docs/windows.md).
dist-windows: venv
	@scripts/build-dist-windows.sh

bench: venv
	@for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

faults: venv
	$(BIN)/python scripts/faults.py $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache
