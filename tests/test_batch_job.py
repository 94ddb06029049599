"""The batch job (batch/job.py) against S3 over real HTTP (a moto server), fed the events AWS sends.

A file put under the input prefix of a bucket with EventBridge notifications goes through moto's
S3 -> EventBridge -> the arrival rule of infra/batch.yaml (its own event pattern), which hands the
event to a queue here instead of the function (moto's EventBridge cannot invoke Lambda): the job
is given that event, as Lambda would give it. A file that is not a month's trips fails with an
error naming it, and nothing is written; a second run of a month replaces its output.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.job import MonthFailedError, MonthlyScoring
from batch.months import MonthTemplate
from batch.settings import BatchSettings
from batch.triggers import UnknownEventError
from scripts.stack import PROJECT_ROOT, load_template
from scripts.train import synthetic_trips
from stream.model_loading import LoadedModel, load_model
from stream.ride_events import ModelInfo
from tests.conftest import RecordingLog

BATCH_TEMPLATE = load_template(PROJECT_ROOT / "infra" / "batch.yaml")
DEFAULTS = {name: str(spec.get("Default", "")) for name, spec in BATCH_TEMPLATE["Parameters"].items()}


@pytest.fixture(scope="module")
def model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(model_dir), tmp_path_factory.mktemp("cache"))


def rendered(value: Any, refs: dict[str, str]) -> Any:
    """A template value with its Refs replaced (the parameters' defaults, the resources' names)."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return refs[value["Ref"]]
    if isinstance(value, dict):
        return {key: rendered(item, refs) for key, item in value.items()}
    if isinstance(value, list):
        return [rendered(item, refs) for item in value]
    return value


def sub(text: str, refs: dict[str, str]) -> str:
    for name, value in refs.items():
        text = text.replace("${" + name + "}", value)
    return text


@pytest.fixture
def data_bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A data bucket as infra/batch.yaml makes it (EventBridge notifications, versioning), its arrival
    rule with the template's own event pattern, and a queue in the function's place."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    s3, events, sqs = (boto3.client(service) for service in ("s3", "events", "sqs"))
    bucket = f"ride-duration-batch-test-databucket-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    bucket_properties = BATCH_TEMPLATE["Resources"]["DataBucket"]["Properties"]
    assert bucket_properties["NotificationConfiguration"] == {
        "EventBridgeConfiguration": {"EventBridgeEnabled": True}
    }
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    s3.put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration=bucket_properties["VersioningConfiguration"]
    )
    refs = {**DEFAULTS, "DataBucket": bucket}
    rule = BATCH_TEMPLATE["Resources"]["ArrivalRule"]["Properties"]
    name = f"arrivals-{bucket[-8:]}"
    events.put_rule(Name=name, EventPattern=json.dumps(rendered(rule["EventPattern"], refs)), State="ENABLED")
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_targets(Rule=name, Targets=[{"Id": "in-the-functions-place", "Arn": queue_arn}])
    environment = BATCH_TEMPLATE["Resources"]["Function"]["Properties"]["Environment"]["Variables"]
    settings = BatchSettings.from_env(
        {
            "BATCH_INPUT_TEMPLATE": sub(environment["BATCH_INPUT_TEMPLATE"]["Fn::Sub"], refs),
            "BATCH_OUTPUT_TEMPLATE": sub(environment["BATCH_OUTPUT_TEMPLATE"]["Fn::Sub"], refs),
        }
    )
    yield {"s3": s3, "sqs": sqs, "bucket": bucket, "queue": queue_url, "settings": settings}
    events.remove_targets(Rule=name, Ids=["in-the-functions-place"])
    events.delete_rule(Name=name)


