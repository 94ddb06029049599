"""Brings the pipeline up for the end-to-end test and tears it down after.

Docker-less (default): `python -m local_aws up` — moto server, the function under awslambdaric,
the local event source mapping — on free loopback ports.
With Docker (`run.sh --docker`): LocalStack and the Lambda image are already up (compose);
INTEGRATION_AWS_ENDPOINT / INTEGRATION_FUNCTION_ENDPOINT point at them and `local_aws up` only
creates the resources and runs the mapping. Either way the tests read the endpoints from the
ready file and reach AWS through boto3's standard endpoint variables.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 180  # a first run may train the model


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def nothing_listens_on(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("stack")
    ready, output = work / "ready.json", work / "stack.log"
    ports = [free_port(), free_port()]
    command = [
        sys.executable, "-m", "local_aws", "up", "--port", str(ports[0]), "--lambda-port", str(ports[1]),
        "--log-dir", str(work / "logs"), "--ready-file", str(ready),
    ]  # fmt: skip
    if endpoint := os.environ.get("INTEGRATION_AWS_ENDPOINT"):
        command += ["--aws-endpoint", endpoint]
    if endpoint := os.environ.get("INTEGRATION_FUNCTION_ENDPOINT"):
        # the image's emulator serves the function under the name "function"
        command += ["--function-endpoint", endpoint, "--function-name", "function"]
    with output.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if process.poll() is not None:
                pytest.fail(f"local stack exited with {process.returncode}:\n{output.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"local stack not ready within {READY_TIMEOUT} s:\n{output.read_text()}")
            time.sleep(0.1)
        description = json.loads(ready.read_text())
        description["logs"] = [output, work / "logs" / "function.log"]
        yield description
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert all(nothing_listens_on(port) for port in ports), "a local stack process is still listening"


@pytest.fixture(scope="session")
def aws_env(stack: dict[str, Any]) -> dict[str, str]:
    """The environment a user exports to reach the stack (boto3's standard variables)."""
    names = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]  # fmt: skip
    return {name: stack[name] for name in names}


@pytest.fixture(autouse=True)
def use_stack_endpoints(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """On a failure, show the stack's and the function's logs."""
    outcome = yield
    report = outcome.get_result()
    stack = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
    if report.failed and stack:
        for path in stack["logs"]:
            if Path(path).exists():
                report.sections.append((f"log {Path(path).name}", Path(path).read_text()[-20_000:]))
