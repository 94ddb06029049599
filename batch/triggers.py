"""What starts a batch run, and which month's file it scores.

The batch function is invoked asynchronously by three things, each naming one month:

- **the schedule** (EventBridge Scheduler): `{"scheduled_time": "2021-04-01T06:00:00Z"}`, the
  target input with Scheduler's `<aws.scheduler.scheduled-time>` filled in. It scores the month
  before: a run on April 1st scores March's file. The scheduled time, not the clock, decides,
  so a retry an hour later (or on May 1st, after an outage) still scores March. A classic
  EventBridge schedule rule (`"detail-type": "Scheduled Event"`, its `time`) works the same way.
- **a file's arrival** (S3 -> EventBridge, "Object Created" under the input prefix): the file
  itself is scored; its month is read from its key with BATCH_INPUT_TEMPLATE. S3's own bucket
  notification shape (`{"Records": [{"eventSource": "aws:s3", ...}]}`, keys URL-encoded) is read
  too, for a bucket wired that way.
- **a request** (`make backfill`, `aws lambda invoke`): `{"month": "2021-03"}`.

Whatever starts it, a month's output is BATCH_OUTPUT_TEMPLATE for that month: the same key
every time, so a retry or a second trigger replaces the output, never adds a second one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from batch.months import Month
from batch.settings import BatchSettings


class UnknownEventError(ValueError):
    """The event names no month: not one of the shapes above, or a file the template cannot read."""


@dataclass(frozen=True)
class MonthRun:
    """One unit of batch work: a month's input file scored into its output."""

    month: Month
    input_uri: str
    output_uri: str
    trigger: str  # what asked for it, for the logs: "schedule 2021-04-01T06:00:00Z", "arrival", ...


def runs_for(event: Mapping[str, Any], settings: BatchSettings) -> list[MonthRun]:
    """The month(s) an event asks for; UnknownEventError (naming the file, if any) otherwise."""
    if not isinstance(event, Mapping):
        raise UnknownEventError(f"expected a JSON object, got {type(event).__name__}")
    if "month" in event:
        return [_run(_month(event["month"]), settings, "request")]
    if "scheduled_time" in event:
        moment = _time(event["scheduled_time"], "scheduled_time")
        return [_run(Month.before(moment), settings, f"schedule {event['scheduled_time']}")]
    if event.get("source") == "aws.events" and event.get("detail-type") == "Scheduled Event":
        moment = _time(event.get("time"), "time")
        return [_run(Month.before(moment), settings, f"schedule {event['time']}")]
    if event.get("source") == "aws.s3" and event.get("detail-type") == "Object Created":
        detail = event.get("detail") or {}
        bucket, key = (detail.get("bucket") or {}).get("name"), (detail.get("object") or {}).get("key")
        if not (isinstance(bucket, str) and isinstance(key, str)):
            raise UnknownEventError(
                "an S3 Object Created event without detail.bucket.name and detail.object.key"
            )
        return [_arrival(f"s3://{bucket}/{key}", settings)]
    records = event.get("Records")
    if isinstance(records, list) and records and all(_is_s3_record(r) for r in records):
        # S3's notification format URL-encodes keys ("a b.parquet" arrives as "a+b.parquet").
        return [
            _arrival(f"s3://{r['s3']['bucket']['name']}/{unquote_plus(r['s3']['object']['key'])}", settings)
            for r in records
        ]
    raise UnknownEventError(
        'the event names no month: expected {"month": "YYYY-MM"}, {"scheduled_time": <ISO time>}, '
        f"or an S3 Object Created event; got one with keys {sorted(event)}"
    )


def _run(month: Month, settings: BatchSettings, trigger: str) -> MonthRun:
    return MonthRun(
        month, settings.input_template.format(month), settings.output_template.format(month), trigger
    )


def _arrival(uri: str, settings: BatchSettings) -> MonthRun:
    month = settings.input_template.month_of(uri)
    if month is None:
        raise UnknownEventError(
            f"{uri}: not a month's input file: BATCH_INPUT_TEMPLATE is {settings.input_template}, "
            "so its month cannot be told; rename the file to match, or change the template"
        )
    return MonthRun(month, uri, settings.output_template.format(month), "arrival")


def _month(value: Any) -> Month:
    try:
        return Month.parse(str(value))
    except ValueError as error:
        raise UnknownEventError(str(error)) from None


def _time(value: Any, name: str) -> datetime:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise UnknownEventError(
            f"{name}: expected an ISO 8601 time (2021-04-01T06:00:00Z), got {value!r}"
        ) from None


def _is_s3_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and record.get("eventSource") == "aws:s3"
        and str(record.get("eventName", "")).startswith("ObjectCreated:")
    )
