"""Replay the batches Lambda gave up on: read them back from the input stream and put them again.

    python -m scripts.replay --stage dev --dry-run     # list what would be replayed
    python -m scripts.replay --stage dev               # replay, deleting each message once done
    python -m scripts.replay --queue-name ride_mapping_failures   # the local pipeline's queue

Each message of the on-failure queue names a discarded batch (KinesisBatchInfo: stream, shard,
first and last sequence number, size), not its records; the records are still on the input
stream until its retention (24 h) ends. For each message this reads the shard from the first
sequence number to the last, puts those records back on the same stream with their partition
keys (PutRecords, resending only rejected entries), and deletes the message only when all of
its records are back on the stream. Records already past the stream's retention are named; their
message is kept (the discarded-batches alarm stays on) unless --drop-expired says to let go.
A replayed record gets a new sequence number, so its prediction a new event id: consumers that
must not count a ride twice de-duplicate replays on the ride id.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from scripts.stack import (
    PrerequisiteError,
    ScriptError,
    caller_account,
    chosen_stack_name,
    run,
    say,
    session,
    stack_outputs,
)
from stream.kinesis_output import KinesisStreamWriter, OutputRecord

# GetRecords: up to 10,000 records a call, 5 calls a second per shard (shared with the mapping).
GET_RECORDS_LIMIT = 10_000
EMPTY_PAGE_PAUSE_SECONDS = 0.2
# Long enough to fetch and re-put a batch before another reader could see the message again.
VISIBILITY_TIMEOUT_SECONDS = 300


class ReplayError(ScriptError):
    """Some batches could not be replayed; their messages stay in the queue."""


@dataclass(frozen=True)
class DiscardedBatch:
    """What Lambda's on-failure record says about a batch it discarded (KinesisBatchInfo)."""

    stream_arn: str
    shard_id: str
    start_sequence_number: str
    end_sequence_number: str
    batch_size: int
    condition: str = ""

    @classmethod
    def from_message(cls, body: str) -> DiscardedBatch:
        try:
            record = json.loads(body)
            info = record["KinesisBatchInfo"]
            return cls(
                stream_arn=info["streamArn"],
                shard_id=info["shardId"],
                start_sequence_number=str(info["startSequenceNumber"]),
                end_sequence_number=str(info["endSequenceNumber"]),
                batch_size=int(info["batchSize"]),
                condition=(record.get("requestContext") or {}).get("condition", ""),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"not a Kinesis on-failure record ({type(error).__name__}: {error})") from None

    @property
    def stream_name(self) -> str:
        return self.stream_arn.rsplit("/", 1)[-1]

    def describe(self) -> str:
        return (
            f"{self.stream_name} {self.shard_id} {self.start_sequence_number}..{self.end_sequence_number} "
            f"({self.batch_size} records{', ' + self.condition if self.condition else ''})"
        )


