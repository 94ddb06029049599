import random
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)

from stream.deadline import MIN_CALL_S, Deadline
from stream.kinesis_output import (
    MAX_BYTES_PER_CALL,
    MAX_BYTES_PER_RECORD,
    MAX_PARTITION_KEY_CHARS,
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


def test_the_partition_keys_bytes_count_toward_the_5_mib_of_a_call() -> None:
    # Six records of 873,400 data bytes fit in one call's 5 MiB (5,240,400 bytes) on their own;
    # with a 256-character key of 2-byte characters each (512 bytes, 5,243,472 in all) only five
    # do. Counting the key's characters instead of its bytes would let six through too.
    keyed = [OutputRecord(b"x" * 873_400, "é" * MAX_PARTITION_KEY_CHARS, i) for i in range(12)]
    assert 6 * 873_400 <= MAX_BYTES_PER_CALL < 6 * (873_400 + 512)

    chunks = list(chunk_records(keyed))

    assert [len(c) for c in chunks] == [5, 5, 2]
    assert [r.source for c in chunks for r in c] == list(range(12))


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
    policy, rng = RetryPolicy(max_attempts=4, base_delay=0.1, max_delay=0.25), random.Random(7)
    assert sleeps == [policy.delay(1, rng), policy.delay(2, rng)]  # retry 1, then retry 2


def test_records_of_exactly_the_limits_go_whole_and_together() -> None:
    # Five entries of exactly 1 MiB with their keys: each may be sent, and all five in one call.
    exact = [OutputRecord(b"x" * (MAX_BYTES_PER_RECORD - 2), f"k{i}", i) for i in range(5)]
    assert sum(r.size for r in exact) == MAX_BYTES_PER_CALL
    assert [len(c) for c in chunk_records(exact)] == [5]
    client = ScriptedKinesis([])
    result = writer(client, []).put(exact)
    assert (result.refused, len(result.written), result.calls) == ([], 5, 1)


def test_persistent_rejections_are_returned_with_their_error_after_bounded_attempts() -> None:
    client = ScriptedKinesis([{"k2"}] * 10)
    sleeps: list[float] = []
    result = writer(client, sleeps, attempts=4).put(records(3))
    assert len(client.calls) == 4
    assert [f.record.partition_key for f in result.failed] == ["k2"]
    assert result.failed[0].error == "ProvisionedThroughputExceededException: Rate exceeded"
    assert sorted(r.partition_key for r in result.written) == ["k0", "k1"]


class FailsEntriesWithoutAMessage:
    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        return {
            "FailedRecordCount": len(Records),
            "Records": [{"ErrorCode": "InternalFailure"} for _ in Records],
        }


def test_a_rejected_entry_without_a_message_is_named_by_its_code() -> None:
    result = writer(FailsEntriesWithoutAMessage(), [], attempts=1).put(records(1))
    assert [f.error for f in result.failed] == ["InternalFailure"]


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


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"{code} here"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutRecords",
    )


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        client_error("ProvisionedThroughputExceededException", 400),
        client_error("ThrottlingException", 400),
        client_error("KMSThrottlingException", 400),
        client_error("InternalFailure", 500),
        client_error("InternalServerError", 500),  # any 5xx, whatever its code
        client_error("ServiceUnavailable", 503),
        client_error("502", 502),
    ],
)
def test_a_call_failing_for_a_passing_reason_is_retried_then_every_entry_returned(error: Exception) -> None:
    client = FailingKinesis(error)
    result = writer(client, [], attempts=3).put(records(3))
    assert client.calls == 3
    assert [f.record.source for f in result.failed] == [0, 1, 2]
    assert all(f.retryable for f in result.failed)
    assert result.failed[0].error.startswith("PutRecords to out failed: ")


