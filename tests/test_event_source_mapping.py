"""The local event source mapping, one documented behaviour per test.

Kinesis and the destinations are moto; the function is a scripted stand-in so each test can
decide what the function answers. The real function runs under it in integration-test/.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from local_aws import event_source_mapping
from local_aws.event_source_mapping import (
    EventSourceMapping,
    FailureDestination,
    InvokeResult,
    MappingConfig,
    MappingConfigError,
    MappingStats,
    ShardPoller,
    lambda_invoker,
)
from tests.conftest import create_stream

SHARD = "shardId-000000000000"


class ScriptedFunction:
    """Records every event it gets; `answer` decides the response from the decoded payloads."""

    def __init__(self, answer: Callable[[list[str], list[str]], InvokeResult] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.answer = answer or (lambda _payloads, _sequence_numbers: InvokeResult({"batchItemFailures": []}))

    def __call__(self, event: dict[str, Any]) -> InvokeResult:
        self.events.append(event)
        records = event["Records"]
        return self.answer(
            [base64.b64decode(r["kinesis"]["data"]).decode() for r in records],
            [r["kinesis"]["sequenceNumber"] for r in records],
        )

    @property
    def batches(self) -> list[list[str]]:
        return [[base64.b64decode(r["kinesis"]["data"]).decode() for r in e["Records"]] for e in self.events]


def put(kinesis: Any, *payloads: str) -> list[str]:
    return [
        kinesis.put_record(StreamName="rides", Data=p.encode(), PartitionKey="k")["SequenceNumber"]
        for p in payloads
    ]


@pytest.fixture
def stream(kinesis: Any) -> Any:
    create_stream(kinesis, "rides")
    return kinesis


def poller(
    kinesis: Any,
    function: ScriptedFunction,
    destination: FailureDestination | None = None,
    clock: Callable[[], float] = time.time,
    retry_delay: float = 0,
    **settings: Any,
) -> ShardPoller:
    config = MappingConfig.from_dict({"StartingPosition": "TRIM_HORIZON", **settings})
    return ShardPoller(
        kinesis,
        "rides",
        SHARD,
        config=config,
        invoke=function,
        destination=destination or FailureDestination(None, lambda _s: None),
        stats=MappingStats(),
        stop=threading.Event(),
        retry_delay=retry_delay,
        clock=clock,
    )


def drain(p: ShardPoller, max_steps: int = 50) -> None:
    for _ in range(max_steps):
        if not p.step():
            return
    raise AssertionError("the poller never ran out of work")


def numbers(count: int) -> list[str]:
    return [str(i) for i in range(count)]


def test_batch_size_and_shard_order(stream: Any) -> None:
    put(stream, *numbers(25))
    function = ScriptedFunction()
    drain(poller(stream, function, BatchSize=10))
    assert function.batches == [numbers(25)[:10], numbers(25)[10:20], numbers(25)[20:]]


def test_events_have_the_aws_shape(stream: Any) -> None:
    [sequence_number] = put(stream, '{"ride_id": 1}')
    function = ScriptedFunction()
    drain(poller(stream, function))
    [record] = function.events[0]["Records"]
    assert set(record) == {
        "kinesis", "eventSource", "eventVersion", "eventID", "eventName", "invokeIdentityArn", "awsRegion", "eventSourceARN"
    }  # fmt: skip
    assert set(record["kinesis"]) == {
        "kinesisSchemaVersion", "partitionKey", "sequenceNumber", "data", "approximateArrivalTimestamp"
    }  # fmt: skip
    assert record["eventID"] == f"{SHARD}:{sequence_number}"
    assert record["eventSource"] == "aws:kinesis"
    assert record["eventName"] == "aws:kinesis:record"
    assert record["eventSourceARN"] == "arn:aws:kinesis:us-east-1:123456789012:stream/rides"
    assert isinstance(record["kinesis"]["approximateArrivalTimestamp"], float)
    assert base64.b64decode(record["kinesis"]["data"]) == b'{"ride_id": 1}'
    assert record["kinesis"]["partitionKey"] == "k"
    assert record["awsRegion"] == "us-east-1"


def test_events_name_the_region_of_the_stream(kinesis: Any) -> None:
    create_stream(kinesis, "rides")
    put(kinesis, "a")
    function = ScriptedFunction()
    config = MappingConfig(StartingPosition="TRIM_HORIZON")
    stats = MappingStats()
    destination = FailureDestination(None, lambda _s: None)
    p = ShardPoller(
        kinesis, "rides", SHARD, config=config, invoke=function, destination=destination, stats=stats,
        stop=threading.Event(), region="eu-west-1",
    )  # fmt: skip
    drain(p)
    [record] = function.events[0]["Records"]
    assert record["awsRegion"] == "eu-west-1"
    assert record["eventSourceARN"] == "arn:aws:kinesis:eu-west-1:123456789012:stream/rides"
    assert (stats.invocations, stats.records_delivered) == (1, 1)


def test_starting_position_latest_skips_what_was_there(stream: Any) -> None:
    put(stream, "old")
    function = ScriptedFunction()
    p = poller(stream, function, StartingPosition="LATEST")
    put(stream, "new")
    drain(p)
    assert function.batches == [["new"]]


def test_starting_position_trim_horizon_reads_everything(stream: Any) -> None:
    put(stream, "old", "older")
    function = ScriptedFunction()
    drain(poller(stream, function, StartingPosition="TRIM_HORIZON"))
    assert function.batches == [["old", "older"]]


def test_starting_position_at_timestamp(stream: Any) -> None:
    put(stream, "before")
    cut = time.time()
    while time.time() < cut + 0.005:  # moto stamps arrivals in milliseconds
        pass
    put(stream, "after")
    function = ScriptedFunction()
    drain(poller(stream, function, StartingPosition="AT_TIMESTAMP", StartingPositionTimestamp=cut + 0.002))
    assert function.batches == [["after"]]


def test_batching_window_waits_for_more_records(stream: Any) -> None:
    put(stream, "first")
    later = threading.Timer(0.2, lambda: put(stream, "second", "third"))
    later.start()
    function = ScriptedFunction()
    p = poller(stream, function, BatchSize=10, MaximumBatchingWindowInSeconds=2)
    started = time.monotonic()
    p.step()
    later.join()
    assert function.batches == [["first", "second", "third"]]
    assert time.monotonic() - started < 2.0 + 1.0


def test_batching_window_stops_early_when_the_batch_is_full(stream: Any) -> None:
    put(stream, *numbers(5))
    function = ScriptedFunction()
    started = time.monotonic()
    poller(stream, function, BatchSize=5, MaximumBatchingWindowInSeconds=30).step()
    assert function.batches == [numbers(5)]
    assert time.monotonic() - started < 5


def test_without_a_window_the_batch_goes_as_soon_as_records_are_there(stream: Any) -> None:
    put(stream, "first")
    function = ScriptedFunction()
    p = poller(stream, function, BatchSize=10)
    p.step()
    put(stream, "second")
    p.step()
    assert function.batches == [["first"], ["second"]]


def fail_once_at(payload: str) -> Callable[[list[str], list[str]], InvokeResult]:
    failed: set[str] = set()

    def answer(payloads: list[str], sequence_numbers: list[str]) -> InvokeResult:
        if payload in payloads and payload not in failed:
            failed.add(payload)
            return InvokeResult(
                {"batchItemFailures": [{"itemIdentifier": sequence_numbers[payloads.index(payload)]}]}
            )
        return InvokeResult({"batchItemFailures": []})

    return answer


@pytest.mark.parametrize("failing", [3, 1, 0])
def test_report_batch_item_failures_redelivers_from_the_lowest_failure(stream: Any, failing: int) -> None:
    put(stream, *numbers(10))
    function = ScriptedFunction(fail_once_at(str(failing)))
    p = poller(stream, function, BatchSize=10, FunctionResponseTypes=["ReportBatchItemFailures"])
    drain(p)
    assert function.batches == [numbers(10), numbers(10)[failing:]]
    assert (p.stats.invocations, p.stats.partial_failures, p.stats.function_errors) == (2, 1, 0)
    assert p.stats.records_delivered == 20 - failing


def scripted(*answers: Callable[[list[str], list[str]], InvokeResult]) -> ScriptedFunction:
    """A function answering each invocation with the next answer, then with success."""
    remaining = iter(answers)

    def answer(payloads: list[str], sequence_numbers: list[str]) -> InvokeResult:
        return next(remaining, lambda _p, _s: InvokeResult(None))(payloads, sequence_numbers)

    return ScriptedFunction(answer)


def item_failure_at(payload: str) -> Callable[[list[str], list[str]], InvokeResult]:
    return lambda p, s: InvokeResult({"batchItemFailures": [{"itemIdentifier": s[p.index(payload)]}]})


def test_several_reported_failures_redeliver_from_the_lowest_whatever_their_order(stream: Any) -> None:
    put(stream, *numbers(10))
    function = scripted(
        lambda _p, s: InvokeResult({"batchItemFailures": [{"itemIdentifier": s[i]} for i in (5, 3, 7)]})
    )
    drain(poller(stream, function, BatchSize=10, FunctionResponseTypes=["ReportBatchItemFailures"]))
    assert function.batches == [numbers(10), numbers(10)[3:]]


def test_item_failures_are_ignored_unless_the_mapping_reports_them(stream: Any) -> None:
    put(stream, *numbers(10))
    function = ScriptedFunction(fail_once_at("3"))
    drain(poller(stream, function, BatchSize=10, FunctionResponseTypes=[]))
    assert function.batches == [numbers(10)]


@pytest.mark.parametrize(
    "failures",
    [
        [{"itemIdentifier": ""}],
        [{"itemIdentifier": None}],
        [{"itemIdentifer": "1"}],
        [{"itemIdentifier": "999"}],
    ],
    ids=["empty", "null", "misspelled-key", "unknown-sequence-number"],
)
def test_an_unreadable_item_failure_fails_the_whole_batch(
    stream: Any, failures: list[dict[str, Any]]
) -> None:
    put(stream, *numbers(4))
    answers = iter([InvokeResult({"batchItemFailures": failures})])
    function = ScriptedFunction(lambda _p, _s: next(answers, InvokeResult({"batchItemFailures": []})))
    drain(poller(stream, function, FunctionResponseTypes=["ReportBatchItemFailures"]))
    assert function.batches == [numbers(4), numbers(4)]


def always_error(_payloads: list[str], _sequence_numbers: list[str]) -> InvokeResult:
    return InvokeResult({"errorMessage": "boom", "errorType": "RuntimeError"}, "Unhandled")


@pytest.fixture
def queue(aws: None) -> tuple[Any, str]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="mapping-failures")["QueueUrl"]
    return sqs, url


def sqs_destination() -> FailureDestination:
    clients = {
        "sqs": boto3.client("sqs", region_name="us-east-1"),
        "s3": boto3.client("s3", region_name="us-east-1"),
    }
    return FailureDestination("arn:aws:sqs:us-east-1:123456789012:mapping-failures", clients.__getitem__)


def received(queue: tuple[Any, str]) -> list[dict[str, Any]]:
    sqs, url = queue
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


def test_function_errors_retry_the_batch_up_to_maximum_retry_attempts_then_discard(
    stream: Any, queue: tuple[Any, str]
) -> None:
    sequence_numbers = put(stream, "a", "b")
    function = ScriptedFunction(always_error)
    p = poller(stream, function, sqs_destination(), MaximumRetryAttempts=2)
    drain(p)
    put(stream, "c")
    function.answer = lambda _p, _s: InvokeResult(None)
    drain(p)
    assert function.batches == [["a", "b"]] * 3 + [["c"]]  # first try + 2 retries, then moves on
    [failure] = received(queue)
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 3
    assert failure["responseContext"]["functionError"] == "Unhandled"
    info = failure["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        *sequence_numbers,
        2,
    )
    assert info["shardId"] == SHARD
    assert p.stats.records_discarded == 2
    assert p.stats.discarded_batches == [failure]
    assert (p.stats.invocations, p.stats.function_errors, p.stats.records_delivered) == (4, 3, 7)
    assert_on_failure_record_shape(failure, {"statusCode": 200, "functionError": "Unhandled"})


ISO_MILLISECONDS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def assert_on_failure_record_shape(failure: dict[str, Any], response: dict[str, Any]) -> None:
    """What AWS sends a Kinesis mapping's on-failure destination, field by field."""
    assert set(failure) == {"requestContext", "responseContext", "version", "timestamp", "KinesisBatchInfo"}
    assert failure["version"] == "1.0"
    assert re.fullmatch(ISO_MILLISECONDS, failure["timestamp"])
    context = failure["requestContext"]
    assert re.fullmatch(r"[0-9a-f-]{36}", context["requestId"])
    assert context["functionArn"] == "arn:aws:lambda:us-east-1:123456789012:function:ride-duration-prediction"
    assert failure["responseContext"] == {"executedVersion": "$LATEST", **response}
    info = failure["KinesisBatchInfo"]
    assert info["streamArn"] == "arn:aws:kinesis:us-east-1:123456789012:stream/rides"
    first, last = info["approximateArrivalOfFirstRecord"], info["approximateArrivalOfLastRecord"]
    assert re.fullmatch(ISO_MILLISECONDS, first)
    assert re.fullmatch(ISO_MILLISECONDS, last)
    assert first <= last


