"""The function against endpoints that stop answering: it returns within its time budget,
with every record accounted for, and is never timed out by Lambda."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from local_aws.fault_proxy import FaultProxy, Faults
from local_aws.kinesis_events import event_from_payloads
from model_service import BatchRetryError, KinesisDeadLetters, LoggedDeadLetters, ModelService, build_service
from stream.settings import Settings
from tests.conftest import FakeLambdaContext, RecordingLog, create_stream, read_stream

# Lambda's own timing is exact; ours adds the Python work after the last call (logging, the
# response) and the scheduling noise of a shared 2-core machine.
SLACK_S = 0.5


@dataclass
class ShortContext(FakeLambdaContext):
    remaining_ms: int = 4000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def ride(ride_id: int) -> bytes:
    return json.dumps(
        {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": ride_id}
    ).encode()


def function(model_dir: Path, tmp_path: Path, **env: str) -> ModelService:
    """The service as the function's init builds it (clients, writers, memory, margin)."""
    return build_service(
        Settings.from_env({"MODEL_URI": str(model_dir), "MODEL_CACHE_DIR": str(tmp_path), **env}),
        RecordingLog(),
    )


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """Accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


def test_an_endpoint_that_never_answers_costs_the_budget_and_no_more(
    model_dir: Path, tmp_path: Path, silent_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", silent_endpoint)
    service = function(
        model_dir,
        tmp_path,
        PREDICTIONS_STREAM_NAME="preds",
        DEAD_LETTER_STREAM_NAME="dlq",
        DEADLINE_SAFETY_MARGIN_MS="1000",
    )
    event = event_from_payloads([ride(1), ride(2), b"Hello, this is a test.", ride(3)])
    started = time.monotonic()
    with pytest.raises(BatchRetryError) as raised:
        service.handle(event, ShortContext(remaining_ms=4000))
    elapsed = time.monotonic() - started
    assert elapsed <= 3.0 + SLACK_S  # 4 s left, 1 s of margin
    assert elapsed >= 2.0  # it did try, as long as it could
    assert str(raised.value).startswith("4 of 4 records failed: PutRecords to preds ")
    assert "Read timeout on endpoint URL" in str(raised.value)


def test_when_the_budget_runs_out_what_was_written_stays_written_and_the_rest_is_reported(
    model_dir: Path, tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = f"preds-{uuid.uuid4().hex[:8]}"
    kinesis = boto3.client("kinesis", endpoint_url=moto_server)
    create_stream(kinesis, stream)
    # The first PutRecords call goes through; every later one hangs.
    with FaultProxy(moto_server, Faults(hang=1.0, spare_first=1)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", proxy.url)
        service = function(
            model_dir, tmp_path, PREDICTIONS_STREAM_NAME=stream, DEADLINE_SAFETY_MARGIN_MS="500"
        )
        event = event_from_payloads([ride(i) for i in range(700)])
        started = time.monotonic()
        response = service.handle(event, ShortContext(remaining_ms=3000))
        elapsed = time.monotonic() - started
        assert proxy.injected["hang"] >= 1
    assert elapsed <= 2.5 + SLACK_S
    written = sorted(p["prediction"]["ride_id"] for p in read_stream(kinesis, stream))
    assert written == list(range(500))  # the first chunk
    sequence_numbers = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(
        sequence_numbers[500:]
    )


def test_the_fault_proxy_rejects_entries_as_kinesis_does(moto_server: str) -> None:
    stream = f"rejects-{uuid.uuid4().hex[:8]}"
    create_stream(boto3.client("kinesis", endpoint_url=moto_server), stream)
    with FaultProxy(moto_server, Faults(reject_entries=0.5), seed=3) as proxy:
        client = boto3.client("kinesis", endpoint_url=proxy.url)
        entries = [{"Data": json.dumps({"n": i}).encode(), "PartitionKey": str(i)} for i in range(200)]
        response = client.put_records(StreamName=stream, Records=entries)
    rejected = [i for i, r in enumerate(response["Records"]) if r.get("ErrorCode")]
    assert response["FailedRecordCount"] == len(rejected) == proxy.injected["rejected_entries"]
    assert 60 < len(rejected) < 140
    assert all(
        response["Records"][i]["ErrorCode"] == "ProvisionedThroughputExceededException" for i in rejected
    )
    stored = sorted(r["n"] for r in read_stream(boto3.client("kinesis", endpoint_url=moto_server), stream))
    assert stored == [i for i in range(200) if i not in rejected]


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        (Faults(throttle=1.0), "ProvisionedThroughputExceededException"),
        (Faults(server_error=1.0), "InternalFailure|ServiceUnavailable"),
    ],
)
def test_the_fault_proxy_fails_whole_calls_as_kinesis_does(
    moto_server: str, faults: Faults, code: str
) -> None:
    with FaultProxy(moto_server, faults) as proxy:
        client: Any = boto3.client(
            "kinesis", endpoint_url=proxy.url, config=boto3.session.Config(retries={"total_max_attempts": 1})
        )
        with pytest.raises(client.exceptions.ClientError, match=code):
            client.put_records(StreamName="any", Records=[{"Data": b"{}", "PartitionKey": "k"}])
        assert client.list_streams()["StreamNames"] is not None  # other calls pass through


def test_the_function_is_wired_with_the_configured_margin_memory_and_bounded_clients(
    model_dir: Path, tmp_path: Path
) -> None:
    service = function(
        model_dir,
        tmp_path,
        DEAD_LETTER_STREAM_NAME="dlq",
        DEADLINE_SAFETY_MARGIN_MS="2500",
        REDELIVERY_MEMORY_SIZE="7",
        PUT_RECORDS_MAX_ATTEMPTS="9",
    )
    assert service.safety_margin_s == 2.5
    assert service.memory.size == 7
    dead_letters = service.dead_letters
    assert isinstance(dead_letters, KinesisDeadLetters)
    assert service.predictions.policy.max_attempts == dead_letters.writer.policy.max_attempts == 9
    assert dead_letters.too_big.log is service.log  # a letter too big for Kinesis: in the function's log
    assert service.predictions.clients is not None
    assert dead_letters.writer.clients is service.predictions.clients  # one set of clients
    assert service.predictions.client is service.predictions.clients.default


def test_without_a_dead_letter_stream_the_function_logs_its_dead_letters(
    model_dir: Path, tmp_path: Path
) -> None:
    service = function(model_dir, tmp_path)
    assert isinstance(service.dead_letters, LoggedDeadLetters)
    assert service.dead_letters.log is service.log
