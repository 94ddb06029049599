"""The batch path under faults that are not bad data: a broken model, a stream that refuses
every write, writes no retry cures, entries Kinesis would refuse, and re-deliveries."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from local_aws.kinesis_events import event_from_payloads
from model_service import (
    BatchRetryError,
    KinesisDeadLetters,
    ModelFailureError,
    ModelService,
    Outcome,
)
from stream.kinesis_output import KinesisStreamWriter, RetryPolicy
from stream.model_loading import LoadedModel, load_model
from stream.redelivery import RedeliveryMemory
from stream.ride_events import KinesisRecord
from tests.conftest import RecordingLog, create_stream, read_stream
from tests.test_model_service import ThrottlingKinesis, ride, ride_id_of

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002)
HELLO = b"Hello, this is a test."


@pytest.fixture(scope="session")
def model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(model_dir), tmp_path_factory.mktemp("cache"))


@pytest.fixture
def streams(kinesis: Any) -> Any:
    create_stream(kinesis, "ride_predictions", shards=2)
    create_stream(kinesis, "dead_letters")
    return kinesis


def service_with(
    client: Any,
    model: LoadedModel,
    log: RecordingLog,
    dead_letter_client: Any = None,
    memory: RedeliveryMemory | None = None,
) -> ModelService:
    return ModelService(
        model,
        KinesisStreamWriter(client, "ride_predictions", FAST_RETRY),
        KinesisDeadLetters(
            KinesisStreamWriter(dead_letter_client or client, "dead_letters", FAST_RETRY), log
        ),
        log,
        memory=memory,
    )


def ride_ids(client: Any, stream: str = "ride_predictions") -> list[Any]:
    return sorted(p["prediction"]["ride_id"] for p in read_stream(client, stream))


# -- a broken model is a function error, not a stream of dead letters ---------------------------


class ExpectsAColumnarFrame:
    """A user's model that wants columns, not feature dicts: it fails on anything we send."""

    def predict(self, features: list[dict[str, Any]]) -> Any:
        raise ValueError("Expected 2D array, got 1D array instead")


class AnswersNaN:
    def predict(self, features: list[dict[str, Any]]) -> Any:
        return np.full(len(features), math.nan)


@pytest.mark.parametrize(
    ("predictor", "error"),
    [
        (ExpectsAColumnarFrame(), "model failed on this ride: ValueError: Expected 2D array"),
        (AnswersNaN(), r"model returned a non-finite prediction \(nan\)"),
    ],
)
def test_a_model_that_fails_on_every_ride_fails_the_function_and_writes_nothing(
    streams: Any, model: LoadedModel, predictor: Any, error: str
) -> None:
    log = RecordingLog()
    service = service_with(streams, replace(model, predictor=predictor), log)
    event = event_from_payloads([ride(i) for i in range(50)] + [HELLO])

    with pytest.raises(ModelFailureError, match=r"failed on every ride of the batch \(50 rides\).*" + error):
        service.handle(event)

    assert read_stream(streams, "ride_predictions") == []
    assert read_stream(streams, "dead_letters") == []  # not even the poison record: all is retried
    [(message, failure)] = [(msg, extra) for level, msg, extra in log.entries if level == "ERROR"]
    assert message == "model failed on every ride: nothing written"
    assert failure["rides"] == 50
    [reason] = failure["errors"]
    assert re.match(error, reason)


class RaisesNamingTheZone:
    def predict(self, features: list[dict[str, Any]]) -> Any:
        raise ValueError(f"cannot score {features[0]['PU_DO']}")


def test_the_log_of_a_broken_model_names_its_three_most_frequent_errors(
    streams: Any, model: LoadedModel
) -> None:
    log = RecordingLog()
    service = service_with(streams, replace(model, predictor=RaisesNamingTheZone()), log)
    rides = [ride(i, pickup=zone) for i, zone in enumerate([1, 1, 1, 2, 2, 3, 4])]
    with pytest.raises(ModelFailureError):
        service.handle(event_from_payloads(rides))
    [failure] = log.find("model failed on every ride: nothing written")
    assert failure["errors"] == {
        "model failed on this ride: ValueError: cannot score 1_205": 3,
        "model failed on this ride: ValueError: cannot score 2_205": 2,
        "model failed on this ride: ValueError: cannot score 3_205": 1,
    }


def test_a_one_ride_batch_the_model_fails_on_is_a_function_error(streams: Any, model: LoadedModel) -> None:
    service = service_with(streams, replace(model, predictor=ExpectsAColumnarFrame()), RecordingLog())
    with pytest.raises(ModelFailureError):
        service.handle(event_from_payloads([ride(1)]))
    assert read_stream(streams, "dead_letters") == []


