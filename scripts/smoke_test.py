"""Cloud smoke test: put one ride on a stage's input stream and wait for its prediction.

    python -m scripts.smoke_test --stage dev [--timeout 120]

Reads the predictions (and dead-letter) streams from the moment before the put, so only new
records count, and stops at the first record for its ride id, or after --timeout seconds.
Exit 0 with the prediction on stdout; exit 1 if the ride was dead-lettered or nothing came.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scripts.stack import PrerequisiteError, ScriptError, add_stack_arguments, deployed_stage, run, say

# GetRecords allows 5 calls per second per shard, shared with every other reader of the stream.
POLL_INTERVAL_SECONDS = 1.0
SAMPLE_RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}


class SmokeTestError(ScriptError):
    """The ride was put, but no prediction came back."""


@dataclass
class StreamTail:
    """Reads the records a stream receives from now on, across its shards."""

    kinesis: Any
    stream: str
    iterators: dict[str, str | None]

    @classmethod
    def open(cls, kinesis: Any, stream: str) -> StreamTail:
        shards = kinesis.list_shards(StreamName=stream)["Shards"]
        iterators: dict[str, str | None] = {
            shard["ShardId"]: kinesis.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="LATEST"
            )["ShardIterator"]
            for shard in shards
        }
        return cls(kinesis, stream, iterators)

    def read(self) -> list[dict[str, Any]]:
        """New records since the last read: partition key, and body as JSON (None if it is not)."""
        records = []
        for shard, iterator in self.iterators.items():
            if iterator is None:  # the shard was closed (resharding)
                continue
            page = self.kinesis.get_records(ShardIterator=iterator, Limit=1000)
            self.iterators[shard] = page.get("NextShardIterator")
            for record in page["Records"]:
                try:
                    body = json.loads(record["Data"])
                except ValueError:
                    body = None
                records.append({"partition_key": record["PartitionKey"], "body": body})
        return records


def ride_event(ride_id: str) -> dict[str, Any]:
    return {"ride": SAMPLE_RIDE, "ride_id": ride_id}


def is_prediction_for(record: dict[str, Any], ride_id: str) -> bool:
    body = record["body"]
    return isinstance(body, dict) and (body.get("prediction") or {}).get("ride_id") == ride_id


def wait_for_prediction(
    kinesis: Any,
    outputs: dict[str, str],
    ride_id: str,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Put the ride, then poll until its prediction (or dead letter) appears or time runs out."""
    predictions = StreamTail.open(kinesis, outputs["PredictionsStreamName"])
    dead_letters = StreamTail.open(kinesis, outputs["DeadLetterStreamName"])
    kinesis.put_record(
        StreamName=outputs["InputStreamName"],
        Data=json.dumps(ride_event(ride_id)).encode(),
        PartitionKey=ride_id,
    )
    deadline = clock() + timeout
    while True:
        for record in predictions.read():
            if is_prediction_for(record, ride_id):
                return record["body"]
        for record in dead_letters.read():
            if record["partition_key"] == ride_id:
                reason = (record["body"] or {}).get("reason", "no reason given")
                raise SmokeTestError(f"ride {ride_id} was dead-lettered: {reason}")
        remaining = deadline - clock()
        if remaining <= 0:
            raise SmokeTestError(no_prediction_message(ride_id, timeout, outputs))
        sleep(min(POLL_INTERVAL_SECONDS, remaining))


def no_prediction_message(ride_id: str, timeout: float, outputs: dict[str, str]) -> str:
    function = outputs.get("FunctionName", "the function")
    log_group = outputs.get("FunctionLogGroupName", f"/aws/lambda/{function}")
    return (
        f"no prediction for ride {ride_id} on {outputs['PredictionsStreamName']} within {timeout:g} s. "
        f"Look at the function's logs (aws logs tail {log_group} --since 15m), its event source mapping "
        f"(aws lambda list-event-source-mappings --function-name {function}), and the stage's alarms; "
        "a cold start after a deploy can take a minute: try a longer --timeout"
    )


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.smoke_test", description=__doc__.split("\n\n", 1)[0]
    )
    add_stack_arguments(result)
    result.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default: %(default)s)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.timeout <= 0:
        raise PrerequisiteError("--timeout must be positive")
    aws, outputs = deployed_stage(args)
    ride_id = f"smoke-{uuid.uuid4().hex[:12]}"
    say(f"putting ride {ride_id} on {outputs['InputStreamName']}, waiting up to {args.timeout:g} s")
    started = time.monotonic()
    prediction = wait_for_prediction(aws.client("kinesis"), outputs, ride_id, args.timeout)
    say(f"prediction after {time.monotonic() - started:.1f} s")
    print(json.dumps(prediction))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
