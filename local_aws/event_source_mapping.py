"""A local Kinesis event source mapping: polls every shard, invokes the function with events in
the AWS shape, and follows the documented retry semantics.

The settings keep AWS's names (`BatchSize`, `BisectBatchOnFunctionError`, ...) so a
configuration carries over to `aws lambda create-event-source-mapping` unchanged. AWS's own
mapping runs in production; this one is for development and tests:

- batches: up to `BatchSize` records of one shard, in order, and at most 6 MB of event; with
  `MaximumBatchingWindowInSeconds` > 0 it keeps reading until the batch is full or the window
  since the batch's first record has passed.
- `ReportBatchItemFailures`: checkpoint before the lowest failed sequence number and deliver
  again from there; an unreadable response (no list, an empty or unknown `itemIdentifier`)
  fails the whole batch.
- a function error (or a failed invoke) retries the batch; with `BisectBatchOnFunctionError` the
  batch is first split in halves, down to single records (splitting uses no retry).
- `MaximumRetryAttempts` and `MaximumRecordAgeInSeconds` (-1 = unbounded): past either, the
  records are discarded and their batch metadata goes to `DestinationConfig.OnFailure` (SQS,
  SNS or S3 ARN; S3 also gets the invocation's payload), or to the log without a destination.

Not emulated: `ParallelizationFactor` > 1 (each shard is processed one batch at a time),
resharding, tumbling windows, filter criteria.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from local_aws.kinesis_events import StreamRecord, kinesis_event, stream_arn

MAX_INVOKE_PAYLOAD = 6 * 1024 * 1024  # synchronous invoke limit
GET_RECORDS_LIMIT = 10_000
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
        return (self.DestinationConfig.get("OnFailure") or {}).get("Destination")


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
            return InvokeResult(
                {"errorMessage": str(error), "errorType": type(error).__name__}, "Unhandled", 0
            )
        raw = response["Payload"].read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return InvokeResult(payload, response.get("FunctionError"), response["StatusCode"])

    return invoke


@dataclass
class MappingStats:
    invocations: int = 0
    records_delivered: int = 0
    function_errors: int = 0
    partial_failures: int = 0
    bisections: int = 0
    records_discarded: int = 0
    discarded_batches: list[dict[str, Any]] = field(default_factory=list)


class FailureDestination:
    """Where discarded batches' metadata goes (`DestinationConfig.OnFailure`)."""

    def __init__(self, arn: str | None, clients: Callable[[str], Any]) -> None:
        self.arn = arn
        self._clients = clients

    def send(self, record: dict[str, Any], invoke_payload: dict[str, Any] | None) -> None:
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


