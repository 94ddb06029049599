"""The streaming ride-duration service: one Kinesis batch in, predictions out.

Read `ModelService.process` top to bottom: decode and validate every record, predict all
valid rides with ONE model call, write the predictions with PutRecords, dead-letter the
records no retry can fix, and report the rest to Lambda for a retry. Every input record
ends as exactly one `Outcome`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from stream import restore_hooks
from stream.features import RideColumns
from stream.kinesis_output import FailedWrite, KinesisStreamWriter, to_output_record
from stream.model_loading import LoadedModel, load_model
from stream.ride_events import (
    MAX_LOGGED_DEAD_LETTER_DATA_CHARS,
    DeadLetter,
    KinesisRecord,
    ModelInfo,
    PoisonRecordError,
    PredictionEvent,
    Ride,
    RideEvent,
    decode_ride_event,
    ride_types,
)
from stream.settings import Settings

if TYPE_CHECKING:
    from botocore.config import Config


def predict_durations(model: LoadedModel, rides: Sequence[Ride]) -> list[float]:
    """Minutes per ride, in ONE model call, the input shaped as the model declared at load
    (stream/features.py). Shared by the stream and web modes; batch scoring calls the same
    LoadedModel.predict_minutes with its valid rows by column."""
    return model.predict_rides(RideColumns.from_rides(rides))


class Outcome(Enum):
    PREDICTED = "predicted"
    DEAD_LETTERED = "dead_lettered"
    RETRY = "retry"


@dataclass(slots=True)  # per record: not frozen (see ride_events.KinesisRecord)
class RecordOutcome:
    """What became of one input record, and why when it was not predicted."""

    record: KinesisRecord
    outcome: Outcome
    reason: str | None = None


class BatchRetryError(RuntimeError):
    """Nothing in the batch could be written, for a reason a retry may cure."""


@dataclass
class BatchResult:
    outcomes: list[RecordOutcome]
    timings_ms: dict[str, float] = field(default_factory=dict)
    put_records_calls: int = 0

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o.outcome is outcome)

    @property
    def retries(self) -> list[RecordOutcome]:
        return [o for o in self.outcomes if o.outcome is Outcome.RETRY]

    @property
    def must_fail_whole_batch(self) -> bool:
        """Raise instead of reporting items: all failed and retryable, or one has no identifier."""
        retries = self.retries
        if not retries:
            return False
        nothing_succeeded = len(retries) == len(self.outcomes)
        return nothing_succeeded or any(not o.record.sequence_number for o in retries)

    def response(self) -> dict[str, list[dict[str, str]]]:
        """ReportBatchItemFailures: Lambda re-delivers from the lowest sequence number named."""
        return {"batchItemFailures": [{"itemIdentifier": o.record.sequence_number} for o in self.retries]}


class NotAKinesisEventError(TypeError):
    """The function was invoked with something other than a Kinesis event."""


def kinesis_event_records(event: Any) -> list[dict[str, Any]]:
    """The `Records` of a Kinesis event; anything else is a wiring mistake, named as such."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise NotAKinesisEventError(
            f'expected a Kinesis event {{"Records": [...]}}, got {type(event).__name__}'
            + (f" with keys {sorted(event)[:5]}" if isinstance(event, dict) else "")
        )
    return records


class DeadLetterSink(Protocol):
    def put(self, letters: Sequence[DeadLetter]) -> list[FailedWrite]:
        """Store the letters; return those that could not be stored."""
        ...


