"""What the stream costs and what it needs, from `make bench`'s own measured batch times.

    python -m benchmarks.cost [benchmarks/results/results.json] [--quote]

Lambda cost per million rides by memory, batch size and architecture; Kinesis PUT payload units
and shard-hours for the input, output and dead-letter streams (provisioned, and on-demand for
the dead-letter stream); and the shards, ParallelizationFactor and concurrency needed for
1,000 / 10,000 / 100,000 rides per second from Kinesis's per-shard limits. Regenerated from a
results.json (`--quote` writes it into docs/benchmarks.md between its cost markers).

The model of a batch's duration on Lambda, from a batch measured here on one core:
- decode, predict and the rest of the handler's own work are CPU: Lambda gives a function one
  vCPU at 1,769 MB and a proportional share below it (AWS Lambda developer guide), so that part
  takes 1,769 / MB times longer at 512 or 1,024 MB;
- the write part (PutRecords to moto over loopback) is taken as measured, as a stand-in for
  Kinesis's own latency, which this machine cannot measure;
- the same duration on arm64 and x86_64 (not measured: no Graviton here).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "benchmarks" / "results" / "results.json"
PAGE = ROOT / "docs" / "benchmarks.md"
MARKERS = ("<!-- cost:start -->", "<!-- cost:end -->")


@dataclass(frozen=True)
class Price:
    usd: float
    unit: str
    unconfirmed: str = ""  # why it is not confirmed; empty: seen in two or more public references


# us-east-1 list prices (first usage tier), looked up 2026-11-26 with the search tool. This
# machine cannot reach aws.amazon.com: each figure is as public references quote the AWS pricing
# pages (https://aws.amazon.com/lambda/pricing/, https://aws.amazon.com/kinesis/data-streams/pricing/).
# Confirmed = two or more references agree; otherwise the note says what it rests on.
PRICES_AS_OF = "2026-11-26"
ONE_REFERENCE = "one public reference"
RECALLED = "recalled: no reference found here, one disagrees"
LAMBDA_GB_SECOND = {
    "x86_64": Price(0.0000166667, "GB-second"),
    "arm64": Price(0.0000133334, "GB-second"),
}
LAMBDA_REQUEST = Price(0.20 / 1e6, "requests")
SHARD_HOUR = Price(0.015, "shard-hour")
PUT_PAYLOAD_UNIT = Price(0.014 / 1e6, "PUT payload units (25 KB each)", ONE_REFERENCE)
EXTENDED_RETENTION_SHARD_HOUR = Price(0.02, "shard-hour beyond 24 h", ONE_REFERENCE)
ON_DEMAND_STREAM_HOUR = Price(0.04, "stream-hour", RECALLED)
ON_DEMAND_GB_WRITTEN = Price(0.08, "GB written (each record rounded up to 1 KB)", RECALLED)
ON_DEMAND_GB_READ = Price(0.04, "GB read", RECALLED)

PRICE_LIST = (
    ("Lambda duration, x86_64", LAMBDA_GB_SECOND["x86_64"]),
    ("Lambda duration, arm64", LAMBDA_GB_SECOND["arm64"]),
    ("Lambda requests", LAMBDA_REQUEST),
    ("Kinesis provisioned shard", SHARD_HOUR),
    ("Kinesis PUT payload units", PUT_PAYLOAD_UNIT),
    ("Kinesis extended retention (up to 7 days)", EXTENDED_RETENTION_SHARD_HOUR),
    ("Kinesis on-demand stream", ON_DEMAND_STREAM_HOUR),
    ("Kinesis on-demand writes", ON_DEMAND_GB_WRITTEN),
    ("Kinesis on-demand reads", ON_DEMAND_GB_READ),
)

# Kinesis limits (developer guide): writes per shard, a PUT payload unit, on-demand rounding.
SHARD_RECORDS_PER_S = 1_000
SHARD_BYTES_PER_S = 1024 * 1024
PUT_PAYLOAD_UNIT_BYTES = 25 * 1024
ON_DEMAND_RECORD_ROUNDING = 1024
MAX_PARALLELIZATION_FACTOR = 10
FULL_VCPU_MB = 1769  # Lambda: one vCPU at 1,769 MB, proportionally less below
HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600

MEMORIES_MB = (512, 1024, 1769)
BATCH_SIZES = (100, 500)
RATES = (1_000, 10_000, 100_000)
DEAD_LETTER_SHARE = 0.01  # the assumption for the dead-letter stream: 1 % of the rides
CAPACITY_MEMORY_MB, CAPACITY_BATCH = 1024, 100  # the stack's defaults


def record_sizes(model_info: Any) -> dict[str, float]:
    """Mean bytes (data + partition key, what Kinesis counts) of the benchmark's rides, of their
    prediction events, and of the dead letter of a record that is not JSON."""
    from benchmarks.children import event  # noqa: PLC0415
    from stream.ride_events import (  # noqa: PLC0415
        DeadLetter,
        KinesisRecord,
        PoisonRecordError,
        PredictionEvent,
        decode_ride_event,
    )

    records = [KinesisRecord.from_raw(raw) for raw in event(100)["Records"]]
    inputs = [len(r.data) * 3 // 4 + len(r.partition_key or "") for r in records]  # base64 -> bytes
    outputs = []
    for record in records:
        ride = decode_ride_event(record)
        prediction = PredictionEvent(ride.ride_id, 12.345678901234567, model_info, record.source())
        outputs.append(len(prediction.to_json()) + len(prediction.partition_key))
    [poison] = [KinesisRecord.from_raw(raw) for raw in event(1)["Records"]]
    poison.data = "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg=="  # "Hello, this is a test."
    try:
        decode_ride_event(poison)
        reason = ""
    except PoisonRecordError as error:
        reason = str(error)
    letter = DeadLetter(poison, reason)
    return {
        "input_bytes": sum(inputs) / len(inputs),
        "output_bytes": sum(outputs) / len(outputs),
        "dead_letter_bytes": float(len(letter.to_json()) + len(letter.partition_key)),
    }


def rows_by_batch(results: dict[str, Any]) -> dict[int, dict[str, float]]:
    return {int(row["batch"]): row for row in results.get("throughput", [])}


def batch_ms(row: dict[str, float], memory_mb: int) -> float:
    """A batch's duration on Lambda at this memory, from its measured parts (module docstring)."""
    cpu_ms = row["handler_ms"] - row["write_ms"]
    return cpu_ms * max(1.0, FULL_VCPU_MB / memory_mb) + row["write_ms"]


