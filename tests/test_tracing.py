"""Tracing (stream/tracing.py): off by default with nothing of X-Ray imported; on, the real
handler under the real runtime client sends the X-Ray daemon (here a UDP socket) a subsegment per
step of the batch and per AWS call, in the invocation's trace."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from local_aws.kinesis_events import event_from_payloads
from local_aws.lambda_runtime import PROJECT_ROOT, FunctionConfig, LocalLambda
from local_aws.moto_stack import free_port
from stream.settings import ConfigurationError, Settings
from stream.tracing import NoTracing, tracer_for
from tests.conftest import create_stream, read_stream, service_environment

RIDE = b'{"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 256}'


def test_tracing_is_off_unless_asked_for() -> None:
    assert Settings.from_env({"MODEL_URI": "m"}).tracing is False
    assert Settings.from_env({"MODEL_URI": "m", "TRACING_ENABLED": "true"}).tracing is True
    with pytest.raises(ConfigurationError, match="TRACING_ENABLED must be true or false, got 'yes'"):
        Settings.from_env({"MODEL_URI": "m", "TRACING_ENABLED": "yes"})
    assert isinstance(tracer_for(False, "s"), NoTracing)


def test_off_the_function_never_imports_the_xray_sdk(model_dir: Path, tmp_path: Path) -> None:
    """Importing it adds ~20 ms to a cold start (docs/benchmarks.md); a fresh process, as Lambda's."""
    check = (
        "import sys, lambda_function; print(sorted(m for m in sys.modules if m.startswith('aws_xray_sdk')))"
    )
    env = service_environment(MODEL_URI=str(model_dir), MODEL_CACHE_DIR=str(tmp_path))
    off = subprocess.run([sys.executable, "-c", check], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert off.stdout.strip().splitlines()[-1] == "[]"
    env["TRACING_ENABLED"] = "true"
    on = subprocess.run([sys.executable, "-c", check], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert "aws_xray_sdk.core" in on.stdout.strip().splitlines()[-1]


def received_segments(daemon: socket.socket, until: float) -> list[dict[str, Any]]:
    """What the SDK sent the daemon: each datagram is a JSON header line, then one entity."""
    entities = []
    while time.monotonic() < until:
        daemon.settimeout(max(0.01, until - time.monotonic()))
        try:
            datagram = daemon.recv(65_536)
        except TimeoutError:
            break
        header, _, body = datagram.decode().partition("\n")
        assert json.loads(header) == {"format": "json", "version": 1}
        entities.append(json.loads(body))
    return entities


def flatten(entity: dict[str, Any]) -> list[dict[str, Any]]:
    return [entity, *(e for child in entity.get("subsegments", []) for e in flatten(child))]


def test_on_each_step_and_each_aws_call_is_a_subsegment_of_the_invocations_trace(
    model_dir: Path, moto_server: str, tmp_path: Path
) -> None:
    kinesis = boto3.client("kinesis", endpoint_url=moto_server, region_name="us-east-1")
    stream = f"preds-{uuid.uuid4().hex[:8]}"
    create_stream(kinesis, stream)
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{daemon.getsockname()[1]}"
    config = FunctionConfig(
        environment={
            "MODEL_URI": str(model_dir),
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "PREDICTIONS_STREAM_NAME": stream,
            "AWS_ENDPOINT_URL": moto_server,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "TRACING_ENABLED": "true",
            "AWS_XRAY_DAEMON_ADDRESS": address,
            "PATH": os.environ["PATH"],
        },
        tracing=True,
    )
    function = LocalLambda(config, port=free_port(), log=(tmp_path / "function.log").open("ab"))
    try:
        function.start()
        event = event_from_payloads([RIDE, b"Hello, this is a test."])
        result = function.invoke(json.dumps(event).encode())
        segments = received_segments(daemon, until=time.monotonic() + 3)
    finally:
        function.stop()
        daemon.close()
    assert result.function_error is None, result.payload
    assert json.loads(result.payload) == {"batchItemFailures": []}
    assert len(read_stream(kinesis, stream)) == 1

    entities = [e for segment in segments for e in flatten(segment)]
    by_name = {e["name"]: e for e in entities}
    assert {"## lambda_handler", "## decode", "## predict", "## write", "## dead_letter"} <= set(by_name)
    assert len({e["trace_id"] for e in entities if "trace_id" in e}) == 1  # one invocation, one trace
    handler = by_name["## lambda_handler"]
    assert handler["annotations"]["ColdStart"] is True
    assert handler["annotations"]["Service"] == "ride-duration-prediction"
    # botocore is patched: the PutRecords call is a subsegment of its own, inside "## write".
    [put] = [e for e in entities if e.get("aws", {}).get("operation") == "PutRecords"]
    assert put["name"] == "kinesis"
    assert put["parent_id"] == by_name["## write"]["id"]
