# The web service's image: web_service.py under gunicorn, POST /predict and GET /health on
# port 9696 (docs/web-and-batch.md). `make web-image` builds it. Needs Docker 23+ (BuildKit).
#
#   docker build -f web.Dockerfile -t ride-duration-web .                              # model from MODEL_URI
#   docker build -f web.Dockerfile --build-arg MODEL_DIR=model -t ride-duration-web .  # model baked in
#   docker run --rm -p 9696:9696 ride-duration-web
#
# A file of its own rather than a stage of ./Dockerfile: the two images share no layer (Lambda's
# base image and task root there, Debian's slim Python here), `docker build .` and
# `make publish` keep building the function's image as they did, and each file reads top to
# bottom as one image. Both use the same .dockerignore.
#
# CPython 3.13, as the function, so the lock's wheels are the same; on Debian trixie (glibc 2.41),
# on an exact version tag so that a rebuild gets the same Python. Renovate moves the tag
# (renovate.json); tests/deploy/test_web_image.py checks a wheel for it on arm64 and x86_64.
FROM python:3.13.16-slim-trixie

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The lock's runtime and web sets and nothing else (`make requirements` writes the file from
# uv.lock): hashes checked, wheels only, as the image has no compiler.
COPY requirements-web.txt /tmp/requirements-web.txt
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: \
        --requirement /tmp/requirements-web.txt \
    && rm /tmp/requirements-web.txt

# The service and the model path it shares with the function; owned by root, readable by all:
# the service's user cannot change its own code.
WORKDIR /app
COPY --chmod=644 web_service.py model_service.py /app/
COPY --chmod=644 stream/*.py /app/stream/
RUN python -m compileall -q /app

# Optional: an MLflow model directory of the build context (e.g. `make train`'s ./model), so the
# service starts without reaching S3. MODEL_URI at run time overrides it.
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

RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin web
USER 10001

# gunicorn's own variables: PORT binds 0.0.0.0:$PORT, WEB_CONCURRENCY is the number of workers
# (2: measured best on 2 cores, docs/web-and-batch.md); GUNICORN_CMD_ARGS takes any other setting.
ENV PORT=9696 \
    WEB_CONCURRENCY=2
EXPOSE 9696

# No curl in a slim image: the image's Python asks /health (any answer but 200 is unhealthy).
# The start period covers a model downloaded from S3 before the workers start (--preload).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '9696') + '/health', timeout=4)"]

# The settings `make serve` uses: the model loaded once before the workers fork, access log on
# stdout, no control socket; worker heartbeats in memory, not on the image's overlay filesystem.
CMD ["gunicorn", "--preload", "--no-control-socket", "--access-logfile", "-", "--worker-tmp-dir", "/dev/shm", "web_service:app_from_env()"]