def lambda_cost_per_million(row: dict[str, float], memory_mb: int, arch: str) -> float:
    invocations = 1e6 / row["batch"]
    billed_s = math.ceil(batch_ms(row, memory_mb)) / 1000  # billed by the millisecond, rounded up
    gb_seconds = invocations * billed_s * memory_mb / 1024
    return gb_seconds * LAMBDA_GB_SECOND[arch].usd + invocations * LAMBDA_REQUEST.usd


def put_units(record_bytes: float) -> int:
    return max(1, math.ceil(record_bytes / PUT_PAYLOAD_UNIT_BYTES))


def shards_for(rate: float, record_bytes: float) -> int:
    """Provisioned shards for writes at `rate` records/s of `record_bytes` each."""
    return max(1, math.ceil(max(rate / SHARD_RECORDS_PER_S, rate * record_bytes / SHARD_BYTES_PER_S)))


def parallelization(rate_per_shard: float, row: dict[str, float], memory_mb: int) -> int:
    """Concurrent batches per shard so that a shard's records are processed as fast as they come:
    with one, a shard is worked through one batch at a time."""
    per_batch = row["batch"] / batch_ms(row, memory_mb) * 1000  # records/s of one batch in flight
    return max(1, math.ceil(rate_per_shard / per_batch))


def on_demand_gb(records: float, record_bytes: float) -> float:
    return records * math.ceil(record_bytes / ON_DEMAND_RECORD_ROUNDING) * ON_DEMAND_RECORD_ROUNDING / 1e9


def money(usd: float) -> str:
    if usd >= 100:
        return f"${usd:,.0f}"
    return f"${usd:,.2f}" if usd >= 1 else f"${usd:.3f}" if usd >= 0.01 else f"${usd:.4f}"


