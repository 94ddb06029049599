"""`make chaos`: the local pipeline under faults that are not bad data, counted from outside.

Between the function and moto sits the fault proxy (`local_aws/fault_proxy.py`): whole
PutRecords calls throttled or failing with 5xx, single entries rejected, answers slow or never
coming. The function process is killed mid-batch now and then, as a crash would. The mapping
retries without limit (and bisects), so every ride must end as a prediction or a dead letter:
what the run counts is what came out, by `source.event_id`.

Each scenario runs with the re-delivery memory off (`REDELIVERY_MEMORY_SIZE=0`) and on, on a
fresh stack, and the summary table compares them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from local_aws.demo import Progress, StreamReader, json_records, sample_rides
from local_aws.event_source_mapping import Invoke, InvokeResult
from local_aws.fault_proxy import FaultProxy, Faults
from local_aws.lambda_runtime import PROJECT_ROOT
from local_aws.moto_stack import PortInUseError
from local_aws.stack import LocalStack, StackConfig
from stream.redelivery import DEFAULT_SIZE

# The mapping as the stack's, except that it never gives up on a batch: a record discarded by
# the mapping would hide a record the function lost.
MAPPING = {
    "BatchSize": 100,
    "StartingPosition": "TRIM_HORIZON",
    "FunctionResponseTypes": ["ReportBatchItemFailures"],
    "BisectBatchOnFunctionError": True,
    "MaximumRetryAttempts": -1,
    "MaximumRecordAgeInSeconds": -1,
}


@dataclass(frozen=True)
class Scenario:
    faults: Faults
    kills: int  # times the function process is killed mid-batch, spread over the streaming


SCENARIOS = {
    "moderate": Scenario(
        Faults(throttle=0.1, server_error=0.05, reject_entries=0.1, slow=0.02, hang=0.002), kills=2
    ),
    "heavy": Scenario(
        Faults(throttle=0.2, server_error=0.1, reject_entries=0.2, slow=0.05, hang=0.005), kills=5
    ),
}


@dataclass
class Outputs:
    """What came out, per input record (`source.event_id`)."""

    sent: set[str] = field(default_factory=set)
    predictions: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read_prediction(self, event: dict[str, Any], _now: float) -> None:
        with self.lock:
            self.predictions[event["source"]["event_id"]] += 1

    def read_dead_letter(self, letter: dict[str, Any], _now: float) -> None:
        with self.lock:
            self.dead_letters[letter["source"]["event_id"]] += 1

    def accounted(self) -> int:
        with self.lock:
            return len(self.sent & (set(self.predictions) | set(self.dead_letters)))

    def duplicates(self) -> int:
        with self.lock:
            outputs = self.predictions + self.dead_letters
            return sum(n - 1 for n in outputs.values() if n > 1)


@dataclass
class RunResult:
    scenario: str
    suppression: bool
    rides: int
    predicted: int
    dead_lettered: int
    lost: int
    duplicates: int
    redeliveries: int
    seconds: float
    kills: int
    errors: dict[str, int]  # function errors by type, as the mapping saw them
    injected: dict[str, int]

    @property
    def timeouts(self) -> int:
        return self.errors.get("Sandbox.Timedout", 0)


class ErrorCounter:
    """Wraps the mapping's invoke: function errors by `errorType`."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()

    def wrap(self, invoke: Invoke) -> Invoke:
        def counted(event: dict[str, Any]) -> InvokeResult:
            result = invoke(event)
            if result.function_error:
                kind = result.payload.get("errorType") if isinstance(result.payload, dict) else None
                with self.lock:
                    self.errors[str(kind)] += 1
            return result

        return counted


class Killer(threading.Thread):
    """Kills the function process mid-invocation `kills` times, at random moments of `window_s`."""

    def __init__(self, stack: LocalStack, kills: int, window_s: float, seed: int) -> None:
        super().__init__(name="killer", daemon=True)
        self.stack = stack
        rng = random.Random(seed)
        self.moments = sorted(rng.uniform(0, window_s) for _ in range(kills))
        self.strike_after = [rng.uniform(0, 0.05) for _ in range(kills)]
        self.kills = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        function = self.stack.function
        started = time.monotonic()
        for moment, strike_after in zip(self.moments, self.strike_after, strict=True):
            if function is None or self.stopped.wait(max(0.0, started + moment - time.monotonic())):
                return
            # Wait for an invocation, then strike within its first tens of milliseconds.
            while not function.busy:
                if self.stopped.wait(0.005):
                    return
            self.stopped.wait(strike_after)
            if function.crash():
                self.kills += 1


