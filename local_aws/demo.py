"""The main job: stream sample rides through the local pipeline and report what came out.

The summary's figures are the function's own metrics, read back from its log (the EMF documents
CloudWatch would turn into metrics: local_aws/metrics.py), checked against what the output
streams hold.
"""

from __future__ import annotations

import json
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from local_aws.event_source_mapping import list_all_shards
from local_aws.kpl import aggregate
from local_aws.metrics import MetricSummary, read_log
from local_aws.producer import put_records
from local_aws.stack import LocalStack

# Producers send anything: a few malformed records show where bad input goes.
MALFORMED = [
    b"Hello, this is a test.",
    b'{"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}}',
    b'{"ride": {"PULocationID": 0, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": -1}',
    b'{"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": -2}, "ride_id": -2}',
    b"\xff\xfe not UTF-8",
]


def sample_rides(count: int, bad_ratio: float, seed: int) -> list[tuple[int, bytes, bool]]:
    """(ride id, payload, is_valid): course-format rides, `bad_ratio` of them malformed."""
    rng = random.Random(seed)
    rides = []
    for ride_id in range(count):
        if rng.random() < bad_ratio:
            rides.append((ride_id, MALFORMED[ride_id % len(MALFORMED)], False))
            continue
        ride = {
            "PULocationID": rng.randint(1, 265),
            "DOLocationID": rng.randint(1, 265),
            "trip_distance": round(rng.lognormvariate(math.log(2.5), 0.7), 2),
        }
        rides.append((ride_id, json.dumps({"ride": ride, "ride_id": ride_id}).encode(), True))
    return rides


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class Tally:
    """What came out, as it is read back."""

    # Keyed by the ride's event id (shard and sequence number, and its index in a KPL aggregate:
    # what `source.event_id` holds): sequence numbers alone repeat across shards on moto.
    sent_at: dict[str, float] = field(default_factory=dict)  # event id -> put time
    ride_of: dict[str, int] = field(default_factory=dict)  # event id -> ride id
    kinesis_records: int = 0  # Kinesis records stored: one per ride, or one per KPL aggregate
    predictions: Counter[int] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    dead_letters: Counter[int] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # ride id -> ErrorCode, after the retries
    resent: int = 0  # entries Kinesis rejected and the producer sent again
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accounted(self) -> int:
        return len(set(self.predictions) | set(self.dead_letters))

    def read_prediction(self, event: dict[str, Any], now: float) -> None:
        event_id = event["source"]["event_id"]
        with self.lock:
            self.predictions[event["prediction"]["ride_id"]] += 1
            self.durations.append(event["prediction"]["ride_duration"])
            if event_id in self.sent_at:
                self.latencies.append(now - self.sent_at[event_id])

    def read_dead_letter(self, letter: dict[str, Any], _now: float) -> None:
        with self.lock:
            ride = self.ride_of.get(letter["source"]["event_id"], -1)
            self.dead_letters[ride] += 1
            self.reasons[letter["reason"].split(":")[0]] += 1


