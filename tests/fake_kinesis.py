"""A small Kinesis stand-in for what moto cannot show: shard iterators that expire, a reshard
whose children receive the new records (moto keeps writing to the closed parent), and a closed
shard whose GetRecords ends without a NextShardIterator. Only the calls the mapping makes."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError


@dataclass
class FakeShard:
    shard_id: str
    parents: tuple[str, ...] = ()
    records: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def description(self) -> dict[str, Any]:
        shard: dict[str, Any] = {"ShardId": self.shard_id, "SequenceNumberRange": {}}
        if self.parents:
            shard["ParentShardId"] = self.parents[0]
        if len(self.parents) > 1:
            shard["AdjacentParentShardId"] = self.parents[1]
        return shard


class FakeKinesis:
    """One stream. Sequence numbers rise across the stream, as on AWS."""

    def __init__(self, shards: int = 1, page_size: int = 100) -> None:
        self.shards: dict[str, FakeShard] = {}
        self.page_size = page_size
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._sequence = itertools.count(1000)
        self._shard_numbers = itertools.count()
        self._iterators: dict[str, tuple[str, int]] = {}  # token -> (shard, index of next record)
        self._expired: set[str] = set()
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        for _ in range(shards):
            self.add_shard()

    # -- what a test does -----------------------------------------------------------------

    def add_shard(self, *parents: str) -> str:
        shard_id = f"shardId-{next(self._shard_numbers):012d}"
        with self._lock:
            self.shards[shard_id] = FakeShard(shard_id, parents)
        return shard_id

    def put(self, shard_id: str, data: str, key: str = "k") -> str:
        with self._lock:
            shard = self.shards[shard_id]
            assert not shard.closed, f"{shard_id} is closed: AWS routes new records to its children"
            sequence_number = str(next(self._sequence))
            shard.records.append(
                {
                    "Data": data.encode(),
                    "PartitionKey": key,
                    "SequenceNumber": sequence_number,
                    "ApproximateArrivalTimestamp": datetime.now(UTC),
                }
            )
        return sequence_number

    def split(self, shard_id: str) -> tuple[str, str]:
        """Close the shard; two children take its hash range."""
        self.shards[shard_id].closed = True
        return self.add_shard(shard_id), self.add_shard(shard_id)

    def merge(self, shard_id: str, adjacent_shard_id: str) -> str:
        self.shards[shard_id].closed = True
        self.shards[adjacent_shard_id].closed = True
        return self.add_shard(shard_id, adjacent_shard_id)

    def expire_iterators(self) -> None:
        """As five minutes without a GetRecords call would."""
        with self._lock:
            self._expired |= set(self._iterators)

    def count(self, call: str) -> int:
        return sum(1 for name, _ in self.calls if name == call)

    # -- the API ------------------------------------------------------------------------------

    def list_shards(self, StreamName: str | None = None, NextToken: str | None = None) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("ListShards", {"StreamName": StreamName, "NextToken": NextToken}))
        with self._lock:
            shards = [shard.description() for shard in self.shards.values()]
        start = int(NextToken or 0)
        page = shards[start : start + self.page_size]
        response: dict[str, Any] = {"Shards": page}
        if start + self.page_size < len(shards):
            response["NextToken"] = str(start + self.page_size)
        return response

    def get_shard_iterator(
        self,
        StreamName: str,  # noqa: N803
        ShardId: str,  # noqa: N803
        ShardIteratorType: str,  # noqa: N803
        StartingSequenceNumber: str | None = None,  # noqa: N803
        Timestamp: float | None = None,  # noqa: N803
    ) -> dict[str, Any]:
        self.calls.append(
            (
                "GetShardIterator",
                {"ShardId": ShardId, "Type": ShardIteratorType, "At": StartingSequenceNumber},
            )
        )
        with self._lock:
            records = self.shards[ShardId].records
            numbers = [int(r["SequenceNumber"]) for r in records]
            if ShardIteratorType == "TRIM_HORIZON":
                index = 0
            elif ShardIteratorType == "LATEST":
                index = len(records)
            elif ShardIteratorType == "AT_SEQUENCE_NUMBER":
                index = sum(1 for n in numbers if n < int(str(StartingSequenceNumber)))
            elif ShardIteratorType == "AFTER_SEQUENCE_NUMBER":
                index = sum(1 for n in numbers if n <= int(str(StartingSequenceNumber)))
            elif ShardIteratorType == "AT_TIMESTAMP":
                stamps = [r["ApproximateArrivalTimestamp"].timestamp() for r in records]
                index = sum(1 for stamp in stamps if stamp < float(Timestamp or 0))
            else:  # as Kinesis does: an InvalidArgumentException
                raise ValueError(f"ShardIteratorType {ShardIteratorType!r} is not a shard iterator type")
            return {"ShardIterator": self._issue(ShardId, index)}

    def get_records(self, ShardIterator: str, Limit: int = 10_000) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("GetRecords", {"ShardIterator": ShardIterator}))
        with self._lock:
            if ShardIterator in self._expired:
                raise ClientError(
                    {"Error": {"Code": "ExpiredIteratorException", "Message": "Iterator expired"}},
                    "GetRecords",
                )
            shard_id, index = self._iterators[ShardIterator]
            shard = self.shards[shard_id]
            page = shard.records[index : index + Limit]
            after = index + len(page)
            response: dict[str, Any] = {"Records": page, "MillisBehindLatest": 0}
            if not (shard.closed and after == len(shard.records)):
                response["NextShardIterator"] = self._issue(shard_id, after)
            return response

    def _issue(self, shard_id: str, index: int) -> str:
        token = f"iterator-{next(self._tokens)}"
        self._iterators[token] = (shard_id, index)
        return token
