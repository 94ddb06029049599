from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scripts.train import TLC_COLUMNS, TrainedModel, main, prepare, synthetic_trips, train
from stream.features import ride_features
from stream.model_loading import load_model


def test_synthetic_data_has_the_tlc_shape_and_is_seeded() -> None:
    trips = synthetic_trips(1000, month=1, seed=3)
    assert list(trips.columns) == TLC_COLUMNS
    assert trips.PULocationID.between(1, 265).all()
    assert (trips.trip_distance >= 0).all()
    pd.testing.assert_frame_equal(trips, synthetic_trips(1000, month=1, seed=3))
    assert not trips.equals(synthetic_trips(1000, month=2, seed=3))


def test_preparation_keeps_rides_of_1_to_60_minutes_and_uses_the_service_features() -> None:
    start = pd.Timestamp("2021-01-01 10:00")
    trips = pd.DataFrame(
        {
            "lpep_pickup_datetime": [start] * 4,
            "lpep_dropoff_datetime": [start + pd.Timedelta(minutes=m) for m in (0.5, 1, 60, 61)],
            "PULocationID": [1, 2, 3, 4],
            "DOLocationID": [5, 6, 7, 8],
            "trip_distance": [1.0, 2.0, 3.0, 4.0],
        }
    )
    features, target, _ = prepare(trips)
    assert features == [ride_features(2, 6, 2.0), ride_features(3, 7, 3.0)]
    assert list(target) == [1.0, 60.0]


def test_trained_model_learns_the_synthetic_relation(trained_model: TrainedModel, model_dir: Path) -> None:
    # Noise alone (log-normal, sigma 0.25) leaves an RMSE of a few minutes; a useless
    # model (the mean) would be far off.
    features, target, _ = prepare(synthetic_trips(2000, month=3, seed=42))
    baseline = float(np.sqrt(np.mean((target - target.mean()) ** 2)))
    assert trained_model.rmse < 0.75 * baseline
    predictions = np.asarray(load_model(str(model_dir), model_dir.parent / "cache").predict(features))
    assert float(np.sqrt(np.mean((predictions - target) ** 2))) < 0.75 * baseline


def test_cli_trains_from_a_tlc_file_and_prints_the_model_uris(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    data = tmp_path / "green.parquet"
    assert main(["--write-synthetic", str(data), "--synthetic-rides", "3000"]) == 0
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        code = main(
            [
                "--train", str(data), "--tracking-uri", tracking, "--artifact-location", str(tmp_path / "a"),
                "--model", "random-forest", "--alias", "staging", "--export-dir", str(tmp_path / "exported"),
            ]
        )  # fmt: skip
    finally:
        mlflow.set_tracking_uri(None)
    assert code == 0
    out = capsys.readouterr().out
    assert f"MLFLOW_TRACKING_URI={tracking}" in out
    assert "models:/ride-duration@staging" in out
    assert "runs:/" in out
    assert (tmp_path / "exported" / "MLmodel").is_file()
    assert "RandomForestRegressor" in repr(load_model(str(tmp_path / "exported"), tmp_path / "c").predictor)


def test_training_with_artifacts_in_s3_serves_the_course_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: str
) -> None:
    """MLFLOW_S3_ENDPOINT_URL sends the artifacts to an S3 endpoint (moto server here); the
    course's RUN_ID + MODEL_BUCKET + MLFLOW_EXPERIMENT_ID then find the model there."""
    import boto3
    import mlflow

    from model_service import load_configured_model
    from stream.settings import Settings

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    boto3.client("s3").create_bucket(Bucket="mlflow-models")
    try:
        trained = train(
            synthetic_rides=2000, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            experiment="course", artifact_location="s3://mlflow-models/1", log=lambda _m: None,
        )  # fmt: skip
    finally:
        mlflow.set_tracking_uri(None)
    assert trained.artifact_uri == f"s3://mlflow-models/1/{trained.run_id}/artifacts/model"
    settings = Settings.from_env(
        {
            "RUN_ID": trained.run_id,
            "MODEL_BUCKET": "mlflow-models",
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        }
    )
    loaded = load_configured_model(settings)
    assert loaded.info.run_id == trained.run_id
    assert 1 < loaded.predict([ride_features(130, 205, 3.66)])[0] < 60