def test_unbounded_retries_keep_the_shard_blocked(stream: Any) -> None:
    put(stream, "poison", "next")
    function = ScriptedFunction(always_error)
    p = poller(stream, function, MaximumRetryAttempts=-1)
    for _ in range(20):
        p.step()
    assert function.batches == [["poison", "next"]] * 20


def test_progress_restarts_the_attempt_count_of_the_records_still_failing(
    stream: Any, queue: tuple[Any, str]
) -> None:
    sequence_numbers = put(stream, *numbers(15))
    # A function error (attempt 1); "0"-"2" done, "3" fails (progress: attempt 1 of a new
    # batch, so one retry is left); the batch from "3" fails whole (attempt 2): given up on.
    function = scripted(always_error, item_failure_at("3"), always_error)
    p = poller(
        stream,
        function,
        sqs_destination(),
        BatchSize=10,
        MaximumRetryAttempts=1,
        FunctionResponseTypes=["ReportBatchItemFailures"],
    )
    drain(p)
    assert function.batches == [numbers(10), numbers(10), numbers(13)[3:], ["13", "14"]]
    [failure] = received(queue)
    assert failure["requestContext"]["approximateInvokeCount"] == 2
    info = failure["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        sequence_numbers[3],
        sequence_numbers[12],
        10,
    )


