# Two commands matter: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export SAM_CLI_TELEMETRY := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# uv reads neither pip.conf nor PIP_* settings: a mirror is UV_INDEX_URL (README); its
# downloads wait as long as pip's would here.
export UV_HTTP_TIMEOUT ?= 180
CODE := shared functions local tests benchmarks

.PHONY: setup lint typecheck unit integration e2e coverage test validate build demo stop bench dashboard audit-deps clean \
	ca-bundle deploy-build scan local-stack invoke invoke-all lambda-image

setup: $(VENV)/.installed

# The pinned packages install with uv (itself pinned, installed by pip into the venv): the same
# exact pins, the same packages as pip installs, downloaded in parallel; on this busy 2-core
# machine pip took 1 min 57 s of CPU to uv's 19 s, and 3 to 6 times as long (README).
UV_PIN := uv==0.13.9
UV_INSTALL := $(BIN)/uv pip install --quiet

# uv is a target of its own, so a virtualenv made before uv was used (by pip alone) gets it
# too, not only a new one.
$(BIN)/uv:
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	@echo "installing dependencies into $(VENV) (one time, a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==25.3 setuptools==84.2.1 $(UV_PIN)

$(VENV)/.installed: requirements-dev.txt shared/requirements.txt pyproject.toml | $(BIN)/uv
	$(UV_INSTALL) --python $(BIN)/python -r requirements-dev.txt
	$(UV_INSTALL) --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $@

lint: setup
	$(BIN)/flake8 $(CODE)
	$(BIN)/bandit --quiet -c pyproject.toml -r shared functions local

# mypy, strict on the Lambda layer and the handlers (configured in pyproject.toml).
typecheck: setup
	$(BIN)/mypy

# The tests run in PYTEST_WORKERS processes at once (pytest-xdist; coverage is combined across
# them): most of the suite waits on PostgreSQL, moto, subprocesses and containers, not on the CPU,
# so 3 workers pay even on 2 cores. --dist loadfile: a test module runs whole in one worker, its
# tests in order, its module fixtures (a logical-decoding cluster, make invoke-all's run) once.
# Modules start in collected order (--no-loadscope-reorder, pyproject.toml), the ones holding a
# slow test first (tests/conftest.py), so no minutes-long module starts last.
# Modules that must not overlap take a lock (tests/e2e/conftest.py, aws_sam_build); not
# xdist_group marks, which pytest-xdist 3.8.0 ignores under pytest 9.2. PYTEST_WORKERS=0 runs
# the tests one at a time in this process.
PYTEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile

coverage: setup
	$(BIN)/pytest $(PYTEST_PARALLEL) --cov --cov-report=term -q

validate: setup
	$(BIN)/sam validate --lint

build: setup
	$(BIN)/sam build --cached

# The checks before the tests do not depend on each other: they run at once (about 2 minutes of
# CPU, and sam build waits on downloads), each target's output printed whole when it ends; any
# failure fails `make test` before the tests start. The tests come after build: the
# built-artifacts tests read its .aws-sam/build.
CHECKS := lint typecheck validate scan build

test: setup
	$(MAKE) --no-print-directory --jobs=$(words $(CHECKS)) --output-sync=target $(CHECKS)
	$(MAKE) --no-print-directory coverage

# Security scan of the CloudFormation that SAM deploys (template.yaml translated, so SAM's
# generated resources are scanned too). Any finding fails; each suppression is a
# Metadata.checkov.skip entry on its resource in template.yaml, with the reason beside it.
SCAN_VENV := .venv-scan

$(SCAN_VENV)/.installed: requirements-scan.txt $(VENV)/.installed | $(BIN)/uv
	test -x $(SCAN_VENV)/bin/python || $(PYTHON) -m venv --without-pip $(SCAN_VENV)
	$(UV_INSTALL) --python $(SCAN_VENV)/bin/python -r requirements-scan.txt
	touch $@

scan: setup $(SCAN_VENV)/.installed
	$(BIN)/python -m totes_local.cfn .aws-sam/scan/template.json
	$(SCAN_VENV)/bin/checkov --file .aws-sam/scan/template.json --framework cloudformation \
		--compact --quiet --skip-download

# The CA bundle the functions verify the databases' certificates against (sslmode verify-full),
# fetched on the deploying machine and shipped in the shared layer; git-ignored, never committed.
# RDS's global bundle covers every region; set CA_BUNDLE_URL for another one.
CA_BUNDLE_URL ?= https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
CA_BUNDLE := shared/totes/rds-ca-bundle.pem