def price_note(price: Price) -> str:
    per_million = price.usd < 1e-5 and "GB" not in price.unit
    usd = price.usd * 1e6 if per_million else price.usd
    amount = f"{usd:.10f}".rstrip("0")
    amount = f"${amount}{'0' * max(0, 2 - len(amount.split('.')[1]))}"
    unit = f"million {price.unit}" if per_million else price.unit
    return f"{amount} per {unit}" + (f" (unconfirmed: {price.unconfirmed})" if price.unconfirmed else "")


def lambda_table(rows: dict[int, dict[str, float]]) -> list[str]:
    lines = [
        "| memory | batch | batch time on Lambda (est.) | x86_64 per million rides | arm64 per million rides |",
        "|---:|---:|---:|---:|---:|",
    ]
    for memory in MEMORIES_MB:
        for batch in BATCH_SIZES:
            if batch not in rows:
                continue
            row = rows[batch]
            x86, arm = (lambda_cost_per_million(row, memory, arch) for arch in ("x86_64", "arm64"))
            lines.append(
                f"| {memory:,} MB | {batch} | {batch_ms(row, memory):,.1f} ms | {money(x86)} | {money(arm)} |"
            )
    return lines


def kinesis_table(sizes: dict[str, float]) -> list[str]:
    """Per million rides, each stream: what its writes cost in either capacity mode."""
    full_shard_hours = 1e6 / SHARD_RECORDS_PER_S / 3600  # a shard written at its 1,000 records/s
    lines = [
        "| stream | record | records per million rides | PUT payload units (provisioned) | shard-hours at full use (provisioned) | written + read (on-demand) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stream, key, share in (
        ("input `ride-events`", "input_bytes", 1.0),
        ("output `ride-predictions`", "output_bytes", 1.0),
        (f"dead letters `ride-dead-letters` ({DEAD_LETTER_SHARE:.0%} of rides)", "dead_letter_bytes", DEAD_LETTER_SHARE),
    ):  # fmt: skip
        records = 1e6 * share
        units = records * put_units(sizes[key])
        gb = on_demand_gb(records, sizes[key])
        on_demand = gb * (ON_DEMAND_GB_WRITTEN.usd + ON_DEMAND_GB_READ.usd)
        lines.append(
            f"| {stream} | {sizes[key]:,.0f} B | {records:,.0f} | {money(units * PUT_PAYLOAD_UNIT.usd)} "
            f"| {money(full_shard_hours * share * SHARD_HOUR.usd)} | {money(on_demand)} |"
        )
    return lines


