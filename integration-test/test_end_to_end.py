"""End to end: rides on the input stream -> the function -> predictions or dead letters.

Runs unchanged against the Docker-less local stack and against LocalStack + the Lambda image.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

from local_aws.kpl import aggregate
from local_aws.producer import put_records

HERE = Path(__file__).resolve().parent
# The Lambda image's emulator (run.sh --docker) answers to any function name and has no LogResult.
LOCAL_FUNCTION_ONLY = pytest.mark.skipif(
    bool(os.environ.get("INTEGRATION_FUNCTION_ENDPOINT")),
    reason="the local endpoint's behaviour, not the emulator's",
)
GOOD = 190
POISON = [b"Hello, this is a test.", b'{"ride": {"PULocationID": 1}, "ride_id": 9}', b"\xff\xfe"]


def ride(ride_id: int | str, pickup: int = 130) -> bytes:
    body = {"ride": {"PULocationID": pickup, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": ride_id}
    return json.dumps(body).encode()


def read_all(stream: str) -> list[dict[str, Any]]:
    kinesis = boto3.client("kinesis")
    out = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while True:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            out.extend(json.loads(r["Data"]) for r in page["Records"])
            if not page["Records"] or not page.get("NextShardIterator"):
                break
            iterator = page["NextShardIterator"]
    return out


def wait_for(condition: Any, timeout: float = 60, what: str = "outputs") -> Any:
    """Poll until `condition()` is truthy; fail with what was last seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not arrive within {timeout:.0f} s")
        time.sleep(0.1)


def aws_cli() -> list[str]:
    local = Path(sys.executable).parent / "aws"
    return [str(local if local.exists() else shutil.which("aws"))]


def cli_binary_format() -> list[str]:
    """awscli v2 base64-decodes blobs unless told otherwise; v1 sends them as raw text."""
    version = subprocess.run([*aws_cli(), "--version"], capture_output=True, text=True, check=True)
    return (
        []
        if "aws-cli/1." in version.stdout + version.stderr
        else ["--cli-binary-format", "raw-in-base64-out"]
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*aws_cli(), *args], capture_output=True, text=True, env=os.environ.copy(), check=False
    )
    assert result.returncode == 0, result.stderr
    return result


def test_every_ride_put_with_boto3_yields_one_prediction_or_one_dead_letter(stack: dict[str, Any]) -> None:
    kinesis = boto3.client("kinesis")
    payloads = [(str(1000 + i), ride(1000 + i, pickup=1 + i % 200)) for i in range(GOOD)]
    payloads += [(f"poison-{i}", data) for i, data in enumerate(POISON)]
    sent = {}
    for start in range(0, len(payloads), 50):
        chunk = payloads[start : start + 50]
        # Kinesis may reject entries of a successful call (throttling): they are sent again.
        result = put_records(
            kinesis, stack["input_stream"], [{"Data": d, "PartitionKey": k} for k, d in chunk]
        )
        assert result.refused == {}, f"still rejected after the retries: {result.refused}"
        for index, (shard_id, sequence_number) in result.stored.items():
            sent[f"{shard_id}:{sequence_number}"] = chunk[index][0]

    def outputs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        predictions = [p for p in read_all(stack["predictions_stream"]) if p["source"]["event_id"] in sent]
        letters = [d for d in read_all(stack["dead_letter_stream"]) if d["source"]["event_id"] in sent]
        return (predictions, letters) if len(predictions) + len(letters) >= len(sent) else None

    predictions, letters = wait_for(outputs)
    outcome = Counter(p["source"]["event_id"] for p in predictions) + Counter(
        d["source"]["event_id"] for d in letters
    )
    assert outcome == Counter(sent.keys())  # each input record exactly once, as a prediction or a dead letter
    assert sorted(p["prediction"]["ride_id"] for p in predictions) == [1000 + i for i in range(GOOD)]
    for prediction in predictions:
        assert prediction["model"] == "ride_duration_prediction_model"
        assert set(prediction["prediction"]) == {"ride_duration", "ride_id"}
        assert 1 < prediction["prediction"]["ride_duration"] < 60
    reasons = sorted(d["reason"].split(":")[0] for d in letters)
    assert reasons == ["data is not JSON", "data is not UTF-8", "invalid ride event"]