def test_exhausted_retries_after_progress_discard_from_the_lowest_failure_and_deliver_what_follows(
    stream: Any, queue: tuple[Any, str]
) -> None:
    sequence_numbers = put(stream, *numbers(15))
    function = scripted(item_failure_at("3"))
    p = poller(
        stream,
        function,
        sqs_destination(),
        BatchSize=10,
        MaximumRetryAttempts=0,
        FunctionResponseTypes=["ReportBatchItemFailures"],
    )
    drain(p)
    assert function.batches == [numbers(10), numbers(15)[10:]]  # "0"-"2" done, "3"-"9" discarded
    [failure] = received(queue)
    info = failure["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        sequence_numbers[3],
        sequence_numbers[9],
        7,
    )
    assert p.stats.records_discarded == 7


def waits_in(p: ShardPoller, expected: list[float]) -> bool:
    """Whether each of len(expected) failing steps set the next try that far ahead (each is
    not waited out). The step's own duration is all the slack allowed."""
    for delay in expected:
        before = time.monotonic()
        p.step()
        after = time.monotonic()
        if not p.lanes[0].not_before - after <= delay <= p.lanes[0].not_before - before:
            return False
        p.lanes[0].not_before = 0.0  # try again now
    return True


def test_retries_back_off_exponentially_up_to_a_ceiling(stream: Any) -> None:
    put(stream, "a")
    p = poller(stream, ScriptedFunction(always_error), retry_delay=1.0)
    assert event_source_mapping.MAX_RETRY_DELAY == 5.0
    assert waits_in(p, [1.0, 2.0, 4.0, 5.0, 5.0])


