"""A local Kinesis event source mapping: reads every shard, invokes the function with events in
the AWS shape, and follows AWS's documented semantics.

The settings keep AWS's names (`BatchSize`, `BisectBatchOnFunctionError`, ...) so a
configuration carries over to `aws lambda create-event-source-mapping` unchanged. AWS's own
mapping runs in production; this one is for development and tests:

- shards: listed at the start and again every few seconds, so shards added later are read
  too (from TRIM_HORIZON). A child shard of a split or merge is read only once its parent(s)
  have been read to their end, which keeps each partition key in order across a reshard. A
  closed shard ends when GetRecords returns no `NextShardIterator` and its last records are done.
- shard iterators: one that has expired (`ExpiredIteratorException`; AWS expires them 5
  minutes after they are returned, which a slow function or a retry storm reaches) is renewed
  from the last checkpoint.
- batches: up to `BatchSize` records of one shard, in order, and at most 6 MB of event; with
  `MaximumBatchingWindowInSeconds` > 0 it keeps reading until a batch is full or the window
  since the first record has passed.
- `ParallelizationFactor` N (1-10): a shard's records are spread over N lanes by the hash of
  their partition key, and up to N batches (one per lane) are invoked at the same time. Each
  lane keeps its own order, checkpoint, retries and bisection, so a key's records stay in order,
  and a lane stuck on retries does not hold up the others (up to 10,000 records held per shard).
- `ReportBatchItemFailures`: checkpoint before the lowest failed sequence number and deliver
  again from there; an unreadable response (no list, an empty or unknown `itemIdentifier`)
  fails the whole batch.
- a function error (or a failed invoke) retries the batch; with `BisectBatchOnFunctionError` the
  batch is first split in halves, down to single records (splitting uses no retry).
- `MaximumRetryAttempts` and `MaximumRecordAgeInSeconds` (-1 = unbounded): past either, the
  batch's metadata goes to `DestinationConfig.OnFailure` (SQS, SNS or S3 ARN; S3 also gets the
  invocation's payload), or to the log without a destination, and only then does the checkpoint
  move past its records. If the destination cannot be written, the records stay and the send
  is retried with backoff.

Not emulated: tumbling windows, filter criteria, enhanced fan-out (no SubscribeToShard: the
local mapping always polls GetRecords, whatever the stack's EnhancedFanOut), the mapping's own
scaling and throttling (their settings are refused, not ignored). With `ParallelizationFactor` > 1 the lanes
of a shard start their batches together and the next ones once all have answered, where AWS
lets each lane run on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from local_aws.kinesis_events import StreamRecord, kinesis_event, stream_arn

MAX_INVOKE_PAYLOAD = 6 * 1024 * 1024  # synchronous invoke limit
GET_RECORDS_LIMIT = 10_000
# Records a shard holds for its lanes at most (a GetRecords page may go past it): with
# ParallelizationFactor > 1, a lane stuck on retries must not keep the others from new records.
READ_AHEAD_LIMIT = 10_000
# AWS does not say how often its mapping lists shards; a few seconds shows a reshard quickly.
SHARD_REFRESH_SECONDS = 5.0
MAX_RETRY_DELAY = 5.0
MAX_SEND_RETRY_DELAY = 30.0
log = logging.getLogger("local_aws.event_source_mapping")


class MappingConfigError(ValueError):
    pass


@dataclass(frozen=True)
class MappingConfig:
    """The event source mapping's settings, under their AWS names and with AWS's defaults."""

    BatchSize: int = 100
    MaximumBatchingWindowInSeconds: float = 0
    StartingPosition: str = "LATEST"
    StartingPositionTimestamp: float | None = None
    FunctionResponseTypes: tuple[str, ...] = ()
    BisectBatchOnFunctionError: bool = False
    MaximumRetryAttempts: int = -1
    MaximumRecordAgeInSeconds: int = -1
    ParallelizationFactor: int = 1
    DestinationConfig: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.BatchSize <= 10_000, "BatchSize must be 1-10000"),
            (0 <= self.MaximumBatchingWindowInSeconds <= 300, "MaximumBatchingWindowInSeconds must be 0-300"),
            (
                self.StartingPosition in ("LATEST", "TRIM_HORIZON", "AT_TIMESTAMP"),
                "StartingPosition must be LATEST, TRIM_HORIZON or AT_TIMESTAMP",
            ),
            (
                self.StartingPosition != "AT_TIMESTAMP" or self.StartingPositionTimestamp is not None,
                "StartingPosition AT_TIMESTAMP needs StartingPositionTimestamp",
            ),
            (-1 <= self.MaximumRetryAttempts <= 10_000, "MaximumRetryAttempts must be -1-10000"),
            (
                self.MaximumRecordAgeInSeconds == -1 or 60 <= self.MaximumRecordAgeInSeconds <= 604_800,
                "MaximumRecordAgeInSeconds must be -1 or 60-604800",
            ),
            (1 <= self.ParallelizationFactor <= 10, "ParallelizationFactor must be 1-10"),
            (
                set(self.FunctionResponseTypes) <= {"ReportBatchItemFailures"},
                "FunctionResponseTypes may only hold ReportBatchItemFailures",
            ),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise MappingConfigError("; ".join(problems))

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> MappingConfig:
        """From the keys of `aws lambda create-event-source-mapping --cli-input-json`."""
        ignored = {"FunctionName", "EventSourceArn", "Enabled", "UUID"}
        known = set(cls.__dataclass_fields__)
        unknown = set(settings) - known - ignored
        if unknown:
            raise MappingConfigError(f"unsupported settings: {sorted(unknown)}")
        values = {k: v for k, v in settings.items() if k in known}
        if "FunctionResponseTypes" in values:
            values["FunctionResponseTypes"] = tuple(values["FunctionResponseTypes"])
        if isinstance(values.get("StartingPositionTimestamp"), datetime):
            values["StartingPositionTimestamp"] = values["StartingPositionTimestamp"].timestamp()
        return cls(**values)

    @property
    def reports_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.FunctionResponseTypes

    @property
    def on_failure_arn(self) -> str | None:
        destination: str | None = (self.DestinationConfig.get("OnFailure") or {}).get("Destination")
        return destination


@dataclass(frozen=True)
class InvokeResult:
    payload: Any
    function_error: str | None = None
    status_code: int = 200


Invoke = Callable[[dict[str, Any]], InvokeResult]


def lambda_invoker(client: Any, function_name: str) -> Invoke:
    """Invoke through the Lambda API (boto3), as the real mapping does."""

    def invoke(event: dict[str, Any]) -> InvokeResult:
        try:
            response = client.invoke(FunctionName=function_name, Payload=json.dumps(event).encode())
        except Exception as error:  # noqa: BLE001 - an invoke that fails is retried like an error
            return failed_invoke(error)
        raw = response["Payload"].read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return InvokeResult(payload, response.get("FunctionError"), response["StatusCode"])

    return invoke


def failed_invoke(error: BaseException) -> InvokeResult:
    return InvokeResult({"errorMessage": str(error), "errorType": type(error).__name__}, "Unhandled", 0)


@dataclass
class MappingStats:
    """Counters for the whole mapping, updated by every shard's thread."""

    invocations: int = 0
    records_delivered: int = 0
    function_errors: int = 0
    partial_failures: int = 0
    bisections: int = 0
    records_discarded: int = 0
    destination_failures: int = 0
    iterators_renewed: int = 0
    shards_finished: int = 0
    discarded_batches: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)


