"""The events this function reads and writes, and how a Kinesis record becomes a ride.

Input (course format, extra fields ignored)::

    {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 256}

Output (course format plus tracing fields)::

    {"model": "ride_duration_prediction_model", "version": "...",
     "prediction": {"ride_duration": 18.2, "ride_id": 256},
     "model_uri": "...", "run_id": "...",
     "source": {"event_id": "shardId-...:49..", "sequence_number": "49..", ...}}
"""

from __future__ import annotations

import binascii
import functools
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, create_model

MODEL_NAME = "ride_duration_prediction_model"

# A Kinesis partition key is 1-256 Unicode characters; the ride id becomes the output's key.
MAX_PARTITION_KEY_LENGTH = 256


class PoisonRecordError(ValueError):
    """A record that no retry can fix: its reason says which check failed."""


def _ride_id(value: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be an integer or a string (got {type(value).__name__})")
    if not 1 <= len(str(value)) <= MAX_PARTITION_KEY_LENGTH:
        raise ValueError(f"must be 1-{MAX_PARTITION_KEY_LENGTH} characters long as text")
    return value


RideId = Annotated[int | str, PlainValidator(_ride_id)]


# The TLC's taxi zones are numbered 1-265 (264 and 265 are "Unknown" and "Outside of NYC").
MAX_ZONE_ID = 265
# Miles: far above any taxi trip (New York to Chicago is about 790), far below the meter
# errors of TLC files (tens of thousands of miles) that the model would extrapolate from.
MAX_TRIP_DISTANCE_MILES = 1000


@dataclass(frozen=True)
class RideBounds:
    """Upper bounds of a ride's features (MAX_ZONE_ID, MAX_TRIP_DISTANCE_MILES: another zone
    map may number its zones higher); the lower bounds (zone > 0, distance >= 0) are fixed."""

    max_zone_id: int = MAX_ZONE_ID
    max_trip_distance: float = MAX_TRIP_DISTANCE_MILES


TLC_BOUNDS = RideBounds()


# Every bound is a constraint that pydantic-core checks in Rust (gt, le, allow_inf_nan), never
# a Python validator: validation runs per record on the stream's hot path.
class Ride(BaseModel):
    """The ride's features, as producers send them (TLC column names), within the default
    RideBounds; `ride_types(bounds)` makes the same model for other bounds."""

    model_config = ConfigDict(strict=True, frozen=True)

    PULocationID: Annotated[int, Field(gt=0, le=MAX_ZONE_ID, description="TLC pick-up zone id")]
    DOLocationID: Annotated[int, Field(gt=0, le=MAX_ZONE_ID, description="TLC drop-off zone id")]
    trip_distance: Annotated[
        float, Field(ge=0, le=MAX_TRIP_DISTANCE_MILES, allow_inf_nan=False, description="miles")
    ]


class RideEvent(BaseModel):
    """One input record: a ride and the id that ties its prediction back to it."""

    model_config = ConfigDict(strict=True, frozen=True)

    ride: Ride
    ride_id: RideId


@dataclass(frozen=True)
class RideTypes:
    """The ride and ride-event models for one RideBounds (subclasses of Ride and RideEvent)."""

    ride: type[Ride]
    event: type[RideEvent]


@functools.cache
def ride_types(bounds: RideBounds) -> RideTypes:
    """Ride and RideEvent checking these bounds: built once per bounds, the defaults' are
    Ride and RideEvent themselves."""
    if bounds == TLC_BOUNDS:
        return RideTypes(Ride, RideEvent)

    def zone(what: str) -> Any:
        return (Annotated[int, Field(gt=0, le=bounds.max_zone_id, description=f"TLC {what} zone id")], ...)

    distance = Field(ge=0, le=bounds.max_trip_distance, allow_inf_nan=False, description="miles")
    ride = create_model(
        "Ride",
        __base__=Ride,
        PULocationID=zone("pick-up"),
        DOLocationID=zone("drop-off"),
        trip_distance=(Annotated[float, distance], ...),
    )
    return RideTypes(ride, create_model("RideEvent", __base__=RideEvent, ride=(ride, ...)))


# Not frozen: built several times per record, and a frozen dataclass's __init__ costs 1.7 us
# against 0.26 us (six fields, measured here). Treat instances as immutable.
@dataclass(slots=True)
class KinesisRecord:
    """One record of the event Lambda hands a Kinesis consumer, its fields read once."""

    raw: dict[str, Any]
    sequence_number: str  # position in its shard; what ReportBatchItemFailures names
    partition_key: str  # the producer's partition key (a KPL user record's: from its aggregate's table)
    data: str  # the producer's bytes, base64-encoded (by Lambda; a KPL user record's, by deaggregation)
    # `shardId-...:<sequenceNumber>`, and `:<subSequenceNumber>` after it for a KPL user record:
    # unique per user record, the de-duplication key
    event_id: str
    event_source_arn: str  # ARN of the input stream
    malformed: str | None = (
        None  # why it cannot be decoded: a field Lambda's record lacks, a corrupt KPL aggregate
    )
    sub_sequence_number: int | None = None  # a KPL user record's index in its aggregate; None: a plain record

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> KinesisRecord:
        """Tolerates a malformed record: it then fails decoding, with a reason, like bad data."""
        kinesis = raw.get("kinesis")
        if not isinstance(kinesis, dict):
            return cls(
                raw, "", "", "", str(raw.get("eventID", "")), str(raw.get("eventSourceARN", "")),
                "malformed Lambda record: no kinesis object",
            )  # fmt: skip
        data = kinesis.get("data")
        sequence_number = kinesis.get("sequenceNumber")
        record = cls(
            raw,
            "" if sequence_number is None else str(sequence_number),
            str(kinesis.get("partitionKey", "")),
            data if isinstance(data, str) else "",
            str(raw.get("eventID", "")),
            str(raw.get("eventSourceARN", "")),
        )
        if data is None:
            record.malformed = "malformed Lambda record: no kinesis.data"
        elif not isinstance(data, str):
            record.malformed = "malformed Lambda record: kinesis.data is not a string"
        elif sequence_number is None:
            record.malformed = "malformed Lambda record: no kinesis.sequenceNumber"
        return record

    @property
    def shard_id(self) -> str:
        """The shard the record came from (taken from eventID)."""
        return self.event_id.partition(":")[0]

    @property
    def approximate_arrival_timestamp(self) -> float | None:
        """When Kinesis accepted the record (epoch seconds)."""
        value = (self.raw.get("kinesis") or {}).get("approximateArrivalTimestamp")
        return float(value) if isinstance(value, int | float) else None

    def source(self) -> dict[str, Any]:
        """Where a record came from: enough to de-duplicate, trace and re-read it (a KPL user
        record adds its index in the aggregate; a plain record's source is unchanged)."""
        source: dict[str, Any] = {
            "event_id": self.event_id,
            "sequence_number": self.sequence_number,
            "shard_id": self.shard_id,
            "event_source_arn": self.event_source_arn,
        }
        if self.sub_sequence_number is not None:
            source["sub_sequence_number"] = self.sub_sequence_number
        return source


def decode_ride_event(record: KinesisRecord, event_type: type[RideEvent] = RideEvent) -> RideEvent:
    """base64 -> UTF-8 -> JSON -> validated ride (`event_type`: RideEvent, or ride_types(bounds)'s);
    a PoisonRecordError names what failed."""
    if record.malformed is not None:
        raise PoisonRecordError(record.malformed)
    try:
        # binascii directly: base64.b64decode(validate=True) adds a regex pass (364 vs 543 ns)
        payload = binascii.a2b_base64(record.data, strict_mode=True)
    except (binascii.Error, ValueError) as error:
        raise PoisonRecordError(f"data is not valid base64: {error}") from None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PoisonRecordError(
            f"data is not UTF-8: byte 0x{payload[error.start]:02x} at offset {error.start}"
        ) from None
    try:
        return event_type.model_validate_json(text)
    except ValidationError as error:
        raise PoisonRecordError(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each failing field and why, without echoing the payload's values."""
    if (reason := invalid_json_reason(error)) is not None:
        return f"data is not JSON: {reason}"
    return "invalid ride event: " + "; ".join(f"{f}: {r}" for f, r in validation_problems(error))


def invalid_json_reason(error: ValidationError) -> str | None:
    """Why the text was not JSON at all, or None when it was JSON that failed validation."""
    for problem in error.errors(include_url=False, include_input=False):
        if problem["type"] == "json_invalid":
            return problem["msg"].removeprefix("Invalid JSON: ")
    return None


def validation_problems(error: ValidationError, root: str = "event") -> list[tuple[str, str]]:
    """(field, reason) per failure, fields dotted (`ride.trip_distance`, `1.PULocationID` in a
    list); `root` names the whole input. Shared by the stream, web and batch modes."""
    problems = error.errors(include_url=False, include_input=False)
    return [
        (".".join(str(part) for part in p["loc"]) or root, p["msg"].removeprefix("Value error, "))
        for p in problems
    ]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Identifies the model a prediction came from."""

    uri: str
    version: str
    run_id: str | None


@dataclass(slots=True)  # per record: not frozen, see KinesisRecord
class PredictionEvent:
    """One prediction, in the course's output format plus tracing fields."""

    ride_id: int | str
    ride_duration: float
    model: ModelInfo
    source: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": MODEL_NAME,
            "version": self.model.version,
            "prediction": {"ride_duration": self.ride_duration, "ride_id": self.ride_id},
            "model_uri": self.model.uri,
            "run_id": self.model.run_id,
            "source": self.source,
        }

    def to_json(self) -> bytes:
        # pydantic-core's encoder: 2.2 us per event against 11.7 us for json.dumps (measured
        # on this event); non-finite durations never get here (they are dead-lettered).
        return pydantic_core.to_json(self.to_dict())

    @property
    def partition_key(self) -> str:
        return str(self.ride_id)


# A dead letter must fit in one Kinesis record (1 MiB with its key); the input record may
# already be 1 MiB, so past this size the data is cut and marked as truncated. The limit counts
# characters of the base64 text as Lambda hands it over (700 KiB of it is 525 KiB of the
# producer's bytes). The full record stays readable on the input stream by shard and sequence
# number until it expires.
MAX_DEAD_LETTER_DATA_CHARS = 700 * 1024
# Without a dead-letter stream a letter is one log line, and CloudWatch Logs cuts an event at
# 256 KB (262,144 bytes): 192 KiB of base64 (144 KiB of the producer's bytes) leaves 64 KiB for
# the reason, the source and the logger's own fields.
MAX_LOGGED_DEAD_LETTER_DATA_CHARS = 192 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record no retry can fix, with why, and where to find it again."""

    record: KinesisRecord
    reason: str

    def to_dict(self, max_data_chars: int = MAX_DEAD_LETTER_DATA_CHARS) -> dict[str, Any]:
        """The letter, its base64 data cut to `max_data_chars` characters (`data_truncated`)."""
        data = self.record.data
        truncated = len(data) > max_data_chars
        return {
            "reason": self.reason,
            "data": data[:max_data_chars],
            "data_truncated": truncated,
            "partition_key": self.record.partition_key,
            "approximate_arrival_timestamp": self.record.approximate_arrival_timestamp,
            "source": self.record.source(),
        }

    def to_json(self) -> bytes:
        return pydantic_core.to_json(self.to_dict())

    @property
    def partition_key(self) -> str:
        return self.record.partition_key or self.record.sequence_number or "unknown"
