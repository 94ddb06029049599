"""Debug: invoke a stage's function once with a sample Kinesis event and show its logs.

    python -m scripts.invoke --stage dev                         # one course ride
    python -m scripts.invoke --stage dev --event my-event.json   # your own event
    python -m scripts.invoke --stage dev --write-event event.json   # only write the sample
    python -m scripts.invoke --stage dev --self-test             # the model's known rides, nothing written
    python -m scripts.invoke --stage dev --self-test --qualifier 7   # ... of version 7

It invokes the alias `live`, what the stream invokes (`--qualifier` names a version, or
`$LATEST`). The sample is the event Lambda builds for one record of the stage's input stream
(the course's ride, ride_id "invoke-<random>"), so its prediction really lands on the
predictions stream. The self-test event `{"self_test": true}` writes nothing: the function
predicts its model's known rides again and answers with the recorded and the new predictions;
scripts/deploy.py runs the same check on every new version before the alias moves to it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_aws.kinesis_events import StreamRecord, kinesis_event
from scripts.smoke_test import ride_event
from scripts.stack import PrerequisiteError, add_stack_arguments, deployed_stage, run, say
from stream.self_test import SELF_TEST_EVENT

LIVE_ALIAS = "live"  # infra/template.yaml's alias, what the event source mapping invokes


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
    lambda_client: Any, function_name: str, event: dict[str, Any], qualifier: str | None = None
) -> tuple[dict[str, Any], str, str | None]:
    """The response payload, the tail of the logs, and the FunctionError (None when it succeeded)."""
    response = lambda_client.invoke(
        FunctionName=function_name,
        Payload=json.dumps(event).encode(),
        LogType="Tail",  # the last 4 KB of the invocation's log, base64
        **({"Qualifier": qualifier} if qualifier else {}),
    )
    raw = response["Payload"].read().decode()
    try:
        payload = json.loads(raw) if raw else {}
    except ValueError:
        payload = {"raw": raw}
    logs = base64.b64decode(response.get("LogResult", "")).decode(errors="replace")
    return payload, logs, response.get("FunctionError")


@dataclass(frozen=True)
class SelfTestOutcome:
    """What a function version answered to the self-test event, and whether that is a pass."""

    target: str  # function:qualifier
    report: dict[str, Any] | None  # SelfTestReport.to_dict(), when the function answered one
    error: str | None  # why it did not pass (None: passed)
    logs: str = ""

    @property
    def passed(self) -> bool:
        return self.error is None

    def lines(self) -> list[str]:
        """For a person: the verdict, each known ride with its recorded and new prediction,
        and, when it failed, why and the end of the log."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"self-test of {self.target}: {verdict}"]
        report = self.report or {}
        if report.get("rides"):
            tolerance = report.get("tolerance") or {}
            lines.append(
                f"  model {report.get('model_uri')} (version {report.get('model_version')}): "
                f"{len(report['rides'])} {report.get('source', 'known rides')}; tolerance "
                f"{tolerance.get('absolute', '?')} min + {tolerance.get('relative', '?')} x |expected|"
            )
            expected = report.get("expected") or [None] * len(report["rides"])
            got = report.get("got") or [None] * len(report["rides"])
            lines.append(f"  {'ride':<26} {'expected':>12} {'got':>12} {'difference':>12}")
            for ride, was, now in zip(report["rides"], expected, got, strict=False):
                name = f"{ride['PULocationID']}->{ride['DOLocationID']} {ride['trip_distance']} mi"
                difference = abs(now - was) if isinstance(was, float) and isinstance(now, float) else None
                lines.append(f"  {name:<26} {_number(was):>12} {_number(now):>12} {_number(difference):>12}")
        if self.error:
            lines.append(f"  {self.error}")
            if self.logs.strip():
                lines.append("  --- log tail ---")
                lines.extend(f"  {line}" for line in self.logs.rstrip().splitlines())
        return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def self_test(
    lambda_client: Any, function_name: str, qualifier: str | None, expected_model_uri: str | None = None
) -> SelfTestOutcome:
    """Invoke the version (or alias) with the self-test event. It passes when the function
    starts (a model that fails its self-test at load fails the init: ModelLoadError), answers
    with a passed report, and, if given, serves `expected_model_uri`."""
    target = f"{function_name}:{qualifier}" if qualifier else function_name
    payload, logs, function_error = invoke(lambda_client, function_name, SELF_TEST_EVENT, qualifier)
    if function_error:
        kind = payload.get("errorType", function_error)
        message = payload.get("errorMessage", json.dumps(payload))
        return SelfTestOutcome(target, None, f"the function failed ({kind}): {message}", logs)
    if payload.get("self_test") not in ("passed", "failed"):
        error = f"the function did not answer with a self-test report (code without the self-test event?): {json.dumps(payload)[:500]}"
        return SelfTestOutcome(target, None, error, logs)
    if not payload.get("passed"):
        return SelfTestOutcome(
            target, payload, f"the model failed its self-test: {payload.get('problem')}", logs
        )
    if expected_model_uri and payload.get("model_uri") != expected_model_uri:
        error = f"it serves the model {payload.get('model_uri')}, not {expected_model_uri} as deployed"
        return SelfTestOutcome(target, payload, error, logs)
    return SelfTestOutcome(target, payload, None, logs)


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.invoke",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Exit 1 when the function raised (FunctionError) or its self-test failed.",
    )
    add_stack_arguments(result)
    source = result.add_mutually_exclusive_group()
    source.add_argument("--event", type=Path, help="a Kinesis event (JSON) to send instead of the sample")
    source.add_argument("--write-event", type=Path, help="write the sample event to this file and stop")
    source.add_argument(
        "--self-test",
        action="store_true",
        help='send {"self_test": true}: the model predicts its known rides again; nothing is written',
    )
    result.add_argument(
        "--qualifier",
        help=f"a version number, an alias or $LATEST (default: the alias {LIVE_ALIAS!r}, what the stream invokes)",
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    aws, outputs = deployed_stage(args)
    # A stack from before the alias has none: its mapping invokes the function itself.
    qualifier = args.qualifier or (LIVE_ALIAS if "LiveAliasArn" in outputs else None)
    if args.self_test:
        outcome = self_test(aws.client("lambda"), outputs["FunctionName"], qualifier)
        for line in outcome.lines():
            say(line)
        print(json.dumps(outcome.report) if outcome.report is not None else "null")
        return 0 if outcome.passed else 1
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
    target = f"{outputs['FunctionName']}:{qualifier}" if qualifier else outputs["FunctionName"]
    say(f"invoking {target} with {len(event.get('Records', []))} record(s)")
    payload, logs, error = invoke(aws.client("lambda"), outputs["FunctionName"], event, qualifier)
    if logs:
        say("--- log tail ---\n" + logs.rstrip() + "\n---")
    print(json.dumps(payload))
    if error:
        say(f"the function raised ({error})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