@dataclass
class FetchedBatch:
    """The batch's records still on the stream, and what is missing from it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    expired: str = ""  # which records are past retention, in words; empty when none

    def missing(self, batch: DiscardedBatch) -> int:
        return batch.batch_size - len(self.records)


def shard_records(
    kinesis: Any, batch: DiscardedBatch, iterator_type: str, sleep: Callable[[float], None]
) -> Iterator[dict[str, Any]]:
    """The shard's records from the batch's first sequence number (or the shard's oldest), in order,
    until one past its last, or the shard's end, or its newest record."""
    start = (
        {"StartingSequenceNumber": batch.start_sequence_number}
        if iterator_type == "AT_SEQUENCE_NUMBER"
        else {}
    )
    iterator: str | None = kinesis.get_shard_iterator(
        StreamName=batch.stream_name, ShardId=batch.shard_id, ShardIteratorType=iterator_type, **start
    )["ShardIterator"]
    end = int(batch.end_sequence_number)
    while iterator:
        page = kinesis.get_records(ShardIterator=iterator, Limit=GET_RECORDS_LIMIT)
        for record in page["Records"]:
            if int(record["SequenceNumber"]) > end:
                return
            yield record
        if not page["Records"]:
            if page.get("MillisBehindLatest", 0) == 0:
                return  # at the newest record: the rest of the range is not on the shard
            sleep(EMPTY_PAGE_PAUSE_SECONDS)
        iterator = page.get("NextShardIterator")  # none once a closed shard is read to its end


def fetch_batch(
    kinesis: Any, batch: DiscardedBatch, sleep: Callable[[float], None] = time.sleep
) -> FetchedBatch:
    """Read the batch's records back from the stream, naming those already past retention."""
    start, end = int(batch.start_sequence_number), int(batch.end_sequence_number)
    try:
        records = list(shard_records(kinesis, batch, "AT_SEQUENCE_NUMBER", sleep))
    except ClientError as error:
        code = error.response["Error"]["Code"]
        if code == "ResourceNotFoundException":  # the stream or (closed, expired) shard is gone
            return FetchedBatch(
                [], f"all {batch.batch_size}: {batch.shard_id} of {batch.stream_name} is gone ({code})"
            )
        if code != "InvalidArgumentException":
            raise
        # A sequence number the shard no longer holds: read what it still has of the range.
        records = list(shard_records(kinesis, batch, "TRIM_HORIZON", sleep))
    records = [r for r in records if start <= int(r["SequenceNumber"]) <= end]
    fetched = FetchedBatch(records)
    missing = fetched.missing(batch)
    if missing > 0:
        first_kept = records[0]["SequenceNumber"] if records else None
        before = f"before {first_kept}" if first_kept else f"up to {batch.end_sequence_number}"
        fetched.expired = (
            f"{missing} of {batch.batch_size}: sequence numbers from {batch.start_sequence_number} {before} "
            "are past the stream's retention"
        )
    return fetched


def put_again(writer: KinesisStreamWriter, records: list[dict[str, Any]]) -> list[str]:
    """Put the records back with their partition keys; the errors of those that still failed."""
    entries = [
        OutputRecord(record["Data"], record["PartitionKey"], record["SequenceNumber"]) for record in records
    ]
    result = writer.put(entries)
    return [f"{failed.record.source}: {failed.error}" for failed in result.failed]


@dataclass
class ReplaySummary:
    messages: int = 0
    replayed: int = 0
    kept: int = 0
    records: int = 0
    expired: int = 0

    def line(self, dry_run: bool) -> str:
        if dry_run:
            return (
                f"dry run: {self.messages} message(s), {self.records} record(s) to put again, "
                f"{self.expired} past retention; nothing was put or deleted"
            )
        return (
            f"{self.replayed} of {self.messages} message(s) replayed and deleted ({self.records} records put "
            f"again), {self.kept} kept in the queue, {self.expired} record(s) past retention"
        )


@dataclass
class Replayer:
    """Works through the queue, one message at a time."""

    sqs: Any
    kinesis: Any
    queue_url: str
    dry_run: bool = False
    drop_expired: bool = False
    allowed_stream_arn: str | None = None
    writers: dict[str, KinesisStreamWriter] = field(default_factory=dict)
    summary: ReplaySummary = field(default_factory=ReplaySummary)
    seen: set[str] = field(default_factory=set)

    def messages(self, limit: int | None) -> Iterator[dict[str, Any]]:
        """Every message once (a dry run makes each visible again at once, so stop at a repeat)."""
        while limit is None or self.summary.messages < limit:
            page = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10 if limit is None else max(1, min(10, limit - self.summary.messages)),
                VisibilityTimeout=VISIBILITY_TIMEOUT_SECONDS,
                WaitTimeSeconds=1,
            ).get("Messages", [])
            fresh = [m for m in page if m["MessageId"] not in self.seen]
            if not fresh:
                self.release(page)
                return
            for message in fresh:
                self.seen.add(message["MessageId"])
                yield message

    def release(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )

    def handle(self, message: dict[str, Any]) -> None:
        self.summary.messages += 1
        label = f"message {message['MessageId']}"
        try:
            batch = DiscardedBatch.from_message(message["Body"])
        except ValueError as error:
            say(f"{label}: {error}; kept")
            self.keep(message)
            return
        if self.allowed_stream_arn and batch.stream_arn != self.allowed_stream_arn:
            say(f"{label}: {batch.describe()}: not this stage's input stream {self.allowed_stream_arn}; kept")
            self.keep(message)
            return
        fetched = fetch_batch(self.kinesis, batch)
        self.summary.expired += max(0, fetched.missing(batch))
        say(f"{label}: {batch.describe()}: {len(fetched.records)} record(s) still on the stream")
        if fetched.expired:
            say(f"  past retention, cannot be replayed: {fetched.expired}")
        if self.dry_run:
            self.summary.records += len(fetched.records)
            for record in fetched.records:
                say(
                    f"  {record['SequenceNumber']}  key {record['PartitionKey']}  {len(record['Data'])} bytes"
                )
            self.release([message])
            return
        failures = put_again(self.writer(batch.stream_name), fetched.records) if fetched.records else []
        self.summary.records += len(fetched.records) - len(failures)
        if failures:
            say(
                f"  {len(failures)} record(s) could not be put again (message kept): {'; '.join(failures[:3])}"
            )
            self.keep(message)
        elif fetched.expired and not self.drop_expired:
            say(
                "  message kept: some records are past retention (--drop-expired deletes it after naming them)"
            )
            self.keep(message)
        else:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            self.summary.replayed += 1
            say(f"  {len(fetched.records)} record(s) put again on {batch.stream_name}; message deleted")

    def keep(self, message: dict[str, Any]) -> None:
        """Leave the message for later, visible again now (the alarm keeps counting it)."""
        self.summary.kept += 1
        self.release([message])

    def writer(self, stream_name: str) -> KinesisStreamWriter:
        if stream_name not in self.writers:
            self.writers[stream_name] = KinesisStreamWriter(self.kinesis, stream_name)
        return self.writers[stream_name]


