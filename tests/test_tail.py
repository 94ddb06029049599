"""`python -m local_aws tail`: prints what is on a stream and exits, --follow keeps reading,
and a stack that is not up is one line, not a traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from local_aws.__main__ import main
from local_aws.moto_stack import free_port
from tests.conftest import PROJECT_ROOT


@pytest.fixture(autouse=True)
def keep_sigterm_handler() -> Iterator[None]:
    """main() turns SIGTERM into KeyboardInterrupt for its own process: not for pytest's."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture
def kinesis_over_http(moto_server: str) -> Any:
    return boto3.client("kinesis", endpoint_url=moto_server, region_name="us-east-1")


def make_stream(kinesis: Any, name: str, *payloads: bytes, shards: int = 2) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1})
    for index, payload in enumerate(payloads):
        kinesis.put_record(StreamName=name, Data=payload, PartitionKey=f"key-{index}")


def test_tail_prints_every_record_on_every_shard_and_exits(
    kinesis_over_http: Any, moto_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [json.dumps({"ride_id": i}).encode() for i in range(6)] + [
        b"Hello, this is a test.",
        b"\xff\xfe",
    ]
    make_stream(kinesis_over_http, "tail-all", *records)
    assert main(["tail", "tail-all", "--endpoint-url", moto_server]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(json.loads(line)["ride_id"] for line in lines if line.startswith("{")) == list(range(6))
    assert "Hello, this is a test." in lines  # not JSON: printed as it is
    assert "\\xff\\xfe" in lines


def test_tail_uses_boto3s_endpoint_variable(
    kinesis_over_http: Any,
    moto_server: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_stream(kinesis_over_http, "tail-env", b'{"x": 1}', shards=1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    assert main(["tail", "tail-env"]) == 0
    assert capsys.readouterr().out == '{"x": 1}\n'


def test_tail_says_in_one_line_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert main(["tail", "ride_predictions", "--endpoint-url", endpoint]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert (
        err
        == f"error: nothing answers at {endpoint}: is the local pipeline up (make up)? Or set AWS_ENDPOINT_URL.\n"
    )


def test_tail_names_a_missing_stream(moto_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "no-such-stream", "--endpoint-url", moto_server]) == 2
    assert capsys.readouterr().err == f"error: no stream 'no-such-stream' at {moto_server}\n"


def test_tail_follow_keeps_reading_until_ctrl_c(kinesis_over_http: Any, moto_server: str) -> None:
    make_stream(kinesis_over_http, "tail-follow", b'{"n": 0}', shards=1)
    process = subprocess.Popen(
        [sys.executable, "-m", "local_aws", "tail", "tail-follow", "--follow", "--endpoint-url", moto_server],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline()) == {"n": 0}
        kinesis_over_http.put_record(StreamName="tail-follow", Data=b'{"n": 1}', PartitionKey="k")
        assert json.loads(process.stdout.readline()) == {"n": 1}  # arrived after it started
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0
    assert out == ""
    assert "Traceback" not in err
