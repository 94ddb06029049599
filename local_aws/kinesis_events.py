"""Build the event Lambda hands a Kinesis consumer, exactly in the AWS shape."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"


@dataclass(frozen=True)
class StreamRecord:
    """A record as GetRecords returns it."""

    data: bytes
    partition_key: str
    sequence_number: str
    approximate_arrival_timestamp: float


def stream_arn(stream_name: str, region: str = DEFAULT_REGION, account: str = DEFAULT_ACCOUNT) -> str:
    return f"arn:aws:kinesis:{region}:{account}:stream/{stream_name}"


def event_record(
    record: StreamRecord, shard_id: str, source_arn: str, region: str = DEFAULT_REGION
) -> dict[str, Any]:
    """One entry of the event's `Records` list."""
    account = source_arn.split(":")[4] if source_arn.count(":") >= 5 else DEFAULT_ACCOUNT
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record.partition_key,
            "sequenceNumber": record.sequence_number,
            "data": base64.b64encode(record.data).decode("ascii"),
            "approximateArrivalTimestamp": record.approximate_arrival_timestamp,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{record.sequence_number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": f"arn:aws:iam::{account}:role/lambda-kinesis-role",
        "awsRegion": region,
        "eventSourceARN": source_arn,
    }


def kinesis_event(
    records: Iterable[StreamRecord], shard_id: str, source_arn: str, region: str = DEFAULT_REGION
) -> dict[str, Any]:
    """`{"Records": [...]}` for records of ONE shard, in order."""
    return {"Records": [event_record(r, shard_id, source_arn, region) for r in records]}


def event_from_payloads(
    payloads: Sequence[bytes],
    stream_name: str = "ride_events",
    shard_id: str = "shardId-000000000000",
    first_sequence_number: int = 49590338271490256608559692538361571095921575989136588898,
    arrival: float = 1_700_000_000.0,
) -> dict[str, Any]:
    """An event as Lambda would build it for payloads put in this order on one shard."""
    records = [
        StreamRecord(payload, f"key-{index}", str(first_sequence_number + index), arrival + index / 1000)
        for index, payload in enumerate(payloads)
    ]
    return kinesis_event(records, shard_id, stream_arn(stream_name))