class FailureDestination:
    """Where discarded batches' metadata goes (`DestinationConfig.OnFailure`)."""

    def __init__(self, arn: str | None, clients: Callable[[str], Any]) -> None:
        self.arn = arn
        self._clients = clients

    def send(self, record: dict[str, Any], invoke_payload: dict[str, Any] | None) -> None:
        """Raises when the destination cannot be written: the caller keeps the records."""
        if not self.arn:
            log.error("discarded batch (no on-failure destination): %s", json.dumps(record))
            return
        service = self.arn.split(":")[2]
        if service == "sqs":
            sqs = self._clients("sqs")
            url = sqs.get_queue_url(QueueName=self.arn.split(":")[5])["QueueUrl"]
            sqs.send_message(QueueUrl=url, MessageBody=json.dumps(record))
        elif service == "sns":
            self._clients("sns").publish(TopicArn=self.arn, Message=json.dumps(record))
        elif service == "s3":
            info = record["KinesisBatchInfo"]
            key = f"aws/lambda/local-mapping/{info['shardId']}/{record['timestamp'][:10].replace('-', '/')}/{uuid.uuid4()}"
            body = {**record, "payload": json.dumps(invoke_payload)} if invoke_payload else record
            self._clients("s3").put_object(Bucket=self.arn.split(":::")[1], Key=key, Body=json.dumps(body))
        else:
            raise MappingConfigError(f"on-failure destination must be SQS, SNS or S3, got {self.arn}")


