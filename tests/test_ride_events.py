import base64
import json
from typing import Any

import pytest

from local_aws.kinesis_events import event_from_payloads
from stream.ride_events import (
    MAX_DEAD_LETTER_DATA_CHARS,
    MAX_PARTITION_KEY_LENGTH,
    MAX_TRIP_DISTANCE_MILES,
    MAX_ZONE_ID,
    DeadLetter,
    KinesisRecord,
    ModelInfo,
    PoisonRecordError,
    PredictionEvent,
    Ride,
    RideBounds,
    RideEvent,
    decode_ride_event,
    ride_types,
)

COURSE_RIDE = {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 256}


_COURSE_RIDE_BASE64 = base64.b64encode(json.dumps(COURSE_RIDE).encode()).decode()
LAX_BASE64 = _COURSE_RIDE_BASE64[:8] + "!" + _COURSE_RIDE_BASE64[8:]


def record_of(payload: bytes) -> KinesisRecord:
    return KinesisRecord.from_raw(event_from_payloads([payload])["Records"][0])


def test_course_format_decodes() -> None:
    event = decode_ride_event(record_of(json.dumps(COURSE_RIDE).encode()))
    assert (event.ride.PULocationID, event.ride.DOLocationID, event.ride.trip_distance) == (130, 205, 3.66)
    assert event.ride_id == 256


def test_a_ride_id_as_long_as_a_partition_key_may_be_is_accepted_and_keys_the_prediction() -> None:
    ride_id = "r" * MAX_PARTITION_KEY_LENGTH
    event = decode_ride_event(record_of(json.dumps({**COURSE_RIDE, "ride_id": ride_id}).encode()))
    model = ModelInfo(uri="models:/ride-duration/3", version="3", run_id="abc")
    assert event.ride_id == ride_id
    assert PredictionEvent(event.ride_id, 21.3, model, {}).partition_key == ride_id


def test_extra_fields_are_ignored_and_string_ids_kept() -> None:
    payload = {**COURSE_RIDE, "ride_id": "abc-1", "vendor": 2}
    payload["ride"] = {**COURSE_RIDE["ride"], "trip_distance": 0, "fare": 12.5}
    event = decode_ride_event(record_of(json.dumps(payload).encode()))
    assert event.ride_id == "abc-1"
    assert event.ride.trip_distance == 0.0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("not base64 at all!", "data is not valid base64"),
        (base64.b64encode(b"\xff\xfe\x00").decode(), "data is not UTF-8: byte 0xff at offset 0"),
        (
            base64.b64encode(b"Hello, this is a test.").decode(),
            "^data is not JSON: expected value at line 1 column 1$",
        ),
        (base64.b64encode(b"[1, 2]").decode(), "invalid ride event: event: Input should be an object"),
        (base64.b64encode(b"").decode(), "data is not JSON"),
        # Valid but for one stray character, which a lax decoder would skip over.
        (LAX_BASE64, "data is not valid base64: Only base64 data is allowed"),
    ],
)
def test_undecodable_data_names_the_step_that_failed(data: str, reason: str) -> None:
    raw = event_from_payloads([b""])["Records"][0]
    raw["kinesis"]["data"] = data
    record = KinesisRecord.from_raw(raw)
    with pytest.raises(PoisonRecordError, match=reason.replace("(", r"\(")):
        decode_ride_event(record)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ride_id": None}, "ride_id: must be an integer or a string (got NoneType)"),
        ({"ride_id": True}, "ride_id: must be an integer or a string (got bool)"),
        ({"ride_id": ""}, "ride_id: must be 1-256 characters long as text"),
        ({"ride_id": "x" * 257}, "ride_id: must be 1-256 characters long as text"),
        ({"ride": {"DOLocationID": 205, "trip_distance": 3.66}}, "ride.PULocationID: Field required"),
        (
            {"ride": {**COURSE_RIDE["ride"], "PULocationID": 0}},
            "ride.PULocationID: Input should be greater than 0",
        ),
        (
            {"ride": {**COURSE_RIDE["ride"], "DOLocationID": 0}},
            "ride.DOLocationID: Input should be greater than 0",
        ),
        (
            {"ride": {**COURSE_RIDE["ride"], "DOLocationID": "205"}},
            "ride.DOLocationID: Input should be a valid integer",
        ),
        (
            {"ride": {**COURSE_RIDE["ride"], "DOLocationID": 20.5}},
            "ride.DOLocationID: Input should be a valid integer",
        ),
        (
            {"ride": {**COURSE_RIDE["ride"], "trip_distance": -1}},
            "ride.trip_distance: Input should be greater than or equal to 0",
        ),
        (
            {"ride": {**COURSE_RIDE["ride"], "trip_distance": "3.66"}},
            "ride.trip_distance: Input should be a valid number",
        ),
        ({"ride": "130-205"}, "ride: Input should be an object"),
        (
            {"ride": {**COURSE_RIDE["ride"], "PULocationID": 266}},
            "ride.PULocationID: Input should be less than or equal to 265",
        ),
        (
            {"ride": {**COURSE_RIDE["ride"], "DOLocationID": 10**30}},
            "ride.DOLocationID: Input should be less than or equal to 265",
        ),
        (
            {"ride": {**COURSE_RIDE["ride"], "trip_distance": 1e308}},
            "ride.trip_distance: Input should be less than or equal to 1000",
        ),
    ],
)
def test_validation_names_the_field_and_the_reason(change: dict, reason: str) -> None:
    payload = {**COURSE_RIDE, **change}
    with pytest.raises(PoisonRecordError) as raised:
        decode_ride_event(record_of(json.dumps(payload).encode()))
    assert str(raised.value) == f"invalid ride event: {reason}"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_distance_is_rejected(literal: bytes) -> None:
    payload = (
        b'{"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": ' + literal + b'}, "ride_id": 1}'
    )
    with pytest.raises(PoisonRecordError, match=r"ride\.trip_distance: Input should be a finite number"):
        decode_ride_event(record_of(payload))


