"""The main job: stream sample rides through the local pipeline and report what came out."""

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
from typing import Any, TextIO

from local_aws.event_source_mapping import list_all_shards
from local_aws.kpl import aggregate
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
    return report(stack, tally, count, malformed, kpl=kpl)


def report(stack: LocalStack, tally: Tally, count: int, malformed: int, kpl: int | None = None) -> bool:
    predicted, dead = set(tally.predictions), set(tally.dead_letters)
    missing = count - len(predicted | dead) - len(tally.refused)
    duplicates = sum(n - 1 for n in tally.predictions.values() if n > 1)
    stats = stack.mapping.stats if stack.mapping else None
    print("\nSummary")
    print(f"  rides in             {count:>7,}  ({count - malformed:,} valid, {malformed:,} malformed)")
    if kpl:
        print(
            f"  Kinesis records      {tally.kinesis_records:>7,}  (KPL aggregates of up to {kpl} rides, "
            "each ride a user record; aws-kinesis-agg)"
        )
    if tally.resent:
        print(f"  resent by producer   {tally.resent:>7,}  (entries Kinesis rejected, put again)")
    if tally.refused:
        errors = ", ".join(f"{error}: {n}" for error, n in Counter(tally.refused.values()).most_common())
        print(
            f"  refused by Kinesis   {len(tally.refused):>7,}  (still rejected after the retries: {errors})"
        )
    mean = sum(tally.durations) / len(tally.durations) if tally.durations else float("nan")
    print(f"  predictions out      {len(predicted):>7,}  (mean predicted duration {mean:.1f} min)")
    reasons = ", ".join(f"{reason}: {n}" for reason, n in tally.reasons.most_common())
    print(f"  dead letters         {len(dead):>7,}  ({reasons or 'none'})")
    if stats:
        print(
            f"  function             {stats.invocations:>7,} invocations, {stats.function_errors} errors, "
            f"{stats.partial_failures} partial retries, {stats.records_discarded} records discarded"
        )
    if tally.latencies:
        p50, p99 = percentile(tally.latencies, 50) * 1000, percentile(tally.latencies, 99) * 1000
        print(
            f"  end-to-end latency   p50 {p50:.0f} ms · p99 {p99:.0f} ms  (put on input -> readable on output)"
        )
    if duplicates:
        print(
            f"  duplicates           {duplicates:>7,}  (at-least-once delivery; de-duplicate on source.event_id)"
        )
    ok = not tally.refused and missing == 0 and len(predicted) == count - malformed and len(dead) == malformed
    problems = [f"{missing} missing"] if missing else []
    problems += [f"{len(tally.refused)} refused by Kinesis"] if tally.refused else []
    print(f"  every ride accounted {'yes' if ok else 'NO: ' + ', '.join(problems or ['see above'])}")
    return ok