def capacity_table(rows: dict[int, dict[str, float]], sizes: dict[str, float]) -> list[str]:
    row = rows[CAPACITY_BATCH]
    lines = [
        "| rides/s | input shards | output shards | ParallelizationFactor | concurrent batches | "
        "input + output streams (provisioned) per month | dead-letter stream, 168 h: provisioned / on-demand | Lambda arm64 per month |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rate in RATES:
        inputs, outputs = shards_for(rate, sizes["input_bytes"]), shards_for(rate, sizes["output_bytes"])
        factor = parallelization(rate / inputs, row, CAPACITY_MEMORY_MB)
        note = "" if factor <= MAX_PARALLELIZATION_FACTOR else " (over 10: add shards)"
        rides = rate * SECONDS_PER_MONTH
        dead = rides * DEAD_LETTER_SHARE
        dead_shards = shards_for(rate * DEAD_LETTER_SHARE, sizes["dead_letter_bytes"])
        provisioned = (inputs + outputs) * HOURS_PER_MONTH * SHARD_HOUR.usd + rides * (
            put_units(sizes["input_bytes"]) + put_units(sizes["output_bytes"])
        ) * PUT_PAYLOAD_UNIT.usd
        dead_provisioned = (
            dead_shards * HOURS_PER_MONTH * (SHARD_HOUR.usd + EXTENDED_RETENTION_SHARD_HOUR.usd)
            + dead * put_units(sizes["dead_letter_bytes"]) * PUT_PAYLOAD_UNIT.usd
        )
        dead_on_demand = HOURS_PER_MONTH * ON_DEMAND_STREAM_HOUR.usd + on_demand_gb(
            dead, sizes["dead_letter_bytes"]
        ) * (ON_DEMAND_GB_WRITTEN.usd + ON_DEMAND_GB_READ.usd)
        lambda_month = rides / 1e6 * lambda_cost_per_million(row, CAPACITY_MEMORY_MB, "arm64")
        lines.append(
            f"| {rate:,} | {inputs:,} | {outputs:,} | {factor}{note} | {inputs * factor:,} | {money(provisioned)} "
            f"| {dead_shards} shard{'s' if dead_shards > 1 else ''}: {money(dead_provisioned)} / {money(dead_on_demand)} "
            f"| {money(lambda_month)} |"
        )
    return lines


def cost_markdown(results: dict[str, Any]) -> str:
    """The cost and capacity section, or an empty string without the batch sizes it needs."""
    rows = rows_by_batch(results)
    sizes = results.get("record_sizes")
    if not sizes or not all(batch in rows for batch in BATCH_SIZES):
        return ""
    measured = results.get("date", "?")
    lines = [
        f"Batch times measured {measured} by `{results.get('command', 'make bench')}` (its throughput part); "
        f"list prices of {PRICES_AS_OF}, us-east-1, first usage tier. Records: a course ride "
        f"{sizes['input_bytes']:.0f} B, its prediction event {sizes['output_bytes']:.0f} B, a dead letter "
        f"{sizes['dead_letter_bytes']:.0f} B.",
        "",
        "**Lambda, per million rides** (requests + GB-seconds, billed by the millisecond; full batches):",
        "",
        *lambda_table(rows),
        "",
        "**Kinesis, per million rides** (every record under 25 KB is one PUT payload unit; a provisioned "
        "shard is billed by the hour whether written or not, so its cost per ride is lowest at its "
        f"{SHARD_RECORDS_PER_S:,} records/s):",
        "",
        *kinesis_table(sizes),
        "",
        f"**Capacity and monthly cost** ({HOURS_PER_MONTH} h) at a steady rate, batches of {CAPACITY_BATCH} at "
        f"{CAPACITY_MEMORY_MB:,} MB (the stack's defaults), {DEAD_LETTER_SHARE:.0%} of rides dead-lettered. "
        f"Shards from Kinesis's write limits ({SHARD_RECORDS_PER_S:,} records/s or 1 MiB/s per shard, "
        "whichever binds); ParallelizationFactor from the batch time above; concurrent batches = input "
        "shards × factor, within Lambda's default account concurrency of 1,000 at every rate:",
        "",
        *capacity_table(rows, sizes),
        "",
        f'List prices used ({PRICES_AS_OF}, us-east-1; "unconfirmed": found in one public reference '
        "only, check https://aws.amazon.com/lambda/pricing/ and "
        "https://aws.amazon.com/kinesis/data-streams/pricing/ before deciding on them):",
        "",
        *(f"- {name}: {price_note(price)}" for name, price in PRICE_LIST),
        "",
        "Not included: CloudWatch (the logs, the function's 11 custom metrics, 7 alarms, the dashboard), "
        "X-Ray when tracing is on, the on-demand dead-letter stream's retention beyond 24 h (billed per "
        "GB-month), the mapping's own time per batch, data transfer.",
    ]
    return "\n".join(lines) + "\n"


def quote(section: str, page: Path = PAGE) -> bool:
    """Replace the section between the page's cost markers; False if it has none."""
    text = page.read_text()
    start, end = MARKERS
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{section}{end}{tail}")
    return True


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS_JSON)
    parser.add_argument("--quote", action="store_true", help=f"write it into {PAGE.relative_to(ROOT)}")
    args = parser.parse_args(None if argv is None else list(argv))
    section = cost_markdown(json.loads(args.results.read_text()))
    if not section:
        print(
            f"{args.results}: needs throughput rows for batches {BATCH_SIZES} and record_sizes (make bench)"
        )
        return 1
    print(section, end="")
    if args.quote and not quote(section):
        print(f"{PAGE.name} has no {MARKERS[0]} ... {MARKERS[1]} section: not quoted")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