def test_failed_destination_sends_back_off_exponentially_up_to_a_ceiling(stream: Any) -> None:
    put(stream, "a")
    p = poller(
        stream,
        ScriptedFunction(always_error),
        unreachable_destination(),
        retry_delay=4.0,
        MaximumRetryAttempts=0,
    )
    assert event_source_mapping.MAX_SEND_RETRY_DELAY == 30.0
    assert waits_in(p, [4.0, 8.0, 16.0, 30.0, 30.0])
    assert p.stats.destination_failures == 5


class UnreachableQueue:
    def get_queue_url(self, **_: Any) -> dict[str, Any]:
        raise ConnectionRefusedError("connection refused")


def unreachable_destination() -> FailureDestination:
    return FailureDestination("arn:aws:sqs:us-east-1:123456789012:gone", lambda _service: UnreachableQueue())


def test_a_batch_stays_within_the_6_mb_invoke_payload(stream: Any) -> None:
    # 1,000,000 bytes is 1,333,336 of base64: four such records fit in an event, a fifth would not.
    put(stream, *[str(i) * 1_000_000 for i in range(6)])
    function = ScriptedFunction()
    drain(poller(stream, function, BatchSize=10))
    assert [len(batch) for batch in function.batches] == [4, 2]
    assert all(len(json.dumps(event)) <= event_source_mapping.MAX_INVOKE_PAYLOAD for event in function.events)


