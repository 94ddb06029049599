"""The streaming ride-duration service: one Kinesis batch in, predictions out.

Read `ModelService.process` top to bottom: unpack KPL-aggregated records into their user
records, set aside re-delivered records this container already wrote, decode and validate every
other record, predict all valid rides with ONE model call, write the predictions with
PutRecords, dead-letter the records no retry can fix, and report the rest to Lambda for a retry,
all within the invocation's time budget. Every user record (a plain Kinesis record is one, a KPL
aggregate carries many, a corrupt aggregate is one) ends as exactly one `Outcome`;
`BatchResult.response()` names each Kinesis record that must come back, once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from stream import restore_hooks
from stream.deadline import BoundedClients, Deadline
from stream.deaggregation import deaggregate
from stream.features import RideColumns
from stream.kinesis_output import FailedWrite, KinesisStreamWriter, WriteResult, to_output_record
from stream.metrics import BatchFigures, InvocationMetrics
from stream.model_loading import LoadedModel, load_model
from stream.redelivery import RedeliveryMemory
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
from stream.tracing import NoTracing, StepTracer, traced_step, tracer_for

if TYPE_CHECKING:
    from botocore.config import Config


def predict_durations(model: LoadedModel, rides: Sequence[Ride]) -> list[float]:
    """Minutes per ride, in ONE model call, the input shaped as the model declared at load
    (stream/features.py). Shared by the stream and web modes; batch scoring calls the same
    LoadedModel.predict_minutes with its valid rows by column."""
    return model.predict_rides(RideColumns.from_rides(rides))


def mean_duration(predictions: Sequence[tuple[KinesisRecord, PredictionEvent]]) -> float | None:
    """Minutes, over the batch's predictions: the cheapest drift signal (a metric per batch)."""
    return math.fsum(p.ride_duration for _, p in predictions) / len(predictions) if predictions else None


class Outcome(Enum):
    PREDICTED = "predicted"
    DEAD_LETTERED = "dead_lettered"
    RETRY = "retry"
    # Re-delivered records this container had already written (stream/redelivery.py): done,
    # and not written again.
    ALREADY_PREDICTED = "already_predicted"
    ALREADY_DEAD_LETTERED = "already_dead_lettered"


# What the re-delivery memory holds for a written record -> its outcome when it comes back.
WRITTEN_BEFORE = {
    Outcome.PREDICTED.value: Outcome.ALREADY_PREDICTED,
    Outcome.DEAD_LETTERED.value: Outcome.ALREADY_DEAD_LETTERED,
}


@dataclass(slots=True)  # per record: not frozen (see ride_events.KinesisRecord)
class RecordOutcome:
    """What became of one user record, and why when it was not predicted. A RETRY whose
    write failed for a reason no retry cures (a missing stream, no permission) is not
    `retryable`: Lambda still gets it back once the configuration is fixed."""

    record: KinesisRecord
    outcome: Outcome
    reason: str | None = None
    retryable: bool = True


class BatchRetryError(RuntimeError):
    """The batch must be retried whole: no prediction could be written, or a write failed for
    a reason only a change of configuration cures."""


class ModelFailureError(RuntimeError):
    """The model failed on every ride of the batch: the model is broken, not the rides."""


