# Everything runs from a virtualenv built from uv.lock; only Python 3.11 and make are needed.
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
UV := .tools/bin/uv
BIN := $(VENV)/bin
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# Compile .pyc at install: this machine sets PYTHONDONTWRITEBYTECODE=1, so otherwise every
# process (tests, moto server, the function) recompiles scipy, sklearn and boto3 from source.
export UV_COMPILE_BYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help setup demo up test unit deploy-checks integration bench chaos lint format train lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

setup: $(VENV)/.installed  ## create .venv from the lock file (runtime + all groups)

demo: setup  ## the main job: stream sample rides through the local pipeline, print a summary, stop
	$(BIN)/python -m local_aws demo $(ARGS)

up: setup  ## start the local pipeline and keep it running (Ctrl-C stops it)
	$(BIN)/python -m local_aws up $(ARGS)

test: lint unit deploy-checks integration  ## everything CI runs: lint, unit, deploy checks, end-to-end

unit: setup  ## the unit suite: fast, in-process and on loopback (tests/, without tests/deploy)
	$(BIN)/python -m pytest tests --ignore=tests/deploy

deploy-checks: setup  ## the image, template and deploy scripts without Docker or AWS (tests/deploy)
	$(BIN)/python -m pytest tests/deploy

integration: setup  ## the end-to-end test, Docker-less (integration-test/run.sh --docker for LocalStack)
	PATH="$(CURDIR)/$(BIN):$$PATH" integration-test/run.sh

bench: setup  ## benchmarks against baselines (moto over HTTP): writes benchmarks/results/
	$(BIN)/python -m benchmarks.run $(ARGS)

chaos: setup  ## the local pipeline under injected faults, 4 runs of 10,000 rides (~10 min): lost, duplicates
	$(BIN)/python -m local_aws.chaos $(ARGS)

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
	rm -rf $(VENV) .tools .mlflow model data .local-aws .bench .pytest_cache .ruff_cache

# --- Deploy to AWS (docs/deploy.md): STAGE names the stack, ride-duration-$(STAGE) ---
STAGE ?= dev
.PHONY: requirements publish deploy smoke invoke

requirements: | $(UV)  ## requirements-lambda.txt from uv.lock: the runtime set the image installs
	$(UV) export --frozen --no-default-groups --no-emit-project --quiet > requirements-lambda.txt

publish: setup  ## build the image, push it to ECR, print it by digest (MODEL_DIR=model bakes ./model in)
	$(BIN)/python -m scripts.publish $(if $(MODEL_DIR),--model-dir $(MODEL_DIR)) $(ARGS)

deploy: setup  ## create or update the stack: IMAGE=<uri@sha256:...> (first time), MODEL_URI=s3://...
	$(BIN)/python -m scripts.deploy --stage $(STAGE) $(if $(IMAGE),--image-uri $(IMAGE)) $(if $(MODEL_URI),--model-uri $(MODEL_URI)) $(ARGS)

smoke: setup  ## put a ride on the stage's input stream and wait for its prediction
	$(BIN)/python -m scripts.smoke_test --stage $(STAGE) $(ARGS)

invoke: setup  ## invoke the stage's function once with a sample Kinesis event, print its logs
	$(BIN)/python -m scripts.invoke --stage $(STAGE) $(ARGS)

# --- Web service and batch scoring (same model path as the function) ---------------------
.PHONY: serve score
# MODEL_URI (the same variable as the function's) defaults to ./model here; deploy reads it too,
# so the default is applied per target, not globally.
SERVE_MODEL_URI = $(or $(MODEL_URI),model)
BIND ?= 127.0.0.1:8000
WORKERS ?= 2
INPUT ?= data/synthetic-trips.parquet
OUTPUT ?= data/predictions.parquet
# The default model (./model) and input are made on first use, so both work on a clean clone.
LOCAL_MODEL := $(if $(filter model,$(SERVE_MODEL_URI)),model/MLmodel)
SAMPLE_INPUT := $(filter data/synthetic-trips.parquet,$(INPUT))

model/MLmodel: uv.lock | $(VENV)/.installed  # retrained when the lock (scikit-learn) changes
	$(BIN)/python -m scripts.train --export-dir model

data/synthetic-trips.parquet: | $(VENV)/.installed
	mkdir -p data
	$(BIN)/python -m scripts.train --write-synthetic $@

serve: setup $(LOCAL_MODEL)  ## HTTP predictions under gunicorn (MODEL_URI=model BIND=127.0.0.1:8000 WORKERS=2)
	MODEL_URI='$(SERVE_MODEL_URI)' $(BIN)/gunicorn --bind $(BIND) --workers $(WORKERS) --preload \
		--no-control-socket --access-logfile - 'web_service:app_from_env()'

score: setup $(LOCAL_MODEL) $(SAMPLE_INPUT)  ## batch predictions (INPUT=… OUTPUT=… local or s3://, ARGS=…)
	MODEL_URI='$(SERVE_MODEL_URI)' $(BIN)/python -m batch_scoring '$(INPUT)' '$(OUTPUT)' $(ARGS)
