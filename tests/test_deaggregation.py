"""KPL de-aggregation (stream/deaggregation.py) against aggregates built by AWS's reference
aggregator (`aws-kinesis-agg`), and against corrupt ones made from them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The reference's protobuf classes, as its aggregator imports them (it puts its own folder on
# sys.path first, which `from aws_kinesis_agg import messages_pb2` alone would miss).
from aws_kinesis_agg.aggregator import AggRecord, messages_pb2
from aws_kinesis_agg.deaggregator import deaggregate_records

from local_aws.kinesis_events import event_from_payloads
from local_aws.kpl import aggregate
from stream.deaggregation import (
    CORRUPT,
    MAGIC,
    MAGIC_BASE64,
    CorruptAggregateError,
    deaggregate,
    read_aggregate,
)
from stream.ride_events import KinesisRecord


def aggregated(
    user_records: list[tuple[str, bytes]], explicit_hash_keys: dict[int, str] | None = None
) -> bytes:
    """One aggregated record's bytes, from the reference aggregator."""
    record = AggRecord()
    for index, (key, data) in enumerate(user_records):
        assert record.add_user_record(key, data, (explicit_hash_keys or {}).get(index))
    return record.get_contents()[2]


def with_message(message: bytes) -> bytes:
    """An aggregate around these protobuf bytes, with a digest that matches them."""
    return MAGIC + message + hashlib.md5(message).digest()  # noqa: S324 - KPL's checksum


def message_of(payload: bytes) -> bytes:
    return payload[len(MAGIC) : -16]


def records_of(*payloads: bytes, **kwargs: Any) -> list[KinesisRecord]:
    return [KinesisRecord.from_raw(raw) for raw in event_from_payloads(list(payloads), **kwargs)["Records"]]


ROOT = Path(__file__).resolve().parent.parent
RIDES = [(f"ride-{i}", b'{"ride_id": %d}' % i) for i in range(5)]


def test_an_aggregate_becomes_its_user_records_with_their_keys_indexes_and_ids() -> None:
    [record] = records_of(aggregated(RIDES))
    users = deaggregate([record])
    assert [base64.b64decode(u.data) for u in users] == [data for _, data in RIDES]
    assert [u.partition_key for u in users] == [key for key, _ in RIDES]
    assert [u.sub_sequence_number for u in users] == [0, 1, 2, 3, 4]
    assert [u.event_id for u in users] == [f"{record.event_id}:{i}" for i in range(5)]
    assert {u.sequence_number for u in users} == {record.sequence_number}  # what batchItemFailures names
    assert all(u.malformed is None and u.event_source_arn == record.event_source_arn for u in users)
    assert users[3].source() == {
        "event_id": f"{record.event_id}:3",
        "sequence_number": record.sequence_number,
        "shard_id": "shardId-000000000000",
        "event_source_arn": record.event_source_arn,
        "sub_sequence_number": 3,
    }
    assert users[0].approximate_arrival_timestamp == record.approximate_arrival_timestamp


def test_plain_records_pass_through_untouched_and_keep_their_source() -> None:
    plain, hello = records_of(b'{"ride_id": 1}', b"Hello, this is a test.")
    before = plain.source()
    out = deaggregate([plain, hello])
    assert out[0] is plain
    assert out[1] is hello
    assert plain.source() == before
    assert "sub_sequence_number" not in before


def test_plain_and_aggregated_records_mix_in_batch_order() -> None:
    records = records_of(b"plain-0", aggregated(RIDES[:2]), b"plain-1", aggregated(RIDES[2:]))
    out = deaggregate(records)
    assert [(base64.b64decode(u.data), u.sub_sequence_number) for u in out] == [
        (b"plain-0", None),
        (RIDES[0][1], 0),
        (RIDES[1][1], 1),
        (b"plain-1", None),
        (RIDES[2][1], 0),
        (RIDES[3][1], 1),
        (RIDES[4][1], 2),
    ]
    assert [u.sequence_number for u in out] == [records[i].sequence_number for i in (0, 1, 1, 2, 3, 3, 3)]


