import random
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from stream.kinesis_output import (
    MAX_BYTES_PER_CALL,
    MAX_RECORDS_PER_CALL,
    KinesisStreamWriter,
    OutputRecord,
    RetryPolicy,
    chunk_records,
)
from tests.conftest import create_stream, read_stream


def records(count: int, size: int = 10) -> list[OutputRecord]:
    return [OutputRecord(b"x" * size, f"k{i}", source=i) for i in range(count)]


def test_chunks_respect_the_500_record_limit_and_keep_order() -> None:
    chunks = list(chunk_records(records(1201)))
    assert [len(c) for c in chunks] == [500, 500, 201]
    assert [r.source for c in chunks for r in c] == list(range(1201))


def test_chunks_respect_the_5_mib_limit() -> None:
    big = records(12, size=1024 * 1024 - 10)  # ~1 MiB each, with key
    chunks = list(chunk_records(big))
    assert all(sum(r.size for r in c) <= MAX_BYTES_PER_CALL for c in chunks)
    assert [len(c) for c in chunks] == [5, 5, 2]


class ScriptedKinesis:
    """PutRecords that rejects the entries a script names, per call, and records each call."""

    def __init__(self, reject: list[set[str]]) -> None:
        self.reject = reject
        self.calls: list[list[str]] = []
        self.stored: list[str] = []

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        keys = [entry["PartitionKey"] for entry in Records]
        rejected = self.reject[len(self.calls)] if len(self.calls) < len(self.reject) else set()
        self.calls.append(keys)
        entries = []
        for key in keys:
            if key in rejected:
                entries.append(
                    {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"}
                )
            else:
                self.stored.append(key)
                entries.append({"SequenceNumber": "1", "ShardId": "shardId-000000000000"})
        return {"FailedRecordCount": len(rejected & set(keys)), "Records": entries}


def writer(client: Any, sleeps: list[float], attempts: int = 4) -> KinesisStreamWriter:
    policy = RetryPolicy(max_attempts=attempts, base_delay=0.1, max_delay=0.25)
    return KinesisStreamWriter(client, "out", policy, sleep=sleeps.append, rng=random.Random(7))


def test_only_rejected_entries_are_resent_until_accepted() -> None:
    client = ScriptedKinesis([{"k1", "k3"}, {"k3"}])
    sleeps: list[float] = []
    result = writer(client, sleeps).put(records(5))
    assert client.calls == [["k0", "k1", "k2", "k3", "k4"], ["k1", "k3"], ["k3"]]
    assert sorted(client.stored) == ["k0", "k1", "k2", "k3", "k4"]
    assert sorted(r.partition_key for r in result.written) == sorted(client.stored)
    assert result.failed == []
    assert result.calls == 3
    assert len(sleeps) == 2


def test_persistent_rejections_are_returned_with_their_error_after_bounded_attempts() -> None:
    client = ScriptedKinesis([{"k2"}] * 10)
    sleeps: list[float] = []
    result = writer(client, sleeps, attempts=4).put(records(3))
    assert len(client.calls) == 4
    assert [f.record.partition_key for f in result.failed] == ["k2"]
    assert result.failed[0].error.startswith("ProvisionedThroughputExceededException")
    assert sorted(r.partition_key for r in result.written) == ["k0", "k1"]


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.1, max_delay=0.25)
    rng = random.Random(1)
    delays = [[policy.delay(retry, rng) for _ in range(200)] for retry in range(1, 6)]
    assert max(delays[0]) <= 0.1
    assert max(delays[1]) <= 0.2
    assert all(max(d) <= 0.25 for d in delays)
    assert max(delays[2]) > 0.2  # grows past the first ceiling
    assert min(delays[0]) < 0.05  # full jitter: spread from zero


class FailingKinesis:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def put_records(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "no stream"}}, "PutRecords"),
    ],
)
def test_a_failing_call_returns_every_entry_as_failed(error: Exception) -> None:
    client = FailingKinesis(error)
    result = writer(client, [], attempts=2).put(records(3))
    assert client.calls == 2
    assert [f.record.source for f in result.failed] == [0, 1, 2]
    assert "PutRecords to out failed" in result.failed[0].error


def test_writes_to_a_real_stream_api(kinesis: Any) -> None:
    create_stream(kinesis, "out", shards=2)
    result = KinesisStreamWriter(kinesis, "out").put(
        [OutputRecord(f'{{"n": {i}}}'.encode(), str(i)) for i in range(MAX_RECORDS_PER_CALL + 20)]
    )
    assert result.calls == 2
    assert result.failed == []
    assert sorted(r["n"] for r in read_stream(kinesis, "out")) == list(range(520))
