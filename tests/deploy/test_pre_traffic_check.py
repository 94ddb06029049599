"""The pre-traffic check (scripts/invoke.py's self_test, what deploy.py runs on a new version and
`make invoke ARGS=--self-test` runs by hand) against the real handler: lambda_function under the
real runtime client, behind the local Lambda endpoint (local_aws/lambda_runtime.py), which
serves Lambda's invoke API. moto cannot run the function; this is the call deploy.py makes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from local_aws.lambda_runtime import FunctionConfig, LocalLambda
from local_aws.moto_stack import free_port
from scripts.invoke import self_test
from stream.model_loading import model_files_sha256

FUNCTION = "ride-duration-test"
# Its own names: the moto server is shared with the stack tests (ride-predictions-test...).
STREAMS = ("self-test-predictions", "self-test-dead-letters")


@pytest.fixture
def streams(moto_server: str) -> Iterator[Any]:
    kinesis = boto3.client("kinesis", endpoint_url=moto_server, region_name="us-east-1")
    for name in STREAMS:
        kinesis.create_stream(StreamName=name, ShardCount=1)
    yield kinesis
    for name in STREAMS:
        kinesis.delete_stream(StreamName=name)


@pytest.fixture
def start_function(moto_server: str, tmp_path: Path) -> Iterator[Any]:
    started: list[LocalLambda] = []

    def start(model_uri: str, **environment: str) -> Any:
        config = FunctionConfig(
            function_name=FUNCTION,
            environment={
                "MODEL_URI": model_uri,
                "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                "PREDICTIONS_STREAM_NAME": STREAMS[0],
                "DEAD_LETTER_STREAM_NAME": STREAMS[1],
                "AWS_ENDPOINT_URL": moto_server,
                **environment,
            },
        )
        function = LocalLambda(config, port=free_port(), log=(tmp_path / "function.log").open("ab"))
        started.append(function)
        function.start()
        return boto3.client("lambda", endpoint_url=function.endpoint_url, region_name="us-east-1")

    yield start
    for function in started:
        function.stop()


def records(kinesis: Any, stream: str) -> list[Any]:
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    return list(kinesis.get_records(ShardIterator=iterator["ShardIterator"])["Records"])


def test_a_good_model_passes_and_nothing_is_written(
    start_function: Any, streams: Any, model_dir: Path
) -> None:
    lambda_client = start_function(str(model_dir))

    outcome = self_test(lambda_client, FUNCTION, "$LATEST", expected_model_uri=str(model_dir))

    assert outcome.passed, outcome.lines()
    assert outcome.report is not None
    assert outcome.report["got"] == outcome.report["expected"]
    lines = outcome.lines()
    assert lines[0] == f"self-test of {FUNCTION}:$LATEST: passed"
    assert len(lines) == 3 + len(outcome.report["rides"])  # verdict, model, header, one per ride
    assert all(records(streams, stream) == [] for stream in STREAMS)


def test_a_model_that_predicts_otherwise_fails_the_init_and_the_check_shows_the_difference(
    start_function: Any, streams: Any, model_dir: Path, tmp_path: Path
) -> None:
    changed = Path(shutil.copytree(model_dir, tmp_path / "changed"))
    mlmodel = yaml.safe_load((changed / "MLmodel").read_text())
    recorded = mlmodel["metadata"]["known_rides"]["predictions"]
    mlmodel["metadata"]["known_rides"]["predictions"] = [value - 2.0 for value in recorded]
    (changed / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    lambda_client = start_function(str(changed))

    outcome = self_test(lambda_client, FUNCTION, "$LATEST")

    assert not outcome.passed
    assert outcome.error is not None
    assert outcome.error.startswith(
        f"the function failed (ModelLoadError): cannot load model from '{changed}'"
    )
    assert "self-test failed: 6 of 6 predictions differ from those recorded with the model, by up to 2" in (
        outcome.error
    )
    assert " was " in outcome.error
    assert ", now " in outcome.error
    assert outcome.lines()[-1] == f"  {outcome.error}"
    assert all(records(streams, stream) == [] for stream in STREAMS)


def test_a_model_whose_files_are_not_the_pinned_ones_fails_the_check(
    start_function: Any, streams: Any, model_dir: Path
) -> None:
    lambda_client = start_function(str(model_dir), MODEL_SHA256="0" * 64)

    outcome = self_test(lambda_client, FUNCTION, "$LATEST")

    assert outcome.error is not None
    assert f"its files' SHA-256 is {model_files_sha256(model_dir)}, not {'0' * 64} (MODEL_SHA256)" in (
        outcome.error
    )


def test_a_version_serving_another_model_than_deployed_fails(start_function: Any, model_dir: Path) -> None:
    lambda_client = start_function(str(model_dir))

    outcome = self_test(lambda_client, FUNCTION, "$LATEST", expected_model_uri="s3://models/models/run-2/")

    assert outcome.error == f"it serves the model {model_dir}, not s3://models/models/run-2/ as deployed"
