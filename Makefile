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
# (pytest, ruff, hypothesis, Ray, transformers for the real-library models, and the trackers export writes to).
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: setup demo test lint format bench curvature-table smoke smoke-baseline report-screenshot tensorboard-screenshot clean

$(RUNTIME): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEV): $(RUNTIME)
	$(PY) -m pip install --quiet -e ".[dev,models,tensorboard,mlflow]"
	touch $@

setup: $(DEV)

demo: $(RUNTIME)  ## the quickstart: tune an MLP on digits (lr, warmup, clip, confirm; under a minute on 2 cores)
	$(PY) -m stabsweep tune configs/quickstart.yaml --force
	$(PY) -m stabsweep report runs/digits-mlp

smoke: $(RUNTIME)  ## what a CI job runs: the smoke sweep, gated on the committed baseline
	$(PY) -m stabsweep lr configs/smoke.yaml --force --baseline configs/smoke.baseline.json \
		--junit runs/smoke/junit.xml --markdown runs/smoke/summary.md

smoke-baseline: $(RUNTIME)  ## accept the smoke sweep's current findings as the baseline
	$(PY) -m stabsweep lr configs/smoke.yaml --force --quiet
	cp runs/smoke/lr/summary.json configs/smoke.baseline.json

report-screenshot:  ## the README's report screenshot (needs Chromium), from `make demo`'s run
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1500 \
		--screenshot=docs/images/report.png runs/digits-mlp/report.html

tensorboard-screenshot: $(DEV)  ## the README's TensorBoard HParams picture (needs Chromium), from `make demo`'s run
	$(PY) -m stabsweep export runs/digits-mlp --to tensorboard
	$(VENV)/bin/tensorboard --logdir runs/digits-mlp/tensorboard/tune --host 127.0.0.1 --port 6123 \
		>/dev/null 2>&1 & pid=$$!; sleep 10; \
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1900,1000 \
		--virtual-time-budget=15000 --screenshot=docs/images/tensorboard_hparams.png \
		"http://127.0.0.1:6123/#hparams"; status=$$?; kill $$pid; exit $$status

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

curvature-table: $(RUNTIME)  ## the README's curvature table: each workload's lr sweep, then its probe (about 13 minutes)
	$(PY) benchmarks/curvature_table.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
