"""The DictVectorizer shortcut (stream/features.py): the course pipeline's sparse input built by
column from the vectorizer's vocabulary gives predictions equal to the bit to the general path's
(one dict per ride through the whole pipeline), in the three modes; settings it does not handle
take the general path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline, make_pipeline

from batch.scoring import score
from local_aws.kinesis_events import event_from_payloads
from model_service import LoggedDeadLetters, ModelService, predict_durations
from scripts.train import TrainedModel, synthetic_trips, train
from stream.features import (
    COURSE_FEATURES,
    DENSE_PAIR_TABLE_CELLS,
    FeatureDicts,
    RideColumns,
    ZonePairColumns,
    vocabulary_shortcut,
)
from stream.kinesis_output import KinesisStreamWriter, RetryPolicy
from stream.model_loading import LoadedModel, load_model
from stream.ride_events import Ride
from tests.conftest import RecordingLog, create_stream, read_stream


@pytest.fixture(scope="module")
def forest_dir(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`scripts/train.py --model random-forest`, on the same synthetic data as the linear model."""
    root = tmp_path_factory.mktemp("forest")
    train(
        model_kind="random-forest",
        synthetic_rides=5_000,
        tracking_uri=trained_model.tracking_uri,
        registered_name="ride-duration-forest",
        export_dir=root / "model",
        log=lambda _message: None,
    )
    mlflow.set_tracking_uri(None)
    return root / "model"


def many_rides(model: LoadedModel, count: int = 100_000) -> RideColumns:
    """Random zone pairs (most of the 70,225 never seen in 5,000 training rides), every pair the
    model saw once at least, and distances from zero to the bound: numpy columns, as a file's."""
    rng = np.random.default_rng(15)
    shortcut = model.features.shortcut
    assert shortcut is not None
    assert shortcut.zone_pairs is not None
    seen = shortcut.zone_pairs.keys
    pickup = rng.integers(1, 266, count)
    dropoff = rng.integers(1, 266, count)
    pickup[: len(seen)], dropoff[: len(seen)] = np.divmod(seen, 1 << 31)
    distance = np.round(rng.lognormal(1.0, 0.8, count), 2)
    distance[::9] = 0.0
    distance[1::9] = -0.0
    distance[2::97] = 1000.0
    distance[3::89] = rng.random(len(distance[3::89])) * 1e-3
    return RideColumns(pickup, dropoff, distance)


def general_path(model: LoadedModel, rides: RideColumns) -> np.ndarray:
    """What the pipeline itself makes of one dict per ride (the course's way)."""
    dicts = FeatureDicts(model.features.builder.names).build(rides)
    return np.asarray(model.predictor.predict(dicts), dtype=np.float64)


