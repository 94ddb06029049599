"""KPL aggregation for the demo's and the tests' producers, with AWS's reference aggregator
(`aws-kinesis-agg`, a development dependency): many user records packed into one Kinesis
record, as producers on the Kinesis Producer Library write them. The function reads them with
its own reader (stream/deaggregation.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aws_kinesis_agg.aggregator import AggRecord


@dataclass(frozen=True)
class Aggregate:
    """One aggregated Kinesis record, and which of the user records given it carries."""

    entry: dict[str, Any]  # a PutRecords entry: Data, PartitionKey
    carries: list[int]  # indexes of its user records in the input, in sub-sequence order


def aggregate(user_records: Sequence[tuple[str, bytes]], per_record: int) -> list[Aggregate]:
    """(partition key, data) user records, packed in order, at most `per_record` to a Kinesis
    record (fewer when the next would take it past Kinesis's 1 MiB; one alone over it raises
    ValueError). As the KPL does, an aggregate is put with its first user record's partition
    key, so all of its user records land on that key's shard."""
    if per_record < 1:
        raise ValueError(f"per_record must be 1 or more, got {per_record}")
    aggregates: list[Aggregate] = []
    current, carries = AggRecord(), list[int]()
    for index, (partition_key, data) in enumerate(user_records):
        if len(carries) == per_record or not current.add_user_record(partition_key, data):
            if carries:
                aggregates.append(_closed(current, carries))
            current, carries = AggRecord(), []
            current.add_user_record(partition_key, data)
        carries.append(index)
    if carries:
        aggregates.append(_closed(current, carries))
    return aggregates


def _closed(record: Any, carries: list[int]) -> Aggregate:
    partition_key, explicit_hash_key, data = record.get_contents()
    entry = {"Data": data, "PartitionKey": partition_key}
    if explicit_hash_key:
        entry["ExplicitHashKey"] = explicit_hash_key
    return Aggregate(entry, carries)
