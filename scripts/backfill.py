"""`make backfill FROM=2021-01 TO=2021-06`: one batch run per month, here or on AWS.

    python -m scripts.backfill --from 2021-01 --to 2021-06                 # here, in sequence
    python -m scripts.backfill --from 2021-01 --to 2021-06 --synthetic     # ... writing missing inputs first
    python -m scripts.backfill --from 2021-01 --to 2021-06 --stage dev     # the stage's batch function

**Here** (no --stage): each month is scored in this process, one after the other, by the batch
function's own job (batch/job.py), from BATCH_INPUT_TEMPLATE to BATCH_OUTPUT_TEMPLATE: local
paths by default (data/input/..., data/output/...), or s3:// ones on the local stack's moto (with
AWS_ENDPOINT_URL) or any S3. The model is MODEL_URI's (default ./model). A month that fails is
reported and the others still run; the exit code is 1 if any failed. `--synthetic` first writes
a synthetic month (scripts/train.py's trips, TLC's columns) where an input is missing.

**On AWS** (--stage): the stage's batch function (stack ride-duration-batch-<stage>) is invoked
asynchronously once per month, `{"month": "YYYY-MM"}`, all at once: Lambda runs them in parallel
(up to the stack's MaxConcurrentMonths), retries failures and reports them to the failed-runs
queue. Then it waits (--wait-minutes; 0: not at all) until each month's output object is newer
than the invocation, or a failure record names the month, with a progress line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from batch.months import Month, MonthTemplate, months_from
from scripts.batch_deploy import batch_stack_name
from scripts.stack import PrerequisiteError, ScriptError, caller_account, run, say, session, stack_outputs

POLL_SECONDS = 10


@dataclass
class Progress:
    """Where a backfill stands: months done, failed (with why), still running."""

    months: list[Month]
    done: dict[Month, str] = field(default_factory=dict)
    failed: dict[Month, str] = field(default_factory=dict)

    @property
    def running(self) -> list[Month]:
        return [m for m in self.months if m not in self.done and m not in self.failed]

    def line(self, elapsed: float, current: Month | None = None) -> str:
        """One line: how many months are scored and failed, and what is under way."""
        waiting = self.running
        if current is not None:
            doing = f", scoring {current} ({self.months.index(current) + 1}/{len(self.months)})"
        elif waiting:
            listed = ", ".join(map(str, waiting[:4])) + (", ..." if len(waiting) > 4 else "")
            doing = f", {len(waiting)} running ({listed})"
        else:
            doing = ""
        return (
            f"backfill {self.months[0]}..{self.months[-1]}: {len(self.done)}/{len(self.months)} months scored, "
            f"{len(self.failed)} failed{doing} [{elapsed:.1f} s]"
        )

    def summary(self) -> list[str]:
        """A line per month, in order: its output, or why it failed."""
        lines = []
        for month in self.months:
            if month in self.done:
                lines.append(f"{month}: {self.done[month]}")
            elif month in self.failed:
                lines.append(f"{month}: FAILED: {self.failed[month]}")
            else:
                lines.append(f"{month}: no answer yet")
        return lines


class BackfillFailedError(ScriptError):
    """Some months were not scored (each is named above the error)."""


# --- Here, in sequence --------------------------------------------------------------------------


def backfill_here(months: list[Month], synthetic: bool, out: Callable[[str], None] = say) -> Progress:
    from batch.cli import use_system_allocator  # noqa: PLC0415 - pyarrow, scikit-learn: only here
    from batch.job import MonthFailedError, MonthlyScoring  # noqa: PLC0415
    from batch.output import OutputError  # noqa: PLC0415
    from batch.settings import BatchSettings  # noqa: PLC0415
    from batch.triggers import runs_for  # noqa: PLC0415
    from model_service import load_configured_model  # noqa: PLC0415
    from stream.model_loading import ModelLoadError  # noqa: PLC0415
    from stream.settings import ConfigurationError, Settings  # noqa: PLC0415

    use_system_allocator()
    try:
        settings, batch_settings = Settings.from_env(), BatchSettings.from_env()
        if synthetic:
            write_missing_inputs(months, batch_settings.input_template, out)
        model = load_configured_model(settings)
    except (ConfigurationError, ModelLoadError, OutputError) as error:
        raise PrerequisiteError(str(error)) from None
    job = MonthlyScoring(model, batch_settings, QuietLog(), bounds=settings.ride_bounds)
    progress = Progress(months)
    started = time.monotonic()
    for month in months:
        out(progress.line(time.monotonic() - started, current=month))
        [month_run] = runs_for({"month": str(month)}, batch_settings)
        try:
            result = job.run(month_run)
        except MonthFailedError as error:
            progress.failed[month] = str(error)
            continue
        progress.done[month] = (
            f"{result['rows']:,} rows ({result['not_predicted']:,} not predicted) -> {result['output']}"
        )
    out(progress.line(time.monotonic() - started))
    return progress


class QuietLog:
    """The job's log lines, not printed: the progress line and the summary say it here."""

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        say(f"warning: {msg}")

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        say(f"error: {msg}")

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        say(f"error: {msg}")