def test_kpl_aggregated_rides_mixed_with_plain_ones_yield_one_output_per_user_record(
    stack: dict[str, Any],
) -> None:
    kinesis = boto3.client("kinesis")
    users = [(str(2000 + i), ride(2000 + i, pickup=1 + i % 200)) for i in range(60)]
    users[7] = ("poison-in-an-aggregate", b"Hello, this is a test.")
    packed = aggregate(users, per_record=20)  # AWS's reference aggregator
    corrupt = dict(packed[1].entry, Data=packed[1].entry["Data"][:-1] + b"\x00")  # its MD5 no longer matches
    entries = [packed[0].entry, {"Data": ride(2100), "PartitionKey": "plain"}, corrupt, packed[2].entry]
    result = put_records(kinesis, stack["input_stream"], entries)
    assert result.refused == {}, f"still rejected after the retries: {result.refused}"
    expected = []  # the event id of each user record, as outputs name it
    for index, carries in [(0, packed[0].carries), (3, packed[2].carries)]:
        shard_id, sequence_number = result.stored[index]
        expected += [f"{shard_id}:{sequence_number}:{sub}" for sub in range(len(carries))]
    expected += [":".join(result.stored[index]) for index in (1, 2)]  # a plain record, the corrupt aggregate

    def outputs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        predictions = [
            p for p in read_all(stack["predictions_stream"]) if p["source"]["event_id"] in expected
        ]
        letters = [d for d in read_all(stack["dead_letter_stream"]) if d["source"]["event_id"] in expected]
        return (predictions, letters) if len(predictions) + len(letters) >= len(expected) else None

    predictions, letters = wait_for(outputs)
    outcome = Counter(p["source"]["event_id"] for p in predictions + letters)
    assert outcome == Counter(expected)  # each user record exactly once
    assert len(predictions) == 19 + 20 + 1  # two aggregates of 20 (one user record poison), a plain ride
    assert sorted(d["reason"].split(":")[0] for d in letters) == ["corrupt KPL aggregate", "data is not JSON"]
    [poison] = [d for d in letters if d["reason"].startswith("data is not JSON")]
    assert (poison["partition_key"], poison["source"]["sub_sequence_number"]) == ("poison-in-an-aggregate", 7)


def test_a_ride_put_with_the_aws_cli_is_predicted(stack: dict[str, Any]) -> None:
    run_cli(
        "kinesis", "put-record", "--stream-name", stack["input_stream"], "--partition-key", "cli-1",
        *cli_binary_format(), "--data", ride("from-the-cli").decode(),
    )  # fmt: skip
    [prediction] = wait_for(
        lambda: [
            p for p in read_all(stack["predictions_stream"]) if p["prediction"]["ride_id"] == "from-the-cli"
        ],
        what="the CLI ride's prediction",
    )
    assert prediction["version"]


def test_aws_lambda_invoke_with_the_sample_event(stack: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = run_cli(
        "lambda", "invoke", "--function-name", stack["function_name"], *cli_binary_format(),
        "--payload", f"file://{HERE / 'event.json'}", str(out),
    )  # fmt: skip
    assert json.loads(result.stdout)["StatusCode"] == 200
    assert "FunctionError" not in json.loads(result.stdout)
    assert json.loads(out.read_text()) == {"batchItemFailures": []}
    event_id = json.loads((HERE / "event.json").read_text())["Records"][0]["eventID"]
    [prediction] = wait_for(
        lambda: [p for p in read_all(stack["predictions_stream"]) if p["source"]["event_id"] == event_id],
        what="the invoked event's prediction",
    )
    assert prediction["prediction"]["ride_id"] == 256


@LOCAL_FUNCTION_ONLY
def test_aws_lambda_invoke_log_type_tail_returns_the_invocations_log(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    result = run_cli(
        "lambda", "invoke", "--function-name", stack["function_name"], *cli_binary_format(),
        "--payload", f"file://{HERE / 'event.json'}", "--log-type", "Tail", str(tmp_path / "out.json"),
    )  # fmt: skip
    log = base64.b64decode(json.loads(result.stdout)["LogResult"]).decode()
    assert log.startswith("START RequestId: ")
    assert '"batch processed"' in log  # the function's own JSON log line
    assert "\nEND RequestId: " in log
    assert "\nREPORT RequestId: " in log


@LOCAL_FUNCTION_ONLY
def test_an_unknown_function_name_is_lambdas_resource_not_found(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    result = subprocess.run(
        [*aws_cli(), "lambda", "invoke", "--function-name", "no-such-function", "--payload", "{}", str(tmp_path / "o")],
        capture_output=True, text=True, env=os.environ.copy(), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "ResourceNotFoundException" in result.stderr
    assert (
        "Function not found: arn:aws:lambda:us-east-1:123456789012:function:no-such-function" in result.stderr
    )


def test_a_bad_invocation_gets_lambdas_error_shape_over_plain_http(stack: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{stack['AWS_ENDPOINT_URL_LAMBDA']}/2015-03-31/functions/function/invocations",
        data=b'"not a Kinesis event"',
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        assert response.headers["X-Amz-Function-Error"] == "Unhandled"
        body = json.loads(response.read())
    assert body["errorType"] == "NotAKinesisEventError"
    assert body["errorMessage"].startswith('expected a Kinesis event {"Records": [...]}, got str')
