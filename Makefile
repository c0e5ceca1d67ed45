# gradkit: `make run` and `make test` set everything up on first use.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install; e.g. TORCH='torch==2.13.0' TORCH_INDEX='--index-url <url>'.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
EXP ?= basic_gradients
SWEEP ?= descent_lr_start
LAUNCHER ?= basic
ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 5000
STORE ?= mlruns
NOTEBOOK ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
GRADKIT := MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/gradkit
RUN := $(GRADKIT) run
PYTEST := MLFLOW_DISABLE_TELEMETRY=true $(PY) -m pytest

.DEFAULT_GOAL := help
.PHONY: help list install run run-one sweep sweep-descent report reproduce test test-fast lint \
	bench docs ui server clean clean-store

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "Every experiment with its parameters, and every sweep preset: make list"

list: $(STAMP) ## every experiment (section, purpose, parameters) and sweep preset (grid)
	@$(GRADKIT) list

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) '$(TORCH)'
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install gradkit with a CPU torch (TORCH=... to change)

run: $(STAMP) ## run every experiment once into mlruns/
	$(RUN) --multirun 'experiment=glob(*)' hydra/sweeper=planned $(ARGS)

run-one: $(STAMP) ## run one experiment: make run-one EXP=jacobian ARGS='experiment.point=[1,1,1]'
	$(RUN) experiment=$(EXP) $(ARGS)

sweep: $(STAMP) ## run a sweep preset: make sweep SWEEP=descent_lr_start LAUNCHER=joblib
	$(RUN) sweep=$(SWEEP) hydra/launcher=$(LAUNCHER) $(ARGS)

sweep-descent: SWEEP = descent_lr_start
sweep-descent: sweep ## the gradient descent learning-rate x start sweep (18 jobs)

report: $(STAMP) ## summary of every run in the store: outputs/report/report.html (ARGS='since=2026-11-01')
	$(GRADKIT) report $(ARGS)

reproduce: $(STAMP) ## replay a run and diff its metrics: make reproduce RUN=<run id> [ARGS=tracking.root=DIR]
	@[ "$(origin RUN)" != file ] || { echo "usage: make reproduce RUN=<run id>" >&2; exit 2; }
	$(GRADKIT) reproduce $(RUN) $(ARGS)

test: $(STAMP) ## the whole test suite (unit, integration, system), in parallel
	$(PYTEST) -n auto --dist loadscope

test-fast: $(STAMP) ## the unit tests alone, for the edit loop
	$(PYTEST) -n auto tests/unit

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check src tests bench examples docs

docs: $(STAMP) ## the docs site into site/, its parameter tables regenerated from the code first
	$(PY) docs/gen_parameters.py
	$(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP) ## every benchmark in bench/, results in bench/results/ (NOTEBOOK=<file>: its ratios)
	@for script in $(filter-out bench/first_hour.py bench/suite.py,$(wildcard bench/*.py)); do \
		echo "== $$script"; MLFLOW_DISABLE_TELEMETRY=true $(PY) $$script || exit 1; done
	@for script in bench/first_hour.py bench/suite.py; do echo "== $$script"; \
		MLFLOW_DISABLE_TELEMETRY=true $(PY) $$script $(if $(NOTEBOOK),--notebook '$(NOTEBOOK)') \
		|| exit 1; done

ui: $(STAMP) ## MLflow UI on a store (STORE=mlruns; http://127.0.0.1:5000, HOST=, PORT=)
	$(GRADKIT) ui --store $(STORE) --host $(HOST) --port $(PORT)

server: $(STAMP) ## MLflow tracking server for tracking=server (bound to 127.0.0.1)
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/mlflow server --host $(HOST) --port $(PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/server.db \
		--artifacts-destination $(CURDIR)/mlruns/server-artifacts

clean: ## remove outputs/, site/ and caches (keeps the MLflow store)
	rm -rf outputs multirun site .pytest_cache .ruff_cache bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-store: ## remove the MLflow store mlruns/ too
	rm -rf mlruns
