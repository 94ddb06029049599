"""scripts/smoke_test.py on moto streams. moto never runs the function, so the tests play Lambda
inside the wait: when the smoke test would sleep, the real service handles what is on the input
stream (or nothing happens, for the timeout). The clock is fake: no test sleeps.

The streams are created alone, not by the stack: moto's event source mapping tries to run the
function in Docker on every put to a mapped stream, and fails for an image function."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from local_aws.kinesis_events import StreamRecord, kinesis_event
from model_service import build_service
from scripts import smoke_test
from scripts.smoke_test import SmokeTestError, wait_for_prediction
from scripts.stack import run
from stream.settings import Settings
from tests.conftest import RecordingLog, create_stream
from tests.deploy.conftest import STAGE


@pytest.fixture
def outputs(client: Any) -> dict[str, str]:
    """The stack outputs the smoke test reads, for streams of the same names."""
    kinesis = client("kinesis")
    outputs = {
        "InputStreamName": f"ride-events-{STAGE}",
        "PredictionsStreamName": f"ride-predictions-{STAGE}",
        "DeadLetterStreamName": f"ride-dead-letters-{STAGE}",
        "FunctionName": f"ride-duration-{STAGE}",
        "FunctionLogGroupName": f"/aws/lambda/ride-duration-{STAGE}",
    }
    for key in ("InputStreamName", "PredictionsStreamName", "DeadLetterStreamName"):
        create_stream(kinesis, outputs[key])
    arn = kinesis.describe_stream_summary(StreamName=outputs["InputStreamName"])["StreamDescriptionSummary"]
    return outputs | {"InputStreamArn": arn["StreamARN"]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float, then: Callable[[], None] = lambda: None) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        then()


def input_event(kinesis: Any, outputs: dict[str, str]) -> dict[str, Any]:
    """What Lambda would hand the function: every record on the input stream, from its start."""
    stream = outputs["InputStreamName"]
    [shard] = kinesis.list_shards(StreamName=stream)["Shards"]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = [
        StreamRecord(
            r["Data"], r["PartitionKey"], r["SequenceNumber"], r["ApproximateArrivalTimestamp"].timestamp()
        )
        for r in kinesis.get_records(ShardIterator=iterator)["Records"]
    ]
    return kinesis_event(records, shard["ShardId"], outputs["InputStreamArn"])


@pytest.fixture
def function(outputs: dict[str, str], model_dir: Path, tmp_path: Path, client: Any) -> Callable[[], None]:
    """The deployed function's work, done once: the real service, configured as the stack does."""
    settings = Settings.from_env(
        {
            "MODEL_URI": str(model_dir),
            "MODEL_CACHE_DIR": str(tmp_path),
            "PREDICTIONS_STREAM_NAME": outputs["PredictionsStreamName"],
            "DEAD_LETTER_STREAM_NAME": outputs["DeadLetterStreamName"],
        }
    )
    service = build_service(settings, RecordingLog())
    return lambda: service.handle(input_event(client("kinesis"), outputs))


def test_the_prediction_the_function_writes_is_found(
    client: Any, outputs: dict[str, str], function: Callable[[], None]
) -> None:
    clock = FakeClock()

    prediction = wait_for_prediction(
        client("kinesis"),
        outputs,
        "smoke-1",
        timeout=30,
        clock=clock,
        sleep=lambda s: clock.sleep(s, function),
    )

    assert prediction["prediction"]["ride_id"] == "smoke-1"
    assert prediction["prediction"]["ride_duration"] > 0
    assert clock.sleeps == [smoke_test.POLL_INTERVAL_SECONDS]


def test_predictions_for_other_rides_are_not_taken_for_ours(client: Any, outputs: dict[str, str]) -> None:
    kinesis, clock = client("kinesis"), FakeClock()

    def someone_elses_prediction() -> None:
        body = {"prediction": {"ride_id": "another-ride", "ride_duration": 12.0}}
        kinesis.put_record(
            StreamName=outputs["PredictionsStreamName"], Data=json.dumps(body), PartitionKey="x"
        )

    with pytest.raises(SmokeTestError, match="no prediction for ride smoke-2"):
        wait_for_prediction(
            kinesis,
            outputs,
            "smoke-2",
            timeout=3,
            clock=clock,
            sleep=lambda s: clock.sleep(s, someone_elses_prediction),
        )


def test_a_dead_lettered_ride_fails_with_the_reason(client: Any, outputs: dict[str, str]) -> None:
    kinesis, clock = client("kinesis"), FakeClock()

    def dead_letter() -> None:
        letter = {"reason": "invalid ride event: ride.trip_distance: Input should be a valid number"}
        kinesis.put_record(
            StreamName=outputs["DeadLetterStreamName"], Data=json.dumps(letter), PartitionKey="smoke-3"
        )

    with pytest.raises(
        SmokeTestError, match=r"ride smoke-3 was dead-lettered: invalid ride event: ride\.trip_distance"
    ):
        wait_for_prediction(
            kinesis, outputs, "smoke-3", timeout=30, clock=clock, sleep=lambda s: clock.sleep(s, dead_letter)
        )


def test_without_a_prediction_it_gives_up_at_the_timeout_and_says_where_to_look(
    client: Any, outputs: dict[str, str]
) -> None:
    clock = FakeClock()

    with pytest.raises(SmokeTestError) as raised:
        wait_for_prediction(
            client("kinesis"), outputs, "smoke-4", timeout=4.5, clock=clock, sleep=clock.sleep
        )

    assert clock.sleeps == [1.0, 1.0, 1.0, 1.0, 0.5]  # polls once a second, never past the deadline
    message = str(raised.value)
    assert message.startswith(f"no prediction for ride smoke-4 on ride-predictions-{STAGE} within 4.5 s.")
    assert f"aws logs tail /aws/lambda/ride-duration-{STAGE} --since 15m" in message
    assert f"aws lambda list-event-source-mappings --function-name ride-duration-{STAGE}" in message


def test_the_ride_it_puts_is_one_the_service_accepts(
    client: Any, outputs: dict[str, str], function: Callable[[], None]
) -> None:
    kinesis, clock = client("kinesis"), FakeClock()
    wait_for_prediction(
        kinesis, outputs, "smoke-5", timeout=5, clock=clock, sleep=lambda s: clock.sleep(s, function)
    )

    [record] = input_event(kinesis, outputs)["Records"]
    assert record["kinesis"]["partitionKey"] == "smoke-5"
    assert smoke_test.ride_event("smoke-5")["ride"] == smoke_test.SAMPLE_RIDE


def test_without_the_stack_it_says_how_to_create_it(
    aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(smoke_test.main, ["--stage", "nope"]) == 1

    assert capsys.readouterr().err == (
        "error: stack ride-duration-nope does not exist in us-east-1: "
        "make deploy STAGE=nope IMAGE=<image URI by digest>\n"
    )
