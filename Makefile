# modelfleet developer commands. `make demo` and `make test` are the contract:
# both install everything they need on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# Static-analysis tools whose pins clash with the project's (checkov vs ray) get their own venv.
TOOLS_VENV ?= .venv-tools
# Flower's pins (fastapi, starlette, uvicorn, protobuf, packaging) clash with Ray Serve's, so
# the federated runtime gets its own venv, installed from pyproject's `federated` extra.
FEDERATED_VENV ?= .venv-federated
CHECKOV_VERSION ?= 3.3.30
PYTEST_ARGS ?=

.PHONY: venv tools federated-venv provision crds check-crds lint test test-fast demo demo-down bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# The CPU build of torch first, so nothing pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

$(TOOLS_VENV)/.installed:
	python3 -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q --upgrade pip
	$(TOOLS_VENV)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	touch $@

tools: $(TOOLS_VENV)/.installed

# The project goes in without its dependencies (ray would bring the serving stack back): the
# runtime imports only modelfleet.zoo and modelfleet.federated, whose needs the extra lists.
$(FEDERATED_VENV)/.installed: pyproject.toml
	python3 -m venv $(FEDERATED_VENV)
	$(FEDERATED_VENV)/bin/pip install -q --upgrade pip
	$(FEDERATED_VENV)/bin/pip install -q torch==2.13.0
	$(FEDERATED_VENV)/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open( \
		"pyproject.toml", "rb"))["project"]["optional-dependencies"]["federated"]))' \
		> $(FEDERATED_VENV)/requirements.txt
	$(FEDERATED_VENV)/bin/pip install -q -r $(FEDERATED_VENV)/requirements.txt
	$(FEDERATED_VENV)/bin/pip install -q --no-deps -e .
	touch $@

federated-venv: $(FEDERATED_VENV)/.installed

provision:
	bash hack/provision.sh >/dev/null

crds: venv
	$(PY) -m modelfleet.api.crdgen crds charts/modelfleet/files/crds

check-crds: venv
	$(PY) -m modelfleet.api.crdgen --check crds charts/modelfleet/files/crds

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy modelfleet controllers
	$(VENV)/bin/lint-imports

test: venv tools federated-venv provision check-crds lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: venv provision
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

demo: venv provision
	$(PY) hack/demo.py

demo-down: venv
	$(PY) hack/demo.py --down

BENCHMARKS ?= seqpar placement serving_engine serving_migration serving_trace operator_scale routing auth fedjob

# Each benchmark's output goes to benchmarks/out/<name>.log; their RESULT lines are then
# gathered into benchmarks/results.md with the date and the machine.
bench: SHELL := /bin/bash
bench: venv federated-venv provision
	mkdir -p benchmarks/out
	set -o pipefail; for b in $(BENCHMARKS); do \
		echo "== benchmarks/$$b.py"; \
		$(PY) benchmarks/$$b.py 2>&1 | tee benchmarks/out/$$b.log || exit 1; \
	done
	$(PY) benchmarks/collect_results.py $(BENCHMARKS:%=benchmarks/out/%.log)

clean: demo-down
	rm -rf $(VENV) $(TOOLS_VENV) .demo .pytest_cache .mypy_cache .ruff_cache
