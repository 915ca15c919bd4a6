# Two commands matter: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export SAM_CLI_TELEMETRY := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
CODE := shared functions local tests benchmarks

.PHONY: setup lint unit integration e2e coverage test validate build demo bench dashboard audit clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt shared/requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==25.3 setuptools==84.2.1
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

lint: setup
	$(BIN)/flake8 $(CODE)
	$(BIN)/bandit --quiet -c pyproject.toml -r shared functions local

coverage: setup
	$(BIN)/pytest --cov --cov-report=term -q

validate: setup
	$(BIN)/sam validate --lint

build: setup
	$(BIN)/sam build --cached

test: lint validate build coverage

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

e2e: setup
	$(BIN)/pytest -q tests/e2e

demo: setup
	$(BIN)/totes demo

dashboard: setup
	$(BIN)/totes dashboard $(ARGS)

# dlt and its dependencies (requirements-bench.txt) are for the benchmarks only: installed on
# top of requirements-dev.txt, whose pins they keep, never into the Lambda layer.
$(VENV)/.bench-installed: $(VENV)/.installed requirements-bench.txt requirements-dev.txt
	$(BIN)/pip install --quiet -c requirements-dev.txt -r requirements-bench.txt
	touch $@

bench: setup $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks.run

audit:
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x .venv-audit/bin/pip-audit || { $(PYTHON) -m venv .venv-audit \
		&& .venv-audit/bin/pip install --quiet pip-audit==2.10.1; }
	.venv-audit/bin/pip-audit -r requirements-dev.txt

clean:
	rm -rf $(VENV) .venv-audit .aws-sam .demo .bench .pytest_cache .coverage
