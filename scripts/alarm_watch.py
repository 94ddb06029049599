"""Watch a stage's alarms for a while after its alias moved, and say which one fired.

The stage's alarms are those named `ride-duration-<stage>-…` (the function's name and a dash,
what the CI deploy role may describe) that notify the stage's alarm topic (AlarmTopicArn): the
template's three, and any so named that an operator adds to the topic. An alarm counts when it goes to ALARM
during the watch: one already in ALARM when the watch starts is named, and counts only if it
leaves ALARM and fires again. Alarm states are compared with what CloudWatch said at the start,
never with this machine's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# CloudWatch evaluates an alarm once a minute; a third of that notices a change within the minute.
POLL_SECONDS = 20.0
# The slowest of the template's alarms (iterator age) needs 5 breaching minutes in a row, and
# Lambda's metrics arrive up to a few minutes late.
DEFAULT_WATCH_MINUTES = 10.0


@dataclass(frozen=True)
class FiredAlarm:
    name: str
    reason: str
    at: str  # when CloudWatch says it changed state


def stage_alarms(cloudwatch: Any, topic_arn: str, name_prefix: str) -> list[dict[str, Any]]:
    """The metric and composite alarms named `name_prefix…` that notify `topic_arn` (matched
    exactly: stage `dev-2`'s alarms also start with `ride-duration-dev-`)."""
    alarms = []
    for page in cloudwatch.get_paginator("describe_alarms").paginate(
        AlarmNamePrefix=name_prefix, AlarmTypes=["MetricAlarm", "CompositeAlarm"]
    ):
        for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
            if topic_arn in alarm.get("AlarmActions", []):
                alarms.append(alarm)
    return alarms


def watch(
    cloudwatch: Any,
    topic_arn: str,
    minutes: float,
    *,
    name_prefix: str,
    say: Callable[[str], None],
    poll_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FiredAlarm | None:
    """Poll the stage's alarms for `minutes`; the first that goes to ALARM, or None."""
    poll = POLL_SECONDS if poll_seconds is None else poll_seconds
    start = {alarm["AlarmName"]: _state(alarm) for alarm in stage_alarms(cloudwatch, topic_arn, name_prefix)}
    already = sorted(name for name, (value, _) in start.items() if value == "ALARM")
    say(
        f"watching {len(start)} alarm(s) for {minutes:g} minute(s): {', '.join(sorted(start)) or 'none found'}"
    )
    if already:
        say(
            f"already in ALARM before the alias moved (counted only if they fire again): {', '.join(already)}"
        )
    started = time.monotonic()
    last_progress = started
    while True:
        for alarm in stage_alarms(cloudwatch, topic_arn, name_prefix):
            value, updated = _state(alarm)
            if value == "ALARM" and start.get(alarm["AlarmName"]) != (value, updated):
                return FiredAlarm(alarm["AlarmName"], alarm.get("StateReason", ""), updated)
            start.setdefault(alarm["AlarmName"], (value, updated))  # one created meanwhile
        elapsed = time.monotonic() - started
        if elapsed >= minutes * 60:
            return None
        if time.monotonic() - last_progress >= 60:
            last_progress = time.monotonic()
            say(f"no alarm after {elapsed / 60:.0f} of {minutes:g} minute(s)")
        sleep(min(poll, max(minutes * 60 - elapsed, 0)))


def _state(alarm: dict[str, Any]) -> tuple[str, str]:
    """Its state and when it last changed (StateUpdatedTimestamp also moves with the evaluation
    state; moto has only that one)."""
    changed = alarm.get("StateTransitionedTimestamp") or alarm.get("StateUpdatedTimestamp", "")
    return alarm["StateValue"], str(changed)
