"""What KPL de-aggregation costs, and what the alternatives would: `python -m benchmarks.deaggregation`.

Per user record, for aggregates built by AWS's reference aggregator (`aws-kinesis-agg`) from
course-format rides: the function's reader (stream/deaggregation.py), the same job over
`protobuf` (upb, the message classes built at import from a descriptor, as a small decoder
would), and the reference deaggregator itself; the cost of a plain record passing through; and,
for scale, decoding and validating one ride. Then what `protobuf` would add to a cold start
(its imports and descriptors, in a fresh process) and to the installed size. Prints a table;
writes nothing.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import importlib.metadata
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aws_kinesis_agg.aggregator import AggRecord
from aws_kinesis_agg.deaggregator import deaggregate_records

from local_aws.kinesis_events import event_from_payloads
from stream.deaggregation import MAGIC, MAGIC_BASE64, deaggregate
from stream.ride_events import KinesisRecord, RideEvent, decode_ride_event

ROOT = Path(__file__).resolve().parent.parent

# What a protobuf-based decoder would build at import: the two messages, from a descriptor.
PROTOBUF_DECODER = """
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
F = descriptor_pb2.FieldDescriptorProto
proto = descriptor_pb2.FileDescriptorProto(name="kpl_aggregation.proto", package="kpl", syntax="proto2")
record = proto.message_type.add(name="Record")
record.field.add(name="partition_key_index", number=1, type=F.TYPE_UINT64, label=F.LABEL_REQUIRED)
record.field.add(name="explicit_hash_key_index", number=2, type=F.TYPE_UINT64, label=F.LABEL_OPTIONAL)
record.field.add(name="data", number=3, type=F.TYPE_BYTES, label=F.LABEL_REQUIRED)
aggregated = proto.message_type.add(name="AggregatedRecord")
aggregated.field.add(name="partition_key_table", number=1, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
aggregated.field.add(name="explicit_hash_key_table", number=2, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
aggregated.field.add(name="records", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".kpl.Record")
pool = descriptor_pool.DescriptorPool()
pool.Add(proto)
AggregatedRecord = message_factory.GetMessageClass(pool.FindMessageTypeByName("kpl.AggregatedRecord"))
"""


def rides(count: int) -> list[bytes]:
    return [
        json.dumps(
            {"ride": {"PULocationID": 1 + i % 265, "DOLocationID": 1 + i * 7 % 265, "trip_distance": 0.5 + i % 20},
             "ride_id": i}
        ).encode()
        for i in range(count)
    ]  # fmt: skip


def aggregated_event(aggregates: int, per_aggregate: int) -> dict[str, Any]:
    payloads = []
    for a in range(aggregates):
        aggregate = AggRecord()
        for i, ride in enumerate(rides(per_aggregate)):
            aggregate.add_user_record(str(a * per_aggregate + i), ride)
        payloads.append(aggregate.get_contents()[2])
    return event_from_payloads(payloads)


def protobuf_deaggregate(message_class: Any) -> Callable[[list[KinesisRecord]], list[KinesisRecord]]:
    """The function's job (the same KinesisRecords out) with protobuf parsing the message."""

    def run(records: list[KinesisRecord]) -> list[KinesisRecord]:
        out: list[KinesisRecord] = []
        b2a = binascii.b2a_base64
        for record in records:
            if not record.data.startswith(MAGIC_BASE64):
                out.append(record)
                continue
            payload = binascii.a2b_base64(record.data, strict_mode=True)
            message = payload[len(MAGIC) : -16]
            if hashlib.md5(message).digest() != payload[-16:]:  # noqa: S324
                out.append(record)
                continue
            aggregate = message_class.FromString(message)
            keys = list(aggregate.partition_key_table)
            event_id = record.event_id
            for index, user in enumerate(aggregate.records):
                out.append(
                    KinesisRecord(
                        record.raw,
                        record.sequence_number,
                        keys[user.partition_key_index],
                        b2a(user.data, newline=False).decode("ascii"),
                        f"{event_id}:{index}",
                        record.event_source_arn,
                        None,
                        index,
                    )
                )
        return out

    return run


def per_item_us(designs: dict[str, Callable[[], object]], items: int, repeat: int) -> dict[str, float]:
    """Microseconds per item of each design: the designs take turns, `repeat` rounds, medians
    (so that a busy moment of a shared machine falls on all of them alike)."""
    times: dict[str, list[float]] = {name: [] for name in designs}
    for _ in range(repeat):
        for name, run in designs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) / items * 1e6 for name, values in times.items()}


