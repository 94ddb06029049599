"""What each invocation did, as CloudWatch metrics: ONE Embedded Metric Format document per
invocation (Powertools `Metrics`), printed to stdout, where Lambda's log pipeline turns it into
metrics with no API call and no extra latency.

Namespace POWERTOOLS_METRICS_NAMESPACE (default `RideDuration`), one dimension, `service`
(POWERTOOLS_SERVICE_NAME: the stack sets the function's name, so stages never mix); the model
version is a property of the document (searchable in Logs Insights), never a dimension. The
record counts are user records (after KPL de-aggregation, once there is any); `RecordsRetried`
counts the Kinesis records Lambda is asked to retry: the `batchItemFailures`, or the whole
batch when the handler raises. The document is written even then: an invocation that fails is
the one an operator most needs to see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from aws_lambda_powertools.metrics import Metrics, MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

DEFAULT_NAMESPACE = "RideDuration"
DEFAULT_SERVICE = "ride-duration-prediction"

# Every document has the record counts, PutRecords figures, BatchLatency and ColdStart.
# PredictLatency and PredictedDurationMean need a batch that got as far as the model:
# absent when the handler raised before it had a result (a broken model, a bug), and the mean
# when no ride was predicted (a mean of nothing would drag the average down).
COUNTS = {
    "RecordsReceived": "received",
    "RecordsPredicted": "predicted",
    "RecordsDeadLettered": "dead_lettered",
    "RecordsRetried": "retried",
    "RecordsSkippedAsDuplicate": "skipped_as_duplicate",
    "PutRecordsCalls": "put_records_calls",
    "PutRecordsRejectedEntries": "put_records_rejected",
}
METRICS = (*COUNTS, "BatchLatency", "PredictLatency", "PredictedDurationMean", "ColdStart")


class Log(Protocol):
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchFigures:
    """What one processed batch did, as the metrics count it."""

    received: int
    predicted: int
    dead_lettered: int
    retried: int  # Kinesis records in batchItemFailures
    skipped_as_duplicate: int
    put_records_calls: int
    put_records_rejected: int  # entries Kinesis rejected, resent or not
    batch_ms: float
    predict_ms: float
    predicted_duration_mean: float | None  # minutes, over the rides the model predicted


@dataclass(slots=True)
class Invocation:
    """Filled in by the handler as it goes: how many Kinesis records came, and what became of them."""

    kinesis_records: int = 0
    figures: BatchFigures | None = None
    started: float = field(default_factory=time.perf_counter)


class InvocationMetrics:
    """Writes one EMF document per invocation (`with metrics.invocation() as invocation:`).

    Writing a document measured 60-100 us here (`make bench`), 0.3-0.4 % of a 100-record batch:
    most of it is Powertools checking each metric as it is added, a price kept for its schema
    checks. A failure to emit is logged and never fails the batch.
    """

    def __init__(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        service: str = DEFAULT_SERVICE,
        model_version: str = "",
        log: Log | None = None,
    ) -> None:
        # A provider of its own: Metrics() alone shares its metric set with every instance in
        # the process (Powertools keeps it on the class).
        self.metrics = Metrics(provider=AmazonCloudWatchEMFProvider(namespace=namespace, service=service))
        self.model_version = model_version
        self.log = log or logging.getLogger(__name__)
        # Powertools' own cold-start metric is a second document with a function_name
        # dimension, and is skipped when the handler raises: ours is in the one document.
        self.cold = True

    @contextmanager
    def invocation(self) -> Iterator[Invocation]:
        invocation = Invocation()
        error: BaseException | None = None
        try:
            yield invocation
        except BaseException as raised:
            error = raised
            raise
        finally:
            self.emit(invocation, error)

    def emit(self, invocation: Invocation, error: BaseException | None = None) -> None:
        try:
            self._add(invocation, error)
            self.metrics.flush_metrics()
        except Exception as failure:  # noqa: BLE001 - metrics must never fail or retry a batch
            self.metrics.clear_metrics()
            self.log.warning("metrics not emitted", extra={"error": repr(failure)})

    def _add(self, invocation: Invocation, error: BaseException | None) -> None:
        figures = invocation.figures or BatchFigures(
            invocation.kinesis_records, 0, 0, 0, 0, 0, 0, 0.0, 0.0, None
        )
        counts = {name: getattr(figures, attribute) for name, attribute in COUNTS.items()}
        if error is not None:  # Lambda retries the whole batch
            counts["RecordsRetried"] = invocation.kinesis_records
            self.metrics.add_metadata(key="batch_failed", value=type(error).__name__)
        add = self.metrics.add_metric
        for name, count in counts.items():
            add(name=name, unit=MetricUnit.Count, value=count)
        if invocation.figures is None:
            add(
                name="BatchLatency",
                unit=MetricUnit.Milliseconds,
                value=(time.perf_counter() - invocation.started) * 1000,
            )
        else:
            add(name="BatchLatency", unit=MetricUnit.Milliseconds, value=figures.batch_ms)
            add(name="PredictLatency", unit=MetricUnit.Milliseconds, value=figures.predict_ms)
            if figures.predicted_duration_mean is not None:
                add(
                    name="PredictedDurationMean",
                    unit=MetricUnit.NoUnit,  # minutes: CloudWatch has no such unit
                    value=figures.predicted_duration_mean,
                )
        add(name="ColdStart", unit=MetricUnit.Count, value=1 if self.cold else 0)
        self.cold = False
        self.metrics.add_metadata(key="model_version", value=self.model_version)
