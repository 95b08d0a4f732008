#################################################################################
# GLOBALS                                                                       #
#################################################################################

PROJECT_NAME = recsys
PYTHON_INTERPRETER ?= python3
VENV = .venv
PYTHON = $(VENV)/bin/python
STAMP = $(VENV)/.installed
POETRY = .tools/bin/poetry

# Dataset for every stage: ml-100k, ml-1m, ml-20m, ml-32m, ml-latest-small, amazon-beauty, hm, custom
DATASET ?= ml-1m
# Training configs (files in configs/) that `make train` runs, in order
CONFIGS ?= sasrec-ce gpt-hybrid gpt-text
# Seeds `make train` runs each config with, e.g. SEEDS=42,1,2 (one run per seed; empty: the config's)
SEEDS ?=
# The config `make tune` tunes, and how many finished trials its study should hold in the end
TUNE_CONFIG ?= sasrec-ce
TRIALS ?= 20
# Which benchmark `make bench` runs: data, features, train, evaluate, serve, epoch, fold_in, ann,
# losses, tiger, scale or all; empty: the quick set (those that end in minutes; the hour-long ann,
# losses, scale, tiger and train run only when named)
BENCH ?=
# Extra options for one stage, e.g. make train TRAIN_ARGS="--max-epochs 5"
DATA_ARGS ?=
FEATURES_ARGS ?=
# Options for the semantic-ID step of `make features`, e.g. SEMANTIC_ARGS="--model X" after an embed with --model X
SEMANTIC_ARGS ?=
TRAIN_ARGS ?=
TUNE_ARGS ?=
EVALUATE_ARGS ?=
PREDICT_ARGS ?= --user 1
PLOTS_ARGS ?=
SERVE_ARGS ?=
INDEX_ARGS ?=

#################################################################################
# COMMANDS                                                                      #
#################################################################################

## Install Python dependencies into .venv (exact pins from requirements.lock) and poetry into .tools
.PHONY: requirements
requirements: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PYTHON) || $(PYTHON_INTERPRETER) -m venv $(VENV)
	$(PYTHON) -m pip install -q -c requirements.lock -e ".[dev]"
	test -x $(POETRY) || { $(PYTHON_INTERPRETER) -m venv .tools && .tools/bin/pip install -q "poetry==2.5.1"; }
	touch $@