def queue_and_stream(args: argparse.Namespace, aws: Any) -> tuple[str, str | None]:
    """The queue's URL, and the one stream its batches may be put back on (None: their own)."""
    if args.queue_url:
        return args.queue_url, None
    if args.queue_name:
        return aws.client("sqs").get_queue_url(QueueName=args.queue_name)["QueueUrl"], None
    if not args.stage:
        raise PrerequisiteError("say which queue: --stage (its stack's), --queue-url or --queue-name")
    outputs = stack_outputs(aws.client("cloudformation"), chosen_stack_name(args), args.stage)
    return outputs["DiscardedBatchesQueueUrl"], outputs["InputStreamArn"]


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.replay",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Exit 1 if a message was kept (records past retention, or a put that failed).",
    )
    result.add_argument(
        "--stage", help="the stage whose on-failure queue to replay (stack ride-duration-<stage>)"
    )
    result.add_argument("--stack-name", help="the stage's stack, if not ride-duration-<stage>")
    result.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION, or the profile's region)")
    result.add_argument("--queue-url", help="another on-failure queue, e.g. the local pipeline's")
    result.add_argument("--queue-name", help="the same, by name (ride_mapping_failures for make up)")
    result.add_argument(
        "--dry-run", action="store_true", help="list the batches and records; put and delete nothing"
    )
    result.add_argument(
        "--drop-expired",
        action="store_true",
        help="delete a message even if some of its records are past retention (after naming them)",
    )
    result.add_argument("--max-messages", type=int, help="stop after this many messages")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    aws = session(args)
    caller_account(aws.client("sts"))
    queue_url, stream_arn = queue_and_stream(args, aws)
    replayer = Replayer(
        aws.client("sqs"),
        aws.client("kinesis"),
        queue_url,
        dry_run=args.dry_run,
        drop_expired=args.drop_expired,
        allowed_stream_arn=stream_arn,
    )
    say(f"{'listing' if args.dry_run else 'replaying'} {queue_url}")
    for message in replayer.messages(args.max_messages):
        replayer.handle(message)
    summary = replayer.summary.line(args.dry_run)
    print(summary)
    if replayer.summary.kept:
        raise ReplayError(f"{replayer.summary.kept} message(s) kept in the queue: see above")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
