"""Debug: invoke a stage's function once with a sample Kinesis event and show its logs.

    python -m scripts.invoke --stage dev                         # one course ride
    python -m scripts.invoke --stage dev --event my-event.json   # your own event
    python -m scripts.invoke --stage dev --write-event event.json   # only write the sample

The sample is the event Lambda builds for one record of the stage's input stream (the course's
ride, ride_id "invoke-<random>"), so its prediction really lands on the predictions stream.
The same call with the AWS CLI (v1 or v2: `fileb://` sends the file as it is, where v2 would
read `file://` as base64 unless given --cli-binary-format raw-in-base64-out):

    aws lambda invoke --function-name ride-duration-dev --payload fileb://event.json \\
        --log-type Tail --query LogResult --output text response.json | base64 --decode
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from local_aws.kinesis_events import StreamRecord, kinesis_event
from scripts.smoke_test import ride_event
from scripts.stack import PrerequisiteError, add_stack_arguments, deployed_stage, run, say


def sample_event(input_stream_arn: str, ride_id: str, now: float | None = None) -> dict[str, Any]:
    """One ride, as Lambda would deliver it from the stage's input stream."""
    region = input_stream_arn.split(":")[3]
    record = StreamRecord(
        data=json.dumps(ride_event(ride_id)).encode(),
        partition_key=ride_id,
        # Not a real position on the stream, but unique, as consumers de-duplicate on it.
        sequence_number=str(time.time_ns()),
        approximate_arrival_timestamp=time.time() if now is None else now,
    )
    return kinesis_event([record], "shardId-000000000000", input_stream_arn, region)


def invoke(
    lambda_client: Any, function_name: str, event: dict[str, Any]
) -> tuple[dict[str, Any], str, str | None]:
    """The response payload, the tail of the logs, and the FunctionError (None when it succeeded)."""
    response = lambda_client.invoke(
        FunctionName=function_name,
        Payload=json.dumps(event).encode(),
        LogType="Tail",  # the last 4 KB of the invocation's log, base64
    )
    raw = response["Payload"].read().decode()
    try:
        payload = json.loads(raw) if raw else {}
    except ValueError:
        payload = {"raw": raw}
    logs = base64.b64decode(response.get("LogResult", "")).decode(errors="replace")
    return payload, logs, response.get("FunctionError")


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.invoke",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Exit 1 when the function raised (FunctionError).",
    )
    add_stack_arguments(result)
    source = result.add_mutually_exclusive_group()
    source.add_argument("--event", type=Path, help="a Kinesis event (JSON) to send instead of the sample")
    source.add_argument("--write-event", type=Path, help="write the sample event to this file and stop")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    aws, outputs = deployed_stage(args)
    if args.event:
        if not args.event.is_file():
            raise PrerequisiteError(f"no event file {args.event}")
        event = json.loads(args.event.read_text())
    else:
        event = sample_event(outputs["InputStreamArn"], f"invoke-{uuid.uuid4().hex[:12]}")
    if args.write_event:
        args.write_event.write_text(json.dumps(event, indent=2) + "\n")
        say(
            f"wrote {args.write_event}; invoke it with: aws lambda invoke --function-name "
            f"{outputs['FunctionName']} --payload fileb://{args.write_event} --log-type Tail response.json"
        )
        return 0
    say(f"invoking {outputs['FunctionName']} with {len(event.get('Records', []))} record(s)")
    payload, logs, error = invoke(aws.client("lambda"), outputs["FunctionName"], event)
    if logs:
        say("--- log tail ---\n" + logs.rstrip() + "\n---")
    print(json.dumps(payload))
    if error:
        say(f"the function raised ({error})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
