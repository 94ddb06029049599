"""Write records to a Kinesis stream with PutRecords: chunked to the API's limits, each entry
checked against Kinesis's record limits first, resending only what Kinesis rejected (bounded
exponential backoff and jitter), and never past the invocation's deadline."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from stream.deadline import MIN_CALL_S, BoundedClients, Deadline

# PutRecords limits (Kinesis developer guide): 500 entries and 5 MiB (data + partition
# keys) per call; each entry at most 1 MiB (data + partition key), its key 1-256 characters.
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_BYTES_PER_RECORD = 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256

# Call-level errors worth another call within the invocation: throttling, and Kinesis or the
# network having a bad moment (any 5xx, connection errors and timeouts, see `call_failure`).
# Every other error (ResourceNotFound, AccessDenied, Validation, InvalidArgument, KMS
# errors but throttling, ...) will not go away by itself: stop at once.
RETRYABLE_ERROR_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "LimitExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "KMSThrottlingException",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


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
    """An entry that was not written, and why. `retryable` False: nothing but a change of
    configuration (the stream, the role, the key) will let it through."""

    record: OutputRecord
    error: str
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class CallFailure:
    """Why a whole PutRecords call failed, or why the rest of a put was not sent."""

    error: str
    retryable: bool = True


@dataclass(slots=True)
class WriteResult:
    written: list[OutputRecord] = field(default_factory=list)
    failed: list[FailedWrite] = field(default_factory=list)  # may succeed later: retry
    refused: list[FailedWrite] = field(default_factory=list)  # over Kinesis's limits: never
    calls: int = 0
    rejected: int = 0  # entries Kinesis answered with an ErrorCode, over all calls (resent or not)


def entry_problem(record: OutputRecord) -> str | None:
    """Why Kinesis would refuse this entry (and with it, its whole PutRecords call), or None."""
    if not 1 <= len(record.partition_key) <= MAX_PARTITION_KEY_CHARS:
        return (
            f"output partition key is {len(record.partition_key)} characters long, "
            f"Kinesis takes 1-{MAX_PARTITION_KEY_CHARS}"
        )
    if record.size > MAX_BYTES_PER_RECORD:
        return (
            f"output record is {record.size:,} bytes with its partition key, over Kinesis's "
            f"{MAX_BYTES_PER_RECORD:,}-byte limit"
        )
    return None


def call_failure(stream_name: str, error: ClientError | BotoCoreError) -> CallFailure:
    """A failed PutRecords call, retryable or not."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        retryable = code in RETRYABLE_ERROR_CODES or status >= 500
    else:
        retryable = isinstance(error, BotocoreConnectionError | HTTPClientError)
    kind = "failed" if retryable else "failed, not retryable"
    return CallFailure(f"PutRecords to {stream_name} {kind}: {error}", retryable)


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
    """Writes events to one stream; what still fails after the retries is returned, never dropped.

    With `clients`, each call gets the client whose timeouts fit in the time left
    (stream/deadline.py); otherwise `client` serves every call (tests hand in fakes).
    """

    def __init__(
        self,
        client: Any,
        stream_name: str,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clients: BoundedClients | None = None,
    ) -> None:
        self.client = client
        self.stream_name = stream_name
        self.policy = policy or RetryPolicy()
        self.clients = clients
        self._sleep = sleep
        self._rng = rng or random.Random()

    def renew_jitter(self) -> None:
        """A new seed from the OS (SnapStart: restored copies must not back off in step)."""
        self._rng.seed()

    def put(self, records: Sequence[OutputRecord], deadline: Deadline | None = None) -> WriteResult:
        deadline = deadline or Deadline.none()
        result = WriteResult()
        sendable: list[OutputRecord] = []
        for record in records:
            if (
                record.size <= MAX_BYTES_PER_RECORD
                and 0 < len(record.partition_key) <= MAX_PARTITION_KEY_CHARS
            ):
                sendable.append(record)  # the usual case, without a call per record
            else:
                result.refused.append(FailedWrite(record, entry_problem(record) or "", retryable=False))
        stopped: CallFailure | None = None  # what ends this put early: the deadline, a bad call
        for chunk in chunk_records(sendable):
            if stopped is None:
                stopped = self._put_chunk(chunk, result, deadline)
            else:
                result.failed.extend(FailedWrite(r, stopped.error, stopped.retryable) for r in chunk)
        return result

    def _put_chunk(
        self, chunk: list[OutputRecord], result: WriteResult, deadline: Deadline
    ) -> CallFailure | None:
        """Send until all is written or attempts run out; returns why the rest must not be sent."""
        pending = chunk
        errors: list[str] = []
        stop: CallFailure | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            pause = self.policy.delay(attempt - 1, self._rng) if attempt > 1 else 0.0
            client = self._client_within(deadline.remaining() - pause)
            if client is None:
                last = f"; last error: {errors[0]}" if errors else ""
                stop = CallFailure(f"PutRecords to {self.stream_name} not sent: {deadline.describe()}{last}")
                errors = [stop.error] * len(pending)
                break
            if pause:
                self._sleep(pause)
            result.calls += 1
            try:
                response = client.put_records(
                    StreamName=self.stream_name, Records=[record.entry for record in pending]
                )
            except (ClientError, BotoCoreError) as error:
                failure = call_failure(self.stream_name, error)
                errors = [failure.error] * len(pending)
                if not failure.retryable:
                    stop = failure
                    break
                continue
            pending, errors = self._split_response(pending, response["Records"], result)
            if not pending:
                return None
        retryable = stop is None or stop.retryable
        result.failed.extend(
            FailedWrite(record, error, retryable) for record, error in zip(pending, errors, strict=True)
        )
        return stop

    def _client_within(self, seconds: float) -> Any | None:
        if self.clients is not None:
            return self.clients.within(seconds)
        return self.client if seconds >= MIN_CALL_S else None

    @staticmethod
    def _split_response(
        sent: list[OutputRecord], entries: list[dict[str, Any]], result: WriteResult
    ) -> tuple[list[OutputRecord], list[str]]:
        """Keep what Kinesis accepted; return the rejected entries (the response is in request order)."""
        rejected: list[OutputRecord] = []
        errors: list[str] = []
        for record, entry in zip(sent, entries, strict=True):
            if "ErrorCode" in entry:
                result.rejected += 1
                rejected.append(record)
                errors.append(f"{entry['ErrorCode']}: {entry.get('ErrorMessage', '')}".rstrip(": "))
            else:
                result.written.append(record)
        return rejected, errors


def to_output_record(event: OutputEvent, source: Any = None) -> OutputRecord:
    """Serialise an event into a PutRecords entry that remembers what it stands for."""
    return OutputRecord(event.to_json(), event.partition_key, source)