class Log(Protocol):
    def info(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def error(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None: ...


class KinesisDeadLetters:
    """Dead letters as JSON records on a Kinesis stream, keyed by the input's partition key."""

    def __init__(self, writer: KinesisStreamWriter) -> None:
        self.writer = writer

    def put(self, letters: Sequence[DeadLetter]) -> list[FailedWrite]:
        return self.writer.put([to_output_record(letter, letter) for letter in letters]).failed


class LoggedDeadLetters:
    """Without a dead-letter stream, each letter is logged at ERROR with its data, cut to stay
    within one CloudWatch Logs event (MAX_LOGGED_DEAD_LETTER_DATA_CHARS)."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def put(self, letters: Sequence[DeadLetter]) -> list[FailedWrite]:
        for letter in letters:
            self.log.error(
                "dead letter", extra={"dead_letter": letter.to_dict(MAX_LOGGED_DEAD_LETTER_DATA_CHARS)}
            )
        return []


class ModelService:
    """Turns one Kinesis event into predictions, dead letters and a batchItemFailures response."""

    def __init__(
        self,
        model: LoadedModel,
        predictions: KinesisStreamWriter,
        dead_letters: DeadLetterSink,
        log: Log,
        ride_event_type: type[RideEvent] = RideEvent,
    ) -> None:
        self.model = model
        self.predictions = predictions
        self.dead_letters = dead_letters
        self.log = log
        self.ride_event_type = ride_event_type  # ride_types(settings.ride_bounds).event: the bounds

    def handle(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """The Lambda handler's work: process, log, answer (or raise for a whole-batch retry)."""
        records = [KinesisRecord.from_raw(raw) for raw in kinesis_event_records(event)]
        result = self.process(records)
        self.log_result(result)
        if result.must_fail_whole_batch:
            reason = result.retries[0].reason
            raise BatchRetryError(f"{len(result.retries)} of {len(records)} records failed: {reason}")
        return result.response()

    def process(self, records: Sequence[KinesisRecord]) -> BatchResult:
        started = time.perf_counter()
        rides, poison = self.decode(records)
        decoded = time.perf_counter()
        predictions, unpredictable = self.predict(rides)
        predicted = time.perf_counter()
        outcomes, calls = self.write_predictions(predictions)
        outcomes += self.dead_letter(poison + unpredictable)
        written = time.perf_counter()
        return BatchResult(
            outcomes=outcomes,
            put_records_calls=calls,
            timings_ms={
                "decode_ms": (decoded - started) * 1000,
                "predict_ms": (predicted - decoded) * 1000,
                "write_ms": (written - predicted) * 1000,
                "total_ms": (written - started) * 1000,
            },
        )

    def decode(
        self, records: Sequence[KinesisRecord]
    ) -> tuple[list[tuple[KinesisRecord, RideEvent]], list[DeadLetter]]:
        """base64 -> UTF-8 -> JSON -> validated RideEvent, or a dead letter naming the failure."""
        rides: list[tuple[KinesisRecord, RideEvent]] = []
        poison: list[DeadLetter] = []
        for record in records:
            try:
                rides.append((record, decode_ride_event(record, self.ride_event_type)))
            except PoisonRecordError as error:
                poison.append(DeadLetter(record, str(error)))
        return rides, poison

    def predict(
        self, rides: list[tuple[KinesisRecord, RideEvent]]
    ) -> tuple[list[tuple[KinesisRecord, PredictionEvent]], list[DeadLetter]]:
        """One model call for the batch; a non-finite prediction is a dead letter."""
        if not rides:
            return [], []
        durations = self._predict_all([event.ride for _, event in rides])
        predictions: list[tuple[KinesisRecord, PredictionEvent]] = []
        unpredictable: list[DeadLetter] = []
        for (record, event), duration in zip(rides, durations, strict=True):
            if isinstance(duration, str):
                unpredictable.append(DeadLetter(record, duration))
            elif not math.isfinite(duration):
                unpredictable.append(
                    DeadLetter(record, f"model returned a non-finite prediction ({duration})")
                )
            else:
                prediction = PredictionEvent(event.ride_id, duration, self.model.info, record.source())
                predictions.append((record, prediction))
        return predictions, unpredictable

    def _predict_all(self, rides: list[Ride]) -> list[float | str]:
        """The batch in one call; if the model raises, ride by ride to isolate the culprits."""
        try:
            return list(predict_durations(self.model, rides))
        except Exception as error:  # noqa: BLE001 - a model failure must not block the shard
            self.log.warning("batch prediction failed, predicting ride by ride", extra={"error": repr(error)})
        results: list[float | str] = []
        for ride in rides:
            try:
                results.append(predict_durations(self.model, [ride])[0])
            except Exception as error:  # noqa: BLE001
                results.append(f"model failed on this ride: {type(error).__name__}: {error}")
        return results

    def write_predictions(
        self, predictions: list[tuple[KinesisRecord, PredictionEvent]]
    ) -> tuple[list[RecordOutcome], int]:
        """PutRecords to the output stream; entries still rejected after retries are retried by Lambda."""
        if not predictions:
            return [], 0
        result = self.predictions.put([to_output_record(event, record) for record, event in predictions])
        outcomes = [RecordOutcome(written.source, Outcome.PREDICTED) for written in result.written]
        outcomes += [RecordOutcome(f.record.source, Outcome.RETRY, f.error) for f in result.failed]
        return outcomes, result.calls

    def dead_letter(self, letters: list[DeadLetter]) -> list[RecordOutcome]:
        """Poison records are set aside, never retried; if that fails, Lambda retries them."""
        if not letters:
            return []
        self.log.warning(
            "records dead-lettered",
            extra={
                "dead_letters": [
                    {"sequence_number": d.record.sequence_number, "reason": d.reason} for d in letters
                ]
            },
        )
        failed = self.dead_letters.put(letters)
        failed_letters = {id(f.record.source): f.error for f in failed}
        return [
            RecordOutcome(
                letter.record, Outcome.RETRY, f"dead letter not stored: {failed_letters[id(letter)]}"
            )
            if id(letter) in failed_letters
            else RecordOutcome(letter.record, Outcome.DEAD_LETTERED, letter.reason)
            for letter in letters
        ]

    def log_result(self, result: BatchResult) -> None:
        """Counts, model version and time per batch; never ride payloads."""
        self.log.info(
            "batch processed",
            extra={
                "received": len(result.outcomes),
                "predicted": result.count(Outcome.PREDICTED),
                "dead_lettered": result.count(Outcome.DEAD_LETTERED),
                "retryable": result.count(Outcome.RETRY),
                "model_version": self.model.info.version,
                "put_records_calls": result.put_records_calls,
                **{name: round(value, 3) for name, value in result.timings_ms.items()},
            },
        )
        if result.retries:
            errors = Counter(o.reason for o in result.retries)
            self.log.error(
                "records reported for retry",
                extra={"retryable": len(result.retries), "errors": dict(errors.most_common(5))},
            )


def aws_client_config() -> Config:
    """Whole-call retries by botocore's standard mode (AWS_MAX_ATTEMPTS, default 3 attempts);
    timeouts well under the function's, so a stuck endpoint fails fast (defaults are 60 s)."""
    from botocore.config import Config  # noqa: PLC0415 - see aws_client

    return Config(retries={"mode": "standard"}, connect_timeout=3, read_timeout=20)


def aws_client(service: str, **options: Any) -> Any:
    """A boto3 client configured by aws_client_config. boto3 and botocore are imported here, not
    with this module: batch scoring and the web service with a local model never make a client,
    and importing them is 0.2 s of their start (measured here). The function makes its Kinesis
    client at init, so its cold start is the same."""
    import boto3  # noqa: PLC0415

    return boto3.client(service, config=aws_client_config(), **options)  # type: ignore[call-overload]


def load_configured_model(settings: Settings) -> LoadedModel:
    """The model named by the settings; S3 is reached through boto3's standard endpoint variables.
    MODEL_VERSION and MODEL_RUN_ID (set by deploy for a registry model) name it in every event."""
    model = load_model(
        settings.model_uri,
        settings.model_cache_dir,
        s3_client_factory=lambda: aws_client("s3"),
    )
    if not (settings.model_version or settings.model_run_id):
        return model
    info = ModelInfo(
        uri=model.info.uri,
        version=settings.model_version or model.info.version,
        run_id=settings.model_run_id or model.info.run_id,
    )
    return dataclasses.replace(model, info=info)


def kinesis_client(settings: Settings) -> Any:
    return aws_client("kinesis", endpoint_url=settings.kinesis_endpoint_url)


def build_service(settings: Settings, log: Log) -> ModelService:
    """Production wiring: the model, a Kinesis client, the output and dead-letter sinks."""
    model = load_configured_model(settings)
    kinesis = kinesis_client(settings)
    predictions = KinesisStreamWriter(kinesis, settings.predictions_stream, settings.put_records_retry)
    dead_letters: DeadLetterSink = (
        KinesisDeadLetters(
            KinesisStreamWriter(kinesis, settings.dead_letter_stream, settings.put_records_retry)
        )
        if settings.dead_letter_stream
        else LoggedDeadLetters(log)
    )
    log.info(
        "model loaded",
        extra={
            "model_uri": model.info.uri,
            "model_version": model.info.version,
            "flavor": model.flavor,
            "features": model.features.describe(),
            "self_test": f"passed on {len(model.known_rides.rides)} {model.known_rides.source}",
            **{name: round(value, 4) for name, value in model.timings.items()},
        },
    )
    if model.features.warning:
        log.warning(model.features.warning, extra={"model_uri": model.info.uri})
    if model.version_mismatch:
        log.warning("model and runtime differ: retrain or pin", extra={"problem": model.version_mismatch})
    return ModelService(model, predictions, dead_letters, log, ride_types(settings.ride_bounds).event)


def register_restore_hooks(service: ModelService, settings: Settings) -> bool:
    """SnapStart: after a restore, new jitter seeds and Kinesis client for the service's writers
    (stream/restore_hooks.py). False where the runtime never restores (an image, a local run)."""
    writers = [service.predictions]
    if isinstance(service.dead_letters, KinesisDeadLetters):
        writers.append(service.dead_letters.writer)
    return restore_hooks.register(writers, lambda: kinesis_client(settings))
