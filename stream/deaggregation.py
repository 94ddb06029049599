"""KPL de-aggregation: a Kinesis record packed by the Kinesis Producer Library (or one of its
ports) becomes the user records it carries, before anything is decoded or validated.

An aggregated record's bytes are the magic `F3 89 9A C2`, a protobuf `AggregatedRecord`, then
the 16-byte MD5 digest of that protobuf message. The message (proto2), by field number:

    AggregatedRecord  1 partition_key_table      repeated string
                      2 explicit_hash_key_table  repeated string
                      3 records                  repeated Record
    Record            1 partition_key_index      required uint64
                      2 explicit_hash_key_index  optional uint64
                      3 data                     required bytes
                      4 tags                     repeated (not used here)

Each user record becomes a `KinesisRecord` of its own, so that it is predicted or
dead-lettered on its own: the aggregate's sequence number (what batchItemFailures names:
Lambda re-delivers the aggregate whole), its index as `sub_sequence_number`, the partition key
its index names in the key table, its data base64-encoded like a plain record's, and the event
id `<eventID>:<index>`, unique per user record (the re-delivery memory's key, and what
consumers de-duplicate on). A corrupt aggregate (too short, a digest that does not match, a
protobuf message that does not parse, an index outside its table, no user records) stays ONE
record, `malformed` with the reason, and so becomes one dead letter.

Why a hand-written reader, not `protobuf` or `aws-kinesis-agg` (`python -m
benchmarks.deaggregation`, one run on a busy 2-core machine, 100-ride aggregates): a user
record costs 3.5 µs here from base64 to KinesisRecord, 2.6 µs over `protobuf` (upb), 4.1 µs
through the reference deaggregator (which returns dicts, not records), against 6.8 µs to decode
and validate the ride itself and ~120 µs per record for the whole handler (batches of 500,
`make bench`, writes to moto); a plain record pays 0.13 µs. The 0.9 µs `protobuf` would save is under 1 % of a record's time,
and it is not in the runtime set: it would add 1.4 MB installed and 22 ms of imports and
message building to every cold start, KPL or not. `aws-kinesis-agg` would add protobuf and
six, and it passes an aggregate whose digest does not match on as a plain record (then
dead-lettered as `data is not UTF-8`) and drops the user records after a bad key index with a
line on stderr: lost, where this reader dead-letters the aggregate with the reason. The tests
build their aggregates with it, the reference (tests/test_deaggregation.py).
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
from collections.abc import Sequence

from stream.ride_events import KinesisRecord

MAGIC = b"\xf3\x89\x9a\xc2"
DIGEST_SIZE = 16  # MD5
# Data that starts with MAGIC has base64 text that starts with these 4 characters (its first 3
# bytes): the one check a plain record pays. JSON text never starts so.
MAGIC_BASE64 = binascii.b2a_base64(MAGIC[:3], newline=False).decode("ascii")
CORRUPT = "corrupt KPL aggregate"

# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT, I64, LEN, I32 = 0, 1, 2, 5


class CorruptAggregateError(ValueError):
    """An aggregated record that cannot be read; the message says why."""


def deaggregate(records: Sequence[KinesisRecord]) -> list[KinesisRecord]:
    """The batch's user records, in order: a plain record as it is, an aggregate's user records
    in their order, a corrupt aggregate as itself, `malformed` with the reason."""
    user_records: list[KinesisRecord] = []
    for record in records:
        if record.data.startswith(MAGIC_BASE64) and record.malformed is None:
            user_records.extend(user_records_of(record))
        else:
            user_records.append(record)
    return user_records


def user_records_of(record: KinesisRecord) -> list[KinesisRecord]:
    """The user records of one Kinesis record whose data may be an aggregate."""
    try:
        payload = binascii.a2b_base64(record.data, strict_mode=True)
    except (binascii.Error, ValueError):
        return [record]  # not base64: decoding names it
    if not payload.startswith(MAGIC):
        return [record]  # not an aggregate: decoding names what it is
    try:
        contents = read_aggregate(payload)
    except CorruptAggregateError as error:
        return [dataclasses.replace(record, malformed=f"{CORRUPT}: {error}")]
    event_id, raw, sequence_number, arn = (
        record.event_id,
        record.raw,
        record.sequence_number,
        record.event_source_arn,
    )
    b2a = binascii.b2a_base64
    return [
        KinesisRecord(
            raw,
            sequence_number,
            partition_key,
            b2a(data, newline=False).decode("ascii"),
            f"{event_id}:{index}" if event_id else "",  # no id, no de-duplication (as for a plain record)
            arn,
            None,
            index,
        )
        for index, (partition_key, data) in enumerate(contents)
    ]


def read_aggregate(payload: bytes) -> list[tuple[str, bytes]]:
    """(partition key, data) of each user record of an aggregated record's bytes, in order."""
    if len(payload) < len(MAGIC) + DIGEST_SIZE:
        raise CorruptAggregateError(
            f"{len(payload)} bytes, too short for the magic and a {DIGEST_SIZE}-byte MD5 digest"
        )
    message = payload[len(MAGIC) : -DIGEST_SIZE]
    if hashlib.md5(message).digest() != payload[-DIGEST_SIZE:]:  # noqa: S324 - KPL's checksum, not security
        raise CorruptAggregateError("MD5 digest does not match the protobuf message (bytes changed or cut)")
    try:
        key_table, hash_keys, records = _aggregated_record(message)
    except IndexError:  # a read past the end of the message
        raise CorruptAggregateError(f"protobuf message cut short ({len(message)} bytes)") from None
    if not records:
        raise CorruptAggregateError("no user records")
    try:
        keys = [key.decode("utf-8") for key in key_table]
    except UnicodeDecodeError:
        raise CorruptAggregateError("a partition key in the key table is not UTF-8") from None
    for index, (key_index, hash_key_index, _) in enumerate(records):
        if key_index >= len(keys):
            raise CorruptAggregateError(
                f"user record {index}: partition key index {key_index} is out of range "
                f"(the key table has {len(keys)})"
            )
        if hash_key_index is not None and hash_key_index >= hash_keys:
            raise CorruptAggregateError(
                f"user record {index}: explicit hash key index {hash_key_index} is out of range "
                f"(the hash key table has {hash_keys})"
            )
    return [(keys[key_index], data) for key_index, _, data in records]