def test_bisect_isolates_the_failing_record_without_using_retries(
    stream: Any, queue: tuple[Any, str]
) -> None:
    sequence_numbers = put(stream, *numbers(8))
    succeeded: list[str] = []

    def answer(payloads: list[str], _s: list[str]) -> InvokeResult:
        if "5" in payloads:
            return always_error(payloads, _s)
        succeeded.extend(payloads)
        return InvokeResult(None)

    function = ScriptedFunction(answer)
    p = poller(
        stream,
        function,
        sqs_destination(),
        BatchSize=8,
        BisectBatchOnFunctionError=True,
        MaximumRetryAttempts=1,
    )
    drain(p)
    assert function.batches == [
        numbers(8),
        ["0", "1", "2", "3"],
        ["4", "5", "6", "7"],
        ["4", "5"],
        ["4"],
        ["5"],
        ["5"],  # the one retry MaximumRetryAttempts allows
        ["6", "7"],
    ]
    assert succeeded == ["0", "1", "2", "3", "4", "6", "7"]
    [failure] = received(queue)
    info = failure["KinesisBatchInfo"]
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == sequence_numbers[5]
    assert p.stats.bisections == 3


def test_records_older_than_maximum_record_age_are_discarded_without_invoking(
    stream: Any, queue: tuple[Any, str]
) -> None:
    sequence_numbers = put(stream, "stale", "stale too")
    function = ScriptedFunction()
    p = poller(
        stream, function, sqs_destination(), MaximumRecordAgeInSeconds=60, clock=lambda: time.time() + 120
    )
    drain(p)
    assert function.events == []
    [failure] = received(queue)
    assert failure["requestContext"]["condition"] == "RecordAgeExceeded"
    assert failure["KinesisBatchInfo"]["startSequenceNumber"] == sequence_numbers[0]
    assert failure["KinesisBatchInfo"]["batchSize"] == 2
    assert failure["requestContext"]["approximateInvokeCount"] == 0
    assert_on_failure_record_shape(failure, {"statusCode": 0, "functionError": ""})  # never invoked


def test_only_the_records_past_the_age_limit_are_discarded(stream: Any, queue: tuple[Any, str]) -> None:
    put(stream, "stale")
    time.sleep(0.02)  # moto stamps arrivals in milliseconds
    cut = time.time()
    time.sleep(0.02)
    put(stream, "fresh")
    function = ScriptedFunction()
    drain(poller(stream, function, sqs_destination(), MaximumRecordAgeInSeconds=60, clock=lambda: cut + 60))
    assert function.batches == [["fresh"]]
    [failure] = received(queue)
    assert failure["KinesisBatchInfo"]["batchSize"] == 1


def test_fresh_records_are_not_discarded_for_age(stream: Any) -> None:
    put(stream, "fresh")
    function = ScriptedFunction()
    drain(poller(stream, function, MaximumRecordAgeInSeconds=60))
    assert function.batches == [["fresh"]]


def test_an_s3_destination_also_gets_the_invocation_payload(stream: Any) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="failures")
    put(stream, "a")
    destination = FailureDestination("arn:aws:s3:::failures", {"s3": s3}.__getitem__)
    drain(poller(stream, ScriptedFunction(always_error), destination, MaximumRetryAttempts=0))
    [obj] = s3.list_objects_v2(Bucket="failures")["Contents"]
    # Keyed by shard and day, as AWS's own destination objects are.
    assert re.fullmatch(rf"aws/lambda/local-mapping/{SHARD}/\d{{4}}/\d\d/\d\d/[0-9a-f-]{{36}}", obj["Key"])
    stored = json.loads(s3.get_object(Bucket="failures", Key=obj["Key"])["Body"].read())
    assert stored["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert json.loads(stored["payload"])["Records"][0]["kinesis"]["data"] == base64.b64encode(b"a").decode()


def test_records_discarded_unread_reach_s3_without_a_payload(stream: Any) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="failures")
    put(stream, "stale")
    destination = FailureDestination("arn:aws:s3:::failures", {"s3": s3}.__getitem__)
    clock = lambda: time.time() + 120  # noqa: E731
    drain(poller(stream, ScriptedFunction(), destination, MaximumRecordAgeInSeconds=60, clock=clock))
    [obj] = s3.list_objects_v2(Bucket="failures")["Contents"]
    stored = json.loads(s3.get_object(Bucket="failures", Key=obj["Key"])["Body"].read())
    assert stored["requestContext"]["condition"] == "RecordAgeExceeded"
    assert "payload" not in stored  # no invocation was made


def test_an_sns_destination_publishes_the_record_to_its_topic(stream: Any) -> None:
    sns = boto3.client("sns", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    topic = sns.create_topic(Name="mapping-failures")["TopicArn"]
    url = sqs.create_queue(QueueName="topic-reader")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"}
    )
    sequence_numbers = put(stream, "a")
    destination = FailureDestination(topic, {"sns": sns}.__getitem__)
    drain(poller(stream, ScriptedFunction(always_error), destination, MaximumRetryAttempts=0))
    [message] = sqs.receive_message(QueueUrl=url)["Messages"]
    record = json.loads(message["Body"])
    assert record["KinesisBatchInfo"]["startSequenceNumber"] == sequence_numbers[0]
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"


