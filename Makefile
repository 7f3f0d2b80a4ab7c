# llama_ckpt: `make help` lists the targets.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python

MODEL ?= small## model preset: tiny, small, open_llama_3b
MODEL_PATH ?=## a local Hugging Face model folder instead of a preset
REPEATS ?= 3## timed save+load cycles per approach
OUT ?= saved_models## output directory
KEEP ?= 0## 1 keeps each approach's last checkpoint

MODEL_ARGS := $(if $(MODEL_PATH),--model-path "$(MODEL_PATH)",--model $(MODEL))
KEEP_ARGS := $(if $(filter 1 yes true,$(KEEP)),--keep,)

.PHONY: help setup run-all test clean

help: ## list the targets and options
	@echo "targets:"
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "options (make TARGET NAME=value):"
	@grep -E '^[A-Z_]+ \?=.*## ' $(MAKEFILE_LIST) | sed -E 's/ \?= ?([^#]*)## /\t\1\t/' | awk -F'\t' '{printf "  %-10s %s (default: %s)\n", $$1, $$3, ($$2 == "" ? "none" : $$2)}'

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(VENV)/.installed ## create .venv and install the pinned requirements

run-all: setup ## run every approach on MODEL and print the comparison table
	$(PY) -m llama_ckpt run --approach all $(MODEL_ARGS) --repeats $(REPEATS) --out "$(OUT)" $(KEEP_ARGS)

test: setup ## run the tests (tiny model, a few minutes)
	$(PY) -m pytest -q

clean: ## remove everything under OUT (checkpoints, results)
	find "$(OUT)" -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
