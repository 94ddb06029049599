"""Write records to a Kinesis stream with PutRecords: chunked to the API's limits, and
resending only the entries Kinesis rejected, with bounded exponential backoff and jitter."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

# PutRecords limits (Kinesis developer guide): 500 entries and 5 MiB (data + partition
# keys) per call.
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024


class OutputEvent(Protocol):
    """What can be written: an event that serialises itself and names its partition key."""

    @property
    def partition_key(self) -> str: ...

    def to_json(self) -> bytes: ...


@dataclass(slots=True)  # per record: not frozen (see ride_events.KinesisRecord)
class OutputRecord:
    """One entry of a PutRecords call, and the input record it stands for."""

    data: bytes
    partition_key: str
    source: Any = None
    size: int = field(init=False)  # data + partition key bytes, what the 5 MiB limit counts
    entry: dict[str, Any] = field(init=False)  # as PutRecords takes it

    def __post_init__(self) -> None:
        self.size = len(self.data) + len(self.partition_key.encode())
        self.entry = {"Data": self.data, "PartitionKey": self.partition_key}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently rejected entries are resent (full-jitter backoff)."""

    max_attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 2.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (retry - 1)))


@dataclass(frozen=True, slots=True)
class FailedWrite:
    record: OutputRecord
    error: str


@dataclass(slots=True)
class WriteResult:
    written: list[OutputRecord] = field(default_factory=list)
    failed: list[FailedWrite] = field(default_factory=list)
    calls: int = 0


def chunk_records(records: Sequence[OutputRecord]) -> Iterator[list[OutputRecord]]:
    """Split records into PutRecords-sized chunks, keeping their order."""
    chunk: list[OutputRecord] = []
    size = 0
    for record in records:
        if chunk and (len(chunk) == MAX_RECORDS_PER_CALL or size + record.size > MAX_BYTES_PER_CALL):
            yield chunk
            chunk, size = [], 0
        chunk.append(record)
        size += record.size
    if chunk:
        yield chunk


class KinesisStreamWriter:
    """Writes events to one stream; what still fails after the retries is returned, never dropped."""

    def __init__(
        self,
        client: Any,
        stream_name: str,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.stream_name = stream_name
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()

    def renew_jitter(self) -> None:
        """A new seed from the OS (SnapStart: restored copies must not back off in step)."""
        self._rng.seed()

    def put(self, records: Sequence[OutputRecord]) -> WriteResult:
        result = WriteResult()
        for chunk in chunk_records(records):
            self._put_chunk(chunk, result)
        return result

    def _put_chunk(self, chunk: list[OutputRecord], result: WriteResult) -> None:
        pending = chunk
        errors: list[str] = []
        for attempt in range(1, self.policy.max_attempts + 1):
            if attempt > 1:
                self._sleep(self.policy.delay(attempt - 1, self._rng))
            result.calls += 1
            try:
                response = self.client.put_records(
                    StreamName=self.stream_name, Records=[record.entry for record in pending]
                )
            except (ClientError, BotoCoreError) as error:
                # botocore's own retries (standard mode) already ran for the whole call.
                errors = [f"PutRecords to {self.stream_name} failed: {error}"] * len(pending)
                continue
            pending, errors = self._split_response(pending, response["Records"], result)
            if not pending:
                return
        result.failed.extend(
            FailedWrite(record, error) for record, error in zip(pending, errors, strict=True)
        )

    @staticmethod
    def _split_response(
        sent: list[OutputRecord], entries: list[dict[str, Any]], result: WriteResult
    ) -> tuple[list[OutputRecord], list[str]]:
        """Keep what Kinesis accepted; return the rejected entries (the response is in request order)."""
        rejected: list[OutputRecord] = []
        errors: list[str] = []
        for record, entry in zip(sent, entries, strict=True):
            if "ErrorCode" in entry:
                rejected.append(record)
                errors.append(f"{entry['ErrorCode']}: {entry.get('ErrorMessage', '')}".rstrip(": "))
            else:
                result.written.append(record)
        return rejected, errors


def to_output_record(event: OutputEvent, source: Any = None) -> OutputRecord:
    """Serialise an event into a PutRecords entry that remembers what it stands for."""
    return OutputRecord(event.to_json(), event.partition_key, source)
