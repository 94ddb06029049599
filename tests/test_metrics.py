"""The function's metrics (stream/metrics.py): one valid Embedded Metric Format document per
invocation, even when the handler raises, and over a run under faults, sums that equal what the
streams hold; the local reader of a function log (local_aws/metrics.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.config import Config

from local_aws.__main__ import main as local_aws_main
from local_aws.fault_proxy import FaultProxy, Faults
from local_aws.kinesis_events import event_from_payloads
from local_aws.metrics import emf_documents, emf_problems, summarize
from model_service import BatchRetryError, KinesisDeadLetters, ModelFailureError, ModelService
from stream.kinesis_output import KinesisStreamWriter, RetryPolicy
from stream.metrics import METRICS, InvocationMetrics
from stream.model_loading import LoadedModel, load_model
from tests.conftest import FakeLambdaContext, RecordingLog, create_stream, read_stream

NAMESPACE, SERVICE = "Test/RideDuration", "ride-duration-test"
NO_DELAY = RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0)


def ride(ride_id: int) -> bytes:
    ride = {"PULocationID": 1 + ride_id % 265, "DOLocationID": 130, "trip_distance": 1 + ride_id % 9}
    return json.dumps({"ride": ride, "ride_id": ride_id}).encode()


def documents(text: str) -> list[dict[str, Any]]:
    return list(emf_documents(text.splitlines()))


def value(document: dict[str, Any], name: str) -> float:
    [number] = document[name]  # Powertools writes each value as a list of one
    return float(number)


@pytest.fixture(scope="module")
def model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(model_dir), tmp_path_factory.mktemp("cache"))


def test_each_invocation_writes_one_valid_emf_document_with_every_metric(
    kinesis: Any,
    model_dir: Path,
    import_function: Callable[..., ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_stream(kinesis, "preds")
    create_stream(kinesis, "dlq")
    function = import_function(
        MODEL_URI=str(model_dir),
        PREDICTIONS_STREAM_NAME="preds",
        DEAD_LETTER_STREAM_NAME="dlq",
        POWERTOOLS_METRICS_NAMESPACE=NAMESPACE,
        POWERTOOLS_SERVICE_NAME=SERVICE,
    )
    capsys.readouterr()
    outputs = []
    for first in (0, 100, 200):
        event = event_from_payloads(
            [ride(first + i) for i in range(5)] + [b"Hello, this is a test."],
            first_sequence_number=10_000 + first,
        )
        function.lambda_handler(event, FakeLambdaContext())
        outputs.append(capsys.readouterr().out)

    for invocation, output in enumerate(outputs):
        [document] = documents(output)  # exactly one per invocation
        assert emf_problems(document) == []
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == NAMESPACE
        assert directive["Dimensions"] == [["service"]]  # nothing of high cardinality
        assert document["service"] == SERVICE
        declared = [metric["Name"] for metric in directive["Metrics"]]
        assert sorted(declared) == sorted(METRICS)
        assert all(name in document for name in METRICS)
        units = {metric["Name"]: metric["Unit"] for metric in directive["Metrics"]}
        assert units["RecordsReceived"] == "Count"
        assert units["BatchLatency"] == units["PredictLatency"] == "Milliseconds"
        # The model version is a property (searchable in Logs Insights), not a dimension.
        assert document["model_version"] == function.service.model.info.version
        assert "model_version" not in directive["Dimensions"][0]
        assert (value(document, "RecordsReceived"), value(document, "RecordsPredicted")) == (6, 5)
        assert (value(document, "RecordsDeadLettered"), value(document, "RecordsRetried")) == (1, 0)
        assert value(document, "PutRecordsCalls") == 1
        assert value(document, "ColdStart") == (1 if invocation == 0 else 0)
        assert 0 < value(document, "PredictLatency") < value(document, "BatchLatency")
        assert 1 < value(document, "PredictedDurationMean") < 120  # minutes
    predictions = read_stream(kinesis, "preds")
    mean = sum(p["prediction"]["ride_duration"] for p in predictions[:5]) / 5
    assert value(documents(outputs[0])[0], "PredictedDurationMean") == pytest.approx(mean)


def run_like_lambda(service: ModelService, event: dict[str, Any]) -> dict[str, int]:
    """Deliver the event as Lambda's mapping would: again from the lowest reported record after a
    partial failure, the whole batch again after the handler raised."""
    records, start = event["Records"], 0
    counts = {"invocations": 0, "delivered": 0, "reported": 0, "raised": 0}
    while start < len(records) and counts["invocations"] < 50:
        batch = records[start:]
        counts["invocations"] += 1
        counts["delivered"] += len(batch)
        try:
            response = service.handle({"Records": batch}, FakeLambdaContext())
        except BatchRetryError:
            counts["raised"] += len(batch)
            continue
        failed = [failure["itemIdentifier"] for failure in response["batchItemFailures"]]
        counts["reported"] += len(failed)
        if not failed:
            break
        lowest = min(failed, key=int)
        start += next(i for i, r in enumerate(batch) if r["kinesis"]["sequenceNumber"] == lowest)
    return counts


def container(model: LoadedModel, kinesis: Any, client: Any, preds: str, dlq: str) -> ModelService:
    """A warm container whose prediction writes go through `client`, dead letters to moto itself."""
    return ModelService(
        model,
        KinesisStreamWriter(client, preds, NO_DELAY),
        KinesisDeadLetters(KinesisStreamWriter(kinesis, dlq, NO_DELAY)),
        RecordingLog(),
        metrics=InvocationMetrics(NAMESPACE, SERVICE, model.info.version),
    )


def test_the_metric_sums_of_a_run_under_faults_equal_what_the_streams_hold(
    model: LoadedModel, moto_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Throttled calls and rejected entries on the predictions stream (the fault proxy, over
    HTTP to moto): records reported for retry, batches raised whole, re-deliveries skipped."""
    kinesis = boto3.client("kinesis", endpoint_url=moto_server, region_name="us-east-1")
    preds, dlq = f"preds-{uuid.uuid4().hex[:8]}", f"dlq-{uuid.uuid4().hex[:8]}"
    create_stream(kinesis, preds)
    create_stream(kinesis, dlq)
    payloads = [b"not json" if i % 10 == 3 else ride(i) for i in range(120)]
    events = [
        event_from_payloads(payloads[i : i + 40], first_sequence_number=1_000 + i) for i in range(0, 120, 40)
    ]
    one_try = Config(retries={"total_max_attempts": 1}, region_name="us-east-1")
    counts: dict[str, int] = {}
    injected: dict[str, int] = {}
    capsys.readouterr()
    # First a container whose writes are all throttled: the handler raises, whole batches...
    with FaultProxy(moto_server, Faults(throttle=1.0)) as proxy:
        down = container(
            model, kinesis, boto3.client("kinesis", endpoint_url=proxy.url, config=one_try), preds, dlq
        )
        for _ in range(2):
            with pytest.raises(BatchRetryError):
                down.handle(events[0], FakeLambdaContext())
            counts["delivered"] = counts.get("delivered", 0) + len(events[0]["Records"])
            counts["raised"] = counts.get("raised", 0) + len(events[0]["Records"])
        injected["calls"] = proxy.injected["calls"]
    # ... then another container, under throttling and rejected entries: partial retries.
    with FaultProxy(moto_server, Faults(throttle=0.2, reject_entries=0.3), seed=5) as proxy:
        flaky = container(
            model, kinesis, boto3.client("kinesis", endpoint_url=proxy.url, config=one_try), preds, dlq
        )
        for event in events:
            for key, count in run_like_lambda(flaky, event).items():
                counts[key] = counts.get(key, 0) + count
        injected["calls"] += proxy.injected["calls"]
        injected["rejected_entries"] = proxy.injected["rejected_entries"]

    run = summarize(capsys.readouterr().out.splitlines())
    assert run.invalid == []
    assert run.documents == counts["invocations"] + 2  # one per invocation, raised ones too
    on_stream = read_stream(kinesis, preds)
    dead_letters = read_stream(kinesis, dlq)
    assert run.sum("RecordsPredicted") == len(on_stream)
    assert run.sum("RecordsDeadLettered") == len(dead_letters)
    assert run.sum("RecordsReceived") == counts["delivered"]
    assert run.sum("RecordsRetried") == counts["reported"] + counts["raised"]
    assert run.sum("PutRecordsCalls") == injected["calls"]
    assert run.sum("PutRecordsRejectedEntries") == injected["rejected_entries"] > 0
    assert run.sum("ColdStart") == 2  # two containers
    # The faults did what they were meant to: partial retries, and re-deliveries skipped.
    assert counts["reported"] > 0
    assert run.sum("RecordsSkippedAsDuplicate") > 0
    # Every ride ended on a stream.
    ride_ids = {p["prediction"]["ride_id"] for p in on_stream}
    assert ride_ids == {i for i in range(120) if i % 10 != 3}
    assert len({letter["source"]["event_id"] for letter in dead_letters}) == 12


