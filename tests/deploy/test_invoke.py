"""scripts/invoke.py: the sample event is one the service accepts, and the invoke round trip runs
against a stack on moto (which answers for the function with a configured response: it cannot
run an image)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from scripts import invoke as invoke_script
from scripts.stack import run
from stream.ride_events import KinesisRecord, decode_ride_event
from tests.deploy.conftest import STAGE, answer_invocations, moto_api, self_test_report

ARN = "arn:aws:kinesis:eu-west-1:210987654321:stream/ride-events-prod"


def test_the_sample_event_is_one_ride_the_service_decodes() -> None:
    event = invoke_script.sample_event(ARN, "invoke-1", now=1_700_000_000.0)

    [raw] = event["Records"]
    assert (raw["eventSourceARN"], raw["awsRegion"]) == (ARN, "eu-west-1")
    ride = decode_ride_event(KinesisRecord.from_raw(raw))
    assert ride.ride_id == "invoke-1"
    assert (ride.ride.PULocationID, ride.ride.DOLocationID) == (130, 205)


def test_each_sample_has_its_own_event_id() -> None:
    """Consumers de-duplicate predictions on the input's event id: two debug runs must differ."""
    first = invoke_script.sample_event(ARN, "invoke-1")["Records"][0]["eventID"]
    second = invoke_script.sample_event(ARN, "invoke-2")["Records"][0]["eventID"]
    assert first != second


def test_invoke_prints_the_functions_answer(
    stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    moto_api(
        aws_endpoint,
        "static/lambda-simple/response",
        {"results": ['{"batchItemFailures": []}'], "region": "us-east-1"},
    )

    assert run(invoke_script.main, ["--stage", STAGE]) == 0

    out, err = capsys.readouterr()
    assert json.loads(out) == {"batchItemFailures": []}
    assert f"invoking {stack['FunctionName']}:live with 1 record(s)" in err  # what the stream invokes


def test_write_event_writes_the_sample_for_the_stage_and_invokes_nothing(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "event.json"

    assert run(invoke_script.main, ["--stage", STAGE, "--write-event", str(target)]) == 0

    [record] = json.loads(target.read_text())["Records"]
    assert record["eventSourceARN"] == stack["InputStreamArn"]
    assert "invoking" not in capsys.readouterr().err


def test_a_missing_event_file_is_named(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(invoke_script.main, ["--stage", STAGE, "--event", str(tmp_path / "nope.json")]) == 1
    assert capsys.readouterr().err.endswith(f"error: no event file {tmp_path / 'nope.json'}\n")


def test_a_function_error_comes_back_with_the_log_tail() -> None:
    """What moto cannot answer: a function that raised."""
    client = boto3.client("lambda", region_name="us-east-1")
    body = b'{"errorMessage": "1 of 1 records failed", "errorType": "BatchRetryError"}'
    logs = "START RequestId: 1\nBatchRetryError: 1 of 1 records failed\nEND RequestId: 1\n"
    with Stubber(client) as stubber:
        stubber.add_response(
            "invoke",
            {
                "StatusCode": 200,
                "FunctionError": "Unhandled",
                "LogResult": base64.b64encode(logs.encode()).decode(),
                "Payload": StreamingBody(io.BytesIO(body), len(body)),
            },
        )
        payload, tail, error = invoke_script.invoke(client, "ride-duration-test", {"Records": []})

    assert error == "Unhandled"
    assert payload["errorType"] == "BatchRetryError"
    assert "BatchRetryError: 1 of 1 records failed" in tail


def test_self_test_invokes_the_alias_and_prints_the_report(
    stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    answer_invocations(aws_endpoint, self_test_report())

    assert run(invoke_script.main, ["--stage", STAGE, "--self-test"]) == 0

    out, err = capsys.readouterr()
    assert json.loads(out)["self_test"] == "passed"
    assert err.splitlines()[0] == f"self-test of {stack['FunctionName']}:live: passed"


def test_a_failed_self_test_exits_1_with_the_difference(
    stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    answer_invocations(aws_endpoint, self_test_report(drift=0.5))

    assert run(invoke_script.main, ["--stage", STAGE, "--self-test", "--qualifier", "1"]) == 1

    err = capsys.readouterr().err
    assert f"self-test of {stack['FunctionName']}:1: FAILED" in err
    assert ["130->205", "3.66", "mi", "10", "10.5", "0.5"] in [line.split() for line in err.splitlines()]
    assert "the model failed its self-test: 4 of 4 predictions differ by up to 0.5 min" in err


def test_an_init_failure_is_a_failed_self_test() -> None:
    """What moto cannot answer: a version whose init failed (the real one: test_pre_traffic_check.py)."""
    client = boto3.client("lambda", region_name="us-east-1")
    body = b'{"errorMessage": "cannot load model from \'s3://m/models/x/\': no MLmodel", "errorType": "ModelLoadError"}'
    with Stubber(client) as stubber:
        stubber.add_response(
            "invoke",
            {
                "StatusCode": 200,
                "FunctionError": "Unhandled",
                "Payload": StreamingBody(io.BytesIO(body), len(body)),
            },
            {
                "FunctionName": "ride-duration-test",
                "Payload": b'{"self_test": true}',
                "LogType": "Tail",
                "Qualifier": "3",
            },
        )
        outcome = invoke_script.self_test(client, "ride-duration-test", "3")

    assert (
        outcome.error
        == "the function failed (ModelLoadError): cannot load model from 's3://m/models/x/': no MLmodel"
    )
