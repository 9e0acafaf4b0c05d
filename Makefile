# stabsweep: `make demo` and `make test` each do their own set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# Installed only when the venv has no importable torch: the registry's unpinned newest torch
# pulls several GB of CUDA packages. Bring your own build with e.g.
#   make test VENV_FLAGS=--system-site-packages     (reuse an installed torch)
#   make test TORCH_SPEC="torch==2.13.0 --index-url <your index>"
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=
PY := $(VENV)/bin/python
# What running a sweep needs (all the demo installs), and what the tests need on top of it
# (pytest, ruff, hypothesis, Ray).
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: setup demo test lint format bench clean

$(RUNTIME): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEV): $(RUNTIME)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(DEV)

demo: $(RUNTIME)  ## the quickstart: lr sweep of an MLP on digits (under a minute on 2 cores)
	$(PY) -m stabsweep lr configs/quickstart.yaml --force

test: $(DEV) lint  ## the whole suite, end-to-end runs included
	$(PY) -m pytest -q

lint: $(DEV)
	$(VENV)/bin/ruff check stabsweep tests benchmarks examples
	$(VENV)/bin/ruff format --check stabsweep tests benchmarks examples

format: $(DEV)
	$(VENV)/bin/ruff format stabsweep tests benchmarks examples
	$(VENV)/bin/ruff check --fix stabsweep tests benchmarks examples

bench: $(DEV)  ## the engine's speed ratios, measured in one run; written to runs/bench/bench.csv
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
