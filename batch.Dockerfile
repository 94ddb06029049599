# The batch function's container image: batch/handler.py on Lambda, one month's trip file per
# invocation (docs/web-and-batch.md). `make batch-publish` builds it for linux/arm64 (or
# ARCH=x86_64) and pushes it to ECR. Needs Docker 23+ (BuildKit: RUN --mount).
#
#   docker build -f batch.Dockerfile --platform linux/arm64 -t ride-duration-batch .
#   docker build -f batch.Dockerfile --build-arg MODEL_DIR=model -t ride-duration-batch .   # model baked in
#
# A file of its own rather than a stage of ./Dockerfile: the two share the base image (pulled
# once, the same layers in ECR) and nothing after it, as the installed sets differ (pyarrow here,
# ~150 MB installed, which the stream function must not carry: its zip has a 250 MB limit); `docker build .`
# and `make publish` keep building the function's image as they did, and each file reads top to
# bottom as one image. All three images use the same .dockerignore.
#
# The stream function's base, on the same dated tag (tests/deploy/test_batch_image.py holds them
# equal, so Renovate moves both): Lambda's python3.13 on Amazon Linux 2023 (glibc 2.34).
FROM public.ecr.aws/lambda/python:3.13.2026.06.05.14

# The lock's runtime and batch sets and nothing else (`make requirements` writes the file from
# uv.lock): hashes checked, wheels only, as the image has no compiler. pip compiles their bytecode.
COPY requirements-batch.txt /tmp/requirements-batch.txt
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: \
        --target "${LAMBDA_TASK_ROOT}" --requirement /tmp/requirements-batch.txt \
    && rm /tmp/requirements-batch.txt

# What the handler imports: the model path it shares with the stream and the web service, and the
# batch package without its command (batch/cli.py, for a terminal). Readable by all: Lambda runs
# the code as another user than root.
COPY --chmod=644 model_service.py ${LAMBDA_TASK_ROOT}/
COPY --chmod=644 stream/*.py ${LAMBDA_TASK_ROOT}/stream/
COPY --chmod=644 batch/__init__.py batch/handler.py batch/job.py batch/months.py batch/output.py \
     batch/scoring.py batch/settings.py batch/triggers.py batch/validation.py ${LAMBDA_TASK_ROOT}/batch/

# The task root is read-only at run time: without .pyc files every cold start compiles in memory.
RUN python -m compileall -q "${LAMBDA_TASK_ROOT}"

# Optional: an MLflow model directory of the build context (e.g. `make train`'s ./model), so the
# function starts without reaching S3. MODEL_URI (the function's environment) overrides it.
ARG MODEL_DIR=""
ENV MODEL_URI=/opt/ml/model
RUN --mount=type=bind,target=/tmp/build-context \
    if [ -n "${MODEL_DIR}" ]; then \
        if [ ! -f "/tmp/build-context/${MODEL_DIR}/MLmodel" ]; then \
            echo "MODEL_DIR=${MODEL_DIR}: no MLmodel file there (is it an MLflow model directory inside the build context?)" >&2; \
            exit 1; \
        fi; \
        mkdir -p /opt/ml && cp -r "/tmp/build-context/${MODEL_DIR}" /opt/ml/model \
            && chmod -R a+rX /opt/ml/model; \
    fi

CMD ["batch.handler.lambda_handler"]