def delivered(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """The events the arrival rule matched, as the function would have been invoked with them."""
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [json.loads(message["Body"]) for message in messages.get("Messages", [])]


def trips_parquet(rows: int, seed: int = 3) -> bytes:
    buffer = io.BytesIO()
    synthetic_trips(rows, month=3, seed=seed).to_parquet(buffer)
    return buffer.getvalue()


def output_keys(s3: Any, bucket: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=DEFAULTS["OutputPrefix"])
    return [item["Key"] for item in listed.get("Contents", [])]


def test_a_file_put_under_the_input_prefix_is_scored_into_its_months_output(
    data_bucket: dict[str, Any], model: LoadedModel
) -> None:
    s3, bucket = data_bucket["s3"], data_bucket["bucket"]
    log = RecordingLog()
    job = MonthlyScoring(model, data_bucket["settings"], log, chunk_rows=400)

    s3.put_object(Bucket=bucket, Key="input/green_tripdata_2021-03.parquet", Body=trips_parquet(1_000))
    s3.put_object(Bucket=bucket, Key="elsewhere/green_tripdata_2021-03.parquet", Body=b"not under input/")
    [event] = delivered(data_bucket["sqs"], data_bucket["queue"])
    answer = job.handle(event)

    assert event["detail-type"] == "Object Created"
    assert event["detail"]["object"]["key"] == "input/green_tripdata_2021-03.parquet"
    key = "output/year=2021/month=03/predictions.parquet"
    assert output_keys(s3, bucket) == [key]
    output = s3.get_object(Bucket=bucket, Key=key)
    table = pq.read_table(io.BytesIO(output["Body"].read()))
    assert table.num_rows == 1_000
    assert table.column("predicted_duration").null_count == 0
    assert set(table.column("model_version").to_pylist()) == {model.info.version}
    assert output["Metadata"]["model-version"] == model.info.version
    assert output["Metadata"]["source"] == f"s3://{bucket}/input/green_tripdata_2021-03.parquet"
    assert output["Metadata"]["month"] == "2021-03"
    [result] = answer["months"]
    assert (result["month"], result["trigger"], result["rows"], result["predicted"]) == (
        "2021-03",
        "arrival",
        1_000,
        1_000,
    )
    assert result["output"] == f"s3://{bucket}/{key}"
    assert any(message.startswith("scored 1,000 rows of s3://") for _, message, _ in log.entries)


def test_the_jobs_own_output_starts_no_run(data_bucket: dict[str, Any], model: LoadedModel) -> None:
    s3, bucket = data_bucket["s3"], data_bucket["bucket"]
    s3.put_object(Bucket=bucket, Key="input/green_tripdata_2021-03.parquet", Body=trips_parquet(200))
    [event] = delivered(data_bucket["sqs"], data_bucket["queue"])

    MonthlyScoring(model, data_bucket["settings"], RecordingLog()).handle(event)

    assert output_keys(s3, bucket)
    assert delivered(data_bucket["sqs"], data_bucket["queue"]) == []  # the output matched no rule


def test_a_second_run_of_a_month_replaces_its_output_and_names_the_new_model(
    data_bucket: dict[str, Any], model: LoadedModel
) -> None:
    s3, bucket = data_bucket["s3"], data_bucket["bucket"]
    s3.put_object(Bucket=bucket, Key="input/green_tripdata_2021-03.parquet", Body=trips_parquet(300, seed=1))
    [arrival] = delivered(data_bucket["sqs"], data_bucket["queue"])
    job = MonthlyScoring(model, data_bucket["settings"], RecordingLog())
    job.handle(arrival)
    first = s3.get_object(Bucket=bucket, Key="output/year=2021/month=03/predictions.parquet")

    # Lambda's retry of the same event, then the schedule on April 1st, with a newer model.
    job.handle(arrival)
    newer = replace(model, info=ModelInfo(uri=model.info.uri, version="7", run_id="run-7"))
    MonthlyScoring(newer, data_bucket["settings"], RecordingLog()).handle(
        {"scheduled_time": "2021-04-01T06:00:00Z"}
    )

    assert output_keys(s3, bucket) == ["output/year=2021/month=03/predictions.parquet"]
    latest = s3.get_object(Bucket=bucket, Key="output/year=2021/month=03/predictions.parquet")
    assert latest["Metadata"]["model-version"] == "7"
    assert latest["Metadata"]["model-run-id"] == "run-7"
    table = pq.read_table(io.BytesIO(latest["Body"].read()))
    assert table.num_rows == 300
    assert set(table.column("model_version").to_pylist()) == {"7"}
    assert latest["LastModified"] >= first["LastModified"]
    # One object; the bucket's versioning keeps the two it replaced, as noncurrent versions.
    versions = s3.list_object_versions(Bucket=bucket, Prefix="output/")["Versions"]
    assert sorted(v["IsLatest"] for v in versions) == [False, False, True]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"PAR1 this is not parquet", "cannot read as parquet"),
        ("no trip_distance", "missing columns ['trip_distance']: expected NYC TLC trip data"),
    ],
)
def test_a_failed_file_is_reported_naming_it_and_leaves_no_output(
    data_bucket: dict[str, Any], model: LoadedModel, body: bytes | str, reason: str
) -> None:
    s3, bucket = data_bucket["s3"], data_bucket["bucket"]
    if isinstance(body, str):
        buffer = io.BytesIO()
        pq.write_table(
            pa.Table.from_pandas(synthetic_trips(50, month=3, seed=2).drop(columns=["trip_distance"])), buffer
        )
        body = buffer.getvalue()
    s3.put_object(Bucket=bucket, Key="input/green_tripdata_2021-04.parquet", Body=body)
    [event] = delivered(data_bucket["sqs"], data_bucket["queue"])

    with pytest.raises(MonthFailedError) as failed:
        MonthlyScoring(model, data_bucket["settings"], RecordingLog()).handle(event)

    message = str(failed.value)
    assert message.startswith(
        f"month 2021-04 (arrival): s3://{bucket}/input/green_tripdata_2021-04.parquet: "
    )
    assert reason in message
    assert output_keys(s3, bucket) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # none left behind