def test_shared_keys_long_records_and_explicit_hash_keys_read_like_the_reference_deaggregator() -> None:
    rng = random.Random(7)
    keys = [f"k{i}-ü" for i in range(200)]
    # > 127 keys and records over 127 bytes: multi-byte varints for indexes and lengths.
    user_records = [
        (rng.choice(keys), rng.randbytes(rng.choice([0, 1, 127, 128, 300, 2_000]))) for _ in range(400)
    ]
    hash_keys = {i: str(rng.getrandbits(127)) for i in range(0, 400, 3)}
    event = event_from_payloads([aggregated(user_records, hash_keys)])
    ours = deaggregate([KinesisRecord.from_raw(r) for r in event["Records"]])
    reference = deaggregate_records(event["Records"])
    assert len(ours) == len(reference) == 400
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.partition_key == theirs["kinesis"]["partitionKey"]
        assert base64.b64decode(mine.data) == base64.b64decode(theirs["kinesis"]["data"])
        assert mine.sub_sequence_number == theirs["kinesis"]["subSequenceNumber"]


def test_user_records_of_a_record_without_an_event_id_have_none_either() -> None:
    # No id, no de-duplication key: such records are never skipped as re-deliveries.
    raw = event_from_payloads([aggregated(RIDES)])["Records"][0]
    del raw["eventID"]
    assert {u.event_id for u in deaggregate([KinesisRecord.from_raw(raw)])} == {""}


def test_unknown_fields_such_as_tags_are_skipped() -> None:
    message = messages_pb2.AggregatedRecord()
    message.partition_key_table.append("key")
    record = message.records.add(partition_key_index=0, data=b"with tags")
    record.tags.add(key="source", value="kpl")
    assert read_aggregate(with_message(message.SerializeToString())) == [("key", b"with tags")]


def reference_message(**fields: Any) -> bytes:
    """An AggregatedRecord as the reference's protobuf classes write it, fields as given."""
    message = messages_pb2.AggregatedRecord(
        partition_key_table=fields.pop("keys", ["a", "b"]),
        explicit_hash_key_table=fields.pop("hash_keys", []),
    )
    for record in fields.pop("records"):
        message.records.add(**record)
    return message.SerializeToString()


def cut_inside_the_second_record(payload: bytes) -> bytes:
    message = message_of(payload)
    second = message.index(RIDES[1][1])
    return with_message(message[: second + 3])


def key_index_out_of_range() -> bytes:
    return with_message(
        reference_message(
            records=[{"partition_key_index": 0, "data": b"x"}, {"partition_key_index": 2, "data": b"y"}]
        )
    )


def flipped_digest(payload: bytes) -> bytes:
    return payload[:-1] + bytes([payload[-1] ^ 0x01])


def flipped_message_byte(payload: bytes) -> bytes:
    return payload[:10] + bytes([payload[10] ^ 0x20]) + payload[11:]


CORRUPT_AGGREGATES = {
    "bad MD5: a byte of the message changed": (
        flipped_message_byte(aggregated(RIDES)),
        "MD5 digest does not match the protobuf message (bytes changed or cut)",
    ),
    "bad MD5: the digest changed": (
        flipped_digest(aggregated(RIDES)),
        "MD5 digest does not match the protobuf message (bytes changed or cut)",
    ),
    "bad MD5: the aggregate cut short": (
        aggregated(RIDES)[:-5],
        "MD5 digest does not match the protobuf message (bytes changed or cut)",
    ),
    "truncated protobuf (with a digest of what is left)": (
        cut_inside_the_second_record(aggregated(RIDES)),
        "protobuf message cut short",
    ),
    "partition key index out of range": (
        key_index_out_of_range(),
        "user record 1: partition key index 2 is out of range (the key table has 2)",
    ),
    "explicit hash key index out of range": (
        with_message(
            reference_message(
                hash_keys=["1"],
                records=[{"partition_key_index": 0, "explicit_hash_key_index": 1, "data": b"x"}],
            )
        ),
        "user record 0: explicit hash key index 1 is out of range (the hash key table has 1)",
    ),
    "no user records": (with_message(reference_message(records=[])), "no user records"),
    "too short for the magic and a digest": (
        MAGIC + b"\x00" * 5,
        "9 bytes, too short for the magic and a 16-byte MD5 digest",
    ),
    "a field with the wrong wire type": (
        with_message(b"\x08\x01"),
        "AggregatedRecord: protobuf field 1 has wire type 0",
    ),
    "a partition key that is not UTF-8": (
        with_message(b"\x0a\x02\xff\xfe" + b"\x1a\x05\x08\x00\x1a\x01x"),
        "a partition key in the key table is not UTF-8",
    ),
    "a user record without data": (
        with_message(b"\x0a\x01a" + b"\x1a\x02\x08\x00"),
        "user record 0 has no data",
    ),
}