@dataclass(frozen=True)
class Position:
    """Where a shard iterator starts, in GetShardIterator's terms."""

    type: str
    sequence_number: str | None = None
    timestamp: float | None = None

    def arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"ShardIteratorType": self.type}
        if self.sequence_number is not None:
            arguments["StartingSequenceNumber"] = self.sequence_number
        if self.timestamp is not None:
            arguments["Timestamp"] = self.timestamp
        return arguments

    @classmethod
    def starting(cls, config: MappingConfig) -> Position:
        if config.StartingPosition == "AT_TIMESTAMP":
            return cls("AT_TIMESTAMP", timestamp=config.StartingPositionTimestamp)
        return cls(config.StartingPosition)


@dataclass
class PendingFailure:
    """A discarded batch whose metadata is not yet at the on-failure destination."""

    count: int  # records at the head of the lane it covers
    record: dict[str, Any]
    payload: dict[str, Any] | None
    condition: str
    sends: int = 0


@dataclass
class Lane:
    """The records of one shard that hash to one lane (all those of a partition key), in order:
    batched, invoked, retried and checkpointed on their own."""

    buffer: deque[StreamRecord] = field(default_factory=deque)  # read, not yet checkpointed
    split_sizes: list[int] = field(default_factory=list)  # pending halves of a bisected batch
    attempts: int = 0  # failed invocations of the batch at the checkpoint
    not_before: float = 0.0  # monotonic time of the next try after a failure
    done_through: int = -1  # the last sequence number checkpointed
    pending_failure: PendingFailure | None = None


@dataclass(frozen=True)
class Batch:
    lane: Lane
    records: list[StreamRecord]
    event: dict[str, Any]


def error_code(error: Exception) -> str:
    return str(error.response.get("Error", {}).get("Code", "")) if isinstance(error, ClientError) else ""