class ShardPoller:
    """One shard: read, batch, invoke, checkpoint, retry, discard."""

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
        self.buffer: deque[StreamRecord] = deque()  # read, not yet checkpointed
        self.split_sizes: list[int] = []  # pending halves of a bisected batch
        self.attempts = 0  # failed invocations of the batch at the checkpoint
        self._iterator = self._first_iterator()

    def _first_iterator(self) -> str:
        position = self.config.StartingPosition
        kwargs: dict[str, Any] = {"ShardIteratorType": position}
        if position == "AT_TIMESTAMP":
            kwargs["Timestamp"] = self.config.StartingPositionTimestamp
        iterator: str = self.kinesis.get_shard_iterator(
            StreamName=self.stream_name, ShardId=self.shard_id, **kwargs
        )["ShardIterator"]
        return iterator

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.step():
                    self.stop.wait(self.poll_interval)
            except Exception:
                log.exception("shard %s: poller error; retrying", self.shard_id)
                self.stop.wait(1.0)

    # -- reading --------------------------------------------------------------------------

    def _read(self) -> int:
        response = self.kinesis.get_records(ShardIterator=self._iterator, Limit=GET_RECORDS_LIMIT)
        self._iterator = response.get("NextShardIterator") or self._iterator
        for record in response["Records"]:
            arrival = record["ApproximateArrivalTimestamp"]
            self.buffer.append(
                StreamRecord(
                    data=record["Data"],
                    partition_key=record["PartitionKey"],
                    sequence_number=record["SequenceNumber"],
                    approximate_arrival_timestamp=arrival.timestamp()
                    if isinstance(arrival, datetime)
                    else arrival,
                )
            )
        return len(response["Records"])

    def _fill(self) -> None:
        """Read until a batch is full, or the batching window since the first record has passed."""
        if len(self.buffer) < self.config.BatchSize:
            self._read()
        window = self.config.MaximumBatchingWindowInSeconds
        if not self.buffer or window <= 0:
            return
        window_ends = time.monotonic() + window
        while len(self.buffer) < self.config.BatchSize and not self.stop.is_set():
            remaining = window_ends - time.monotonic()
            if remaining <= 0:
                return
            if not self._read():
                self.stop.wait(min(self.poll_interval, remaining))

    def _next_batch(self) -> list[StreamRecord]:
        limit = self.split_sizes[0] if self.split_sizes else self.config.BatchSize
        batch: list[StreamRecord] = []
        size = 20
        for record in self.buffer:
            record_size = len(record.data) * 4 // 3 + 700  # base64 plus the record's JSON fields
            if len(batch) == limit or (batch and size + record_size > MAX_INVOKE_PAYLOAD):
                break
            batch.append(record)
            size += record_size
        return batch

    # -- one step ---------------------------------------------------------------------------

    def step(self) -> bool:
        """Process one batch; False when there was nothing to process."""
        self._fill()
        if not self.buffer:
            return False
        if self._discard_expired():
            return True
        batch = self._next_batch()
        event = kinesis_event(batch, self.shard_id, self.stream_arn, self.region)
        result = self.invoke(event)
        self.stats.invocations += 1
        self.stats.records_delivered += len(batch)
        failed_from = self._first_failure(result, batch)
        if failed_from is None:
            self._checkpoint(len(batch))
            self._batch_done()
            return True
        if result.function_error and self.config.BisectBatchOnFunctionError and len(batch) > 1:
            self.stats.bisections += 1
            half = len(batch) // 2
            self.split_sizes[:1] = [half, len(batch) - half]
            return True
        if failed_from > 0:
            self._checkpoint(failed_from)  # what came before the lowest failure is done
            self.attempts = 0
        self.attempts += 1
        if 0 <= self.config.MaximumRetryAttempts < self.attempts:
            self._discard(batch[failed_from:], "RetryAttemptsExhausted", result, event)
            return True
        self.stop.wait(min(self.retry_delay * 2 ** (self.attempts - 1), 5.0))
        return True

    def _first_failure(self, result: InvokeResult, batch: list[StreamRecord]) -> int | None:
        """Index of the first record to deliver again, or None when the whole batch succeeded."""
        if result.function_error:
            self.stats.function_errors += 1
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
        self.stats.partial_failures += 1
        positions = {record.sequence_number: index for index, record in enumerate(batch)}
        try:
            return min(positions[item["itemIdentifier"]] for item in failures)
        except (KeyError, TypeError):
            log.warning(
                "shard %s: unreadable batchItemFailures %r: whole batch failed", self.shard_id, failures
            )
            return 0

    def _checkpoint(self, count: int) -> None:
        for _ in range(count):
            self.buffer.popleft()

    def _batch_done(self) -> None:
        self.attempts = 0
        if self.split_sizes:
            self.split_sizes.pop(0)

    def _discard_expired(self) -> bool:
        limit = self.config.MaximumRecordAgeInSeconds
        if limit < 0:
            return False
        oldest_allowed = self.clock() - limit
        expired = []
        for record in self.buffer:
            if record.approximate_arrival_timestamp >= oldest_allowed:
                break
            expired.append(record)
        if expired:
            self._discard(expired[: self.config.BatchSize], "RecordAgeExceeded", None, None)
        return bool(expired)

    def _discard(
        self,
        records: list[StreamRecord],
        condition: str,
        result: InvokeResult | None,
        event: dict[str, Any] | None,
    ) -> None:
        """Skip past the records and report their batch, as AWS does when it gives up."""
        first, last = records[0], records[-1]
        invoke_count = self.attempts
        self._checkpoint(len(records))
        if result is None:
            self.split_sizes.clear()  # expired records change the batches still to come
        self._batch_done()
        record = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self.function_arn,
                "condition": condition,
                "approximateInvokeCount": invoke_count,
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
        self.stats.records_discarded += len(records)
        self.stats.discarded_batches.append(record)
        log.warning("shard %s: discarded %d records (%s)", self.shard_id, len(records), condition)
        self.destination.send(record, event)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventSourceMapping:
    """Polls every shard of a stream, one thread per shard, until stopped."""

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
    ) -> None:
        if config.ParallelizationFactor > 1:
            log.warning(
                "ParallelizationFactor %d is not emulated locally: one batch per shard at a time",
                config.ParallelizationFactor,
            )
        self.kinesis = kinesis
        self.stream_name = stream_name
        self.config = config
        self.stats = MappingStats()
        self._stop = threading.Event()
        destination = FailureDestination(config.on_failure_arn, clients or (lambda _service: None))
        shards = kinesis.list_shards(StreamName=stream_name)["Shards"]
        self.pollers = [
            ShardPoller(
                kinesis,
                stream_name,
                shard["ShardId"],
                config=config,
                invoke=invoke,
                destination=destination,
                stats=self.stats,
                stop=self._stop,
                poll_interval=poll_interval,
                retry_delay=retry_delay,
            )
            for shard in shards
        ]
        self._threads = [
            threading.Thread(target=p.run, name=f"mapping-{p.shard_id}", daemon=True) for p in self.pollers
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.config).items() if v not in (None, {}, ())}