class StreamReader(threading.Thread):
    """Reads every shard of a stream from its start, handing each record's data to `on_record`."""

    def __init__(self, kinesis: Any, stream: str, on_record: Callable[[bytes, float], None]) -> None:
        super().__init__(name=f"reader-{stream}", daemon=True)
        self.kinesis = kinesis
        self.stream = stream
        self.on_record = on_record
        self.stopped = threading.Event()
        self._iterators: dict[str, str] | None = None

    def _open(self) -> dict[str, str]:
        if self._iterators is None:
            self._iterators = {
                shard["ShardId"]: self.kinesis.get_shard_iterator(
                    StreamName=self.stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
                for shard in list_all_shards(self.kinesis, self.stream)
            }
        return self._iterators

    def read_once(self) -> tuple[int, bool]:
        """One GetRecords per shard: (records read, whether every shard is at its tip)."""
        iterators = self._open()
        got, at_tip = 0, True
        for shard_id, iterator in list(iterators.items()):
            page = self.kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            now = time.time()
            for record in page["Records"]:
                self.on_record(record["Data"], now)
            got += len(page["Records"])
            if page.get("NextShardIterator"):
                iterators[shard_id] = page["NextShardIterator"]
                at_tip = at_tip and not page["Records"] and not page.get("MillisBehindLatest")
            else:
                del iterators[shard_id]  # a closed shard, read to its end
        return got, at_tip

    def read_available(self) -> int:
        """Everything on the stream now, then return."""
        total = 0
        while True:
            got, at_tip = self.read_once()
            total += got
            if at_tip:
                return total

    def run(self) -> None:
        while not self.stopped.is_set():
            got, _ = self.read_once()
            if not got:
                self.stopped.wait(0.02)


def json_records(handle: Callable[[dict[str, Any], float], None]) -> Callable[[bytes, float], None]:
    return lambda data, now: handle(json.loads(data), now)


class Progress:
    """One line that updates in place on a terminal, and every few seconds in a log."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._last = 0.0

    def update(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if self.live:
            self.stream.write(f"\r  {text}\033[K" + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self._last >= 2:
            self.stream.write(f"  {text}\n")
            self._last = now


def stream_rides(
    kinesis: Any,
    stream_name: str,
    rides: list[tuple[int, bytes, bool]],
    *,
    rate: float,
    tally: Tally,
    show: Callable[[], None],
    kpl: int | None = None,
) -> None:
    """Put rides with PutRecords at about `rate` per second, remembering when each became
    readable; entries Kinesis rejects are sent again (local_aws.producer). With `kpl`, rides
    are user records packed up to `kpl` to a Kinesis record, as the KPL does (local_aws.kpl)."""
    tick = 0.05
    per_tick = max(1, round(rate * tick), kpl or 1)
    started = time.monotonic()
    for index in range(0, len(rides), per_tick):
        chunk = rides[index : index + per_tick]
        users = [(str(ride_id), payload) for ride_id, payload, _ in chunk]
        if kpl:
            packed = aggregate(users, kpl)
            entries, carries = [a.entry for a in packed], [a.carries for a in packed]
        else:
            entries = [{"Data": payload, "PartitionKey": key} for key, payload in users]
            carries = [[position] for position in range(len(chunk))]
        result = put_records(kinesis, stream_name, entries)
        now = time.time()
        with tally.lock:
            for entry, (shard_id, sequence_number) in result.stored.items():
                tally.kinesis_records += 1
                for sub, position in enumerate(carries[entry]):
                    event_id = f"{shard_id}:{sequence_number}" + (f":{sub}" if kpl else "")
                    tally.sent_at[event_id] = now
                    tally.ride_of[event_id] = chunk[position][0]
            for entry, error in result.refused.items():
                for position in carries[entry]:
                    tally.refused[chunk[position][0]] = error
            tally.resent += result.resent
        show()
        pause = started + (index + per_tick) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def run_demo(
    stack: LocalStack,
    count: int,
    *,
    bad_ratio: float,
    rate: float,
    timeout: float,
    seed: int = 7,
    kpl: int | None = None,
) -> bool:
    rides = sample_rides(count, bad_ratio, seed)
    malformed = sum(1 for *_, valid in rides if not valid)
    tally = Tally()
    kinesis = stack.client("kinesis")
    readers = [
        StreamReader(kinesis, stack.config.predictions_stream, json_records(tally.read_prediction)),
        StreamReader(kinesis, stack.config.dead_letter_stream, json_records(tally.read_dead_letter)),
    ]
    for reader in readers:
        reader.start()
    progress = Progress()

    def line() -> str:
        return (
            f"rides put {len(tally.sent_at):,}/{count:,} · predictions {sum(tally.predictions.values()):,}"
            f" · dead letters {sum(tally.dead_letters.values()):,}"
        )

    packing = f", KPL-aggregated up to {kpl} to a Kinesis record" if kpl else ""
    print(f"\nStreaming {count:,} rides at ~{rate:.0f}/s ({malformed} malformed on purpose{packing}) ...")
    log = stack.function_log()
    offset = log.stat().st_size if log else 0  # the log is appended to, run after run
    started = time.monotonic()
    stream_rides(
        kinesis,
        stack.config.input_stream,
        rides,
        rate=rate,
        tally=tally,
        show=lambda: progress.update(line()),
        kpl=kpl,
    )
    deadline = time.monotonic() + timeout
    while tally.accounted() < count - len(tally.refused) and time.monotonic() < deadline:
        progress.update(line())
        time.sleep(0.05)
    progress.update(line() + f" · {time.monotonic() - started:.1f} s", final=True)
    for reader in readers:
        reader.stopped.set()
        reader.join()
    metrics = function_metrics(log, offset, tally) if log else None
    return report(stack, Run(tally, count, malformed, kpl), metrics, log)


def function_metrics(log: Path, offset: int, tally: Tally, timeout: float = 5.0) -> MetricSummary:
    """The function's metrics for this run. An invocation writes its document after its records,
    so the last one may trail what the readers saw by a few milliseconds."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = read_log(log, offset)
        written = metrics.sum("RecordsPredicted") + metrics.sum("RecordsDeadLettered")
        seen = sum(tally.predictions.values()) + sum(tally.dead_letters.values())
        if written >= seen or time.monotonic() > deadline:
            return metrics
        time.sleep(0.05)


def milliseconds(metrics: MetricSummary, name: str) -> str:
    p50, p99 = metrics.percentile(name, 50), metrics.percentile(name, 99)
    return f"p50 {p50:.0f} ms · p99 {p99:.0f} ms" if p50 is not None and p99 is not None else "—"


@dataclass(frozen=True)
class Run:
    """What the demo put on the input stream, and what it read back."""

    tally: Tally
    count: int
    malformed: int
    kpl: int | None = None  # rides per KPL aggregate, when the demo aggregates

    @property
    def predicted(self) -> set[int]:
        return set(self.tally.predictions)

    @property
    def dead(self) -> set[int]:
        return set(self.tally.dead_letters)

    @property
    def missing(self) -> int:
        return self.count - len(self.predicted | self.dead) - len(self.tally.refused)


def report(
    stack: LocalStack, run: Run, metrics: MetricSummary | None = None, log: Path | None = None
) -> bool:
    """The summary: from the function's metrics when its log is local, else from the streams."""
    tally = run.tally
    stats = stack.mapping.stats if stack.mapping else None
    if metrics is None or not metrics.documents:
        print("\nSummary (read back from the output streams: the function's log is not local)")
        report_inputs(run)
        mean = sum(tally.durations) / len(tally.durations) if tally.durations else float("nan")
        print(f"  predictions out      {len(run.predicted):>7,}  (mean predicted duration {mean:.1f} min)")
        print(f"  dead letters         {len(run.dead):>7,}  ({reasons(tally)})")
        report_mapping(stats, "function")
        report_latency(tally)
        return report_accounted(run, [])
    print(
        f"\nSummary: the function's metrics, as CloudWatch would show them ({stack.relative(log or Path())})"
    )
    report_inputs(run)
    total = metrics.sum
    cold = total("ColdStart")
    print(
        f"  received             {total('RecordsReceived'):>7,.0f}  RecordsReceived, in {metrics.documents:,} "
        f"invocations ({cold:,.0f} cold start{'' if cold == 1 else 's'})"
    )
    minutes = metrics.average("PredictedDurationMean")
    print(
        f"  predicted            {total('RecordsPredicted'):>7,.0f}  RecordsPredicted"
        + (f" (PredictedDurationMean {minutes:.1f} min)" if minutes is not None else "")
    )
    print(
        f"  dead-lettered        {total('RecordsDeadLettered'):>7,.0f}  RecordsDeadLettered ({reasons(tally)})"
    )
    print(
        f"  retried              {total('RecordsRetried'):>7,.0f}  RecordsRetried "
        f"({total('RecordsSkippedAsDuplicate'):,.0f} re-deliveries skipped as written before)"
    )
    print(
        f"  PutRecords           {total('PutRecordsCalls'):>7,.0f}  calls "
        f"({total('PutRecordsRejectedEntries'):,.0f} entries rejected by Kinesis)"
    )
    print(
        f"  batch latency        {milliseconds(metrics, 'BatchLatency')}  "
        f"(predict {milliseconds(metrics, 'PredictLatency')})"
    )
    report_mapping(stats, "mapping")
    report_latency(tally)
    on_streams = (sum(tally.predictions.values()), sum(tally.dead_letters.values()))
    agree = on_streams == (total("RecordsPredicted"), total("RecordsDeadLettered"))
    print(
        f"  streams              {on_streams[0]:>7,} predictions, {on_streams[1]:,} dead letters read back: "
        + ("as the metrics say" if agree else "NOT what the metrics say")
    )
    problems = [] if agree else ["the streams and the metrics disagree"]
    if metrics.invalid:
        print(f"  metrics              {len(metrics.invalid)} problems, first: {metrics.invalid[0]}")
        problems.append("invalid metrics")
    return report_accounted(run, problems)


def reasons(tally: Tally) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in tally.reasons.most_common()) or "none"