def test_an_unknown_destination_service_is_named_and_its_records_kept(stream: Any) -> None:
    put(stream, "a")
    arn = "arn:aws:lambda:us-east-1:123456789012:function:elsewhere"
    p = poller(
        stream,
        ScriptedFunction(always_error),
        FailureDestination(arn, {}.__getitem__),
        MaximumRetryAttempts=0,
    )
    with pytest.raises(MappingConfigError, match=f"on-failure destination must be SQS, SNS or S3, got {arn}"):
        p.destination.send({}, None)
    p.step()
    assert (p.stats.destination_failures, p.stats.records_discarded, len(p.lanes[0].buffer)) == (1, 0, 1)


class RaisingLambda:
    def invoke(self, **_: Any) -> dict[str, Any]:
        raise ConnectionRefusedError("connection refused")


class AnsweringLambda:
    def __init__(self, payload: bytes, function_error: str | None = None) -> None:
        self.payload, self.function_error = payload, function_error
        self.calls: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        response: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(self.payload)}
        if self.function_error:
            response["FunctionError"] = self.function_error
        return response


def test_an_invoke_that_raises_is_a_function_error_named_like_lambdas() -> None:
    result = lambda_invoker(RaisingLambda(), "f")({"Records": []})
    assert result == InvokeResult(
        {"errorMessage": "connection refused", "errorType": "ConnectionRefusedError"}, "Unhandled", 0
    )


@pytest.mark.parametrize(
    ("payload", "function_error", "expected"),
    [
        (b'{"batchItemFailures": []}', None, {"batchItemFailures": []}),
        (b"", None, None),
        (b"not json \xff", None, "not json \ufffd"),
        (b'{"errorMessage": "boom"}', "Unhandled", {"errorMessage": "boom"}),
    ],
)
def test_the_lambda_invoker_sends_the_event_and_reads_the_answer(
    payload: bytes, function_error: str | None, expected: Any
) -> None:
    client = AnsweringLambda(payload, function_error)
    result = lambda_invoker(client, "ride-duration")({"Records": [{"n": 1}]})
    assert result == InvokeResult(expected, function_error, 200)
    assert client.calls == [{"FunctionName": "ride-duration", "Payload": b'{"Records": [{"n": 1}]}'}]


def test_the_mapping_polls_every_shard_in_threads_and_stops_cleanly(kinesis: Any) -> None:
    create_stream(kinesis, "rides", shards=3)
    for i in range(30):
        kinesis.put_record(StreamName="rides", Data=str(i).encode(), PartitionKey=f"key-{i}")
    done = threading.Event()
    seen: list[str] = []
    lock = threading.Lock()

    def answer(payloads: list[str], _s: list[str]) -> InvokeResult:
        with lock:
            seen.extend(payloads)
            if len(seen) == 30:
                done.set()
        return InvokeResult(None)

    mapping = EventSourceMapping(
        kinesis,
        "rides",
        ScriptedFunction(answer),
        MappingConfig(StartingPosition="TRIM_HORIZON"),
        poll_interval=0.01,
    )
    assert len(mapping.pollers) == 3
    mapping.start()
    assert done.wait(10)
    mapping.stop()
    assert sorted(seen, key=int) == numbers(30)
    assert not any(thread.is_alive() for thread in mapping._threads)