@dataclass
class BatchResult:
    """One outcome per user record (what the output streams hold one record for), and from them
    the Kinesis records Lambda must deliver again (what batchItemFailures names)."""

    outcomes: list[RecordOutcome]
    timings_ms: dict[str, float] = field(default_factory=dict)
    put_records_calls: int = 0
    put_records_rejected: int = 0
    predicted_duration_mean: float | None = None  # minutes, over the batch's predictions

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o.outcome is outcome)

    @property
    def retries(self) -> list[RecordOutcome]:
        return [o for o in self.outcomes if o.outcome is Outcome.RETRY]

    @property
    def kinesis_records(self) -> int:
        """How many Kinesis records the batch held: each plain or corrupt record has one outcome
        without a sub-sequence number, each valid KPL aggregate one user record numbered 0."""
        return sum(1 for o in self.outcomes if not o.record.sub_sequence_number)

    @property
    def kinesis_records_to_retry(self) -> list[str]:
        """The sequence numbers of the Kinesis records to deliver again, each once, in batch order:
        an aggregate comes back whole if any of its user records must be retried (those written
        already are then skipped by the re-delivery memory)."""
        return list(dict.fromkeys(o.record.sequence_number for o in self.retries))

    @property
    def skipped_as_duplicate(self) -> int:
        """Re-delivered records already written by this container, so not written again."""
        return self.count(Outcome.ALREADY_PREDICTED) + self.count(Outcome.ALREADY_DEAD_LETTERED)

    @property
    def must_fail_whole_batch(self) -> bool:
        """Raise instead of reporting items. Decided by the writes alone (dead letters count
        neither way): something must be retried and no prediction of the batch is written (now
        or before a re-delivery), or a write failed for a reason no retry cures, or a record
        to retry has no sequence number to report it by."""
        retries = self.retries
        if not retries:
            return False
        if any(not o.retryable or not o.record.sequence_number for o in retries):
            return True
        written = (Outcome.PREDICTED, Outcome.ALREADY_PREDICTED)
        return not any(o.outcome in written for o in self.outcomes)

    @property
    def failure_reason(self) -> str | None:
        """The error to raise with: one no retry cures if there is one, else the first."""
        retries = self.retries
        return next((o.reason for o in retries if not o.retryable), retries[0].reason if retries else None)

    def response(self) -> dict[str, list[dict[str, str]]]:
        """ReportBatchItemFailures: Lambda re-delivers from the lowest sequence number named."""
        return {"batchItemFailures": [{"itemIdentifier": number} for number in self.kinesis_records_to_retry]}

    def figures(self) -> BatchFigures:
        """The batch as its metrics count it (stream/metrics.py)."""
        return BatchFigures(
            received=len(self.outcomes),
            predicted=self.count(Outcome.PREDICTED),
            dead_lettered=self.count(Outcome.DEAD_LETTERED),
            retried=len(self.response()["batchItemFailures"]),
            skipped_as_duplicate=self.skipped_as_duplicate,
            put_records_calls=self.put_records_calls,
            put_records_rejected=self.put_records_rejected,
            batch_ms=self.timings_ms.get("total_ms", 0.0),
            predict_ms=self.timings_ms.get("predict_ms", 0.0),
            predicted_duration_mean=self.predicted_duration_mean,
        )


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
    def put(self, letters: Sequence[DeadLetter], deadline: Deadline) -> list[FailedWrite]:
        """Store the letters before the deadline; return those that could not be stored."""
        ...