def report_inputs(run: Run) -> None:
    valid = run.count - run.malformed
    print(f"  rides in             {run.count:>7,}  ({valid:,} valid, {run.malformed:,} malformed)")
    if run.kpl:
        print(
            f"  Kinesis records      {run.tally.kinesis_records:>7,}  (KPL aggregates of up to {run.kpl} rides, "
            "each ride a user record; aws-kinesis-agg)"
        )
    if run.tally.resent:
        print(f"  resent by producer   {run.tally.resent:>7,}  (entries Kinesis rejected, put again)")
    if run.tally.refused:
        errors = ", ".join(f"{error}: {n}" for error, n in Counter(run.tally.refused.values()).most_common())
        print(
            f"  refused by Kinesis   {len(run.tally.refused):>7,}  (still rejected after the retries: {errors})"
        )


def report_mapping(stats: Any, label: str) -> None:
    if stats:
        print(
            f"  {label:<20} {stats.invocations:>7,} invocations, {stats.function_errors} errors, "
            f"{stats.partial_failures} partial retries, {stats.records_discarded} records discarded"
        )


def report_latency(tally: Tally) -> None:
    if tally.latencies:
        p50, p99 = percentile(tally.latencies, 50) * 1000, percentile(tally.latencies, 99) * 1000
        print(
            f"  end-to-end latency   p50 {p50:.0f} ms · p99 {p99:.0f} ms  (put on input -> readable on output)"
        )


def report_accounted(run: Run, problems: list[str]) -> bool:
    duplicates = sum(n - 1 for n in run.tally.predictions.values() if n > 1)
    if duplicates:
        print(
            f"  duplicates           {duplicates:>7,}  (at-least-once delivery; de-duplicate on source.event_id)"
        )
    problems = ([f"{run.missing} missing"] if run.missing else []) + problems
    problems += [f"{len(run.tally.refused)} refused by Kinesis"] if run.tally.refused else []
    ok = not problems and len(run.predicted) == run.count - run.malformed and len(run.dead) == run.malformed
    print(f"  every ride accounted {'yes' if ok else 'NO: ' + ', '.join(problems or ['see above'])}")
    return ok