class RaisesOnZone77:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def predict(self, features: list[dict[str, Any]]) -> Any:
        if any(row["PU_DO"].startswith("77_") for row in features):
            raise ValueError("cannot score zone 77")
        return self.inner.predict(features)


def test_rides_the_model_fails_on_beside_predicted_ones_are_dead_lettered_and_logged_at_error(
    streams: Any, model: LoadedModel
) -> None:
    log = RecordingLog()
    service = service_with(streams, replace(model, predictor=RaisesOnZone77(model.predictor)), log)
    assert service.handle(event_from_payloads([ride(1), ride(2, pickup=77), ride(3)])) == {
        "batchItemFailures": []
    }
    assert ride_ids(streams) == [1, 3]
    [error] = log.find("model failed on some rides: dead-lettered")
    assert error == {
        "rides": 3,
        "failed": 1,
        "errors": {"model failed on this ride: ValueError: cannot score zone 77": 1},
    }


# -- whether the handler raises depends on the writes alone -------------------------------------


def every_prediction_throttled(client: Any) -> ThrottlingKinesis:
    return ThrottlingKinesis(client, lambda stream, _data, _attempt: stream == "ride_predictions")


@pytest.mark.parametrize("payloads", [[ride(1), ride(2)], [ride(1), HELLO, ride(2)]])
def test_no_prediction_written_raises_whatever_became_of_a_poison_record(
    streams: Any, model: LoadedModel, payloads: list[bytes]
) -> None:
    service = service_with(
        every_prediction_throttled(streams), model, RecordingLog(), dead_letter_client=streams
    )
    with pytest.raises(
        BatchRetryError, match=r"2 of \d records failed: ProvisionedThroughputExceededException"
    ):
        service.handle(event_from_payloads(payloads))
    assert len(read_stream(streams, "dead_letters")) == payloads.count(HELLO)


def test_a_poison_record_is_dead_lettered_once_however_often_its_batch_comes_back(
    streams: Any, model: LoadedModel
) -> None:
    log = RecordingLog()
    service = service_with(every_prediction_throttled(streams), model, log, dead_letter_client=streams)
    event = event_from_payloads([ride(1), HELLO, ride(2)])
    for _ in range(3):  # Lambda retries the whole batch after a function error
        with pytest.raises(BatchRetryError):
            service.handle(event)
    assert len(read_stream(streams, "dead_letters")) == 1
    assert [s["skipped_as_duplicate"] for s in log.find("batch processed")] == [0, 1, 1]


def test_a_write_no_retry_cures_raises_naming_it_even_when_predictions_were_written(
    kinesis: Any, model: LoadedModel
) -> None:
    create_stream(kinesis, "ride_predictions")  # but no dead-letter stream
    calls: list[int] = []
    kinesis.meta.events.register("provide-client-params.kinesis.PutRecords", lambda **_: calls.append(1))
    service = service_with(kinesis, model, RecordingLog())
    with pytest.raises(
        BatchRetryError, match=r"1 of 3 records failed: dead letter not stored: PutRecords to dead_letters "
        r"failed, not retryable: .*ResourceNotFoundException",
    ):  # fmt: skip
        service.handle(event_from_payloads([ride(1), HELLO, ride(2)]))
    assert ride_ids(kinesis) == [1, 2]
    assert len(calls) == 2  # one for the predictions, one for the dead letter: no retries


def test_a_record_to_retry_without_a_sequence_number_fails_the_whole_batch(
    streams: Any, model: LoadedModel
) -> None:
    # Lambda reads an empty itemIdentifier as "the whole batch failed": say so by raising.
    dead_letters_throttled = ThrottlingKinesis(streams, lambda stream, _d, _a: stream == "dead_letters")
    service = service_with(streams, model, RecordingLog(), dead_letter_client=dead_letters_throttled)
    event = event_from_payloads([ride(1), ride(2)])
    del event["Records"][1]["kinesis"]["sequenceNumber"]  # poison, and its dead letter is not stored

    with pytest.raises(BatchRetryError, match=r"1 of 2 records failed: dead letter not stored: Provisioned"):
        service.handle(event)

    assert ride_ids(streams) == [1]


# -- entries Kinesis would refuse -----------------------------------------------------------------


