"""Months, path templates, the batch settings and the events that name a month (no AWS here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from batch.months import Month, MonthTemplate, months_from
from batch.settings import DEFAULT_INPUT_TEMPLATE, DEFAULT_OUTPUT_TEMPLATE, BatchSettings
from batch.triggers import MonthRun, UnknownEventError, runs_for
from stream.settings import ConfigurationError

SETTINGS = BatchSettings.from_env(
    {
        "BATCH_INPUT_TEMPLATE": "s3://data/input/green_tripdata_{year}-{month:02d}.parquet",
        "BATCH_OUTPUT_TEMPLATE": "s3://data/output/year={year}/month={month:02d}/predictions.parquet",
    }
)


def test_months_parse_print_and_step_across_years() -> None:
    assert str(Month.parse("2021-3")) == "2021-03"
    assert Month(2021, 1).previous() == Month(2020, 12)
    assert Month(2020, 12).next() == Month(2021, 1)
    assert Month.before(datetime(2021, 1, 1, 6, tzinfo=UTC)) == Month(2020, 12)
    assert [str(m) for m in months_from(Month(2020, 11), Month(2021, 2))] == [
        "2020-11",
        "2020-12",
        "2021-01",
        "2021-02",
    ]
    with pytest.raises(ValueError, match="before the first"):
        months_from(Month(2021, 2), Month(2021, 1))
    for text in ("2021-13", "2021-00", "21-03", "2021/03", ""):
        with pytest.raises(ValueError, match="month"):
            Month.parse(text)


def test_a_template_names_a_months_file_and_reads_the_month_back() -> None:
    template = MonthTemplate("s3://b/input/green_tripdata_{year}-{month:02d}.parquet")
    assert template.format(Month(2021, 3)) == "s3://b/input/green_tripdata_2021-03.parquet"
    assert template.month_of("s3://b/input/green_tripdata_2021-03.parquet") == Month(2021, 3)
    assert template.fixed_prefix == "s3://b/input/green_tripdata_"
    for other in (
        "s3://b/input/green_tripdata_2021-3.parquet",  # not what the template makes
        "s3://b/input/green_tripdata_2021-13.parquet",  # no such month
        "s3://b/input/yellow_tripdata_2021-03.parquet",
        "s3://b/input/green_tripdata_2021-03.parquet.tmp",
        "s3://other/input/green_tripdata_2021-03.parquet",
    ):
        assert template.month_of(other) is None, other
    unpadded = MonthTemplate("trips/{year}/{month}/trips-{year}{month:02d}.parquet")
    assert unpadded.month_of("trips/2021/3/trips-202103.parquet") == Month(2021, 3)
    assert unpadded.month_of("trips/2021/3/trips-202003.parquet") is None  # {year} twice, two years


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("data/trips.parquet", "no {year} and no {month} field"),
        ("data/trips-{year}.parquet", "no {month} field"),
        ("data/{year}-{month:02d}-{day}.parquet", "unknown field {day}"),
        ("data/{year}-{month:.2f}.parquet", "is not an integer format"),
        ("data/{year}-{month!r}.parquet", "unknown field"),
        ("data/{year-{month}.parquet", "data/{year-{month}.parquet"),
    ],
)
def test_a_template_without_both_fields_or_with_others_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        MonthTemplate(text)


def test_settings_default_to_local_files_and_name_a_bad_variable() -> None:
    defaults = BatchSettings.from_env({})
    assert defaults.input_template.text == DEFAULT_INPUT_TEMPLATE
    assert defaults.output_template.text == DEFAULT_OUTPUT_TEMPLATE
    with pytest.raises(ConfigurationError, match=r"^BATCH_OUTPUT_TEMPLATE: 'out\.parquet': no \{year\}"):
        BatchSettings.from_env({"BATCH_OUTPUT_TEMPLATE": "out.parquet"})


@pytest.mark.parametrize(
    "output",
    [
        "s3://data/input/green_tripdata_{year}-{month:02d}.parquet",  # the inputs themselves
        "s3://data/input/scored/{year}-{month:02d}.parquet",  # under the input prefix
    ],
)
def test_outputs_that_an_arrival_would_take_for_inputs_are_refused(output: str) -> None:
    """Each output would start another run, and so on: the function refuses to start."""
    with pytest.raises(ConfigurationError, match="put the outputs under another prefix"):
        BatchSettings.from_env(
            {
                "BATCH_INPUT_TEMPLATE": "s3://data/input/green_tripdata_{year}-{month:02d}.parquet",
                "BATCH_OUTPUT_TEMPLATE": output,
            }
        )


def s3_event(key: str, bucket: str = "data") -> dict[str, Any]:
    """An S3 "Object Created" event as EventBridge delivers it (AWS's documented example shape)."""
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2021-04-02T09:15:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {
                "key": key,
                "size": 1234,
                "etag": "b1946ac92492d2347c6235b4d2611184",
                "sequencer": "0062E99A88DC407460",
            },
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "1.2.3.4",
            "reason": "PutObject",
        },
    }


@pytest.mark.parametrize(
    ("event", "month", "trigger"),
    [
        ({"month": "2021-03"}, "2021-03", "request"),
        ({"scheduled_time": "2021-04-01T06:00:00Z"}, "2021-03", "schedule 2021-04-01T06:00:00Z"),
        # A late delivery (or a retry) of January's run still scores December.
        ({"scheduled_time": "2021-01-01T06:00:00Z"}, "2020-12", "schedule 2021-01-01T06:00:00Z"),
        (
            {"source": "aws.events", "detail-type": "Scheduled Event", "time": "2021-04-01T06:00:00Z"},
            "2021-03",
            "schedule 2021-04-01T06:00:00Z",
        ),
        (s3_event("input/green_tripdata_2019-11.parquet"), "2019-11", "arrival"),
    ],
)
def test_each_trigger_names_one_month_whose_output_key_is_always_the_same(
    event: dict[str, Any], month: str, trigger: str
) -> None:
    [run] = runs_for(event, SETTINGS)
    year, number = month.split("-")
    assert run == MonthRun(
        Month.parse(month),
        f"s3://data/input/green_tripdata_{month}.parquet",
        f"s3://data/output/year={year}/month={number}/predictions.parquet",
        trigger,
    )


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"month": "March"}, "expected a month as YYYY-MM"),
        ({"scheduled_time": "<aws.scheduler.scheduled-time>"}, "scheduled_time: expected an ISO 8601 time"),
        (
            s3_event("input/green_tripdata_2021-03.csv"),
            "s3://data/input/green_tripdata_2021-03.csv: not a month's input file",
        ),
        (
            s3_event("input/green_tripdata_2021-03.parquet", bucket="other"),
            "s3://other/input/green_tripdata_2021-03.parquet",
        ),
        ({"Records": [{"eventSource": "aws:kinesis"}]}, "the event names no month"),
        ({"hello": "world"}, "got one with keys ['hello']"),
    ],
)
def test_an_event_that_names_no_month_is_refused_saying_why(event: dict[str, Any], message: str) -> None:
    with pytest.raises(UnknownEventError) as refused:
        runs_for(event, SETTINGS)
    assert message in str(refused.value)