def without_dicts(model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, the vectorizer refuses to be called: only the shortcut can predict."""

    def refuse(*_: Any) -> None:
        raise AssertionError("DictVectorizer.transform was called: the shortcut was not used")

    monkeypatch.setattr(model.predictor.steps[0][1], "transform", refuse)


@pytest.mark.parametrize("kind", ["linear", "random forest"])
def test_predictions_are_equal_to_the_bit_on_100000_rides_with_unseen_pairs(
    kind: str, model_dir: Path, forest_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(str(model_dir if kind == "linear" else forest_dir), tmp_path / "cache")
    assert model.features.shortcut is not None
    if kind == "random forest":
        # n_jobs=-1 adds the trees' answers in the order its threads finish: the same input
        # through the same path differs in the last bit from one call to the next (half of
        # 100,000 rides here). One thread, one order: then both paths can be compared.
        model.predictor.steps[-1][1].n_jobs = 1
    rides = many_rides(model)
    vocabulary = model.predictor.steps[0][1].vocabulary_
    pairs = [f"PU_DO={pu}_{do}" for pu, do in zip(rides.PULocationID, rides.DOLocationID, strict=True)]
    unseen = sum(pair not in vocabulary for pair in pairs)
    assert 50_000 < unseen < 100_000 - len(model.features.shortcut.zone_pairs.keys)
    expected = general_path(model, rides)
    without_dicts(model, monkeypatch)

    from_columns = model.predict_minutes(rides)
    from_lists = model.predict_minutes(
        RideColumns(rides.PULocationID.tolist(), rides.DOLocationID.tolist(), rides.trip_distance.tolist())
    )

    assert from_columns.tobytes() == expected.tobytes()
    assert from_lists.tobytes() == expected.tobytes()
    assert len(np.unique(expected)) > 500  # not one value repeated


def test_the_stream_predicts_a_batch_through_the_shortcut_in_one_call(
    model_dir: Path, kinesis: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(str(model_dir), tmp_path / "cache")
    shortcut = model.features.shortcut
    assert shortcut is not None
    calls: list[int] = []

    class CountingRest:
        def predict(self, matrix: Any) -> Any:
            calls.append(matrix.shape[0])
            return shortcut.rest.predict(matrix)

    counted = replace(
        model, features=replace(model.features, shortcut=replace(shortcut, rest=CountingRest()))
    )
    trips = synthetic_trips(300, month=4, seed=5)
    rides = [
        {"PULocationID": int(pu), "DOLocationID": int(do), "trip_distance": float(d)}
        for pu, do, d in zip(trips.PULocationID, trips.DOLocationID, trips.trip_distance, strict=True)
    ]
    expected = general_path(model, RideColumns.from_rides([Ride(**ride) for ride in rides]))
    without_dicts(model, monkeypatch)
    create_stream(kinesis, "ride_predictions")
    writer = KinesisStreamWriter(
        kinesis, "ride_predictions", RetryPolicy(max_attempts=2, base_delay=0, max_delay=0)
    )
    service = ModelService(counted, writer, LoggedDeadLetters(RecordingLog()), RecordingLog())
    payloads = [json.dumps({"ride": ride, "ride_id": i}).encode() for i, ride in enumerate(rides)]
    payloads.insert(7, b'{"ride": {"PULocationID": 0, "DOLocationID": 1, "trip_distance": 1}, "ride_id": -1}')

    assert service.handle(event_from_payloads(payloads)) == {"batchItemFailures": []}

    assert calls == [300]  # the valid rides, in one call
    events = sorted(read_stream(kinesis, "ride_predictions"), key=lambda e: e["prediction"]["ride_id"])
    assert [e["prediction"]["ride_duration"] for e in events] == expected.tolist()


def test_batch_scoring_predicts_each_chunk_through_the_shortcut(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(str(model_dir), tmp_path / "cache")
    trips = synthetic_trips(2_500, month=4, seed=6)
    trips.to_parquet(tmp_path / "trips.parquet")
    expected = general_path(
        model,
        RideColumns(trips.PULocationID.tolist(), trips.DOLocationID.tolist(), trips.trip_distance.tolist()),
    )
    without_dicts(model, monkeypatch)

    summary = score(model, str(tmp_path / "trips.parquet"), str(tmp_path / "out.parquet"), chunk_rows=1_000)

    assert summary.model_calls == 3
    predicted = pq.read_table(tmp_path / "out.parquet")["predicted_duration"].to_numpy()
    assert predicted.tobytes() == expected.tobytes()


def course_pipeline(vectorizer: DictVectorizer) -> Pipeline:
    trips = synthetic_trips(3_000, month=1, seed=11)
    rides = RideColumns(
        trips.PULocationID.tolist(), trips.DOLocationID.tolist(), trips.trip_distance.tolist()
    )
    minutes = (trips.lpep_dropoff_datetime - trips.lpep_pickup_datetime).dt.total_seconds() / 60
    return make_pipeline(vectorizer, LinearRegression()).fit(
        FeatureDicts(COURSE_FEATURES).build(rides), minutes
    )


def save(path: Path, pipeline: Pipeline) -> Path:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    example = pd.DataFrame({"PU_DO": ["130_205"], "trip_distance": [3.66]})
    mlflow.sklearn.save_model(
        pipeline,
        path,
        signature=infer_signature(example),
        serialization_format="pickle",
        pip_requirements=["scikit-learn"],
    )
    return path


# Vectorizer settings: whether the shortcut takes them (it builds what the vectorizer builds) or
# leaves them to the general path.
SETTINGS = {
    "defaults": (DictVectorizer, True),
    "another separator": (lambda: DictVectorizer(separator=":"), True),
    "unsorted vocabulary": (lambda: DictVectorizer(sort=False), True),
    "float32": (lambda: DictVectorizer(dtype=np.float32), True),
    "dense output": (lambda: DictVectorizer(sparse=False), False),
    "integer output": (lambda: DictVectorizer(dtype=np.int64), False),
}


@pytest.mark.parametrize(("make_vectorizer", "shortcut"), SETTINGS.values(), ids=SETTINGS.keys())
def test_vectorizer_settings_take_the_shortcut_or_the_general_path(
    make_vectorizer: Any, shortcut: bool, tmp_path: Path
) -> None:
    path = save(tmp_path / "model", course_pipeline(make_vectorizer()))

    model = load_model(str(path), tmp_path / "cache")

    assert (model.features.shortcut is not None) == shortcut
    trips = synthetic_trips(20_000, month=2, seed=12)
    rides = RideColumns(
        trips.PULocationID.to_numpy(), trips.DOLocationID.to_numpy(), trips.trip_distance.to_numpy()
    )
    assert model.predict_minutes(rides).tobytes() == general_path(model, rides).tobytes()


def test_a_nested_pipeline_takes_the_general_path(tmp_path: Path) -> None:
    inner = course_pipeline(DictVectorizer())
    nested = Pipeline(
        [("features", Pipeline([("vectorizer", inner.steps[0][1])])), ("model", inner.steps[1][1])]
    )

    model = load_model(str(save(tmp_path / "model", nested)), tmp_path / "cache")

    assert model.features.shortcut is None
    assert predict_durations(model, [Ride(PULocationID=130, DOLocationID=205, trip_distance=3.66)]) == (
        nested.predict([{"PU_DO": "130_205", "trip_distance": 3.66}]).tolist()
    )


class DoublingVectorizer(DictVectorizer):
    """A vectorizer whose output differs from what its vocabulary says."""

    def transform(self, X: Any) -> Any:  # noqa: N803 - scikit-learn's name
        return super().transform(X) * 2


def test_a_vectorizer_that_does_not_make_what_its_vocabulary_says_takes_the_general_path() -> None:
    pipeline = course_pipeline(DoublingVectorizer())

    assert vocabulary_shortcut(pipeline, pipeline.steps[0][1], COURSE_FEATURES) is None
    assert (
        vocabulary_shortcut(
            course_pipeline(DictVectorizer()), course_pipeline(DictVectorizer()).steps[0][1], COURSE_FEATURES
        )
        is None
    )  # another pipeline's vectorizer


@pytest.mark.parametrize("dense_cells", [DENSE_PAIR_TABLE_CELLS, 0], ids=["dense table", "binary search"])
def test_zone_pairs_are_found_as_the_vectorizer_finds_their_strings(dense_cells: int) -> None:
    vocabulary = {
        "PU_DO=130_205": 3, "PU_DO=1_265": 0, "PU_DO=265_1": 7, "PU_DO=0_4": 5, "PU_DO=5000_3": 9,
        # Keys no ride's zone_pair string can equal: never found.
        "PU_DO=007_1": 1, "PU_DO=1.0_2.0": 2, "PU_DO=1_2_3": 4, "PU_DO=x": 6, "PU_DO=-1_2": 8,
        "PU_DO=99999999999_1": 10, "trip_distance": 11, "PU=4_5": 12,
    }  # fmt: skip
    pairs = ZonePairColumns.from_vocabulary(vocabulary, "PU_DO=", dense_cells)
    assert (pairs.table is not None) == bool(dense_cells)
    zones = [0, 1, 2, 3, 4, 5, 7, 130, 205, 265, 266, 5000, 5001, 2**40]  # validated rides: never < 1
    pickup, dropoff = (np.array(axis, dtype=np.int64).ravel() for axis in np.meshgrid(zones, zones))

    found = pairs.lookup(pickup, dropoff)

    expected = [vocabulary.get(f"PU_DO={pu}_{do}", -1) for pu, do in zip(pickup, dropoff, strict=True)]
    assert found.tolist() == expected
    assert sorted(set(expected) - {-1}) == [0, 3, 5, 7, 9]
