"""KPL-aggregated records through the batch path, in-process: moto Kinesis, the real trained
model, aggregates built by AWS's reference aggregator (local_aws/kpl.py, `aws-kinesis-agg`)."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from local_aws.kinesis_events import event_from_payloads
from local_aws.kpl import aggregate
from model_service import BatchRetryError, KinesisDeadLetters, ModelService, Outcome
from stream.deaggregation import MAGIC
from stream.kinesis_output import KinesisStreamWriter, RetryPolicy
from stream.model_loading import LoadedModel, load_model
from stream.redelivery import RedeliveryMemory
from stream.ride_events import KinesisRecord
from tests.conftest import RecordingLog, create_stream, read_stream
from tests.test_deaggregation import CORRUPT_AGGREGATES
from tests.test_model_service import ThrottlingKinesis, make_service, ride, ride_id_of

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002)


@pytest.fixture(scope="session")
def model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(model_dir), tmp_path_factory.mktemp("cache"))


@pytest.fixture
def streams(kinesis: Any) -> Any:
    create_stream(kinesis, "ride_predictions", shards=2)
    create_stream(kinesis, "dead_letters")
    return kinesis


def packed(payloads: list[bytes], keys: list[str] | None = None) -> bytes:
    """One aggregated record of these user records (the reference aggregator)."""
    users = list(zip(keys or [f"user-{i}" for i in range(len(payloads))], payloads, strict=True))
    [one] = aggregate(users, per_record=len(users))
    data: bytes = one.entry["Data"]
    assert data.startswith(MAGIC)
    return data


def test_a_batch_mixing_aggregated_and_plain_records_predicts_every_ride(
    streams: Any, model: LoadedModel
) -> None:
    log = RecordingLog()
    event = event_from_payloads(
        [ride(1), packed([ride(10), ride(11), ride(12)]), ride(2), packed([ride(20), ride(21)]), ride(3)]
    )
    records = event["Records"]

    assert make_service(streams, model, log).handle(event) == {"batchItemFailures": []}

    predictions = {p["prediction"]["ride_id"]: p for p in read_stream(streams, "ride_predictions")}
    assert sorted(predictions) == [1, 2, 3, 10, 11, 12, 20, 21]
    # A plain record's source is what it always was; a user record adds its sub-sequence number.
    assert predictions[2]["source"] == {
        "event_id": records[2]["eventID"],
        "sequence_number": records[2]["kinesis"]["sequenceNumber"],
        "shard_id": "shardId-000000000000",
        "event_source_arn": records[2]["eventSourceARN"],
    }
    assert predictions[21]["source"] == {
        "event_id": f"{records[3]['eventID']}:1",
        "sequence_number": records[3]["kinesis"]["sequenceNumber"],
        "shard_id": "shardId-000000000000",
        "event_source_arn": records[3]["eventSourceARN"],
        "sub_sequence_number": 1,
    }
    assert len({p["source"]["event_id"] for p in predictions.values()}) == 8  # unique per user record
    [summary] = log.find("batch processed")
    assert (summary["received"], summary["kinesis_records"], summary["predicted"]) == (8, 5, 8)


def test_user_records_that_fail_validation_are_dead_lettered_one_by_one(
    streams: Any, model: LoadedModel
) -> None:
    users = [
        ride(1),
        b"Hello, this is a test.",
        ride(2),
        ride(9003, distance=-0.5),
        b"\xff\xfe not UTF-8",
        ride(3),
    ]
    keys = ["k-good-1", "k-hello", "k-good-2", "k-negative", "k-utf8", "k-good-3"]
    event = event_from_payloads([packed(users, keys)])
    aggregate_record = event["Records"][0]

    assert make_service(streams, model, RecordingLog()).handle(event) == {"batchItemFailures": []}

    assert sorted(p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")) == [1, 2, 3]
    letters = sorted(read_stream(streams, "dead_letters"), key=lambda d: d["source"]["sub_sequence_number"])
    assert [d["source"]["sub_sequence_number"] for d in letters] == [1, 3, 4]
    assert [d["reason"].split(":")[0] for d in letters] == [
        "data is not JSON",
        "invalid ride event",
        "data is not UTF-8",
    ]
    # Each letter is its user record's: its data, its partition key (from the aggregate's key
    # table), its own event id; the Kinesis record's sequence number to re-read it by.
    assert [base64.b64decode(d["data"]) for d in letters] == [users[1], users[3], users[4]]
    assert [d["partition_key"] for d in letters] == ["k-hello", "k-negative", "k-utf8"]
    assert [d["source"]["event_id"] for d in letters] == [
        f"{aggregate_record['eventID']}:{i}" for i in (1, 3, 4)
    ]
    assert {d["source"]["sequence_number"] for d in letters} == {
        aggregate_record["kinesis"]["sequenceNumber"]
    }


def test_the_dead_letter_stream_keys_a_user_records_letter_by_its_own_partition_key(
    streams: Any, model: LoadedModel
) -> None:
    sent: list[str] = []
    streams.meta.events.register(
        "provide-client-params.kinesis.PutRecords",
        lambda params, **_: (
            sent.extend(r["PartitionKey"] for r in params["Records"])
            if params["StreamName"] == "dead_letters"
            else None
        ),
    )
    event = event_from_payloads([packed([ride(1), b"not a ride"], ["k-ride", "k-poison"])])
    make_service(streams, model, RecordingLog()).handle(event)
    assert sent == ["k-poison"]


@pytest.mark.parametrize(("payload", "reason"), CORRUPT_AGGREGATES.values(), ids=CORRUPT_AGGREGATES.keys())
def test_a_corrupt_aggregate_is_one_dead_letter_with_the_reason(
    streams: Any, model: LoadedModel, payload: bytes, reason: str
) -> None:
    event = event_from_payloads([ride(1), payload, ride(2)])
    corrupt = event["Records"][1]

    assert make_service(streams, model, RecordingLog()).handle(event) == {"batchItemFailures": []}

    assert sorted(p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions")) == [1, 2]
    [letter] = read_stream(streams, "dead_letters")
    assert letter["reason"].startswith(f"corrupt KPL aggregate: {reason}")
    assert letter["data"] == corrupt["kinesis"]["data"]  # the whole Kinesis record, to re-read or repair
    assert letter["partition_key"] == corrupt["kinesis"]["partitionKey"]
    assert letter["source"]["event_id"] == corrupt["eventID"]
    assert "sub_sequence_number" not in letter["source"]


def service_with_memory(
    client: Any, dead_letter_client: Any, model: LoadedModel, memory: RedeliveryMemory
) -> ModelService:
    return ModelService(
        model,
        KinesisStreamWriter(client, "ride_predictions", FAST_RETRY),
        KinesisDeadLetters(KinesisStreamWriter(dead_letter_client, "dead_letters", FAST_RETRY)),
        RecordingLog(),
        memory=memory,
    )


def redelivery_from(event: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """What Lambda delivers next: every record from the lowest failed sequence number on."""
    lowest = min(int(f["itemIdentifier"]) for f in response["batchItemFailures"])
    return {"Records": [r for r in event["Records"] if int(r["kinesis"]["sequenceNumber"]) >= lowest]}


@pytest.mark.parametrize(("memory_size", "written_twice"), [(20_000, []), (0, [10, 12, 13, 2])])
def test_an_aggregate_with_a_user_record_to_retry_comes_back_whole_and_writes_nothing_twice(
    streams: Any, model: LoadedModel, memory_size: int, written_twice: list[int]
) -> None:
    # Rides 11 and 14 (two user records of the same aggregate) are throttled through the whole
    # first invocation, then accepted.
    flaky = ThrottlingKinesis(
        streams, lambda _s, data, attempt: ride_id_of(data) in (11, 14) and attempt <= FAST_RETRY.max_attempts
    )
    service = service_with_memory(flaky, streams, model, RedeliveryMemory(memory_size))
    event = event_from_payloads(
        [ride(1), packed([ride(10), ride(11), b"poison", ride(12), ride(13), ride(14)]), ride(2)]
    )
    aggregate_sequence_number = event["Records"][1]["kinesis"]["sequenceNumber"]

    first = service.handle(event)
    assert first == {"batchItemFailures": [{"itemIdentifier": aggregate_sequence_number}]}  # named once
    assert service.handle(redelivery_from(event, first)) == {"batchItemFailures": []}

    outputs = Counter(p["prediction"]["ride_id"] for p in read_stream(streams, "ride_predictions"))
    assert set(outputs) == {1, 2, 10, 11, 12, 13, 14}
    assert sorted(ride for ride, n in outputs.items() if n > 1) == sorted(written_twice)
    assert len(read_stream(streams, "dead_letters")) == (1 if memory_size else 2)


def test_one_outcome_per_user_record_and_each_kinesis_record_to_retry_named_once(
    streams: Any, model: LoadedModel
) -> None:
    stuck = {11, 12, 3}
    flaky = ThrottlingKinesis(streams, lambda _s, data, _a: ride_id_of(data) in stuck)
    service = service_with_memory(flaky, streams, model, RedeliveryMemory())
    event = event_from_payloads(
        [packed([ride(10), ride(11), ride(12)]), ride(3), packed([ride(20), b"poison"]), ride(4)]
    )
    result = service.process([KinesisRecord.from_raw(r) for r in event["Records"]])

    assert Counter(o.record.event_id for o in result.outcomes) == Counter(
        [f"{event['Records'][0]['eventID']}:{i}" for i in range(3)]
        + [event["Records"][1]["eventID"]]
        + [f"{event['Records'][2]['eventID']}:{i}" for i in range(2)]
        + [event["Records"][3]["eventID"]]
    )
    assert Counter(o.outcome for o in result.outcomes) == {
        Outcome.PREDICTED: 3,
        Outcome.RETRY: 3,
        Outcome.DEAD_LETTERED: 1,
    }
    assert result.kinesis_records == 4
    sequence_numbers = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
    assert result.kinesis_records_to_retry == sequence_numbers[:2]
    assert result.response() == {"batchItemFailures": [{"itemIdentifier": n} for n in sequence_numbers[:2]]}


def test_a_whole_batch_retry_counts_user_records(kinesis: Any, model: LoadedModel) -> None:
    # No output stream exists: nothing can be written, the handler raises for Lambda to retry.
    service = make_service(kinesis, model, RecordingLog(), dead_letter_stream=None)
    with pytest.raises(BatchRetryError, match="4 of 4 records failed: PutRecords to ride_predictions failed"):
        service.handle(event_from_payloads([packed([ride(1), ride(2), ride(3)]), ride(4)]))


def test_info_logs_carry_no_user_record_payloads(streams: Any, model: LoadedModel) -> None:
    log = RecordingLog()
    make_service(streams, model, log).handle(event_from_payloads([packed([ride(1), b"poison text"])]))
    info = json.dumps([extra for level, _, extra in log.entries if level == "INFO"])
    assert "PULocationID" not in info
    assert "poison text" not in info
