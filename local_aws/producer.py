"""Put records on a stream as a producer must: PutRecords, then resend only the entries Kinesis
rejected (`ProvisionedThroughputExceededException`, `InternalFailure`: the call succeeds and
the entry carries an `ErrorCode` instead of a `ShardId`), with backoff and jitter, a bounded
number of times. What is still rejected is returned, never dropped silently."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.kinesis_output import MAX_BYTES_PER_CALL, MAX_RECORDS_PER_CALL, RetryPolicy

# A producer can wait longer than the function (whose batch has a deadline): 10 calls with
# backoff up to 2 s ride out a few seconds of throttling.
PRODUCER_RETRY = RetryPolicy(max_attempts=10, base_delay=0.05, max_delay=2.0)


@dataclass
class PutResult:
    """Per input entry (by index): where Kinesis stored it, or why it was refused in the end."""

    stored: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (shard id, sequence number)
    refused: dict[int, str] = field(default_factory=dict)  # index -> the last ErrorCode
    calls: int = 0
    resent: int = 0  # entries sent again after a rejection


def _chunks(entries: Sequence[dict[str, Any]]) -> Iterator[list[int]]:
    """Indexes of the entries, in PutRecords-sized chunks."""
    chunk: list[int] = []
    size = 0
    for index, entry in enumerate(entries):
        entry_size = len(entry["Data"]) + len(entry["PartitionKey"].encode())
        if chunk and (len(chunk) == MAX_RECORDS_PER_CALL or size + entry_size > MAX_BYTES_PER_CALL):
            yield chunk
            chunk, size = [], 0
        chunk.append(index)
        size += entry_size
    if chunk:
        yield chunk


def put_records(
    kinesis: Any,
    stream_name: str,
    entries: Sequence[dict[str, Any]],
    *,
    policy: RetryPolicy = PRODUCER_RETRY,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> PutResult:
    """PutRecords entries ({"Data", "PartitionKey"}), resending the rejected ones. A whole call
    that fails raises, after boto3's own retries (which cover throttling of the whole call)."""
    rng = rng or random.Random()
    result = PutResult()
    for chunk in _chunks(entries):
        pending = chunk
        for attempt in range(1, policy.max_attempts + 1):
            if attempt > 1:
                sleep(policy.delay(attempt - 1, rng))
                result.resent += len(pending)
            response = kinesis.put_records(StreamName=stream_name, Records=[entries[i] for i in pending])
            result.calls += 1
            rejected = []
            for index, answer in zip(pending, response["Records"], strict=True):  # in request order
                if "ErrorCode" in answer:
                    rejected.append(index)
                    result.refused[index] = answer["ErrorCode"]
                else:
                    result.stored[index] = (answer["ShardId"], answer["SequenceNumber"])
                    result.refused.pop(index, None)
            pending = rejected
            if not pending:
                break
    return result