def lambda_record(**kinesis: Any) -> dict[str, Any]:
    return {"eventID": "shardId-000000000000:7", "kinesis": kinesis}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"eventID": "x"}, "no kinesis object"),
        ({"eventID": "x", "kinesis": "text"}, "no kinesis object"),
        (lambda_record(sequenceNumber="7"), "no kinesis.data"),
        (lambda_record(sequenceNumber="7", data=None), "no kinesis.data"),
        (lambda_record(sequenceNumber="7", data=["e30="]), "kinesis.data is not a string"),
        (lambda_record(data="e30="), "no kinesis.sequenceNumber"),
    ],
)
def test_a_malformed_lambda_record_is_poison_naming_the_missing_field(
    raw: dict[str, Any], reason: str
) -> None:
    with pytest.raises(PoisonRecordError) as raised:
        decode_ride_event(KinesisRecord.from_raw(raw))
    assert str(raised.value) == f"malformed Lambda record: {reason}"


def test_a_malformed_record_keeps_what_it_has_for_its_dead_letter() -> None:
    arn = "arn:aws:kinesis:us-east-1:123456789012:stream/rides"
    record = KinesisRecord.from_raw({"eventID": "shardId-000000000000:7", "eventSourceARN": arn})
    assert (record.event_id, record.event_source_arn) == ("shardId-000000000000:7", arn)
    assert (record.sequence_number, record.partition_key, record.data) == ("", "", "")
    bare = KinesisRecord.from_raw({})
    assert (bare.event_id, bare.event_source_arn, bare.sequence_number, bare.partition_key, bare.data) == (
        ("", "", "", "", "")
    )
    listed = KinesisRecord.from_raw(lambda_record(sequenceNumber="7", data=["e30="]))
    assert (listed.data, listed.partition_key, listed.event_source_arn) == ("", "", "")
    # Without a partition key of its own, a dead letter is keyed by the record's sequence number.
    assert DeadLetter(listed, "malformed").partition_key == "7"