def test_an_output_kinesis_would_refuse_is_dead_lettered_and_its_neighbours_written(
    streams: Any, model: LoadedModel
) -> None:
    log = RecordingLog()
    event = event_from_payloads([ride(1), ride(2), ride(3)])
    # A hand-made event: its source ARN alone makes the prediction (and the dead letter,
    # which carries it too) larger than a Kinesis record may be.
    event["Records"][1]["eventSourceARN"] = "arn:" + "x" * (1024 * 1024)
    assert service_with(streams, model, log).handle(event) == {"batchItemFailures": []}
    assert ride_ids(streams) == [1, 3]
    assert read_stream(streams, "dead_letters") == []
    [letter] = [extra["dead_letter"] for _, msg, extra in log.entries if msg == "dead letter"]
    assert re.fullmatch(
        r"prediction cannot be written: output record is 1,04\d,\d{3} bytes with its partition key, "
        r"over Kinesis's 1,048,576-byte limit",
        letter["reason"],
    )
    assert letter["source"]["sequence_number"] == event["Records"][1]["kinesis"]["sequenceNumber"]


def test_a_malformed_lambda_record_is_dead_lettered_naming_the_missing_field(
    streams: Any, model: LoadedModel
) -> None:
    event = event_from_payloads([ride(1), ride(2), ride(3)])
    del event["Records"][1]["kinesis"]["data"]
    del event["Records"][2]["kinesis"]["sequenceNumber"]
    assert service_with(streams, model, RecordingLog()).handle(event) == {"batchItemFailures": []}
    assert ride_ids(streams) == [1]
    reasons = sorted(d["reason"] for d in read_stream(streams, "dead_letters"))
    assert reasons == [
        "malformed Lambda record: no kinesis.data",
        "malformed Lambda record: no kinesis.sequenceNumber",
    ]


# -- re-deliveries ----------------------------------------------------------------------------------


def redelivery_from(event: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """What Lambda delivers next: every record from the lowest failed sequence number on."""
    lowest = min(int(f["itemIdentifier"]) for f in response["batchItemFailures"])
    return {"Records": [r for r in event["Records"] if int(r["kinesis"]["sequenceNumber"]) >= lowest]}


@pytest.mark.parametrize(("memory_size", "duplicates"), [(20_000, 0), (0, 5)])
def test_re_delivered_records_this_container_wrote_are_not_written_again(
    streams: Any, model: LoadedModel, memory_size: int, duplicates: int
) -> None:
    # Ride 5 is throttled through the whole first invocation, then accepted.
    flaky = ThrottlingKinesis(
        streams, lambda _s, data, attempt: ride_id_of(data) == 5 and attempt <= FAST_RETRY.max_attempts
    )
    log = RecordingLog()
    service = service_with(
        flaky, model, log, dead_letter_client=streams, memory=RedeliveryMemory(memory_size)
    )
    event = event_from_payloads([ride(i) for i in range(10)] + [HELLO])

    first = service.handle(event)
    assert len(first["batchItemFailures"]) == 1
    assert service.handle(redelivery_from(event, first)) == {"batchItemFailures": []}

    outputs = ride_ids(streams)
    assert sorted(set(outputs)) == list(range(10))
    assert len(outputs) - 10 + len(read_stream(streams, "dead_letters")) - 1 == duplicates
    if memory_size:
        assert [s["skipped_as_duplicate"] for s in log.find("batch processed")] == [0, 5]


def test_skipped_records_are_done_not_retried_and_counted(streams: Any, model: LoadedModel) -> None:
    service = service_with(streams, model, RecordingLog())
    records = [KinesisRecord.from_raw(r) for r in event_from_payloads([ride(1), HELLO, ride(2)])["Records"]]
    service.process(records)
    again = service.process(records)
    assert [o.outcome for o in again.outcomes] == [
        Outcome.ALREADY_PREDICTED,
        Outcome.ALREADY_DEAD_LETTERED,
        Outcome.ALREADY_PREDICTED,
    ]
    assert again.skipped_as_duplicate == 3
    assert again.response() == {"batchItemFailures": []}
    assert ride_ids(streams) == [1, 2]


def test_records_without_an_event_id_are_never_skipped(streams: Any, model: LoadedModel) -> None:
    event = event_from_payloads([ride(1)])
    del event["Records"][0]["eventID"]
    service = service_with(streams, model, RecordingLog())
    service.handle(event)
    service.handle(event)
    assert ride_ids(streams) == [1, 1]


def test_the_memory_is_keyed_by_source_event_id(streams: Any, model: LoadedModel) -> None:
    memory = RedeliveryMemory()
    service_with(streams, model, RecordingLog(), memory=memory).handle(event_from_payloads([ride(1)]))
    [prediction] = read_stream(streams, "ride_predictions")
    assert memory.recall([prediction["source"]["event_id"]]) == ["predicted"]