ca-bundle: setup
	@echo "fetching the CA bundle into $(CA_BUNDLE): $(CA_BUNDLE_URL)"
	@curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 \
		--output $(CA_BUNDLE).part "$(CA_BUNDLE_URL)" || { status=$$?; rm -f $(CA_BUNDLE).part; \
		echo "make ca-bundle: could not download $(CA_BUNDLE_URL) (curl's reason above): \
make deploy-build needs it; set CA_BUNDLE_URL to a copy this machine can reach (https), or \
build without it with make build (an RDS database then fails verify-full: docs/deploy.md)"; \
		exit $$status; }
	$(BIN)/python -c 'import ssl, sys; \
		n = ssl.create_default_context(cafile=sys.argv[1]).cert_store_stats()["x509_ca"]; \
		assert n, "no CA certificate in " + sys.argv[1]; print(n, "CA certificates")' $(CA_BUNDLE).part
	mv $(CA_BUNDLE).part $(CA_BUNDLE)

# What to deploy: the build with the CA bundle in the layer (`make build` is the offline one).
deploy-build: ca-bundle
	$(BIN)/sam build

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest $(PYTEST_PARALLEL) -q tests/integration

e2e: setup
	$(BIN)/pytest $(PYTEST_PARALLEL) -q tests/e2e

demo: setup
	$(BIN)/totes demo

# Each embedded server stops when the last command using it exits; this stops any left
# running (the demo's, a background `totes local-stack`, the benchmarks').
stop: setup
	$(BIN)/totes stop

# `sam local invoke` of one function (FN=ingest|transform|load|audit|publish) against `totes local-stack`
# (moto and PostgreSQL on fixed TCP ports, started in the background if not running). Needs
# Docker; README, "Invoking a function with sam local invoke". SAM_ARGS go to sam local invoke,
# STACK_ARGS to totes local-stack. `make invoke-all` runs the whole pipeline that way (ingest,
# transform, load, audit, publish) against a fresh stack of its own (free ports) and fails on any
# failed stage.
FN ?= ingest

local-stack: setup
	$(BIN)/totes local-stack --docker-bridge $(STACK_ARGS)

# The Lambda base image (public.ecr.aws/lambda/python:3.11-x86_64) built from Debian and PyPI
# unless the official one is present, and the AWS SDK for pandas layer's packages in a folder;
# both cached (totes_local.lambda_image). Needs Docker and debootstrap, and root.
lambda-image: setup
	$(BIN)/python -m totes_local.lambda_image

invoke: lambda-image
	@$(BIN)/python -m totes_local.sam_local $(FN) --stack-args "$(STACK_ARGS)" $(SAM_ARGS)

invoke-all: lambda-image
	@$(BIN)/python -m totes_local.sam_local all $(SAM_ARGS)

dashboard: setup
	$(BIN)/totes dashboard $(ARGS)

# dlt and its dependencies (requirements-bench.txt) are for the benchmarks only: installed on
# top of requirements-dev.txt, whose pins they keep, never into the Lambda layer.
$(VENV)/.bench-installed: $(VENV)/.installed requirements-bench.txt requirements-dev.txt | $(BIN)/uv
	$(UV_INSTALL) --python $(BIN)/python -c requirements-dev.txt -r requirements-bench.txt
	touch $@

bench: setup $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks.run

# Known vulnerabilities in the pinned dependencies (pip-audit; not the pipeline's audit, which is
# `totes audit`). --strict: a package that could not be checked (no vulnerability service, no
# network) fails the target, instead of "No known vulnerabilities found" about nothing.
audit-deps:
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x .venv-audit/bin/pip-audit || { $(PYTHON) -m venv .venv-audit \
		&& .venv-audit/bin/pip install --quiet pip-audit==2.10.1; }
	.venv-audit/bin/pip-audit --strict -r requirements-dev.txt || { status=$$?; echo "make \
audit-deps: failed: a known vulnerability (listed above), or a package pip-audit could not \
check (it needs PyPI and its vulnerability service)"; exit $$status; }

clean:
	rm -rf $(VENV) .venv-audit $(SCAN_VENV) .aws-sam .demo .bench .pytest_cache .mypy_cache .coverage \
		$(CA_BUNDLE)