class ShardPoller:
    """One shard: read it in order, spread its records over the lanes, run their batches, and
    end once a closed shard is read to its end and its last records are done."""

    def __init__(
        self,
        kinesis: Any,
        stream_name: str,
        shard_id: str,
        *,
        config: MappingConfig,
        invoke: Invoke,
        destination: FailureDestination,
        stats: MappingStats,
        stop: threading.Event,
        start: Position | None = None,
        function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ride-duration-prediction",
        poll_interval: float = 0.1,
        retry_delay: float = 0.1,
        region: str = "us-east-1",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kinesis = kinesis
        self.stream_name = stream_name
        self.stream_arn = stream_arn(stream_name, region)
        self.shard_id = shard_id
        self.config = config
        self.invoke = invoke
        self.destination = destination
        self.stats = stats
        self.stop = stop
        self.function_arn = function_arn
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.region = region
        self.clock = clock
        self.lanes = [Lane() for _ in range(config.ParallelizationFactor)]
        self.start = start or Position.starting(config)
        self.ended = False  # a closed shard read to its end: GetRecords gave no NextShardIterator
        self.last_read: str | None = None  # sequence number of the last record read
        self._iterator = self._get_iterator(self.start)

    @property
    def finished(self) -> bool:
        """Read to its end and nothing left to do: its children may be read now."""
        return self.ended and not any(lane.buffer or lane.pending_failure for lane in self.lanes)

    @property
    def buffered(self) -> int:
        return sum(len(lane.buffer) for lane in self.lanes)

    def run(self) -> None:
        while not self.stop.is_set() and not self.finished:
            try:
                if not self.step():
                    self.stop.wait(self.poll_interval)
            except (ClientError, BotoCoreError) as error:
                log.warning("shard %s: %s; retrying in 1 s", self.shard_id, error)
                self.stop.wait(1.0)
            except Exception:
                log.exception("shard %s: poller error; retrying in 1 s", self.shard_id)
                self.stop.wait(1.0)
        if self.finished:
            log.info("shard %s: closed and read to its end", self.shard_id)
            self.stats.add(shards_finished=1)

    # -- reading --------------------------------------------------------------------------

    def _get_iterator(self, position: Position) -> str:
        response = self.kinesis.get_shard_iterator(
            StreamName=self.stream_name, ShardId=self.shard_id, **position.arguments()
        )
        iterator: str = response["ShardIterator"]
        return iterator

    def _checkpoint_position(self) -> Position:
        """Just after the last record every lane is done with (what AWS resumes from)."""
        heads = [lane.buffer[0] for lane in self.lanes if lane.buffer]
        if heads:
            first = min(heads, key=lambda record: int(record.sequence_number))
            return Position("AT_SEQUENCE_NUMBER", first.sequence_number)
        if self.last_read is not None:
            return Position("AFTER_SEQUENCE_NUMBER", self.last_read)
        return self.start

    def _renew_iterator(self) -> None:
        position = self._checkpoint_position()
        self._iterator = self._get_iterator(position)
        for lane in self.lanes:
            lane.buffer.clear()  # read again from the checkpoint, in the same order
        self.stats.add(iterators_renewed=1)
        log.warning(
            "shard %s: shard iterator expired; renewed from the checkpoint (%s %s)",
            self.shard_id,
            position.type,
            position.sequence_number or position.timestamp or "",
        )

    def _read(self) -> int:
        if self.ended:
            return 0
        try:
            response = self.kinesis.get_records(ShardIterator=self._iterator, Limit=GET_RECORDS_LIMIT)
        except ClientError as error:
            if error_code(error) != "ExpiredIteratorException":
                raise
            self._renew_iterator()
            response = self.kinesis.get_records(ShardIterator=self._iterator, Limit=GET_RECORDS_LIMIT)
        records = response["Records"]
        for record in records:
            self._assign(record)
        if records:
            self.last_read = records[-1]["SequenceNumber"]
        next_iterator = response.get("NextShardIterator")
        if next_iterator:
            self._iterator = next_iterator
        else:
            self.ended = True
        return len(records)

    def _assign(self, record: dict[str, Any]) -> None:
        lane = self.lanes[self.lane_of(record["PartitionKey"])]
        if int(record["SequenceNumber"]) <= lane.done_through:
            return  # read again after an iterator renewal, but this lane is past it
        arrival = record["ApproximateArrivalTimestamp"]
        lane.buffer.append(
            StreamRecord(
                data=record["Data"],
                partition_key=record["PartitionKey"],
                sequence_number=record["SequenceNumber"],
                approximate_arrival_timestamp=arrival.timestamp()
                if isinstance(arrival, datetime)
                else arrival,
            )
        )

    def lane_of(self, partition_key: str) -> int:
        """The lane of a partition key: the same one for every record of the key."""
        if len(self.lanes) == 1:
            return 0
        digest = hashlib.md5(partition_key.encode(), usedforsecurity=False).digest()
        return int.from_bytes(digest[:8], "big") % len(self.lanes)

    def _has_full_batch(self) -> bool:
        return any(len(lane.buffer) >= self.config.BatchSize for lane in self.lanes)

    def _wants_more(self) -> bool:
        """Whether to read: some lane lacks a full batch, and the shard holds less than its limit."""
        if self.ended:
            return False
        if len(self.lanes) == 1:
            return len(self.lanes[0].buffer) < self.config.BatchSize
        return self.buffered < READ_AHEAD_LIMIT and any(
            len(lane.buffer) < self.config.BatchSize for lane in self.lanes
        )

    def _fill(self) -> None:
        """Read until a batch is full, or the batching window since the first record has passed."""
        if self._wants_more():
            self._read()
        window = self.config.MaximumBatchingWindowInSeconds
        if not self.buffered or window <= 0:
            return
        window_ends = time.monotonic() + window
        while not self._has_full_batch() and self._wants_more() and not self.stop.is_set():
            remaining = window_ends - time.monotonic()
            if remaining <= 0:
                return
            if not self._read():
                self.stop.wait(min(self.poll_interval, remaining))

    def _next_batch(self, lane: Lane) -> list[StreamRecord]:
        limit = lane.split_sizes[0] if lane.split_sizes else self.config.BatchSize
        batch: list[StreamRecord] = []
        size = 20
        for record in lane.buffer:
            record_size = len(record.data) * 4 // 3 + 700  # base64 plus the record's JSON fields
            if len(batch) == limit or (batch and size + record_size > MAX_INVOKE_PAYLOAD):
                break
            batch.append(record)
            size += record_size
        return batch

    # -- one step ---------------------------------------------------------------------------

    def step(self) -> bool:
        """Run one batch per ready lane; False when there was nothing to do."""
        self._fill()
        busy = [lane for lane in self.lanes if lane.buffer]
        if not busy:
            return False
        now = time.monotonic()
        ready = [lane for lane in busy if lane.not_before <= now]
        if not ready:
            self.stop.wait(min(lane.not_before for lane in busy) - now)
            return True
        batches = []
        acted = False
        for lane in ready:
            if lane.pending_failure is not None:
                acted = self._send_failure(lane) or acted
            elif self._discard_expired(lane):
                acted = True
            else:
                records = self._next_batch(lane)
                event = kinesis_event(records, self.shard_id, self.stream_arn, self.region)
                batches.append(Batch(lane, records, event))
        for batch, result in zip(batches, self._invoke_all(batches), strict=True):
            self._settle(batch, result)
        return acted or bool(batches)

    def _invoke_all(self, batches: list[Batch]) -> list[InvokeResult]:
        """Invoke every lane's batch at the same time; results in the batches' order."""
        results = [failed_invoke(RuntimeError("not invoked"))] * len(batches)

        def invoke(index: int) -> None:
            try:
                results[index] = self.invoke(batches[index].event)
            except Exception as error:  # noqa: BLE001 - an invoke that fails is retried like an error
                results[index] = failed_invoke(error)

        if len(batches) == 1:
            invoke(0)
            return results
        threads = [
            threading.Thread(target=invoke, args=(index,), name=f"{self.shard_id}-lane", daemon=True)
            for index in range(len(batches))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def _settle(self, batch: Batch, result: InvokeResult) -> None:
        lane, records = batch.lane, batch.records
        self.stats.add(invocations=1, records_delivered=len(records))
        failed_from = self._first_failure(result, records)
        if failed_from is None:
            self._checkpoint(lane, len(records))
            self._batch_done(lane)
            return
        if result.function_error and self.config.BisectBatchOnFunctionError and len(records) > 1:
            self.stats.add(bisections=1)
            half = len(records) // 2
            lane.split_sizes[:1] = [half, len(records) - half]
            return
        if failed_from > 0:
            self._checkpoint(lane, failed_from)  # what came before the lowest failure is done
            lane.attempts = 0
        lane.attempts += 1
        if 0 <= self.config.MaximumRetryAttempts < lane.attempts:
            self._discard(lane, records[failed_from:], "RetryAttemptsExhausted", result, batch.event)
            return
        lane.not_before = time.monotonic() + min(self.retry_delay * 2 ** (lane.attempts - 1), MAX_RETRY_DELAY)

    def _first_failure(self, result: InvokeResult, batch: list[StreamRecord]) -> int | None:
        """Index of the first record to deliver again, or None when the whole batch succeeded."""
        if result.function_error:
            self.stats.add(function_errors=1)
            return 0
        if not self.config.reports_item_failures or result.payload is None:
            return None
        if not isinstance(result.payload, dict):
            log.warning(
                "shard %s: response %r is not an object: whole batch failed", self.shard_id, result.payload
            )
            return 0
        failures = result.payload.get("batchItemFailures")
        if failures is None or failures == []:
            return None
        self.stats.add(partial_failures=1)
        positions = {record.sequence_number: index for index, record in enumerate(batch)}
        try:
            return min(positions[item["itemIdentifier"]] for item in failures)
        except (KeyError, TypeError):
            log.warning(
                "shard %s: unreadable batchItemFailures %r: whole batch failed", self.shard_id, failures
            )
            return 0

    def _checkpoint(self, lane: Lane, count: int) -> None:
        for _ in range(count):
            lane.done_through = int(lane.buffer.popleft().sequence_number)

    @staticmethod
    def _batch_done(lane: Lane) -> None:
        lane.attempts = 0
        if lane.split_sizes:
            lane.split_sizes.pop(0)

    def _discard_expired(self, lane: Lane) -> bool:
        limit = self.config.MaximumRecordAgeInSeconds
        if limit < 0:
            return False
        oldest_allowed = self.clock() - limit
        expired = []
        for record in lane.buffer:
            if record.approximate_arrival_timestamp >= oldest_allowed:
                break
            expired.append(record)
        if expired:
            self._discard(lane, expired[: self.config.BatchSize], "RecordAgeExceeded", None, None)
        return bool(expired)

    # -- giving up on records ---------------------------------------------------------------

    def _discard(
        self,
        lane: Lane,
        records: list[StreamRecord],
        condition: str,
        result: InvokeResult | None,
        event: dict[str, Any] | None,
    ) -> None:
        """Report the records' batch to the on-failure destination, then skip past them, as AWS
        does when it gives up; the records stay until the report is sent."""
        first, last = records[0], records[-1]
        record = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self.function_arn,
                "condition": condition,
                "approximateInvokeCount": lane.attempts,
            },
            "responseContext": {
                "statusCode": result.status_code if result else 0,
                "executedVersion": "$LATEST",
                "functionError": (result.function_error if result else None) or "",
            },
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "KinesisBatchInfo": {
                "shardId": self.shard_id,
                "startSequenceNumber": first.sequence_number,
                "endSequenceNumber": last.sequence_number,
                "approximateArrivalOfFirstRecord": _iso(first.approximate_arrival_timestamp),
                "approximateArrivalOfLastRecord": _iso(last.approximate_arrival_timestamp),
                "batchSize": len(records),
                "streamArn": self.stream_arn,
            },
        }
        lane.pending_failure = PendingFailure(len(records), record, event, condition)
        self._send_failure(lane)

    def _send_failure(self, lane: Lane) -> bool:
        """Try to send the lane's pending failure; True when a send was tried."""
        failure = lane.pending_failure
        if failure is None or len(lane.buffer) < failure.count:
            return False  # its records are being read again after an iterator renewal
        try:
            self.destination.send(failure.record, failure.payload)
        except Exception as error:  # noqa: BLE001 - any failed send keeps the records
            failure.sends += 1
            delay = min(max(self.retry_delay, 0.0) * 2 ** (failure.sends - 1), MAX_SEND_RETRY_DELAY)
            lane.not_before = time.monotonic() + delay
            self.stats.add(destination_failures=1)
            log.warning(
                "shard %s: cannot send the discarded batch to %s (%s: %s); its %d records stay, "
                "next try in %.1f s",
                self.shard_id,
                self.destination.arn,
                type(error).__name__,
                error,
                failure.count,
                delay,
            )
            return True
        lane.pending_failure = None
        self._checkpoint(lane, failure.count)
        if failure.condition == "RecordAgeExceeded":
            lane.split_sizes.clear()  # expired records change the batches still to come
        self._batch_done(lane)
        self.stats.add(records_discarded=failure.count)
        self.stats.discarded_batches.append(failure.record)
        log.warning("shard %s: discarded %d records (%s)", self.shard_id, failure.count, failure.condition)
        return True


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def list_all_shards(kinesis: Any, stream_name: str) -> Iterator[dict[str, Any]]:
    """Every shard of the stream, open and closed, across ListShards pages."""
    response = kinesis.list_shards(StreamName=stream_name)
    yield from response["Shards"]
    while response.get("NextToken"):
        response = kinesis.list_shards(NextToken=response["NextToken"])
        yield from response["Shards"]