@pytest.mark.parametrize(("payload", "reason"), CORRUPT_AGGREGATES.values(), ids=CORRUPT_AGGREGATES.keys())
def test_a_corrupt_aggregate_stays_one_record_marked_with_the_reason(payload: bytes, reason: str) -> None:
    [record] = records_of(payload)
    [out] = deaggregate([record])
    assert out.malformed is not None
    assert out.malformed.startswith(f"{CORRUPT}: {reason}")
    # The rest is the Kinesis record's own: one dead letter, keyed and traceable as the record.
    assert (out.event_id, out.partition_key, out.data, out.sub_sequence_number) == (
        record.event_id,
        record.partition_key,
        record.data,
        None,
    )
    assert record.malformed is None  # the input record is not changed


def test_the_reference_deaggregator_would_lose_or_misname_these() -> None:
    """Why the function does not use it at run time: a bad digest passes as a plain record (then
    dead-lettered as `data is not UTF-8`), a bad index drops the user records after it."""
    [passed_on] = deaggregate_records(event_from_payloads([flipped_digest(aggregated(RIDES))])["Records"])
    assert "subSequenceNumber" not in passed_on["kinesis"]
    assert len(deaggregate_records(event_from_payloads([key_index_out_of_range()])["Records"])) == 1


def test_every_cut_and_every_changed_byte_is_read_or_refused_never_raised() -> None:
    payload = aggregated([(f"key-{i}", b"data-%d" % i * (i * 40)) for i in range(4)], {1: "12345"})
    message = message_of(payload)
    full = read_aggregate(payload)
    for end in range(len(message)):
        try:
            users = read_aggregate(with_message(message[:end]))
        except CorruptAggregateError:
            continue
        assert users == full[: len(users)]  # a cut on a field boundary leaves whole user records
    rng = random.Random(3)
    for _ in range(3000):
        changed = bytearray(message)
        changed[rng.randrange(len(changed))] = rng.randrange(256)
        with contextlib.suppress(CorruptAggregateError):
            read_aggregate(with_message(bytes(changed)))


def test_data_that_only_starts_like_the_magic_is_a_plain_record() -> None:
    # F3 89 9A then another byte: base64 starts like an aggregate's, the magic does not match.
    payload = b"\xf3\x89\x9a\xbf is a plain record"
    [record] = records_of(payload)
    assert record.data.startswith(MAGIC_BASE64)
    assert deaggregate([record]) == [record]


def test_a_lambda_record_already_malformed_is_left_as_it_is() -> None:
    raw = event_from_payloads([aggregated(RIDES)])["Records"][0]
    del raw["kinesis"]["sequenceNumber"]
    [out] = deaggregate([KinesisRecord.from_raw(raw)])
    assert out.malformed == "malformed Lambda record: no kinesis.sequenceNumber"


def test_the_producer_helper_packs_in_order_within_the_limits() -> None:
    users = [(str(i), b"r%d" % i) for i in range(45)]
    packed = aggregate(users, per_record=20)
    assert [a.carries for a in packed] == [list(range(20)), list(range(20, 40)), list(range(40, 45))]
    assert [a.entry["PartitionKey"] for a in packed] == ["0", "20", "40"]
    assert [u for a in packed for u in read_aggregate(a.entry["Data"])] == users
    big = [(str(i), b"x" * 400_000) for i in range(5)]
    assert [a.carries for a in aggregate(big, per_record=20)] == [[0, 1], [2, 3], [4]]  # 1 MiB each at most


def test_the_reader_benchmark_runs_and_the_readers_agree() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.deaggregation", "--aggregates", "2", "--per-aggregate", "5",
         "--repeat", "1", "--cold-runs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "this reader (stream/deaggregation.py)" in result.stdout
    assert "protobuf's imports and the decoder's classes add" in result.stdout