def run_once(
    name: str,
    scenario: Scenario,
    suppression: bool,
    *,
    rides: int,
    rate: float,
    base: StackConfig,
    function_timeout_s: float,
    timeout_s: float,
    seed: int,
) -> RunResult:
    log_dir = base.log_dir / f"{name}-suppression-{'on' if suppression else 'off'}"
    log_dir.mkdir(parents=True, exist_ok=True)
    mapping_file = log_dir / "mapping.json"
    mapping_file.write_text(json.dumps(MAPPING))
    proxy = FaultProxy(f"http://127.0.0.1:{base.port}", scenario.faults, seed=seed)
    config = StackConfig(
        port=base.port,
        lambda_port=base.lambda_port,
        log_dir=log_dir,
        mapping_file=mapping_file,
        function_timeout_s=function_timeout_s,
        function_environment={
            "AWS_ENDPOINT_URL": proxy.url,  # the function's calls go through the faults
            "REDELIVERY_MEMORY_SIZE": str(DEFAULT_SIZE if suppression else 0),
        },
    )
    errors = ErrorCounter()
    outputs = Outputs()
    with proxy, LocalStack(config, say=lambda _line: None) as stack:
        assert stack.mapping is not None  # noqa: S101 - started by LocalStack
        # Every shard's poller invokes through the mapping's invoke (shards found later too).
        stack.mapping.invoke = errors.wrap(stack.mapping.invoke)
        for poller in stack.mapping.pollers.values():
            poller.invoke = stack.mapping.invoke
        kinesis = stack.client("kinesis")
        readers = [
            StreamReader(kinesis, config.predictions_stream, json_records(outputs.read_prediction)),
            StreamReader(kinesis, config.dead_letter_stream, json_records(outputs.read_dead_letter)),
        ]
        killer = Killer(stack, scenario.kills, window_s=rides / rate, seed=seed)
        threads: list[StreamReader | Killer] = [*readers, killer]
        for thread in threads:
            thread.start()
        progress = Progress()
        label = f"{name}, memory {'on' if suppression else 'off'}"
        started = time.monotonic()
        rides_in = sample_rides(rides, bad_ratio=0.02, seed=seed)
        put_rides(stack, rides_in, rate, outputs, progress=progress, label=label)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            busy = any(poller.buffered for poller in stack.mapping.pollers.values())
            if outputs.accounted() == rides and not busy:
                break
            progress.update(f"{label}: {outputs.accounted():,}/{rides:,} accounted for")
            time.sleep(0.1)
        seconds = time.monotonic() - started
        time.sleep(0.5)  # the readers catch up with the last writes
        for thread in threads:
            thread.stopped.set()
            thread.join()
        stats = stack.mapping.stats
    with outputs.lock:
        predicted = len(outputs.sent & set(outputs.predictions))
        dead_lettered = len(outputs.sent & set(outputs.dead_letters))
    result = RunResult(
        scenario=name,
        suppression=suppression,
        rides=rides,
        predicted=predicted,
        dead_lettered=dead_lettered,
        lost=rides - outputs.accounted(),
        duplicates=outputs.duplicates(),
        redeliveries=stats.records_delivered - rides,
        seconds=seconds,
        kills=killer.kills,
        errors=dict(errors.errors),
        injected=dict(proxy.injected),
    )
    progress.update(f"{label}: {summary_line(result)}", final=True)
    return result


