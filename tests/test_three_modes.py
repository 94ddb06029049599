"""On the stream, on request and in bulk: the same ride gets the same prediction, to the bit,
for both shapes of model (feature dicts for a DictVectorizer pipeline, a 2-D array for a
model over named columns), in one model call per batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.scoring import open_trips, score
from local_aws.kinesis_events import event_from_payloads
from model_service import LoggedDeadLetters, ModelService
from stream.features import FeatureArray, FeatureDicts
from stream.kinesis_output import KinesisStreamWriter, RetryPolicy
from stream.model_loading import LoadedModel, load_model
from tests.conftest import (
    GunicornProcess,
    RecordingLog,
    WebServer,
    create_stream,
    read_stream,
    service_environment,
)

RIDES = [
    {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
    {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40.0},
    {"PULocationID": 1, "DOLocationID": 265, "trip_distance": 0.0},
    {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 1.2},
]


@pytest.fixture(scope="module")
def model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(model_dir), tmp_path_factory.mktemp("cache"))


class CountingPredictor:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.inputs: list[Any] = []

    def predict(self, model_input: Any) -> Any:
        self.inputs.append(model_input)
        return self.inner.predict(model_input)


def on_the_stream(kinesis: Any, model: LoadedModel) -> tuple[list[float], set[str]]:
    create_stream(kinesis, "ride_predictions")
    log = RecordingLog()
    writer = KinesisStreamWriter(
        kinesis, "ride_predictions", RetryPolicy(max_attempts=2, base_delay=0, max_delay=0)
    )
    service = ModelService(model, writer, LoggedDeadLetters(log), log)
    payloads = [json.dumps({"ride": ride, "ride_id": i}).encode() for i, ride in enumerate(RIDES)]

    assert service.handle(event_from_payloads(payloads)) == {"batchItemFailures": []}

    events = sorted(read_stream(kinesis, "ride_predictions"), key=lambda e: e["prediction"]["ride_id"])
    return [e["prediction"]["ride_duration"] for e in events], {e["version"] for e in events}


def on_request(web_server: WebServer) -> tuple[list[float], set[str]]:
    status, answers, _ = web_server.post("/predict", RIDES)
    assert status == 200
    return [a["duration"] for a in answers], {a["model_version"] for a in answers}


def in_bulk(model: LoadedModel, tmp_path: Path) -> tuple[list[float], set[str]]:
    trips = pa.Table.from_pylist(RIDES).append_column(
        "lpep_pickup_datetime", pa.array([0] * len(RIDES), pa.timestamp("us"))
    )
    pq.write_table(trips, tmp_path / "trips.parquet")
    score(model, open_trips(str(tmp_path / "trips.parquet")), str(tmp_path / "out.parquet"))
    out = pq.read_table(tmp_path / "out.parquet")
    return out["predicted_duration"].to_pylist(), set(out["model_version"].to_pylist())


def test_the_three_modes_give_the_same_prediction_for_the_same_ride(
    kinesis: Any, model: LoadedModel, web_server: WebServer, tmp_path: Path
) -> None:
    stream, stream_versions = on_the_stream(kinesis, model)
    web, web_versions = on_request(web_server)
    batch, batch_versions = in_bulk(model, tmp_path)

    assert stream == web == batch
    assert len(set(stream)) == len(RIDES)  # four different answers, not one value repeated
    assert stream_versions == web_versions == batch_versions == {model.info.version}


# Per shape: the builder chosen, what the model is given for RIDES[0], its model and server.
SHAPES = {
    "dict": (FeatureDicts, {"PU_DO": "130_205", "trip_distance": 3.66}, "model_dir", "web_server"),
    "columns": (FeatureArray, [130.0, 205.0, 3.66], "own_model_dir", "own_web_server"),
}


@pytest.fixture(scope="module")
def own_web_server(own_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """gunicorn (--preload, forked workers) serving the column model, as `make serve` would."""
    root = tmp_path_factory.mktemp("own-web")
    env = service_environment(MODEL_URI=str(own_model_dir), MODEL_CACHE_DIR=str(root / "cache"))
    process = GunicornProcess(env, root / "gunicorn.log", workers=2)
    try:
        yield process.wait_until_healthy()
    finally:
        process.stop()


@pytest.mark.parametrize("shape", SHAPES)
def test_both_model_shapes_are_served_alike_in_the_three_modes(
    shape: str, kinesis: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    builder, first_input, model_fixture, server_fixture = SHAPES[shape]
    loaded = load_model(str(request.getfixturevalue(model_fixture)), tmp_path / "cache")
    assert isinstance(loaded.features.builder, builder)
    counting = CountingPredictor(loaded.predictor)
    counted = replace(loaded, predictor=counting)

    stream, _ = on_the_stream(kinesis, counted)
    web, _ = on_request(request.getfixturevalue(server_fixture))
    batch, _ = in_bulk(counted, tmp_path)

    assert [len(model_input) for model_input in counting.inputs] == [len(RIDES), len(RIDES)]  # one call each
    stream_input = counting.inputs[0]
    first = stream_input[0] if shape == "dict" else stream_input[0].tolist()
    assert first == first_input
    assert stream == web == batch
    assert len(set(stream)) == len(RIDES)
    # What the model's author gets from the model directly, with the frame it was trained on.
    frame = pd.DataFrame(RIDES)
    if shape == "dict":
        frame = pd.DataFrame(
            {"PU_DO": frame.PULocationID.astype(str) + "_" + frame.DOLocationID.astype(str)}
        ).assign(trip_distance=frame.trip_distance)
        assert stream == loaded.predictor.predict(frame.to_dict(orient="records")).tolist()
    else:
        assert stream == loaded.predictor.predict(frame).tolist()
