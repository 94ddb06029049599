"""The Lambda entry point as Lambda uses it: configured by environment, built at import (init)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from local_aws.kinesis_events import event_from_payloads
from stream.model_loading import ModelLoadError
from tests.conftest import FakeLambdaContext, create_stream, read_stream

COURSE_RIDE = {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 256}


def test_handler_turns_a_course_event_into_a_course_prediction(
    kinesis: Any,
    model_dir: Path,
    import_function: Callable[..., ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_stream(kinesis, "preds")
    create_stream(kinesis, "dlq")
    function = import_function(
        MODEL_URI=str(model_dir), PREDICTIONS_STREAM_NAME="preds", DEAD_LETTER_STREAM_NAME="dlq"
    )
    event = event_from_payloads([json.dumps(COURSE_RIDE).encode(), b"Hello, this is a test."])

    response = function.lambda_handler(event, FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    [prediction] = read_stream(kinesis, "preds")
    assert prediction["model"] == "ride_duration_prediction_model"
    assert prediction["prediction"]["ride_id"] == 256
    [letter] = read_stream(kinesis, "dlq")
    assert letter["reason"].startswith("data is not JSON")
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [summary] = [entry for entry in logs if entry.get("message") == "batch processed"]
    assert summary["level"] == "INFO"
    assert (summary["received"], summary["predicted"], summary["dead_lettered"], summary["retryable"]) == (
        2,
        1,
        1,
        0,
    )
    assert (summary["kinesis_records"], summary["skipped_as_duplicate"], summary["put_records_calls"]) == (
        2,
        0,
        1,
    )
    assert summary["function_request_id"] == FakeLambdaContext.aws_request_id
    [loaded] = [entry for entry in logs if entry.get("message") == "model loaded"]
    assert loaded["model_uri"] == str(model_dir)
    assert loaded["model_version"] == prediction["version"]
    assert loaded["flavor"] == "sklearn/pickle"
    assert loaded["features"] == function.service.model.features.describe()
    assert re.fullmatch(r"passed on \d+ .+", loaded["self_test"])
    timings = {name: loaded[name] for name in ("fetch_s", "deserialise_s", "contract_s", "self_test_s")}
    assert all(value == round(value, 4) for value in timings.values())


def test_init_fails_naming_the_model_uri_when_the_model_cannot_load(
    aws: None, import_function: Callable[..., ModuleType]
) -> None:
    with pytest.raises(
        ModelLoadError, match=r"cannot load model from 's3://missing-bucket/model': .*NoSuchBucket"
    ):
        import_function(MODEL_URI="s3://missing-bucket/model")


def test_course_kinesis_endpoint_variable_is_still_honoured(
    aws: None, model_dir: Path, import_function: Callable[..., ModuleType]
) -> None:
    function = import_function(MODEL_URI=str(model_dir), KINESIS_ENDPOINT_URL="http://127.0.0.1:4566")
    assert function.service.predictions.client.meta.endpoint_url == "http://127.0.0.1:4566"


def test_boto3_standard_endpoint_variable_wins_over_the_course_alias(
    aws: None, model_dir: Path, import_function: Callable[..., ModuleType]
) -> None:
    function = import_function(
        MODEL_URI=str(model_dir),
        AWS_ENDPOINT_URL_KINESIS="http://127.0.0.1:5000",
        KINESIS_ENDPOINT_URL="http://127.0.0.1:4566",
    )
    assert function.service.predictions.client.meta.endpoint_url == "http://127.0.0.1:5000"