## Re-resolve dependencies from pyproject.toml and rewrite requirements.lock
.PHONY: lock
lock:
	rm -rf .lock-venv && $(PYTHON_INTERPRETER) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e ".[dev]"
	{ echo "# Exact pins for 'pip install -c requirements.lock -e .[dev]'. Regenerate with 'make lock'."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^recsys' | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; \
	} > requirements.lock
	rm -rf .lock-venv

## Delete compiled Python files, the built site and test scratch
.PHONY: clean
clean:
	find . -path ./$(VENV) -prune -o -type f -name "*.py[co]" -delete
	find . -path ./$(VENV) -prune -o -type d -name "__pycache__" -exec rm -rf {} +
	rm -rf site docs/generated .pytest_cache

## Lint with flake8 and check formatting with black
.PHONY: lint
lint: requirements
	$(PYTHON) -m flake8 recsys tests benchmarks
	$(PYTHON) -m black --check recsys tests benchmarks

## Format source code with black
.PHONY: format
format: requirements
	$(PYTHON) -m black recsys tests benchmarks

## Run the test suite (unit, integration on the data mirror, browser) and the lint check
.PHONY: test
test: requirements browser-deps
	$(PYTHON) -m pytest
	$(MAKE) --no-print-directory lint

## Run the unit tests only, for the edit-test loop (no slow, browser or integration tests)
.PHONY: test-fast
test-fast: requirements
	$(PYTHON) -m pytest -m "not slow and not browser and not integration"

## Install headless Chromium for the browser tests when it is missing
# Found on PATH, as the tests find it (shutil.which("chromium") in tests/conftest.py).
.PHONY: browser-deps
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium for the browser test"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

## Run the quick benchmarks, or BENCH=all|data|features|train|evaluate|serve|epoch|fold_in|ann|losses|tiger|scale; results in reports/bench/
.PHONY: bench
bench: requirements
	$(PYTHON) -m benchmarks $(BENCH)

#################################################################################
# PROJECT RULES                                                                 #
#################################################################################

## Download (or take from RECSYS_DATA_MIRROR), parse and split DATASET: raw -> interim -> processed
.PHONY: data
data: requirements
	$(PYTHON) -m recsys.dataset download --dataset $(DATASET)
	$(PYTHON) -m recsys.dataset interim --dataset $(DATASET)
	$(PYTHON) -m recsys.dataset process --dataset $(DATASET) $(DATA_ARGS)

## Build item texts, their frozen BERT vectors and semantic IDs (RQ-VAE codes) for DATASET
.PHONY: features
features: requirements
	$(PYTHON) -m recsys.features text --dataset $(DATASET)
	$(PYTHON) -m recsys.features embed --dataset $(DATASET) $(FEATURES_ARGS)
	$(PYTHON) -m recsys.features semantic-ids --dataset $(DATASET) $(SEMANTIC_ARGS)

## Train every config in CONFIGS on DATASET, once per seed in SEEDS (resumes an interrupted run)
.PHONY: train
train: requirements
	for config in $(CONFIGS); do \
	  $(PYTHON) -m recsys.modeling.train --dataset $(DATASET) --config $$config \
	    $(if $(SEEDS),--seeds $(SEEDS)) $(TRAIN_ARGS) || exit 1; \
	done

## Tune TUNE_CONFIG on DATASET's validation split up to TRIALS trials (resumable); writes configs/tuned/
.PHONY: tune
tune: requirements
	$(PYTHON) -m recsys.modeling.tune --dataset $(DATASET) --config $(TUNE_CONFIG) \
	  --trials $(TRIALS) $(TUNE_ARGS)

## Score the trained runs (a config's seeds together) and the baselines; writes reports/metrics/DATASET.json
.PHONY: evaluate
evaluate: requirements
	$(PYTHON) -m recsys.modeling.evaluate --dataset $(DATASET) $(EVALUATE_ARGS)

## Choose EASE's l2 and item-kNN's neighbours on DATASET's validation split (configs/tuned/DATASET-baselines.yaml), then evaluate
.PHONY: tune-baselines
tune-baselines: requirements
	$(PYTHON) -m recsys.modeling.evaluate --dataset $(DATASET) --tune-baselines $(EVALUATE_ARGS)

## Browse the runs trained with TRAIN_ARGS="--logger mlflow" at http://127.0.0.1:5000
.PHONY: mlflow-ui
mlflow-ui: requirements
	$(VENV)/bin/mlflow ui --backend-store-uri "$${RECSYS_MLFLOW_URI:-sqlite:///mlflow.db}" --host 127.0.0.1

## Print readable recommendations from the best run (PREDICT_ARGS="--user 1 --k 10")
.PHONY: predict
predict: requirements
	$(PYTHON) -m recsys.modeling.predict --dataset $(DATASET) $(PREDICT_ARGS)

## Serve DATASET's best run over HTTP at http://127.0.0.1:8000 (demo page /, API docs /docs)
.PHONY: serve
serve: requirements
	$(PYTHON) -m recsys.serve --dataset $(DATASET) $(SERVE_ARGS)

## Build (or refresh) the item index of DATASET's best run, or of INDEX_ARGS="--run PATH"
.PHONY: serve-index
serve-index: requirements
	$(PYTHON) -m recsys.serve index --dataset $(DATASET) $(INDEX_ARGS)

## Draw t-SNE, training curves, metrics and sample recommendations into reports/figures/DATASET/
.PHONY: plots
plots: requirements
	$(PYTHON) -m recsys.plots all --dataset $(DATASET) $(PLOTS_ARGS)

## Generate the report pages in docs/ and build the site into site/ (mkdocs --strict)
.PHONY: report
report: requirements
	$(PYTHON) -m recsys.report --dataset $(DATASET)

## Serve the report site at http://127.0.0.1:8000
.PHONY: docs-serve
docs-serve: requirements
	$(PYTHON) -m recsys.report --dataset $(DATASET) --no-build
	$(VENV)/bin/mkdocs serve -a 127.0.0.1:8000

## The main job: data -> features -> train -> evaluate -> plots -> report for DATASET
.PHONY: all
all: data features train evaluate plots report

#################################################################################
# Self Documenting Commands                                                     #
#################################################################################

.DEFAULT_GOAL := help

define PRINT_HELP_PYSCRIPT
import re, sys; \
lines = '\n'.join([line for line in sys.stdin]); \
matches = re.findall(r'\n## (.*)\n[\s\S]+?\n([a-zA-Z_-]+):', lines); \
print('Available rules:\n'); \
print('\n'.join(['{:15}{}'.format(*reversed(match)) for match in matches]))
endef
export PRINT_HELP_PYSCRIPT

## List the targets with one line each
help:
	@$(PYTHON_INTERPRETER) -c "${PRINT_HELP_PYSCRIPT}" < $(MAKEFILE_LIST)
	@echo; echo "Variables: DATASET=$(DATASET) CONFIGS='$(CONFIGS)' SEEDS=$(SEEDS) BENCH=$(BENCH);"
	@echo "  TUNE_CONFIG=$(TUNE_CONFIG) TRIALS=$(TRIALS);"
	@echo "  per-stage options: DATA_ARGS FEATURES_ARGS SEMANTIC_ARGS TRAIN_ARGS TUNE_ARGS EVALUATE_ARGS PREDICT_ARGS PLOTS_ARGS SERVE_ARGS INDEX_ARGS"