@pytest.mark.parametrize(
    "error",
    [
        client_error("ResourceNotFoundException", 400),
        client_error("AccessDeniedException", 400),
        client_error("ValidationException", 400),
        client_error("InvalidArgumentException", 400),
        client_error("KMSAccessDeniedException", 400),
        client_error("KMSDisabledException", 400),
        client_error("KMSNotFoundException", 400),
        ParamValidationError(report="Invalid length for parameter Records[0].PartitionKey"),
    ],
)
def test_a_call_failing_for_a_lasting_reason_stops_at_once_naming_it(error: Exception) -> None:
    client = FailingKinesis(error)
    sleeps: list[float] = []
    result = writer(client, sleeps, attempts=5).put(records(MAX_RECORDS_PER_CALL + 3))
    assert client.calls == 1  # no retry, and the second chunk is not sent either
    assert sleeps == []
    assert [f.record.source for f in result.failed] == list(range(MAX_RECORDS_PER_CALL + 3))
    assert all(f.retryable is False for f in result.failed)
    assert result.failed[-1].error.startswith("PutRecords to out failed, not retryable: ")
    assert str(error) in result.failed[-1].error


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class SlowThrottledKinesis(ScriptedKinesis):
    """Rejects every entry, and each call takes `call_s` of the fake clock."""

    def __init__(self, clock: FakeClock, call_s: float) -> None:
        super().__init__([{f"k{i}" for i in range(1000)}] * 1000)
        self.clock = clock
        self.call_s = call_s

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.clock.now += self.call_s
        return super().put_records(StreamName=StreamName, Records=Records)


def test_no_call_or_backoff_runs_past_the_deadline() -> None:
    clock = FakeClock()
    client = SlowThrottledKinesis(clock, call_s=0.4)
    deadline = Deadline(clock() + 3.0, clock)
    policy = RetryPolicy(max_attempts=50, base_delay=0.5, max_delay=1.0)
    result = KinesisStreamWriter(client, "out", policy, sleep=clock.sleep).put(records(3), deadline)
    # Every call started with room for a call's worst case; what is left is less than that.
    assert clock.now <= deadline.ends_at
    assert 0 <= deadline.remaining() < MIN_CALL_S + policy.max_delay
    assert 2 <= len(client.calls) < 50
    assert [f.record.source for f in result.failed] == [0, 1, 2]
    assert result.failed[0].error.startswith("PutRecords to out not sent: ")
    assert "of the invocation's time budget left; last error: ProvisionedThroughputExceededException" in (
        result.failed[0].error
    )
    assert all(f.retryable for f in result.failed)


def test_a_spent_budget_sends_nothing_and_returns_everything() -> None:
    clock = FakeClock()
    client = ScriptedKinesis([])
    assert MIN_CALL_S > 0.2
    result = KinesisStreamWriter(client, "out").put(records(700), Deadline(clock() + 0.2, clock))
    assert client.calls == []
    assert len(result.failed) == 700
    assert result.failed[0].error == "PutRecords to out not sent: 200 ms of the invocation's time budget left"


def test_entries_over_kinesis_limits_are_refused_and_their_neighbours_written(kinesis: Any) -> None:
    create_stream(kinesis, "out")
    good = [OutputRecord(f'{{"n": {i}}}'.encode(), "é" * MAX_PARTITION_KEY_CHARS, i) for i in range(3)]
    too_big = OutputRecord(b"x" * (MAX_BYTES_PER_RECORD - 1), "ab", "too big")
    no_key = OutputRecord(b"{}", "", "no key")
    long_key = OutputRecord(b"{}", "k" * (MAX_PARTITION_KEY_CHARS + 1), "long key")
    # Its key is as long as a key may be: only its size is wrong.
    big_keyed = OutputRecord(b"x" * (MAX_BYTES_PER_RECORD - 200), "k" * MAX_PARTITION_KEY_CHARS, "big")
    result = KinesisStreamWriter(kinesis, "out").put(
        [good[0], too_big, good[1], no_key, long_key, big_keyed, good[2]]
    )
    assert result.calls == 1
    assert result.failed == []
    assert sorted(r["n"] for r in read_stream(kinesis, "out")) == [0, 1, 2]
    assert {f.record.source: f.error for f in result.refused} == {
        "too big": "output record is 1,048,577 bytes with its partition key, over Kinesis's 1,048,576-byte limit",
        "no key": "output partition key is 0 characters long, Kinesis takes 1-256",
        "long key": "output partition key is 257 characters long, Kinesis takes 1-256",
        "big": "output record is 1,048,632 bytes with its partition key, over Kinesis's 1,048,576-byte limit",
    }
    assert not any(f.retryable for f in result.refused)


def test_writes_to_a_real_stream_api(kinesis: Any) -> None:
    create_stream(kinesis, "out", shards=2)
    result = KinesisStreamWriter(kinesis, "out").put(
        [OutputRecord(f'{{"n": {i}}}'.encode(), str(i)) for i in range(MAX_RECORDS_PER_CALL + 20)]
    )
    assert result.calls == 2
    assert result.failed == []
    assert sorted(r["n"] for r in read_stream(kinesis, "out")) == list(range(520))