class EventSourceMapping:
    """Polls every shard of a stream, one thread per shard, and lists the shards again every
    `shard_refresh_interval` seconds (and whenever a shard ends) to start the ones now due."""

    def __init__(
        self,
        kinesis: Any,
        stream_name: str,
        invoke: Invoke,
        config: MappingConfig,
        *,
        clients: Callable[[str], Any] | None = None,
        poll_interval: float = 0.1,
        retry_delay: float = 0.1,
        shard_refresh_interval: float = SHARD_REFRESH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kinesis = kinesis
        self.stream_name = stream_name
        self.invoke = invoke
        self.config = config
        self.stats = MappingStats()
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.shard_refresh_interval = shard_refresh_interval
        self.clock = clock
        self.destination = FailureDestination(config.on_failure_arn, clients or (lambda _service: None))
        self.pollers: dict[str, ShardPoller] = {}
        self._threads: list[threading.Thread] = []
        self._finished: set[str] = set()
        self._initial_shards: set[str] | None = None
        self._created = clock()
        self._started = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.refresh()
        self._coordinator = threading.Thread(
            target=self._coordinate, name=f"mapping-{stream_name}", daemon=True
        )

    def start(self) -> None:
        with self._lock:
            self._started = True
            for poller in self.pollers.values():
                self._start_thread(poller)
        self._coordinator.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._coordinator.is_alive():
            self._coordinator.join(timeout)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    @property
    def threads(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._threads)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.config).items() if v not in (None, {}, ())}

    # -- shards -------------------------------------------------------------------------------

    def refresh(self) -> list[str]:
        """List the shards and start a poller for each one now due; returns the new shard ids."""
        shards = list(list_all_shards(self.kinesis, self.stream_name))
        listed = {shard["ShardId"] for shard in shards}
        first_listing = self._initial_shards is None
        if self._initial_shards is None:
            self._initial_shards = listed
        with self._lock:
            finished = set(self._finished)
        started = []
        for shard in shards:
            shard_id = shard["ShardId"]
            if shard_id in self.pollers:
                continue
            parents = [shard.get("ParentShardId"), shard.get("AdjacentParentShardId")]
            # A parent no longer listed is past the stream's retention: nothing left to read.
            if any(parent in listed and parent not in finished for parent in parents):
                continue
            self._add(shard_id, self._start_position(shard_id, first_listing))
            started.append(shard_id)
        return started

    def _start_position(self, shard_id: str, first_listing: bool) -> Position:
        if self._initial_shards is not None and shard_id not in self._initial_shards:
            return Position("TRIM_HORIZON")  # created after the mapping: all of it is new
        if self.config.StartingPosition == "LATEST" and not first_listing:
            # A child that waited for its parent: LATEST as of when the mapping was created.
            return Position("AT_TIMESTAMP", timestamp=self._created)
        return Position.starting(self.config)

    def _add(self, shard_id: str, start: Position) -> None:
        poller = ShardPoller(
            self.kinesis,
            self.stream_name,
            shard_id,
            config=self.config,
            invoke=self.invoke,
            destination=self.destination,
            stats=self.stats,
            stop=self._stop,
            start=start,
            poll_interval=self.poll_interval,
            retry_delay=self.retry_delay,
            clock=self.clock,
        )
        with self._lock:
            self.pollers[shard_id] = poller
            if self._started:
                self._start_thread(poller)

    def _start_thread(self, poller: ShardPoller) -> None:
        thread = threading.Thread(
            target=self._poll, args=(poller,), name=f"mapping-{poller.shard_id}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _poll(self, poller: ShardPoller) -> None:
        poller.run()
        if poller.finished:
            with self._lock:
                self._finished.add(poller.shard_id)
            self._wake.set()  # its children are due now

    def _coordinate(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.shard_refresh_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                for shard_id in self.refresh():
                    log.info("shard %s: reading it now", shard_id)
            except (ClientError, BotoCoreError) as error:
                log.warning("listing the shards of %s failed (%s); trying again", self.stream_name, error)
            except Exception:
                log.exception("listing the shards of %s failed; trying again", self.stream_name)
