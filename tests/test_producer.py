"""Producers resend what Kinesis rejects: local_aws.producer, and the demo that uses it."""

from __future__ import annotations

import itertools
from typing import Any

from local_aws.demo import Tally, stream_rides
from local_aws.producer import put_records
from stream.kinesis_output import RetryPolicy


class ThrottlingKinesis:
    """PutRecords as Kinesis answers it under load: the call succeeds, some entries carry an
    ErrorCode and no ShardId. Entries whose data is in `rejects` are rejected that many times."""

    def __init__(self, rejects: dict[bytes, int]) -> None:
        self.rejects = dict(rejects)
        self.calls: list[list[bytes]] = []
        self._sequence = itertools.count(1)

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.calls.append([entry["Data"] for entry in Records])
        answers: list[dict[str, Any]] = []
        for entry in Records:
            if self.rejects.get(entry["Data"], 0) > 0:
                self.rejects[entry["Data"]] -= 1
                answers.append(
                    {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"}
                )
            else:
                answers.append(
                    {"ShardId": "shardId-000000000000", "SequenceNumber": str(next(self._sequence))}
                )
        return {"FailedRecordCount": sum("ErrorCode" in a for a in answers), "Records": answers}


def entries(*payloads: bytes) -> list[dict[str, Any]]:
    return [{"Data": payload, "PartitionKey": payload.decode()} for payload in payloads]


def test_only_the_rejected_entries_are_resent_with_backoff_until_stored() -> None:
    kinesis = ThrottlingKinesis({b"b": 2, b"d": 1})
    sleeps: list[float] = []
    result = put_records(kinesis, "rides", entries(b"a", b"b", b"c", b"d"), sleep=sleeps.append)
    assert kinesis.calls == [[b"a", b"b", b"c", b"d"], [b"b", b"d"], [b"b"]]
    assert sorted(result.stored) == [0, 1, 2, 3]
    assert result.refused == {}
    assert result.resent == 3
    assert len(sleeps) == 2  # a pause before each resend
    assert result.stored[0] == ("shardId-000000000000", "1")
    assert result.stored[3] == ("shardId-000000000000", "3")  # d, stored by the second call
    assert result.stored[1] == ("shardId-000000000000", "4")  # b, by the third


def test_what_is_still_rejected_after_the_last_attempt_is_returned_with_its_error() -> None:
    kinesis = ThrottlingKinesis({b"never": 1000})
    result = put_records(
        kinesis, "rides", entries(b"ok", b"never"), policy=RetryPolicy(max_attempts=3), sleep=lambda _s: None
    )
    assert sorted(result.stored) == [0]
    assert result.refused == {1: "ProvisionedThroughputExceededException"}
    assert len(kinesis.calls) == 3


def test_entries_go_in_putrecords_sized_chunks() -> None:
    kinesis = ThrottlingKinesis({})
    result = put_records(kinesis, "rides", entries(*[str(i).encode() for i in range(1200)]))
    assert [len(call) for call in kinesis.calls] == [500, 500, 200]
    assert len(result.stored) == 1200


def test_the_demo_producer_survives_a_throttling_endpoint() -> None:
    rides = [(ride_id, f"ride {ride_id}".encode(), True) for ride_id in range(30)]
    kinesis = ThrottlingKinesis({b"ride 3": 2, b"ride 17": 1})
    tally = Tally()
    stream_rides(kinesis, "ride_events", rides, rate=10_000, tally=tally, show=lambda: None)
    assert sorted(tally.ride_of.values()) == list(range(30))  # every ride put, none lost to a KeyError
    assert tally.resent == 3
    assert tally.refused == {}
