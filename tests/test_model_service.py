"""The batch path end to end, in-process: moto Kinesis and the real trained model."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aws_lambda_powertools import Logger

from local_aws.kinesis_events import event_from_payloads
from model_service import (
    BatchRetryError,
    KinesisDeadLetters,
    LoggedDeadLetters,
    ModelService,
    NotAKinesisEventError,
    Outcome,
    build_service,
)
from stream.features import ride_features
from stream.kinesis_output import KinesisStreamWriter, RetryPolicy
from stream.model_loading import LoadedModel, load_model
from stream.ride_events import MAX_LOGGED_DEAD_LETTER_DATA_CHARS, DeadLetter, KinesisRecord
from stream.settings import Settings
from tests.conftest import RecordingLog, create_stream, read_stream

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002)


def ride(ride_id: int | str, pickup: int = 130, dropoff: int = 205, distance: float = 3.66) -> bytes:
    return json.dumps(
        {
            "ride": {"PULocationID": pickup, "DOLocationID": dropoff, "trip_distance": distance},
            "ride_id": ride_id,
        }
    ).encode()


@pytest.fixture(scope="session")
def model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(model_dir), tmp_path_factory.mktemp("cache"))


class CountingPredictor:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def predict(self, features: list[dict[str, Any]]) -> Any:
        self.calls.append(len(features))
        return self.inner.predict(features)


@pytest.fixture
def streams(kinesis: Any) -> Any:
    create_stream(kinesis, "ride_predictions", shards=2)
    create_stream(kinesis, "dead_letters")
    return kinesis


def make_service(
    client: Any, model: LoadedModel, log: RecordingLog, dead_letter_stream: str | None = "dead_letters"
) -> ModelService:
    dead_letters = (
        KinesisDeadLetters(KinesisStreamWriter(client, dead_letter_stream, FAST_RETRY))
        if dead_letter_stream
        else LoggedDeadLetters(log)
    )
    return ModelService(model, KinesisStreamWriter(client, "ride_predictions", FAST_RETRY), dead_letters, log)


def count_put_records(client: Any) -> list[int]:
    calls: list[int] = []
    client.meta.events.register(
        "provide-client-params.kinesis.PutRecords", lambda params, **_: calls.append(len(params["Records"]))
    )
    return calls


def test_500_records_one_model_call_one_put_records_call(streams: Any, model: LoadedModel) -> None:
    counting = CountingPredictor(model.predictor)
    log = RecordingLog()
    service = make_service(streams, replace(model, predictor=counting), log)
    put_calls = count_put_records(streams)
    event = event_from_payloads([ride(i, pickup=1 + i % 50, distance=i / 50) for i in range(500)])

    response = service.handle(event)

    assert response == {"batchItemFailures": []}
    assert counting.calls == [500]
    assert put_calls == [500]
    predictions = read_stream(streams, "ride_predictions")
    assert sorted(p["prediction"]["ride_id"] for p in predictions) == list(range(500))
    expected = model.predict([ride_features(1 + i % 50, 205, i / 50) for i in range(500)])
    by_id = {p["prediction"]["ride_id"]: p["prediction"]["ride_duration"] for p in predictions}
    assert [by_id[i] for i in range(500)] == pytest.approx(list(expected))
    assert read_stream(streams, "dead_letters") == []
    [summary] = log.find("batch processed")
    assert (summary["received"], summary["predicted"], summary["dead_lettered"], summary["retryable"]) == (
        500,
        500,
        0,
        0,
    )
    assert summary["model_version"] == model.info.version
    assert summary["total_ms"] > 0


def test_course_format_in_course_format_out(streams: Any, model: LoadedModel) -> None:
    service = make_service(streams, model, RecordingLog())
    event = event_from_payloads([ride(256)])
    assert service.handle(event) == {"batchItemFailures": []}
    [prediction] = read_stream(streams, "ride_predictions")
    # What the course's consumer and its test read:
    assert prediction["model"] == "ride_duration_prediction_model"
    assert prediction["version"] == model.info.run_id
    assert set(prediction["prediction"]) == {"ride_duration", "ride_id"}
    assert prediction["prediction"]["ride_id"] == 256
    assert 1 < prediction["prediction"]["ride_duration"] < 60
    # ...plus what a consumer needs to de-duplicate and trace it.
    record = event["Records"][0]
    assert prediction["source"]["event_id"] == record["eventID"]
    assert prediction["source"]["sequence_number"] == record["kinesis"]["sequenceNumber"]
    assert prediction["run_id"] == model.info.run_id
    assert prediction["model_uri"] == model.info.uri


# A ride's base64 with one stray character: only a lax decoder (one that skips what is not
# base64) would read it.
LAX_BASE64 = base64.b64encode(ride(9005)).decode()[:8] + "!" + base64.b64encode(ride(9005)).decode()[8:]
# Data that is no producer's bytes in base64: set on the record itself (see mixed_event).
RAW_DATA = {"not base64": "%%% not base64 %%%", "base64 only a lax decoder reads": LAX_BASE64}
POISON = {
    "not base64": None,
    "base64 only a lax decoder reads": None,
    "not UTF-8": b"\xc3\x28 broken",
    "not JSON": b"Hello, this is a test.",
    "JSON but not an object": b"[130, 205, 3.66]",
    "missing ride_id": json.dumps(
        {"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1}}
    ).encode(),
    "zone id not positive": ride(9001, pickup=-4),
    "drop-off zone 0": ride(9006, dropoff=0),
    "distance not finite": b'{"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": NaN}, "ride_id": 9002}',
    "distance negative": ride(9003, distance=-0.5),
    "distance as text": json.dumps(
        {"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": "2"}, "ride_id": 9004}
    ).encode(),
}
EXPECTED_REASONS = {
    "not base64": "data is not valid base64",
    "base64 only a lax decoder reads": "data is not valid base64: Only base64 data is allowed",
    "not UTF-8": "data is not UTF-8",
    "not JSON": "data is not JSON",
    "JSON but not an object": "invalid ride event: event: Input should be an object",
    "missing ride_id": "invalid ride event: ride_id: Field required",
    "zone id not positive": "invalid ride event: ride.PULocationID: Input should be greater than 0",
    "drop-off zone 0": "invalid ride event: ride.DOLocationID: Input should be greater than 0",
    "distance not finite": "invalid ride event: ride.trip_distance: Input should be a finite number",
    "distance negative": "invalid ride event: ride.trip_distance: Input should be greater than or equal to 0",
    "distance as text": "invalid ride event: ride.trip_distance: Input should be a valid number",
}


def mixed_event() -> tuple[dict[str, Any], dict[str, str]]:
    """Good rides interleaved with one poison record of every kind; returns seq -> poison kind."""
    payloads: list[bytes] = []
    kinds: dict[int, str] = {}
    for index, (kind, payload) in enumerate(POISON.items()):
        payloads.append(ride(index))
        kinds[len(payloads)] = kind
        payloads.append(payload or b"")
    event = event_from_payloads(payloads)
    by_sequence = {}
    for position, kind in kinds.items():
        record = event["Records"][position]
        if kind in RAW_DATA:
            record["kinesis"]["data"] = RAW_DATA[kind]
        by_sequence[record["kinesis"]["sequenceNumber"]] = kind
    return event, by_sequence


def test_poison_records_are_dead_lettered_with_reasons_and_never_retried(
    streams: Any, model: LoadedModel
) -> None:
    log = RecordingLog()
    event, poison_kinds = mixed_event()

    response = make_service(streams, model, log).handle(event)

    assert response == {"batchItemFailures": []}
    assert sorted(p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")) == list(
        range(len(POISON))
    )
    letters = {d["source"]["sequence_number"]: d for d in read_stream(streams, "dead_letters")}
    assert set(letters) == set(poison_kinds)
    for sequence_number, kind in poison_kinds.items():
        letter = letters[sequence_number]
        assert letter["reason"].startswith(EXPECTED_REASONS[kind]), (kind, letter["reason"])
        original = next(r for r in event["Records"] if r["kinesis"]["sequenceNumber"] == sequence_number)
        assert letter["data"] == original["kinesis"]["data"]
        assert letter["source"]["shard_id"] == "shardId-000000000000"
    [summary] = log.find("batch processed")
    assert (summary["predicted"], summary["dead_lettered"], summary["retryable"]) == (
        len(POISON),
        len(POISON),
        0,
    )


def test_a_ride_id_as_long_as_a_partition_key_may_be_keys_its_prediction(
    streams: Any, model: LoadedModel
) -> None:
    keys: list[str] = []
    streams.meta.events.register(
        "provide-client-params.kinesis.PutRecords",
        lambda params, **_: keys.extend(r["PartitionKey"] for r in params["Records"]),
    )
    longest, too_long = "r" * 256, "r" * 257
    event = event_from_payloads([ride(longest), ride(too_long)])

    assert make_service(streams, model, RecordingLog()).handle(event) == {"batchItemFailures": []}

    assert [p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")] == [longest]
    [letter] = read_stream(streams, "dead_letters")
    assert letter["reason"] == "invalid ride event: ride_id: must be 1-256 characters long as text"
    # The prediction is keyed by its ride id; the dead letter by its input record's key.
    assert keys == [longest, event["Records"][1]["kinesis"]["partitionKey"]]


def test_without_a_dead_letter_stream_poison_is_logged_at_error_with_its_data(
    streams: Any, model: LoadedModel
) -> None:
    log = RecordingLog()
    event, poison_kinds = mixed_event()
    assert make_service(streams, model, log, dead_letter_stream=None).handle(event) == {
        "batchItemFailures": []
    }
    logged = [
        extra["dead_letter"] for level, msg, extra in log.entries if level == "ERROR" and msg == "dead letter"
    ]
    assert {d["source"]["sequence_number"] for d in logged} == set(poison_kinds)
    assert all(d["reason"] and "data" in d for d in logged)


def test_info_logs_never_carry_ride_payloads(streams: Any, model: LoadedModel) -> None:
    log = RecordingLog()
    event, _ = mixed_event()
    make_service(streams, model, log).handle(event)
    info = json.dumps([extra for level, _, extra in log.entries if level == "INFO"])
    assert "PULocationID" not in info
    assert not any(r["kinesis"]["data"] in info for r in event["Records"])


class NaNForSomeRides:
    """The real model, except it answers NaN/inf for rides from zone 13 and 14."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def predict(self, features: list[dict[str, Any]]) -> Any:
        values = np.asarray(self.inner.predict(features), dtype=float)
        for index, row in enumerate(features):
            if row["PU_DO"].startswith("13_"):
                values[index] = math.nan
            elif row["PU_DO"].startswith("14_"):
                values[index] = math.inf
        return values


