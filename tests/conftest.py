"""Shared fixtures: an isolated AWS environment, a real trained model, moto streams."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from scripts.train import TrainedModel, train

AWS_VARIABLES = [
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KINESIS",
    "AWS_ENDPOINT_URL_S3",
    "KINESIS_ENDPOINT_URL",
    "AWS_PROFILE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MODEL_URI",
    "MODEL_LOCATION",
    "RUN_ID",
    "MODEL_BUCKET",
    "MLFLOW_EXPERIMENT_ID",
    "PREDICTIONS_STREAM_NAME",
    "DEAD_LETTER_STREAM_NAME",
]


@pytest.fixture(autouse=True)
def isolated_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a real AWS account or inherit the developer's settings."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The project's own training script, on its synthetic data, logged to a sqlite MLflow."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    trained = train(
        synthetic_rides=5_000,
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_location=str(root / "artifacts"),
        export_dir=root / "exported-model",
        log=lambda _message: None,
    )
    # train() points MLflow (and MLFLOW_TRACKING_URI) at its store; tests that need the
    # store say so through the environment, as users do.
    mlflow.set_tracking_uri(None)
    return trained


@pytest.fixture(scope="session")
def model_dir(trained_model: TrainedModel) -> Path:
    assert trained_model.export_dir is not None
    return trained_model.export_dir


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def kinesis(aws: None) -> Any:
    return boto3.client("kinesis", region_name="us-east-1")


def create_stream(client: Any, name: str, shards: int = 1) -> None:
    client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.01})


def read_stream(client: Any, name: str) -> list[dict[str, Any]]:
    """Every record on every shard of the stream, decoded from JSON."""
    records = []
    for shard in client.list_shards(StreamName=name)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            records.extend(json.loads(r["Data"]) for r in page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return records


class RecordingLog:
    """Collects what the service logs, with the structured fields it passed."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, msg: str, extra: dict[str, Any] | None = None, **_: Any) -> None:
        self.entries.append((level, msg, extra or {}))
        logging.getLogger("tests").log(getattr(logging, level), "%s %s", msg, extra)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._add("INFO", msg, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._add("WARNING", msg, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._add("ERROR", msg, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._add("ERROR", msg, **kwargs)

    def find(self, msg: str) -> list[dict[str, Any]]:
        return [extra for _, message, extra in self.entries if message == msg]


@dataclass
class FakeLambdaContext:
    """The attributes of Lambda's context object that the handler's logger reads."""

    function_name: str = "ride-duration-prediction"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ride-duration-prediction"
    memory_limit_in_mb: int = 512
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    log_group_name: str = "/aws/lambda/ride-duration-prediction"
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000