class BrokenModel:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def predict_rides(self, rides: Any) -> Any:
        raise RuntimeError("the model is broken")


def test_when_the_model_fails_the_batch_is_counted_as_retried_whole(
    kinesis: Any, model: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    create_stream(kinesis, "preds")
    service = ModelService(
        BrokenModel(model),  # type: ignore[arg-type]
        KinesisStreamWriter(kinesis, "preds", NO_DELAY),
        KinesisDeadLetters(KinesisStreamWriter(kinesis, "dlq", NO_DELAY)),
        RecordingLog(),
        metrics=InvocationMetrics(NAMESPACE, SERVICE, "7"),
    )
    capsys.readouterr()
    with pytest.raises(ModelFailureError):
        service.handle(event_from_payloads([ride(1), ride(2), ride(3)]), FakeLambdaContext())

    [document] = documents(capsys.readouterr().out)
    assert emf_problems(document) == []
    assert (value(document, "RecordsReceived"), value(document, "RecordsRetried")) == (3, 3)
    assert value(document, "RecordsPredicted") == value(document, "RecordsDeadLettered") == 0
    assert (value(document, "ColdStart"), document["model_version"]) == (1, "7")
    assert document["batch_failed"] == "ModelFailureError"
    assert value(document, "BatchLatency") > 0
    # No result, so no predict time and no mean of predictions: absent, not a made-up zero.
    assert "PredictLatency" not in document
    assert "PredictedDurationMean" not in document


def test_an_event_that_is_not_from_kinesis_still_writes_its_document(
    kinesis: Any, model: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    service = container(model, kinesis, kinesis, "preds", "dlq")
    capsys.readouterr()
    with pytest.raises(TypeError):
        service.handle({"not": "kinesis"}, FakeLambdaContext())
    [document] = documents(capsys.readouterr().out)
    assert value(document, "RecordsReceived") == value(document, "RecordsRetried") == 0
    assert document["batch_failed"] == "NotAKinesisEventError"


def test_metrics_that_cannot_be_written_never_fail_the_batch(
    kinesis: Any, model: LoadedModel, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    create_stream(kinesis, "preds")
    log = RecordingLog()
    service = container(model, kinesis, kinesis, "preds", "dlq")
    service.metrics.log = log

    def broken_flush(**_: Any) -> None:
        raise ValueError("no namespace")

    monkeypatch.setattr(service.metrics.metrics, "flush_metrics", broken_flush)
    assert service.handle(event_from_payloads([ride(1)]), FakeLambdaContext()) == {"batchItemFailures": []}
    [warning] = log.find("metrics not emitted")
    assert "no namespace" in warning["error"]
    assert len(read_stream(kinesis, "preds")) == 1
    monkeypatch.undo()
    service.handle(event_from_payloads([ride(2)], first_sequence_number=5), FakeLambdaContext())
    [document] = documents(capsys.readouterr().out)  # the next one is whole, not mixed with the lost one
    assert value(document, "RecordsReceived") == 1


# --- the local reader -------------------------------------------------------------------------


def test_the_reader_names_what_cloudwatch_would_refuse() -> None:
    valid = {
        "_aws": {
            "Timestamp": 1_700_000_000_000,
            "CloudWatchMetrics": [
                {"Namespace": "N", "Dimensions": [["service"]], "Metrics": [{"Name": "M", "Unit": "Count"}]}
            ],
        },
        "service": "s",
        "M": [1.0, 2.0],
    }
    assert emf_problems(valid) == []
    assert emf_problems({**valid, "M": "three"}) == [
        "M: value 'three' is not a number or a list of 1-100 numbers"
    ]
    assert emf_problems({**valid, "service": 7}) == [
        "CloudWatchMetrics[0]: dimension 'service' has no string value in the document"
    ]
    directive = valid["_aws"]["CloudWatchMetrics"][0]  # type: ignore[index]
    wrong_unit = {
        **valid,
        "_aws": {
            **valid["_aws"],
            "CloudWatchMetrics": [{**directive, "Metrics": [{"Name": "M", "Unit": "Minutes"}]}],
        },
    }  # type: ignore[dict-item]
    assert emf_problems(wrong_unit) == ["M: unit 'Minutes' is not a CloudWatch unit"]
    assert emf_problems({**valid, "_aws": {"Timestamp": "now", "CloudWatchMetrics": []}}) == [
        "_aws.Timestamp is not a number of milliseconds",
        "_aws.CloudWatchMetrics is not a non-empty list",
    ]


def test_python_m_local_aws_metrics_prints_the_sums_of_a_function_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = InvocationMetrics(NAMESPACE, SERVICE, "3")
    for received in (3, 4):
        with metrics.invocation() as invocation:
            invocation.kinesis_records = received
    emf = capsys.readouterr().out
    log = tmp_path / "function.log"
    log.write_text(
        f"START RequestId: 1 Version: $LATEST\n{emf}" + '{"level": "INFO", "message": "batch processed"}\n'
    )

    assert local_aws_main(["metrics", str(log)]) == 0
    out = capsys.readouterr().out
    assert f"2 EMF documents in {log} (namespace {NAMESPACE}, service {SERVICE}), all valid" in out
    [received] = [line.split() for line in out.splitlines() if line.startswith("RecordsReceived ")]
    assert received[:4] == ["RecordsReceived", "Count", "7", "2"]  # the sum, and two datapoints

    log.write_text('{"_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "", "Metrics": []}]}}\n')
    assert local_aws_main(["metrics", str(log)]) == 1
    assert "Namespace must be 1-255 characters" in capsys.readouterr().out
    assert local_aws_main(["metrics", str(tmp_path / "missing.log")]) == 2


def test_the_namespace_and_service_default_to_the_projects_names() -> None:
    from stream.settings import Settings

    settings = Settings.from_env({"MODEL_URI": "m"})
    assert (settings.metrics_namespace, settings.service_name) == ("RideDuration", "ride-duration-prediction")
    named = Settings.from_env(
        {"MODEL_URI": "m", "POWERTOOLS_METRICS_NAMESPACE": "N", "POWERTOOLS_SERVICE_NAME": "s"}
    )
    assert (named.metrics_namespace, named.service_name) == ("N", "s")