class Log(Protocol):
    def info(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def error(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None: ...


class LoggedDeadLetters:
    """Without a dead-letter stream, each letter is logged at ERROR with its data, cut to stay
    within one CloudWatch Logs event (MAX_LOGGED_DEAD_LETTER_DATA_CHARS)."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def put(self, letters: Sequence[DeadLetter], deadline: Deadline | None = None) -> list[FailedWrite]:
        for letter in letters:
            self.log.error(
                "dead letter", extra={"dead_letter": letter.to_dict(MAX_LOGGED_DEAD_LETTER_DATA_CHARS)}
            )
        return []


class KinesisDeadLetters:
    """Dead letters as JSON records on a Kinesis stream, keyed by the input's partition key.
    A letter Kinesis could never take (over its record limits) is logged at ERROR instead."""

    def __init__(self, writer: KinesisStreamWriter, log: Log | None = None) -> None:
        self.writer = writer
        self.too_big = LoggedDeadLetters(log or logging.getLogger(__name__))

    def put(self, letters: Sequence[DeadLetter], deadline: Deadline | None = None) -> list[FailedWrite]:
        result = self.writer.put([to_output_record(letter, letter) for letter in letters], deadline)
        self.too_big.put([refused.record.source for refused in result.refused])
        return result.failed


class ModelService:
    """Turns one Kinesis event into predictions, dead letters and a batchItemFailures response."""

    def __init__(
        self,
        model: LoadedModel,
        predictions: KinesisStreamWriter,
        dead_letters: DeadLetterSink,
        log: Log,
        ride_event_type: type[RideEvent] = RideEvent,
        *,
        memory: RedeliveryMemory | None = None,
        safety_margin_s: float = 1.0,
        metrics: InvocationMetrics | None = None,
        tracing: StepTracer | None = None,
    ) -> None:
        self.model = model
        self.predictions = predictions
        self.dead_letters = dead_letters
        self.log = log
        self.ride_event_type = ride_event_type  # ride_types(settings.ride_bounds).event: the bounds
        self.memory = RedeliveryMemory() if memory is None else memory
        self.safety_margin_s = safety_margin_s
        self.metrics = metrics or InvocationMetrics(model_version=model.info.version, log=log)
        self.tracing = tracing or NoTracing()

    def handle(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """The Lambda handler's work: process, log, answer (or raise for a whole-batch retry);
        one metrics document either way."""
        with self.metrics.invocation() as invocation:
            records = [KinesisRecord.from_raw(raw) for raw in kinesis_event_records(event)]
            invocation.kinesis_records = len(records)
            result = self.process(records, Deadline.from_context(context, self.safety_margin_s))
            invocation.figures = result.figures()
            self.log_result(result)
            if result.must_fail_whole_batch:
                raise BatchRetryError(
                    f"{len(result.retries)} of {len(result.outcomes)} records failed: {result.failure_reason}"
                )
        return result.response()

    def process(self, records: Sequence[KinesisRecord], deadline: Deadline | None = None) -> BatchResult:
        deadline = deadline or Deadline.none()
        started = time.perf_counter()
        user_records = deaggregate(records)  # KPL aggregates -> their user records
        fresh, skipped = self.set_aside_written_before(user_records)
        rides, poison = self.decode(fresh)
        decoded = time.perf_counter()
        predictions, unpredictable = self.predict(rides)
        predicted = time.perf_counter()
        outcomes, writes, refused = self.write_predictions(predictions, deadline)
        outcomes += self.dead_letter(poison + unpredictable + refused, deadline)
        self.remember_written(outcomes)
        written = time.perf_counter()
        return BatchResult(
            outcomes=skipped + outcomes,
            put_records_calls=writes.calls,
            put_records_rejected=writes.rejected,
            predicted_duration_mean=mean_duration(predictions),
            timings_ms={
                "decode_ms": (decoded - started) * 1000,
                "predict_ms": (predicted - decoded) * 1000,
                "write_ms": (written - predicted) * 1000,
                "total_ms": (written - started) * 1000,
            },
        )

    def set_aside_written_before(
        self, records: Sequence[KinesisRecord]
    ) -> tuple[list[KinesisRecord], list[RecordOutcome]]:
        """Re-delivered records this container already wrote are done: they are not written again
        (keyed by event id: a KPL user record has its own)."""
        if len(self.memory) == 0:  # nothing written yet, or the memory is off
            return list(records), []
        fresh: list[KinesisRecord] = []
        skipped: list[RecordOutcome] = []
        for record, written in zip(records, self.memory.recall([r.event_id for r in records]), strict=True):
            if written is None:
                fresh.append(record)
            else:
                skipped.append(RecordOutcome(record, WRITTEN_BEFORE[written], "written before a re-delivery"))
        return fresh, skipped

    def remember_written(self, outcomes: list[RecordOutcome]) -> None:
        for outcome in (Outcome.PREDICTED, Outcome.DEAD_LETTERED):
            self.memory.remember((o.record.event_id for o in outcomes if o.outcome is outcome), outcome.value)

    @traced_step("decode")
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

    @traced_step("predict")
    def predict(
        self, rides: list[tuple[KinesisRecord, RideEvent]]
    ) -> tuple[list[tuple[KinesisRecord, PredictionEvent]], list[DeadLetter]]:
        """One model call for the batch; a ride the model fails on (it raises, or answers NaN or
        infinity) is a dead letter, unless it fails on every ride: then the model is at fault."""
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
        if unpredictable:
            self._model_failed(len(rides), unpredictable, every_ride=not predictions)
        return predictions, unpredictable

    def _model_failed(self, rides: int, failures: list[DeadLetter], every_ride: bool) -> None:
        """ERROR either way; on every ride, raise: dead letters would hide a broken model, and a
        function error lets Lambda retry, bisect and fire the Errors alarm."""
        reasons = dict(Counter(letter.reason for letter in failures).most_common(3))
        if every_ride:
            self.log.error(
                "model failed on every ride: nothing written", extra={"rides": rides, "errors": reasons}
            )
            raise ModelFailureError(
                f"the model failed on every ride of the batch ({rides} rides), nothing was written: "
                f"{failures[0].reason}"
            )
        self.log.error(
            "model failed on some rides: dead-lettered",
            extra={"rides": rides, "failed": len(failures), "errors": reasons},
        )

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

    @traced_step("write")
    def write_predictions(
        self, predictions: list[tuple[KinesisRecord, PredictionEvent]], deadline: Deadline
    ) -> tuple[list[RecordOutcome], WriteResult, list[DeadLetter]]:
        """PutRecords to the output stream; entries still rejected after retries are retried by
        Lambda; a prediction Kinesis could never take comes back as a dead letter."""
        if not predictions:
            return [], WriteResult(), []
        result = self.predictions.put(
            [to_output_record(event, record) for record, event in predictions], deadline
        )
        outcomes = [RecordOutcome(written.source, Outcome.PREDICTED) for written in result.written]
        outcomes += [
            RecordOutcome(f.record.source, Outcome.RETRY, f.error, f.retryable) for f in result.failed
        ]
        refused = [
            DeadLetter(f.record.source, f"prediction cannot be written: {f.error}") for f in result.refused
        ]
        return outcomes, result, refused

    @traced_step("dead_letter")
    def dead_letter(self, letters: list[DeadLetter], deadline: Deadline) -> list[RecordOutcome]:
        """Poison records are set aside, never retried; if that fails, Lambda retries them."""
        if not letters:
            return []
        self.log.warning(
            "records dead-lettered",
            extra={
                "dead_letters": [
                    {
                        "sequence_number": d.record.sequence_number,
                        "sub_sequence_number": d.record.sub_sequence_number,  # None: a plain record
                        "reason": d.reason,
                    }
                    for d in letters
                ]
            },
        )
        failed = {id(f.record.source): f for f in self.dead_letters.put(letters, deadline)}
        return [
            RecordOutcome(
                letter.record,
                Outcome.RETRY,
                f"dead letter not stored: {failed[id(letter)].error}",
                failed[id(letter)].retryable,
            )
            if id(letter) in failed
            else RecordOutcome(letter.record, Outcome.DEAD_LETTERED, letter.reason)
            for letter in letters
        ]

    def log_result(self, result: BatchResult) -> None:
        """Counts, model version and time per batch; never ride payloads."""
        self.log.info(
            "batch processed",
            extra={
                "received": len(result.outcomes),
                "kinesis_records": result.kinesis_records,
                "predicted": result.count(Outcome.PREDICTED),
                "dead_lettered": result.count(Outcome.DEAD_LETTERED),
                "retryable": result.count(Outcome.RETRY),
                "skipped_as_duplicate": result.skipped_as_duplicate,
                "model_version": self.model.info.version,
                "put_records_calls": result.put_records_calls,
                "put_records_rejected": result.put_records_rejected,
                **{name: round(value, 3) for name, value in result.timings_ms.items()},
            },
        )
        if result.retries:
            errors = Counter(o.reason for o in result.retries)
            self.log.error(
                "records reported for retry",
                extra={
                    "retryable": len(result.retries),
                    "not_retryable": sum(1 for o in result.retries if not o.retryable),
                    "errors": dict(errors.most_common(5)),
                },
            )


def aws_client_config() -> Config:
    """S3 (the model): whole-call retries by botocore's standard mode (AWS_MAX_ATTEMPTS, default
    3 attempts); timeouts well under the function's, so a stuck endpoint fails fast (defaults
    are 60 s). Kinesis clients come from stream/deadline.py: they must fit the time budget."""
    from botocore.config import Config  # noqa: PLC0415 - see aws_client

    return Config(retries={"mode": "standard"}, connect_timeout=3, read_timeout=20)


def aws_client(service: str, config: Config | None = None, **options: Any) -> Any:
    """A boto3 client, configured by aws_client_config unless `config` is given. boto3 and botocore are imported here, not
    with this module: batch scoring and the web service with a local model never make a client,
    and importing them is 0.2 s of their start (measured here). The function makes its Kinesis
    client at init, so its cold start is the same."""
    import boto3  # noqa: PLC0415

    return boto3.client(service, config=config or aws_client_config(), **options)  # type: ignore[call-overload]


def load_configured_model(settings: Settings) -> LoadedModel:
    """The model named by the settings; S3 is reached through boto3's standard endpoint variables.
    MODEL_VERSION and MODEL_RUN_ID (set by deploy for a registry model) name it in every event."""
    model = load_model(
        settings.model_uri,
        settings.model_cache_dir,
        s3_client_factory=lambda: aws_client("s3"),
        expected_sha256=settings.model_sha256,
    )
    if not (settings.model_version or settings.model_run_id):
        return model
    info = ModelInfo(
        uri=model.info.uri,
        version=settings.model_version or model.info.version,
        run_id=settings.model_run_id or model.info.run_id,
    )
    return dataclasses.replace(model, info=info)


def build_service(settings: Settings, log: Log) -> ModelService:
    """Production wiring: the model, a Kinesis client, the output and dead-letter sinks, metrics
    and (if asked for) tracing."""
    tracing = tracer_for(settings.tracing, settings.service_name)  # patches botocore: first
    model = load_configured_model(settings)
    kinesis = BoundedClients(
        lambda config: aws_client("kinesis", config, endpoint_url=settings.kinesis_endpoint_url)
    )

    def writer(stream: str) -> KinesisStreamWriter:
        return KinesisStreamWriter(kinesis.default, stream, settings.put_records_retry, clients=kinesis)

    dead_letters: DeadLetterSink = (
        KinesisDeadLetters(writer(settings.dead_letter_stream), log)
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
    return ModelService(
        model,
        writer(settings.predictions_stream),
        dead_letters,
        log,
        ride_types(settings.ride_bounds).event,
        memory=RedeliveryMemory(settings.redelivery_memory_size),
        safety_margin_s=settings.deadline_safety_margin_s,
        metrics=InvocationMetrics(settings.metrics_namespace, settings.service_name, model.info.version, log),
        tracing=tracing,
    )


def register_restore_hooks(service: ModelService) -> bool:
    """SnapStart: after a restore, new jitter seeds and Kinesis clients for the service's writers
    and an empty re-delivery memory (stream/restore_hooks.py). False where the runtime never
    restores (an image, a local run)."""
    writers = [service.predictions]
    if isinstance(service.dead_letters, KinesisDeadLetters):
        writers.append(service.dead_letters.writer)
    return restore_hooks.register(writers, memories=[service.memory])