_Record = tuple[int, int | None, bytes]  # partition key index, explicit hash key index, data

# One-byte tags (field number << 3 | wire type) of the fields read, as KPL writes them; any
# other tag goes through `_other_field`, which reads it in full and skips or refuses it.
KEY_TABLE_TAG, HASH_KEY_TABLE_TAG, RECORDS_TAG = 1 << 3 | LEN, 2 << 3 | LEN, 3 << 3 | LEN
KEY_INDEX_TAG, HASH_KEY_INDEX_TAG, DATA_TAG = 1 << 3 | VARINT, 2 << 3 | VARINT, 3 << 3 | LEN


def _aggregated_record(message: bytes) -> tuple[list[bytes], int, list[_Record]]:
    """The key table, the size of the hash key table, and the records. Raises IndexError when a
    field runs past the end."""
    keys: list[bytes] = []
    hash_keys = 0
    records: list[_Record] = []
    position, end = 0, len(message)
    while position < end:
        tag = message[position]
        if tag not in (RECORDS_TAG, KEY_TABLE_TAG, HASH_KEY_TABLE_TAG):
            position = _other_field(message, position, "AggregatedRecord")
            continue
        size = message[position + 1]
        if size < 0x80:  # user records under 128 bytes: the usual case
            position += 2
        else:
            size, position = _varint(message, position + 1)
        stop = position + size
        if stop > end:
            raise IndexError
        if tag == RECORDS_TAG:
            records.append(_record(message, position, stop, len(records)))
        elif tag == KEY_TABLE_TAG:
            keys.append(message[position:stop])
        else:
            hash_keys += 1
        position = stop
    if position > end:
        raise IndexError
    return keys, hash_keys, records


def _record(message: bytes, position: int, end: int, index: int) -> _Record:
    key_index: int | None = None
    hash_key_index: int | None = None
    data: bytes | None = None
    while position < end:
        tag = message[position]
        if tag == DATA_TAG:
            size = message[position + 1]
            if size < 0x80:
                position += 2
            else:
                size, position = _varint(message, position + 1)
            data = message[position : position + size]
            position += size
        elif tag == KEY_INDEX_TAG:
            key_index = message[position + 1]
            if key_index < 0x80:
                position += 2
            else:
                key_index, position = _varint(message, position + 1)
        elif tag == HASH_KEY_INDEX_TAG:
            hash_key_index, position = _varint(message, position + 1)
        else:
            position = _other_field(message, position, f"user record {index}")
    if position > end:
        raise IndexError
    if key_index is None or data is None:
        missing = "partition key index" if key_index is None else "data"
        raise CorruptAggregateError(f"user record {index} has no {missing}")
    return key_index, hash_key_index, data


def _other_field(message: bytes, position: int, where: str) -> int:
    """The position after a field at `position` that this reader does not use; a field it uses
    with another wire type than its own is corrupt."""
    tag, position = _varint(message, position)
    field, wire_type = tag >> 3, tag & 7
    if field in (1, 2, 3) or field == 0:
        raise CorruptAggregateError(f"{where}: protobuf field {field} has wire type {wire_type}")
    if wire_type == VARINT:
        return _varint(message, position)[1]
    if wire_type == LEN:
        size, position = _varint(message, position)
        return position + size
    if wire_type in (I64, I32):
        return position + (8 if wire_type == I64 else 4)
    raise CorruptAggregateError(f"{where}: protobuf wire type {wire_type} (field {field})")


def _varint(message: bytes, position: int) -> tuple[int, int]:
    """A base-128 varint at `position`: (value, the position after it)."""
    value = shift = 0
    while True:
        byte = message[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift >= 70:  # a uint64 takes at most 10 bytes
            raise CorruptAggregateError(f"protobuf varint longer than 10 bytes at byte {position}")
