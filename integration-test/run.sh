#!/usr/bin/env bash
# End-to-end test: rides on the input stream -> the function -> the output streams.
#
#   integration-test/run.sh            Docker-less: moto server + the function under awslambdaric
#                                      + the local event source mapping (what CI runs)
#   integration-test/run.sh --docker   LocalStack + the Lambda image built from the Dockerfile
#                                      (docker-compose.yaml), same tests
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

if [[ "${1:-}" == "--docker" ]]; then
    compose=(docker compose -f integration-test/docker-compose.yaml)
    cleanup() {
        status=$?
        if [[ $status -ne 0 ]]; then "${compose[@]}" logs --no-color --tail 200 || true; fi
        "${compose[@]}" down --volumes --remove-orphans || true
        exit $status
    }
    trap cleanup EXIT
    "${compose[@]}" up --detach --build --wait --wait-timeout 120
    export INTEGRATION_AWS_ENDPOINT=http://127.0.0.1:4566
    export INTEGRATION_FUNCTION_ENDPOINT=http://127.0.0.1:9000
fi

"$PYTHON" -m pytest integration-test --rootdir integration-test -p no:cacheprovider -q