def test_a_non_finite_prediction_is_dead_lettered_not_emitted(streams: Any, model: LoadedModel) -> None:
    service = make_service(
        streams, replace(model, predictor=NaNForSomeRides(model.predictor)), RecordingLog()
    )
    event = event_from_payloads([ride(1), ride(2, pickup=13), ride(3, pickup=14), ride(4)])
    assert service.handle(event) == {"batchItemFailures": []}
    assert sorted(p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")) == [1, 4]
    reasons = sorted(d["reason"] for d in read_stream(streams, "dead_letters"))
    assert reasons == [
        "model returned a non-finite prediction (inf)",
        "model returned a non-finite prediction (nan)",
    ]


class RaisesOnZone77:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def predict(self, features: list[dict[str, Any]]) -> Any:
        self.calls += 1
        if any(row["PU_DO"].startswith("77_") for row in features):
            raise ValueError("cannot score zone 77")
        return self.inner.predict(features)


def test_a_ride_that_breaks_the_model_is_isolated_and_dead_lettered(streams: Any, model: LoadedModel) -> None:
    predictor = RaisesOnZone77(model.predictor)
    service = make_service(streams, replace(model, predictor=predictor), RecordingLog())
    event = event_from_payloads([ride(1), ride(2, pickup=77), ride(3)])
    assert service.handle(event) == {"batchItemFailures": []}
    assert sorted(p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")) == [1, 3]
    [letter] = read_stream(streams, "dead_letters")
    assert letter["reason"] == "model failed on this ride: ValueError: cannot score zone 77"


class ThrottlingKinesis:
    """The real (moto) client, except PutRecords rejects the entries `rejects` picks, as AWS
    does under load: the call succeeds, FailedRecordCount > 0, rejected entries carry ErrorCode."""

    def __init__(self, client: Any, rejects: Callable[[str, dict[str, Any], int], bool]) -> None:
        self.client = client
        self.rejects = rejects
        self.attempts: Counter[str] = Counter()

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        keep, entries = [], []
        for entry in Records:
            identity = entry["Data"].decode()
            self.attempts[identity] += 1
            if self.rejects(StreamName, json.loads(entry["Data"]), self.attempts[identity]):
                entries.append(
                    {
                        "ErrorCode": "ProvisionedThroughputExceededException",
                        "ErrorMessage": "Rate exceeded for shard",
                    }
                )
            else:
                keep.append(entry)
                entries.append(None)
        accepted = iter(
            self.client.put_records(StreamName=StreamName, Records=keep)["Records"] if keep else []
        )
        records = [entry or next(accepted) for entry in entries]
        return {"FailedRecordCount": sum("ErrorCode" in r for r in records), "Records": records}


def ride_id_of(output: dict[str, Any]) -> Any:
    return output.get("prediction", {}).get("ride_id")


def test_transient_throttling_is_retried_until_everything_is_written_once(
    streams: Any, model: LoadedModel
) -> None:
    # Every third ride is rejected on its first two attempts.
    flaky = ThrottlingKinesis(streams, lambda _s, data, attempt: ride_id_of(data) % 3 == 0 and attempt <= 2)
    service = ModelService(
        model,
        KinesisStreamWriter(flaky, "ride_predictions", FAST_RETRY),
        LoggedDeadLetters(RecordingLog()),
        RecordingLog(),
    )
    response = service.handle(event_from_payloads([ride(i) for i in range(60)]))
    assert response == {"batchItemFailures": []}
    written = [p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")]
    assert sorted(written) == list(range(60))  # nothing lost, nothing twice
    assert max(flaky.attempts.values()) == 3


def test_persistent_throttling_reports_exactly_those_records_for_retry(
    streams: Any, model: LoadedModel
) -> None:
    stuck = {5, 17, 42}
    flaky = ThrottlingKinesis(streams, lambda _s, data, _a: ride_id_of(data) in stuck)
    log = RecordingLog()
    service = ModelService(
        model, KinesisStreamWriter(flaky, "ride_predictions", FAST_RETRY), LoggedDeadLetters(log), log
    )
    event = event_from_payloads([ride(i) for i in range(60)])

    response = service.handle(event)

    sequence_of = {
        json.loads(base64.b64decode(r["kinesis"]["data"]))["ride_id"]: r["kinesis"]["sequenceNumber"]
        for r in event["Records"]
    }
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(
        sequence_of[i] for i in stuck
    )
    written = [p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")]
    assert sorted(written) == sorted(set(range(60)) - stuck)
    attempts = {ride_id_of(json.loads(key)): count for key, count in flaky.attempts.items()}
    assert {i: attempts[i] for i in stuck} == dict.fromkeys(stuck, FAST_RETRY.max_attempts)
    assert attempts[6] == 1
    [errors] = log.find("records reported for retry")
    assert errors["retryable"] == 3
    assert "ProvisionedThroughputExceededException" in next(iter(errors["errors"]))


def test_dead_letters_that_cannot_be_stored_are_retried_not_lost(streams: Any, model: LoadedModel) -> None:
    flaky = ThrottlingKinesis(streams, lambda stream, _d, _a: stream == "dead_letters")
    service = ModelService(
        model,
        KinesisStreamWriter(flaky, "ride_predictions", FAST_RETRY),
        KinesisDeadLetters(KinesisStreamWriter(flaky, "dead_letters", FAST_RETRY)),
        RecordingLog(),
    )
    event = event_from_payloads([ride(1), b"Hello, this is a test.", ride(2)])
    response = service.handle(event)
    assert response == {
        "batchItemFailures": [{"itemIdentifier": event["Records"][1]["kinesis"]["sequenceNumber"]}]
    }
    assert sorted(p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")) == [1, 2]


def test_output_stream_unreachable_raises_so_lambda_retries_the_batch(
    kinesis: Any, model: LoadedModel
) -> None:
    service = make_service(kinesis, model, RecordingLog(), dead_letter_stream=None)  # no stream was created
    with pytest.raises(BatchRetryError, match="3 of 3 records failed: PutRecords to ride_predictions failed"):
        service.handle(event_from_payloads([ride(1), ride(2), ride(3)]))


def test_every_record_has_exactly_one_outcome(streams: Any, model: LoadedModel) -> None:
    stuck = {3, 4}
    flaky = ThrottlingKinesis(streams, lambda _s, data, _a: ride_id_of(data) in stuck)
    service = ModelService(
        model,
        KinesisStreamWriter(flaky, "ride_predictions", FAST_RETRY),
        KinesisDeadLetters(KinesisStreamWriter(streams, "dead_letters", FAST_RETRY)),
        RecordingLog(),
    )
    event, poison = mixed_event()
    records = event["Records"]
    result = service.process([KinesisRecord.from_raw(r) for r in records])
    seen = Counter(o.record.sequence_number for o in result.outcomes)
    assert seen == Counter(r["kinesis"]["sequenceNumber"] for r in records)
    assert Counter(o.outcome for o in result.outcomes) == {
        Outcome.PREDICTED: len(POISON) - len(stuck),
        Outcome.RETRY: 2,
        Outcome.DEAD_LETTERED: len(poison),
    }


@pytest.mark.parametrize("event", ["not an event", {"records": []}, {"Records": "x"}, None])
def test_an_event_that_is_not_from_kinesis_is_named(event: Any, streams: Any, model: LoadedModel) -> None:
    with pytest.raises(NotAKinesisEventError, match=r"expected a Kinesis event \{"):
        make_service(streams, model, RecordingLog()).handle(event)


def test_the_wrong_event_names_its_type_and_first_keys(streams: Any, model: LoadedModel) -> None:
    event = dict.fromkeys("gfedcba", 1)
    with pytest.raises(NotAKinesisEventError) as raised:
        make_service(streams, model, RecordingLog()).handle(event)
    assert str(raised.value) == (
        "expected a Kinesis event {\"Records\": [...]}, got dict with keys ['a', 'b', 'c', 'd', 'e']"
    )
    with pytest.raises(NotAKinesisEventError) as raised:
        make_service(streams, model, RecordingLog()).handle([])
    assert str(raised.value) == 'expected a Kinesis event {"Records": [...]}, got list'


def test_a_batch_of_poison_only_makes_no_put_records_call_and_times_its_steps(
    streams: Any, model: LoadedModel
) -> None:
    records = [KinesisRecord.from_raw(r) for r in event_from_payloads([b"not JSON", b"[1]"])["Records"]]
    result = make_service(streams, model, RecordingLog()).process(records)
    assert result.put_records_calls == 0
    assert [(o.outcome, o.reason) for o in result.outcomes] == [
        (Outcome.DEAD_LETTERED, "data is not JSON: expected ident at line 1 column 2"),
        (Outcome.DEAD_LETTERED, "invalid ride event: event: Input should be an object"),
    ]
    timings = result.timings_ms
    assert set(timings) == {"decode_ms", "predict_ms", "write_ms", "total_ms"}
    parts = timings["decode_ms"] + timings["predict_ms"] + timings["write_ms"]
    assert all(value >= 0 for value in timings.values())
    assert parts == pytest.approx(timings["total_ms"], rel=1e-9)
    assert timings["total_ms"] < 60_000  # milliseconds of this batch, not a clock reading


def test_an_empty_batch_is_a_success(streams: Any, model: LoadedModel) -> None:
    assert make_service(streams, model, RecordingLog()).handle({"Records": []}) == {"batchItemFailures": []}


# CloudWatch Logs' largest event: 256 KB, counting 26 bytes of overhead per event.
CLOUDWATCH_MAX_EVENT_BYTES = 256 * 1024 - 26


def test_a_logged_dead_letter_fits_in_one_cloudwatch_logs_event() -> None:
    output = io.StringIO()
    # Powertools keeps one logger per service name: a name of its own, so its handler is this one.
    logger = Logger(service="dead-letter-size-test", logger_handler=logging.StreamHandler(output))
    raw = event_from_payloads([b"x" * (1024 * 1024 - 256)])["Records"][0]  # the largest record
    raw["kinesis"]["partitionKey"] = "k" * 256
    record = KinesisRecord.from_raw(raw)

    assert LoggedDeadLetters(logger).put([DeadLetter(record, "data is not JSON: expected value")]) == []

    [line] = output.getvalue().splitlines()
    assert len(line.encode()) <= CLOUDWATCH_MAX_EVENT_BYTES
    letter = json.loads(line)["dead_letter"]
    assert letter["data_truncated"] is True
    assert record.data.startswith(letter["data"])
    assert len(letter["data"]) == MAX_LOGGED_DEAD_LETTER_DATA_CHARS
    assert letter["source"]["sequence_number"] == record.sequence_number


@pytest.mark.parametrize(
    ("env", "rides", "reason"),
    [
        (
            {},
            [ride(1, pickup=265, dropoff=1, distance=1000), ride(2, dropoff=10**30, distance=1e308)],
            "invalid ride event: ride.DOLocationID: Input should be less than or equal to 265; "
            "ride.trip_distance: Input should be less than or equal to 1000",
        ),
        (
            {"MAX_ZONE_ID": "300", "MAX_TRIP_DISTANCE_MILES": "20"},
            [ride(1, pickup=300, dropoff=1, distance=20), ride(2, dropoff=301)],
            "invalid ride event: ride.DOLocationID: Input should be less than or equal to 300",
        ),
    ],
    ids=["TLC zones", "another zone map"],
)
def test_rides_beyond_the_configured_bounds_are_dead_lettered_naming_the_field(
    streams: Any, model_dir: Path, env: dict[str, str], rides: list[bytes], reason: str
) -> None:
    settings = Settings.from_env(
        {"MODEL_URI": str(model_dir), "DEAD_LETTER_STREAM_NAME": "dead_letters", **env}
    )
    service = build_service(settings, RecordingLog())

    assert service.handle(event_from_payloads(rides)) == {"batchItemFailures": []}

    assert [p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")] == [1]
    assert [d["reason"] for d in read_stream(streams, "dead_letters")] == [reason]
