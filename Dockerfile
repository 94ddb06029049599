# The Lambda function's container image. `make publish` builds it for linux/arm64 (the default,
# Graviton) or linux/amd64 (ARCH=x86_64) and pushes it to ECR (docs/deploy.md). Needs Docker 23+
# (BuildKit: RUN --mount).
#
#   docker build --platform linux/arm64 -t ride-duration .                      # model from MODEL_URI
#   docker build --platform linux/arm64 --build-arg MODEL_DIR=model -t ride-duration .   # model baked in
#
# Lambda's python3.13 on Amazon Linux 2023 (glibc 2.34), supported until 2029-06-30, on a dated
# tag so that a rebuild gets the same runtime; the tag is multi-architecture, and `make publish`
# records the digest it resolves to in the image's labels. Renovate moves the tag
# (renovate.json). tests/deploy/test_container_image.py checks that every locked runtime
# package has a wheel for it on both architectures.
FROM public.ecr.aws/lambda/python:3.13.2026.06.05.14

# The lock's runtime set and nothing else (`make requirements` writes the file from uv.lock):
# hashes checked, wheels only, as the image has no compiler. pip compiles their bytecode.
COPY requirements-lambda.txt /tmp/requirements-lambda.txt
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: \
        --target "${LAMBDA_TASK_ROOT}" --requirement /tmp/requirements-lambda.txt \
    && rm /tmp/requirements-lambda.txt

# Lambda runs the code as another user than root: the files must be readable by all. The entry
# point and the service at the root, their building blocks in the package stream/.
COPY --chmod=644 lambda_function.py model_service.py ${LAMBDA_TASK_ROOT}/
COPY --chmod=644 stream/*.py ${LAMBDA_TASK_ROOT}/stream/

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

CMD ["lambda_function.lambda_handler"]