def test_a_file_under_the_input_prefix_that_names_no_month_is_reported_naming_it(
    data_bucket: dict[str, Any], model: LoadedModel
) -> None:
    s3, bucket = data_bucket["s3"], data_bucket["bucket"]
    s3.put_object(Bucket=bucket, Key="input/yellow_tripdata_2021-04.parquet", Body=trips_parquet(10))
    [event] = delivered(data_bucket["sqs"], data_bucket["queue"])

    with pytest.raises(
        UnknownEventError,
        match=rf"^s3://{bucket}/input/yellow_tripdata_2021-04.parquet: not a month's input file",
    ):
        MonthlyScoring(model, data_bucket["settings"], RecordingLog()).handle(event)
    assert output_keys(s3, bucket) == []


def test_a_scheduled_run_whose_file_never_arrived_is_reported_naming_it(
    data_bucket: dict[str, Any], model: LoadedModel
) -> None:
    bucket = data_bucket["bucket"]
    with pytest.raises(MonthFailedError) as failed:
        MonthlyScoring(model, data_bucket["settings"], RecordingLog()).handle(
            {"scheduled_time": "2021-07-01T06:00:00Z"}
        )
    assert str(failed.value) == (
        f"month 2021-06 (schedule 2021-07-01T06:00:00Z): s3://{bucket}/input/green_tripdata_2021-06.parquet: no such file"
    )


def test_s3_bucket_notification_records_are_read_with_their_keys_url_decoded(
    data_bucket: dict[str, Any], model: LoadedModel
) -> None:
    """S3's own notification shape (a bucket wired to Lambda directly): keys arrive URL-encoded."""
    s3, bucket = data_bucket["s3"], data_bucket["bucket"]
    settings = BatchSettings(
        MonthTemplate(f"s3://{bucket}/input/green trips {{year}}-{{month:02d}}.parquet"),
        data_bucket["settings"].output_template,
    )
    s3.put_object(Bucket=bucket, Key="input/green trips 2021-05.parquet", Body=trips_parquet(20))
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": "input/green+trips+2021-05.parquet"}},
    }

    [result] = MonthlyScoring(model, settings, RecordingLog()).handle({"Records": [record]})["months"]

    assert (result["month"], result["rows"]) == ("2021-05", 20)
    assert output_keys(s3, bucket) == ["output/year=2021/month=05/predictions.parquet"]