def test_settings_in_the_cli_input_json_form_are_read() -> None:
    """`aws lambda create-event-source-mapping --cli-input-json`: its own keys are ignored, the
    response types become a tuple, a datetime timestamp becomes epoch seconds."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    config = MappingConfig.from_dict(
        {
            "FunctionName": "ride-duration",
            "EventSourceArn": "arn:aws:kinesis:us-east-1:123456789012:stream/rides",
            "Enabled": True,
            "UUID": "x",
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "StartingPosition": "AT_TIMESTAMP",
            "StartingPositionTimestamp": at,
        }
    )
    assert config.FunctionResponseTypes == ("ReportBatchItemFailures",)
    assert config.reports_item_failures
    assert config.StartingPositionTimestamp == at.timestamp()


@pytest.mark.parametrize(
    ("setting", "lowest", "highest", "message"),
    [
        ("BatchSize", 1, 10_000, "BatchSize must be 1-10000"),
        ("MaximumBatchingWindowInSeconds", 0, 300, "MaximumBatchingWindowInSeconds must be 0-300"),
        ("MaximumRetryAttempts", -1, 10_000, "MaximumRetryAttempts must be -1-10000"),
        ("MaximumRecordAgeInSeconds", 60, 604_800, "MaximumRecordAgeInSeconds must be -1 or 60-604800"),
        ("ParallelizationFactor", 1, 10, "ParallelizationFactor must be 1-10"),
    ],
)
def test_settings_take_aws_ranges_bounds_included(
    setting: str, lowest: int, highest: int, message: str
) -> None:
    for value in (lowest, highest):
        assert getattr(MappingConfig.from_dict({setting: value}), setting) == value
    for value in (lowest - 1, highest + 1):
        with pytest.raises(MappingConfigError) as raised:
            MappingConfig.from_dict({setting: value})
        assert str(raised.value) == message


def test_an_unknown_starting_position_is_named() -> None:
    with pytest.raises(MappingConfigError) as raised:
        MappingConfig(StartingPosition="EARLIEST")
    assert str(raised.value) == "StartingPosition must be LATEST, TRIM_HORIZON or AT_TIMESTAMP"


def test_the_mapping_sends_discarded_batches_to_its_configured_destination(
    stream: Any, queue: tuple[Any, str]
) -> None:
    sequence_numbers = put(stream, "a")
    clients = {"sqs": boto3.client("sqs", region_name="us-east-1")}
    config = MappingConfig.from_dict(
        {
            "StartingPosition": "TRIM_HORIZON",
            "MaximumRetryAttempts": 1,
            "DestinationConfig": {
                "OnFailure": {"Destination": "arn:aws:sqs:us-east-1:123456789012:mapping-failures"}
            },
        }
    )
    function = ScriptedFunction(always_error)
    mapping = EventSourceMapping(
        stream, "rides", function, config, clients=clients.__getitem__, retry_delay=0
    )
    drain(mapping.pollers[SHARD])
    assert function.batches == [["a"], ["a"]]
    [failure] = received(queue)
    assert failure["KinesisBatchInfo"]["startSequenceNumber"] == sequence_numbers[0]


def test_the_mapping_describes_the_settings_that_differ_from_the_defaults(stream: Any) -> None:
    config = MappingConfig(BatchSize=10, FunctionResponseTypes=("ReportBatchItemFailures",))
    mapping = EventSourceMapping(stream, "rides", ScriptedFunction(), config)
    assert mapping.describe() == {
        "BatchSize": 10,
        "MaximumBatchingWindowInSeconds": 0,
        "StartingPosition": "LATEST",
        "FunctionResponseTypes": ("ReportBatchItemFailures",),
        "BisectBatchOnFunctionError": False,
        "MaximumRetryAttempts": -1,
        "MaximumRecordAgeInSeconds": -1,
        "ParallelizationFactor": 1,
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"BatchSize": 0}, "BatchSize must be 1-10000"),
        ({"MaximumRecordAgeInSeconds": 10}, "MaximumRecordAgeInSeconds must be -1 or 60-604800"),
        ({"StartingPosition": "AT_TIMESTAMP"}, "needs StartingPositionTimestamp"),
        (
            {"FunctionResponseTypes": ["Everything"]},
            "FunctionResponseTypes may only hold ReportBatchItemFailures",
        ),
        ({"TumblingWindowInSeconds": 5}, r"unsupported settings: \['TumblingWindowInSeconds'\]"),
    ],
)
def test_settings_are_checked_like_aws_does(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingConfigError, match=message):
        MappingConfig.from_dict(settings)


def test_a_failed_destination_send_keeps_the_records_and_is_retried_before_the_checkpoint_moves(
    stream: Any, queue: tuple[Any, str]
) -> None:
    sequence_numbers = put(stream, "a", "b")
    sqs, url = queue
    sqs.delete_queue(QueueUrl=url)  # the destination is gone: every send fails
    function = ScriptedFunction(always_error)
    p = poller(stream, function, sqs_destination(), MaximumRetryAttempts=0)
    for _ in range(3):
        p.step()
    assert function.batches == [["a", "b"]]  # given up on once; only the send is retried
    assert p.stats.destination_failures == 3
    assert p.stats.records_discarded == 0
    assert [record.sequence_number for record in p.lanes[0].buffer] == sequence_numbers  # not skipped
    sqs.create_queue(QueueName="mapping-failures")
    put(stream, "c")
    function.answer = lambda _p, _s: InvokeResult(None)
    drain(p)
    assert function.batches == [["a", "b"], ["c"]]
    [failure] = received(queue)
    info = failure["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == tuple(sequence_numbers)
    assert p.stats.records_discarded == 2


def put_keyed(kinesis: Any, records: list[tuple[str, str]]) -> None:
    for key, payload in records:
        kinesis.put_record(StreamName="rides", Data=payload.encode(), PartitionKey=key)


def test_parallelization_factor_runs_batches_of_a_shard_at_once_and_keeps_each_keys_order(
    stream: Any,
) -> None:
    keys = [f"ride-{i}" for i in range(8)]
    put_keyed(stream, [(key, f"{key}/{n}") for n in range(4) for key in keys])
    lock = threading.Lock()
    in_flight, peak = [0], [0]

    def answer(_payloads: list[str], _s: list[str]) -> InvokeResult:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)  # long enough for the other lanes' invocations to start
        with lock:
            in_flight[0] -= 1
        return InvokeResult(None)

    function = ScriptedFunction(answer)
    p = poller(stream, function, BatchSize=2, ParallelizationFactor=4)
    drain(p, max_steps=100)
    assert peak[0] > 1  # batches of one shard ran concurrently
    assert len({p.lane_of(key) for key in keys}) > 1
    delivered = [payload for batch in function.batches for payload in batch]
    assert sorted(delivered) == sorted(f"{key}/{n}" for n in range(4) for key in keys)  # each once
    for key in keys:  # a key's records arrive in the order they were put
        assert [d for d in delivered if d.startswith(f"{key}/")] == [f"{key}/{n}" for n in range(4)]
    for batch in function.batches:  # a batch holds the records of one lane
        assert len({p.lane_of(payload.split("/")[0]) for payload in batch}) == 1


def test_with_parallelization_a_failing_lane_retries_alone_and_keeps_its_order(stream: Any) -> None:
    keys = [f"ride-{i}" for i in range(6)]
    put_keyed(stream, [(key, f"{key}/{n}") for n in range(3) for key in keys])
    function = ScriptedFunction(fail_once_at("ride-0/1"))
    p = poller(
        stream,
        function,
        BatchSize=10,
        ParallelizationFactor=3,
        FunctionResponseTypes=["ReportBatchItemFailures"],
    )
    drain(p, max_steps=100)
    delivered = [payload for batch in function.batches for payload in batch]
    failing_lane = p.lane_of("ride-0")
    assert any(p.lane_of(key) != failing_lane for key in keys)
    for key in keys:
        mine = [d for d in delivered if d.startswith(f"{key}/")]
        in_order = [f"{key}/{n}" for n in range(3)]
        if p.lane_of(key) != failing_lane:
            assert mine == in_order  # other lanes: once each, untouched by the retry
        else:  # once in order, then again from the lane's lowest failure on (a suffix)
            assert mine[:3] == in_order
            assert mine[3:] == in_order[3 - len(mine[3:]) :]
    assert [d for d in delivered if d.startswith("ride-0/")] == [
        "ride-0/0",
        "ride-0/1",
        "ride-0/2",
        "ride-0/1",
        "ride-0/2",
    ]
    [_first, redelivery] = [batch for batch in function.batches if "ride-0/1" in batch]
    assert {p.lane_of(payload.split("/")[0]) for payload in redelivery} == {failing_lane}


def not_emulated(text: str) -> str:
    found = re.search(r"Not emulated: ([^.]+)\.", " ".join(text.split()))
    assert found, "no 'Not emulated:' sentence"
    return found[1]


def test_the_docs_and_the_module_name_the_same_gaps_and_their_settings_are_refused() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "local.md").read_text()
    assert not_emulated(docs) == not_emulated(event_source_mapping.__doc__ or "")
    for setting in ("TumblingWindowInSeconds", "FilterCriteria", "ScalingConfig"):
        with pytest.raises(MappingConfigError, match=setting):
            MappingConfig.from_dict({setting: {}})


def test_with_parallelization_a_lane_stuck_on_retries_does_not_starve_the_others(stream: Any) -> None:
    function = ScriptedFunction(
        lambda payloads, s: (
            always_error(payloads, s) if any(p.startswith("stuck/") for p in payloads) else InvokeResult(None)
        )
    )
    p = poller(stream, function, BatchSize=2, ParallelizationFactor=2, MaximumRetryAttempts=-1)
    free = next(f"free-{i}" for i in range(100) if p.lane_of(f"free-{i}") != p.lane_of("stuck"))
    put_keyed(stream, [("stuck", f"stuck/{n}") for n in range(4)])
    for _ in range(3):
        p.step()  # the stuck lane fails again and again, holding more than a batch
    put_keyed(stream, [(free, f"free/{n}") for n in range(3)])
    for _ in range(6):
        p.step()
    delivered = [payload for batch in function.batches for payload in batch]
    assert [d for d in delivered if d.startswith("free/")] == ["free/0", "free/1", "free/2"]