def put_rides(
    stack: LocalStack,
    rides: list[tuple[int, bytes, bool]],
    rate: float,
    outputs: Outputs,
    *,
    progress: Progress,
    label: str,
) -> None:
    """PutRecords straight to moto (the producer is not under test) at about `rate` per second."""
    kinesis = stack.client("kinesis")
    per_call = max(1, min(500, round(rate / 10)))
    started = time.monotonic()
    for index in range(0, len(rides), per_call):
        chunk = rides[index : index + per_call]
        response = kinesis.put_records(
            StreamName=stack.config.input_stream,
            Records=[{"Data": payload, "PartitionKey": str(ride_id)} for ride_id, payload, _ in chunk],
        )
        if response.get("FailedRecordCount"):
            raise RuntimeError(f"moto rejected input records: {response}")
        with outputs.lock:
            outputs.sent.update(f"{e['ShardId']}:{e['SequenceNumber']}" for e in response["Records"])
        progress.update(
            f"{label}: put {index + len(chunk):,}/{len(rides):,} · accounted {outputs.accounted():,}"
        )
        pause = started + (index + per_call) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def summary_line(result: RunResult) -> str:
    return (
        f"{result.rides:,} rides: {result.predicted:,} predicted, {result.dead_lettered:,} dead-lettered, "
        f"{result.lost} lost, {result.duplicates:,} duplicate outputs, {result.redeliveries:,} re-deliveries, "
        f"{result.kills} kills, {result.timeouts} timeouts, {result.seconds:.1f} s"
    )


def table(results: list[RunResult]) -> str:
    lines = [
        "| faults | re-delivery memory | rides in | predicted | dead-lettered | lost | duplicate outputs "
        "| re-deliveries | function kills | function errors | Lambda timeouts | time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        errors = sum(r.errors.values())
        lines.append(
            f"| {r.scenario} | {'on' if r.suppression else 'off'} | {r.rides:,} | {r.predicted:,} "
            f"| {r.dead_lettered:,} | {r.lost} | {r.duplicates:,} | {r.redeliveries:,} | {r.kills} "
            f"| {errors} | {r.timeouts} | {r.seconds:.0f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_aws.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rides", type=int, default=10_000, help="rides per run (default 10,000)")
    parser.add_argument("--rate", type=float, default=500, help="rides put per second (default 500)")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["moderate", "heavy"])
    parser.add_argument(
        "--memory", nargs="+", choices=["off", "on"], default=["off", "on"], help="re-delivery memory off, on"
    )
    parser.add_argument(
        "--function-timeout", type=float, default=10, help="the function's timeout in seconds (default 10)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds to wait for outputs after the last put"
    )
    parser.add_argument("--port", type=int, default=4566, help="moto port (default 4566)")
    parser.add_argument("--lambda-port", type=int, default=9000, help="function endpoint port (default 9000)")
    parser.add_argument("--log-dir", type=Path, default=PROJECT_ROOT / ".local-aws" / "chaos")
    parser.add_argument(
        "--kills", type=int, help="times the function is killed per run (default: the scenario's)"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    scenarios = {
        name: SCENARIOS[name] if args.kills is None else replace(SCENARIOS[name], kills=args.kills)
        for name in args.scenarios
    }

    base = StackConfig(port=args.port, lambda_port=args.lambda_port, log_dir=args.log_dir)
    print(
        f"Chaos: {args.rides:,} rides per run at ~{args.rate:.0f}/s, function timeout {args.function_timeout:.0f} s"
    )
    for name, scenario in scenarios.items():
        print(f"  {name}: {scenario.faults.describe()}; the function killed mid-batch {scenario.kills} times")
    results = []
    try:
        for name, scenario in scenarios.items():
            for memory in args.memory:
                result = run_once(
                    name,
                    scenario,
                    memory == "on",
                    rides=args.rides,
                    rate=args.rate,
                    base=base,
                    function_timeout_s=args.function_timeout,
                    timeout_s=args.timeout,
                    seed=args.seed,
                )
                results.append(result)
    except PortInUseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n" + table(results))
    for r in results:
        print(
            f"  {r.scenario}, memory {'on' if r.suppression else 'off'}: function errors {r.errors or 'none'}"
        )
    injected = Counter[str]()
    for r in results:
        injected.update(r.injected)
    print(f"\nInjected over all runs: {dict(injected)}. Logs: {args.log_dir}/")
    failed = [r for r in results if r.lost or r.timeouts]
    if failed:
        print(f"FAILED: {len(failed)} run(s) lost records or timed out", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