def protobuf_import_ms(runs: int) -> float:
    """Median time a fresh interpreter, the function's stream package already imported, spends
    importing protobuf and building the decoder's message classes: what a cold start would
    add. Timed inside the process, so the interpreter's own start does not blur it."""
    code = "\n".join(
        [
            "import time, stream.deaggregation",
            "started = time.perf_counter()",
            PROTOBUF_DECODER,
            "print(time.perf_counter() - started)",
        ]
    )
    times = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
        )
        times.append(float(done.stdout))
    return statistics.median(times) * 1000


def installed_mb(distribution: str) -> float:
    files = importlib.metadata.distribution(distribution).files or []
    return sum(Path(str(f.locate())).stat().st_size for f in files if Path(str(f.locate())).is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deaggregation", description=__doc__)
    parser.add_argument(
        "--aggregates", type=int, default=50, help="aggregated records per batch (default 50)"
    )
    parser.add_argument("--per-aggregate", type=int, default=100, help="user records in each (default 100)")
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument(
        "--cold-runs", type=int, default=15, help="fresh processes timing protobuf's import (default 15)"
    )
    args = parser.parse_args(argv)

    event = aggregated_event(args.aggregates, args.per_aggregate)
    records = [KinesisRecord.from_raw(raw) for raw in event["Records"]]
    users = args.aggregates * args.per_aggregate
    namespace: dict[str, Any] = {}
    exec(PROTOBUF_DECODER, namespace)  # noqa: S102 - our own constant, timed again below in a fresh process
    over_protobuf = protobuf_deaggregate(namespace["AggregatedRecord"])
    ours = [(r.partition_key, r.data, r.event_id, r.malformed) for r in deaggregate(records)]
    if len(ours) != users or ours != [
        (r.partition_key, r.data, r.event_id, None) for r in over_protobuf(records)
    ]:
        raise SystemExit("the readers disagree: nothing measured")
    plain = [KinesisRecord.from_raw(raw) for raw in event_from_payloads(rides(users))["Records"]]

    rows = per_item_us(
        {
            "this reader (stream/deaggregation.py)": lambda: deaggregate(records),
            "over protobuf (upb)": lambda: over_protobuf(records),
            "aws-kinesis-agg deaggregate_records": lambda: deaggregate_records(event["Records"]),
            "a plain record passing through": lambda: deaggregate(plain),
            "for scale: decode + validate one ride": lambda: [decode_ride_event(r, RideEvent) for r in plain],
        },
        users,
        args.repeat,
    )
    cold_ms = protobuf_import_ms(args.cold_runs)
    print(
        f"Per user record ({args.aggregates} aggregates of {args.per_aggregate} rides; "
        f"taking turns, median of {args.repeat}):"
    )
    for name, value in rows.items():
        print(f"  {name:<42} {value:6.2f} µs")
    print(
        f"Cold start: protobuf's imports and the decoder's classes add {cold_ms:.1f} ms (median of {args.cold_runs})"
    )
    print(f"Installed: protobuf {importlib.metadata.version('protobuf')} {installed_mb('protobuf'):.1f} MB")
    sample = base64.b64decode(event["Records"][0]["kinesis"]["data"])
    print(f"Aggregate size: {len(sample):,} bytes for {args.per_aggregate} rides")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
