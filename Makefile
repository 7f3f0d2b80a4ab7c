# llama_ckpt: `make help` lists the targets and options.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python

MODEL ?= small## model preset: tiny, small, open_llama_3b; PRESET:float32 for full float32 mantissas (default: float16-origin weights)
MODEL_PATH ?=## a local Hugging Face model folder instead of a preset
REPEATS ?= 3## timed save+load cycles per approach
OUT ?= saved_models## output directory
KEEP ?= 0## 1 keeps each approach's last checkpoint
S3_DIR ?= $(OUT)/s3## data directory of the local S3 server (make s3-up)
LAB_IP ?= 127.0.0.1## address make lab listens on (0.0.0.0 to reach it from outside a container)
LAB_PORT ?= 8888## port of make lab
RUN_ID ?=## run id, the same id resumes a run; empty: a new one (summary: the latest)
PREPARE ?= drop-caches,hold-memory## what a run may do to the machine, as root: drop-caches (the whole page cache, before each save), trim (fstrim of the checkpoints' disk, before each save), hold-memory (keep free memory from a VM's host while it runs), comma-separated, or none
OTHER_WEIGHTS ?= 0## 1: also the compression and float16 claims on the preset's other weights (4c, 4d, 08)
SET ?=## phase notebooks' own parameters, space-separated PHASE.NAME=VALUE, e.g. "08.CLAIMS_BUDGET_S=120"

SUITE = $(PY) -m llama_ckpt suite --model $(MODEL) $(if $(MODEL_PATH),--model-path "$(MODEL_PATH)") \
	--repeats $(REPEATS) --out "$(OUT)" $(if $(RUN_ID),--run-id "$(RUN_ID)") $(if $(filter 1 yes true,$(KEEP)),--keep) \
	--prepare "$(PREPARE)" $(foreach s,$(SET),--set '$(s)') \
	$(if $(filter 1 yes true,$(OTHER_WEIGHTS)),$(foreach p,4c 4d 08,--set $(p).OTHER_WEIGHTS=true))
PHASES := 00 4a 4b 4c 4d 4e 4f 05 06 07 08 09

# phase-00 ... phase-08 are not .PHONY: make skips pattern rules for phony targets, and `make phase-4b` then
# did nothing ("Nothing to be done")
.PHONY: help setup run-all work-checks test summary report results-doc lab clean s3-up s3-down

help: ## list the targets and options
	@echo "targets:"
	@grep -E '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "options (make TARGET NAME=value):"
	@grep -E '^[A-Z0-9_]+ \?=.*## ' $(MAKEFILE_LIST) | sed -E 's/ \?= ?([^#]*)## /\t\1\t/' | awk -F'\t' '{printf "  %-14s %s (default: %s)\n", $$1, $$3, ($$2 == "" ? "none" : $$2)}'

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(VENV)/.installed ## create .venv and install the pinned requirements

run-all: setup ## every phase notebook, then the summary; prints the 8-way table
	$(SUITE) --phases all

work-checks: setup ## the work model checked in all four states (one core, no disk, a slower disk, OpenLLaMA-3B) on every approach of 05; renders 09's notebook
	$(SUITE) --phases 09 --no-summary --set 09.STATES=all --set 09.APPROACHES=05

phase-%: setup ## one phase: make phase-00, phase-4a ... phase-4f, phase-05 ... phase-09
	$(SUITE) --phases $* --no-summary

summary: setup ## rebuild the summary from the results already there
	$(PY) -m llama_ckpt suite --phases none --out "$(OUT)" $(if $(RUN_ID),--run-id "$(RUN_ID)")

report: setup ## render the executed notebooks of a run to HTML beside them
	@dir="$(OUT)/runs/$(or $(RUN_ID),$$(ls -1 $(OUT)/runs | sort | tail -1))"; \
	  echo "rendering $$dir/*.ipynb"; $(VENV)/bin/jupyter nbconvert --to html --log-level WARN "$$dir"/*.ipynb

results-doc: setup ## render the latest complete run's summary (RUN_ID: that run) to Markdown under docs/results, for the repository
	$(PY) -m llama_ckpt.report.publish --out "$(OUT)" $(if $(RUN_ID),--run-id "$(RUN_ID)") --dest docs/results

lab: setup ## JupyterLab on notebooks/ at http://LAB_IP:LAB_PORT/lab (the URL with its token is printed)
	$(VENV)/bin/jupyter lab --no-browser --ip=$(LAB_IP) --port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

test: setup ## lint (ruff), then run the tests (tiny model; two workers, the notebooks' smoke run first)
	$(PY) -m ruff check llama_ckpt tests notebooks
	$(PY) -m pytest -q -n 2 --dist loadfile tests/test_notebooks.py tests

s3-up: setup ## start a local S3 server (SeaweedFS) on loopback; prints its endpoint
	$(PY) -m llama_ckpt.store.server up "$(S3_DIR)"

s3-down: setup ## stop the server s3-up started
	$(PY) -m llama_ckpt.store.server down "$(S3_DIR)"

clean: ## remove everything under OUT (checkpoints, results, runs, charts)
	find "$(OUT)" -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