def test_a_complete_lambda_record_is_not_malformed() -> None:
    assert record_of(b"{}").malformed is None


def test_prediction_event_is_the_course_format_plus_tracing() -> None:
    record = record_of(b"{}")
    model = ModelInfo(uri="models:/ride-duration/3", version="3", run_id="abc")
    event = json.loads(PredictionEvent(256, 21.3, model, record.source()).to_json())
    assert {key: event[key] for key in ("model", "version", "prediction")} == {
        "model": "ride_duration_prediction_model",
        "version": "3",
        "prediction": {"ride_duration": 21.3, "ride_id": 256},
    }
    assert event["run_id"] == "abc"
    assert event["model_uri"] == "models:/ride-duration/3"
    assert event["source"]["event_id"] == record.event_id == f"shardId-000000000000:{record.sequence_number}"
    assert event["source"]["shard_id"] == "shardId-000000000000"


def test_dead_letter_keeps_raw_data_reason_and_position() -> None:
    record = record_of(b"Hello, this is a test.")
    letter = json.loads(DeadLetter(record, "data is not JSON").to_json())
    assert base64.b64decode(letter["data"]) == b"Hello, this is a test."
    assert letter["reason"] == "data is not JSON"
    assert letter["data_truncated"] is False
    assert letter["source"]["sequence_number"] == record.sequence_number
    assert letter["source"]["shard_id"] == "shardId-000000000000"
    assert letter["partition_key"] == "key-0"
    assert letter["approximate_arrival_timestamp"] == record.approximate_arrival_timestamp > 0


def test_dead_letter_data_is_cut_only_past_the_limit() -> None:
    letter = DeadLetter(record_of(b"Hello, this is a test."), "data is not JSON")
    whole = letter.to_dict(max_data_chars=len(letter.record.data))
    cut = letter.to_dict(max_data_chars=len(letter.record.data) - 1)
    assert (whole["data"], whole["data_truncated"]) == (letter.record.data, False)
    assert (cut["data"], cut["data_truncated"]) == (letter.record.data[:-1], True)


def test_dead_letter_of_a_huge_record_fits_in_one_kinesis_record() -> None:
    record = record_of(b"x" * (1024 * 1024 - 100))
    data = DeadLetter(record, "data is not JSON").to_json()
    assert len(data) < 1024 * 1024
    letter = json.loads(data)
    assert letter["data_truncated"] is True
    assert len(letter["data"]) == MAX_DEAD_LETTER_DATA_CHARS


def ride_payload(pickup: int, dropoff: int, distance: float) -> bytes:
    ride = {"PULocationID": pickup, "DOLocationID": dropoff, "trip_distance": distance}
    return json.dumps({"ride": ride, "ride_id": 1}).encode()


def test_the_bounds_themselves_are_accepted() -> None:
    event = decode_ride_event(record_of(ride_payload(MAX_ZONE_ID, 1, MAX_TRIP_DISTANCE_MILES)))
    assert (event.ride.PULocationID, event.ride.trip_distance) == (265, 1000.0)


def test_other_bounds_for_another_zone_map() -> None:
    types = ride_types(RideBounds(max_zone_id=300, max_trip_distance=50.5))

    event = decode_ride_event(record_of(ride_payload(300, 299, 50.5)), types.event)
    with pytest.raises(PoisonRecordError) as raised:
        decode_ride_event(record_of(ride_payload(301, 1, 50.6)), types.event)

    assert isinstance(event.ride, Ride)
    assert (event.ride.PULocationID, event.ride.DOLocationID, event.ride.trip_distance) == (300, 299, 50.5)
    assert str(raised.value) == (
        "invalid ride event: ride.PULocationID: Input should be less than or equal to 300; "
        "ride.trip_distance: Input should be less than or equal to 50.5"
    )
    assert ride_types(RideBounds(max_zone_id=300, max_trip_distance=50.5)) is types  # built once
    assert ride_types(RideBounds()).event is RideEvent