def write_missing_inputs(months: list[Month], template: MonthTemplate, out: Callable[[str], None]) -> None:
    """A synthetic month of trips (TLC's green columns) for each month whose input is missing."""
    import io  # noqa: PLC0415

    import pandas as pd  # noqa: PLC0415 - the dev environment's (train group)

    from batch.output import replaced_on_success  # noqa: PLC0415
    from batch.scoring import filesystem_for  # noqa: PLC0415
    from scripts.train import synthetic_trips  # noqa: PLC0415 - pandas: only when asked

    for month in months:
        uri = template.format(month)
        filesystem, path = filesystem_for(uri)
        if filesystem.get_file_info(path).type.name != "NotFound":
            continue
        trips = synthetic_trips(5_000, month=month.month, seed=month.year)
        for column in ("lpep_pickup_datetime", "lpep_dropoff_datetime"):  # synthetic_trips' year is 2021
            trips[column] = trips[column] + pd.DateOffset(years=month.year - 2021)
        buffer = io.BytesIO()
        trips.to_parquet(buffer)
        with replaced_on_success(uri) as sink:
            sink.write(buffer.getvalue())
        out(f"wrote a synthetic month of {len(trips):,} trips: {uri}")


# --- On AWS, in parallel ------------------------------------------------------------------------


def invoke_months(lambda_client: Any, function: str, months: list[Month]) -> dict[Month, str]:
    """One asynchronous invocation per month, at once; their request ids."""
    request_ids = {}
    for month in months:
        response = lambda_client.invoke(
            FunctionName=function, InvocationType="Event", Payload=json.dumps({"month": str(month)}).encode()
        )
        request_ids[month] = response["ResponseMetadata"]["RequestId"]
        say(f"{month}: invoked {function} asynchronously (request {request_ids[month]})")
    return request_ids


def output_written_since(s3: Any, uri: str, since: datetime) -> bool:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    # S3 keeps whole seconds: an output completed in the invocation's second counts.
    return bool(head["LastModified"] >= since.replace(microsecond=0))


def failures(sqs: Any, queue_url: str) -> dict[str, str]:
    """month -> error, from the failed-runs queue's on-failure records, looked at and left there
    (visibility timeout 0): they stay for the operator and the alarm."""
    found = {}
    for _ in range(10):  # SQS answers with a sample of the queue: look a few times
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            break
        for message in messages:
            try:
                record = json.loads(message["Body"])
                month = record["requestPayload"]["month"]
            except (ValueError, KeyError, TypeError):
                continue  # a schedule's or an arrival's failure, or an undelivered event
            response = record.get("responsePayload") or {}
            found[str(month)] = response.get("errorMessage") or record.get("requestContext", {}).get(
                "condition", "failed"
            )
    return found


def backfill_on_aws(
    aws: Any,
    stage: str,
    months: list[Month],
    wait_minutes: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    poll_seconds: float = POLL_SECONDS,
) -> Progress:
    outputs = stack_outputs(aws.client("cloudformation"), batch_stack_name(stage))
    function = outputs["FunctionName"]
    output_template = MonthTemplate(outputs["OutputTemplate"])
    started = datetime.now(UTC)
    invoke_months(aws.client("lambda"), function, months)
    progress = Progress(months)
    if wait_minutes <= 0:
        say(
            f"not waiting (--wait-minutes 0): outputs go to {outputs['OutputPrefixUri']}, failures to {outputs['FailedRunsQueueUrl']}"
        )
        return progress
    s3, sqs = aws.client("s3"), aws.client("sqs")
    deadline = time.monotonic() + wait_minutes * 60
    clock = time.monotonic()
    while progress.running:
        failed = failures(sqs, outputs["FailedRunsQueueUrl"])
        for month in progress.running:
            uri = output_template.format(month)
            if output_written_since(s3, uri, started):
                progress.done[month] = f"-> {uri}"
            elif str(month) in failed:
                progress.failed[month] = failed[str(month)]
        say(progress.line(time.monotonic() - clock))
        if not progress.running or time.monotonic() >= deadline:
            break
        sleep(poll_seconds)
    return progress


def month_argument(text: str) -> Month:
    try:
        return Month.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (make backfill FROM=2021-01 TO=2021-06)") from None


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.backfill", description=__doc__.split("\n\n", 1)[0]
    )
    result.add_argument(
        "--from", dest="first", type=month_argument, required=True, metavar="YYYY-MM", help="first month"
    )
    result.add_argument(
        "--to",
        dest="last",
        type=month_argument,
        required=True,
        metavar="YYYY-MM",
        help="last month (included)",
    )
    result.add_argument(
        "--stage", help="run on AWS: the stage's batch function (stack ride-duration-batch-<stage>)"
    )
    result.add_argument(
        "--region", help="with --stage: AWS region (default: AWS_DEFAULT_REGION, or the profile's)"
    )
    result.add_argument(
        "--wait-minutes",
        type=float,
        default=15,
        help="with --stage: wait this long for the months (default: %(default)g)",
    )
    result.add_argument(
        "--synthetic", action="store_true", help="here: write a synthetic month where an input is missing"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        months = months_from(args.first, args.last)
    except ValueError as error:
        raise PrerequisiteError(str(error)) from None
    if args.stage:
        if args.synthetic:
            raise PrerequisiteError(
                "--synthetic writes inputs here only: upload the months' files to the input prefix"
            )
        aws = session(args)
        say(
            f"account {caller_account(aws.client('sts'))}, region {aws.region_name}, stack {batch_stack_name(args.stage)}"
        )
        progress = backfill_on_aws(aws, args.stage, months, args.wait_minutes)
    else:
        progress = backfill_here(months, args.synthetic)
    for line in progress.summary():
        print(line)
    if progress.failed or (progress.running and not (args.stage and args.wait_minutes <= 0)):
        raise BackfillFailedError(
            f"{len(progress.failed)} of {len(months)} months failed"
            + (
                f", {len(progress.running)} not finished in {args.wait_minutes:g} minutes"
                if progress.running
                else ""
            )
            + (f": see the failed-runs queue of {batch_stack_name(args.stage)}" if args.stage else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
