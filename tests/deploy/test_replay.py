"""scripts/replay.py on a moto server: real SQS messages in the shape Lambda's on-failure
destination writes (and the local event source mapping's own, written by the mapping itself),
records read back from a moto stream and put again."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local_aws.event_source_mapping import EventSourceMapping, InvokeResult, MappingConfig
from scripts import replay
from scripts.stack import run
from tests.deploy.conftest import REGION, STAGE

RIDES = [
    {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": i}, "ride_id": i} for i in range(10)
]


def put_rides(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    """Ten rides, one PutRecord each (as producers do); what Kinesis answered for each."""
    return [
        {
            **kinesis.put_record(StreamName=stream, Data=json.dumps(ride).encode(), PartitionKey=f"ride-{i}"),
            "Data": json.dumps(ride).encode(),
            "PartitionKey": f"ride-{i}",
        }
        for i, ride in enumerate(RIDES)
    ]


def stream_records(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    [shard] = kinesis.list_shards(StreamName=stream)["Shards"]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    return kinesis.get_records(ShardIterator=iterator, Limit=1000)["Records"]


def on_failure_record(stream_arn: str, shard: str, first: str, last: str, size: int) -> str:
    """A Kinesis event source mapping's on-failure record, as AWS documents it."""
    return json.dumps(
        {
            "requestContext": {
                "requestId": "c9b8fa9f-5a7f-4b4e-9e0d-2f0f5f8a0c11",
                "functionArn": f"arn:aws:lambda:{REGION}:123456789012:function:ride-duration-{STAGE}",
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": 11,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "version": "1.0",
            "timestamp": "2026-11-26T06:00:00.000Z",
            "KinesisBatchInfo": {
                "shardId": shard,
                "startSequenceNumber": first,
                "endSequenceNumber": last,
                "approximateArrivalOfFirstRecord": "2026-11-26T05:59:00.000Z",
                "approximateArrivalOfLastRecord": "2026-11-26T05:59:01.000Z",
                "batchSize": size,
                "streamArn": stream_arn,
            },
        }
    )


@pytest.fixture
def discarded(client: Any, stack: dict[str, str]) -> dict[str, Any]:
    """Ten rides on the stage's input stream; Lambda gave up on the 4th to 7th."""
    kinesis, sqs = client("kinesis"), client("sqs")
    # moto's own mapping would try to run the image function on every put (it cannot without
    # Docker), and a deleted mapping stays tied to its stream: the stream is made again, alone.
    kinesis.delete_stream(StreamName=stack["InputStreamName"])
    kinesis.create_stream(StreamName=stack["InputStreamName"], ShardCount=1)
    put = put_rides(kinesis, stack["InputStreamName"])
    body = on_failure_record(
        stack["InputStreamArn"], put[3]["ShardId"], put[3]["SequenceNumber"], put[6]["SequenceNumber"], 4
    )
    sqs.send_message(QueueUrl=stack["DiscardedBatchesQueueUrl"], MessageBody=body)
    return {"put": put, "stack": stack}


def queue_size(client: Any, queue_url: str) -> int:
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def test_a_discarded_batch_is_put_again_with_its_partition_keys_and_its_message_deleted(
    client: Any, discarded: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    stack = discarded["stack"]

    assert run(replay.main, ["--stage", STAGE]) == 0

    records = stream_records(client("kinesis"), stack["InputStreamName"])
    assert len(records) == 14
    again = [(r["Data"], r["PartitionKey"]) for r in records[10:]]
    assert again == [(p["Data"], p["PartitionKey"]) for p in discarded["put"][3:7]]
    assert queue_size(client, stack["DiscardedBatchesQueueUrl"]) == 0
    out, err = capsys.readouterr()
    assert (
        out
        == "1 of 1 message(s) replayed and deleted (4 records put again), 0 kept in the queue, 0 record(s) past retention\n"
    )
    assert "(4 records, RetryAttemptsExhausted): 4 record(s) still on the stream" in err


def test_a_dry_run_lists_the_records_and_changes_nothing(
    client: Any, discarded: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    stack = discarded["stack"]

    assert run(replay.main, ["--stage", STAGE, "--dry-run"]) == 0

    assert len(stream_records(client("kinesis"), stack["InputStreamName"])) == 10
    assert queue_size(client, stack["DiscardedBatchesQueueUrl"]) == 1
    out, err = capsys.readouterr()
    assert (
        out
        == "dry run: 1 message(s), 4 record(s) to put again, 0 past retention; nothing was put or deleted\n"
    )
    for put in discarded["put"][3:7]:
        assert f"  {put['SequenceNumber']}  key {put['PartitionKey']}  {len(put['Data'])} bytes\n" in err
    # The message is visible again at once: the real replay can follow straight away.
    assert run(replay.main, ["--stage", STAGE]) == 0
    assert len(stream_records(client("kinesis"), stack["InputStreamName"])) == 14


def test_a_batch_whose_shard_is_gone_is_named_and_its_message_kept_unless_dropped(
    client: Any, stack: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    body = on_failure_record(stack["InputStreamArn"], "shardId-000000000009", "101", "104", 4)
    client("sqs").send_message(QueueUrl=stack["DiscardedBatchesQueueUrl"], MessageBody=body)

    assert run(replay.main, ["--stage", STAGE]) == 1

    err = capsys.readouterr().err
    assert (
        "past retention, cannot be replayed: all 4: shardId-000000000009 of ride-events-test is gone" in err
    )
    assert "error: 1 message(s) kept in the queue: see above" in err
    assert queue_size(client, stack["DiscardedBatchesQueueUrl"]) == 1

    assert run(replay.main, ["--stage", STAGE, "--drop-expired"]) == 0
    assert queue_size(client, stack["DiscardedBatchesQueueUrl"]) == 0


def test_messages_that_are_not_this_stages_batches_are_kept(
    client: Any, stack: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = client("sqs")
    other = stack["InputStreamArn"].replace("ride-events-test", "ride-events-other")
    sqs.send_message(
        QueueUrl=stack["DiscardedBatchesQueueUrl"],
        MessageBody=on_failure_record(other, "shardId-000000000000", "1", "2", 2),
    )
    sqs.send_message(QueueUrl=stack["DiscardedBatchesQueueUrl"], MessageBody="not json")

    assert run(replay.main, ["--stage", STAGE]) == 1

    err = capsys.readouterr().err
    assert f"not this stage's input stream {stack['InputStreamArn']}; kept" in err
    assert "not a Kinesis on-failure record (JSONDecodeError" in err
    assert queue_size(client, stack["DiscardedBatchesQueueUrl"]) == 2


class RejectingKinesis:
    """moto's Kinesis, except that every PutRecords entry is throttled."""

    def __init__(self, kinesis: Any) -> None:
        self.kinesis = kinesis

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kinesis, name)

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's names
        error = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"}
        return {"FailedRecordCount": len(Records), "Records": [error for _ in Records]}


def test_a_batch_that_cannot_be_put_again_keeps_its_message(
    client: Any, discarded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = discarded["stack"]
    monkeypatch.setattr("stream.kinesis_output.time.sleep", lambda _seconds: None)  # the writer's backoff
    replayer = replay.Replayer(
        client("sqs"), RejectingKinesis(client("kinesis")), stack["DiscardedBatchesQueueUrl"]
    )

    for message in replayer.messages(None):
        replayer.handle(message)

    assert (replayer.summary.kept, replayer.summary.replayed, replayer.summary.records) == (1, 0, 0)
    assert queue_size(client, stack["DiscardedBatchesQueueUrl"]) == 1


def test_the_local_pipelines_discarded_batches_replay_too(
    aws_endpoint: str, client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The local event source mapping writes its own on-failure message; replay reads it."""
    kinesis, sqs = client("kinesis"), client("sqs")
    kinesis.create_stream(StreamName="ride_events", ShardCount=1)
    sqs.create_queue(QueueName="ride_mapping_failures")
    put = put_rides(kinesis, "ride_events")[:3]
    config = MappingConfig(
        BatchSize=3,
        StartingPosition="TRIM_HORIZON",
        MaximumRetryAttempts=0,
        DestinationConfig={
            "OnFailure": {"Destination": f"arn:aws:sqs:{REGION}:123456789012:ride_mapping_failures"}
        },
    )
    calls: list[int] = []

    def failing_function(event: dict[str, Any]) -> InvokeResult:
        calls.append(len(event["Records"]))
        if len(calls) == 1:
            return InvokeResult(
                {"errorMessage": "model not loaded", "errorType": "ModelLoadError"}, "Unhandled"
            )
        return InvokeResult(None)  # the replayed copies are handled

    mapping = EventSourceMapping(
        kinesis,
        "ride_events",
        failing_function,
        config,
        clients=lambda service: boto3.client(service, region_name=REGION),
    )
    mapping.start()
    try:
        deadline = time.monotonic() + 20
        while not mapping.stats.discarded_batches and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mapping.stats.records_discarded == 3

        assert run(replay.main, ["--queue-name", "ride_mapping_failures"]) == 0

        again = stream_records(kinesis, "ride_events")[10:]
        assert [(r["Data"], r["PartitionKey"]) for r in again] == [
            (p["Data"], p["PartitionKey"]) for p in put
        ]
        while sum(calls) < 6 and time.monotonic() < deadline:  # the mapping delivers the copies
            time.sleep(0.05)
        assert calls[-1] == 3
    finally:
        mapping.stop()
    assert "1 of 1 message(s) replayed and deleted (3 records put again)" in capsys.readouterr().out


class TrimmedShard:
    """A shard whose oldest records are gone: AT_SEQUENCE_NUMBER of one of them is refused, and
    the shard starts later (what AWS does past retention)."""

    def __init__(self, sequence_numbers: list[str]) -> None:
        self.records = [
            {"SequenceNumber": s, "PartitionKey": f"k{s}", "Data": b"x"} for s in sequence_numbers
        ]

    def get_shard_iterator(self, **kwargs: Any) -> dict[str, str]:
        if kwargs["ShardIteratorType"] == "AT_SEQUENCE_NUMBER":
            error = {"Error": {"Code": "InvalidArgumentException", "Message": "is invalid"}}
            raise ClientError(error, "GetShardIterator")
        return {"ShardIterator": "0"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:  # noqa: N803 - boto3's names
        position = int(ShardIterator)
        page = self.records[position : position + 2]
        return {
            "Records": page,
            "NextShardIterator": str(position + 2),
            "MillisBehindLatest": 0 if not page else 5,
        }


def test_records_past_retention_are_named_by_their_range() -> None:
    batch = replay.DiscardedBatch("arn:aws:kinesis:us-east-1:1:stream/s", "shardId-0", "100", "105", 6)

    fetched = replay.fetch_batch(TrimmedShard(["103", "104", "105", "106"]), batch, sleep=lambda _s: None)

    assert [r["SequenceNumber"] for r in fetched.records] == ["103", "104", "105"]
    assert fetched.expired == "3 of 6: sequence numbers from 100 before 103 are past the stream's retention"
