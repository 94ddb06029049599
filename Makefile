# Everything runs from a virtualenv built from uv.lock; only Python 3.11 and make are needed.
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
UV := .tools/bin/uv
BIN := $(VENV)/bin
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.DEFAULT_GOAL := help
.PHONY: help setup test unit lint format train lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

setup: $(VENV)/.installed  ## create .venv from the lock file (runtime + all groups)

test: lint unit  ## everything CI runs: lint, unit and integration tests

unit: setup  ## the pytest suite
	$(BIN)/python -m pytest

lint: setup  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train: setup  ## train on synthetic data (or ARGS="--train file.parquet"), export to ./model
	$(BIN)/python -m scripts.train --export-dir model $(ARGS)

lock: | $(UV)  ## re-resolve uv.lock after editing pyproject.toml
	$(UV) lock --python $(PYTHON)

clean:  ## remove the virtualenvs, MLflow store and exported model
	rm -rf $(VENV) .tools .mlflow model .pytest_cache .ruff_cache

# --- Web service and batch scoring (same model path as the function) ---------------------
.PHONY: serve score
MODEL_URI ?= model
BIND ?= 127.0.0.1:8000
WORKERS ?= 2
INPUT ?= data/synthetic-trips.parquet
OUTPUT ?= data/predictions.parquet
# The default model (./model) and input are made on first use, so both work on a clean clone.
LOCAL_MODEL := $(if $(filter model,$(MODEL_URI)),model/MLmodel)
SAMPLE_INPUT := $(filter data/synthetic-trips.parquet,$(INPUT))

model/MLmodel: | $(VENV)/.installed
	$(BIN)/python -m scripts.train --export-dir model

data/synthetic-trips.parquet: | $(VENV)/.installed
	mkdir -p data
	$(BIN)/python -m scripts.train --write-synthetic $@

serve: setup $(LOCAL_MODEL)  ## HTTP predictions under gunicorn (MODEL_URI=model BIND=127.0.0.1:8000 WORKERS=2)
	MODEL_URI='$(MODEL_URI)' $(BIN)/gunicorn --bind $(BIND) --workers $(WORKERS) --preload \
		--no-control-socket --access-logfile - 'web_service:app_from_env()'

score: setup $(LOCAL_MODEL) $(SAMPLE_INPUT)  ## batch predictions (INPUT=… OUTPUT=… local or s3://, ARGS=…)
	MODEL_URI='$(MODEL_URI)' $(BIN)/python -m batch_scoring '$(INPUT)' '$(OUTPUT)' $(ARGS)
