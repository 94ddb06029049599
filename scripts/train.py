"""Train the course's ride-duration model and log it to MLflow.

    python -m scripts.train                                  # synthetic data (no internet needed)
    python -m scripts.train --train green_tripdata_2021-01.parquet --val green_tripdata_2021-02.parquet
    python -m scripts.train --model random-forest --export-dir model

Data: NYC TLC green-taxi trip files (parquet with lpep_pickup_datetime, lpep_dropoff_datetime,
PULocationID, DOLocationID, trip_distance). Target: duration in minutes, kept within 1-60.
Model: DictVectorizer + LinearRegression (default) or RandomForestRegressor on the features
`PU_DO` ("<pick-up>_<drop-off>") and `trip_distance`, built by the service's own code
(stream/features.py). Logged with them: an MLflow signature (the function checks it at load), an
input example, and a few known rides with the model's predictions (MLmodel metadata
`known_rides`, predicted again by the function's load-time self-test: stream/self_test.py).

MLflow: tracking at MLFLOW_TRACKING_URI (default sqlite:///.mlflow/mlflow.db), artifacts in
the experiment's artifact location (--artifact-location, default .mlflow/artifacts; an
s3:// location uses MLFLOW_S3_ENDPOINT_URL when set). The model is registered and given an
alias; the MODEL_URI values that load it are printed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline, make_pipeline

from stream.features import COURSE_FEATURES, FeatureDicts, RideColumns
from stream.ride_events import Ride
from stream.self_test import known_rides_metadata

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / '.mlflow' / 'mlflow.db'}"
DEFAULT_ARTIFACT_LOCATION = str(PROJECT_ROOT / ".mlflow" / "artifacts")
MIN_DURATION, MAX_DURATION = 1.0, 60.0
KNOWN_RIDES = 6  # validation rides recorded with the model for the load-time self-test
# What the pipeline is trained on (names from stream/features.py); the signature follows.
TRAIN_FEATURES = COURSE_FEATURES
TLC_COLUMNS = [
    "lpep_pickup_datetime",
    "lpep_dropoff_datetime",
    "PULocationID",
    "DOLocationID",
    "trip_distance",
]


def synthetic_trips(n_rides: int, month: int, seed: int) -> pd.DataFrame:
    """A seeded, TLC-shaped stand-in for a month of green-taxi trips.

    Zones 1-265 with a few busy ones (Zipf-like weights); distance log-normal around 2.5
    miles; each zone pair has its own average speed (7-20 mph), the trip takes
    distance / speed plus 2 minutes to get going, times log-normal noise (sigma 0.25).
    About 1% of trips are outliers (0 or 3 hours) that the 1-60 minute filter removes, as
    in the real files. The same seed gives the same rides; another month, other rides.
    """
    rng = np.random.default_rng([seed, month])
    zones = np.arange(1, 266)
    weights = 1.0 / (1 + np.random.default_rng(seed).permutation(265)) ** 0.8
    weights /= weights.sum()
    pickup_zone = rng.choice(zones, size=n_rides, p=weights)
    dropoff_zone = rng.choice(zones, size=n_rides, p=weights)
    distance = np.round(rng.lognormal(mean=np.log(2.5), sigma=0.7, size=n_rides), 2)
    pair_speed = 7 + 13 * ((pickup_zone * 7919 + dropoff_zone * 104729) % 1000) / 1000
    minutes = (distance / pair_speed * 60 + 2) * rng.lognormal(0, 0.25, size=n_rides)
    outlier = rng.random(n_rides) < 0.01
    minutes = np.where(outlier, rng.choice([0.0, 180.0], size=n_rides), minutes)
    start = pd.Timestamp(year=2021, month=month, day=1)
    pickup = start + pd.to_timedelta(rng.uniform(0, 28 * 24 * 3600, size=n_rides), unit="s")
    return pd.DataFrame(
        {
            "lpep_pickup_datetime": pickup,
            "lpep_dropoff_datetime": pickup + pd.to_timedelta(minutes, unit="m"),
            "PULocationID": pickup_zone.astype("int64"),
            "DOLocationID": dropoff_zone.astype("int64"),
            "trip_distance": distance,
        }
    )


def read_trips(path: str) -> pd.DataFrame:
    """A TLC trip file (local or s3://), only the columns the model needs."""
    frame = pd.read_parquet(path, columns=TLC_COLUMNS)
    missing = [column for column in TLC_COLUMNS if column not in frame.columns]
    if missing:
        raise SystemExit(f"{path}: missing columns {missing}")
    return frame


def prepare(frame: pd.DataFrame) -> tuple[list[dict[str, Any]], np.ndarray, RideColumns]:
    """Course preparation: duration in minutes within 1-60, then the service's own features
    (and the rides they came from, by column)."""
    duration = (frame.lpep_dropoff_datetime - frame.lpep_pickup_datetime).dt.total_seconds() / 60
    keep = duration.between(MIN_DURATION, MAX_DURATION)
    keep &= frame.PULocationID.notna() & frame.DOLocationID.notna() & frame.trip_distance.notna()
    kept = frame[keep]
    rides = RideColumns(
        kept.PULocationID.astype("int64").tolist(),
        kept.DOLocationID.astype("int64").tolist(),
        kept.trip_distance.astype("float64").tolist(),
    )
    return FeatureDicts(TRAIN_FEATURES).build(rides), duration[keep].to_numpy(), rides


def pick_known_rides(rides: RideColumns, count: int = KNOWN_RIDES) -> list[Ride]:
    """A few rides spread over the set, each one the service would accept."""
    picked: list[Ride] = []
    for position in np.linspace(0, len(rides) - 1, min(len(rides), 20 * count)).astype(int):
        try:
            ride = Ride(
                PULocationID=rides.PULocationID[position],
                DOLocationID=rides.DOLocationID[position],
                trip_distance=rides.trip_distance[position],
            )
        except ValueError:  # pydantic's ValidationError: a ride the service would refuse
            continue
        picked.append(ride)
        if len(picked) == count:
            break
    return picked


def make_model(kind: str, seed: int) -> Pipeline:
    if kind == "linear":
        return make_pipeline(DictVectorizer(), LinearRegression())
    from sklearn.ensemble import RandomForestRegressor  # noqa: PLC0415

    return make_pipeline(
        DictVectorizer(), RandomForestRegressor(n_estimators=50, max_depth=20, n_jobs=-1, random_state=seed)
    )


@dataclass(frozen=True)
class TrainedModel:
    tracking_uri: str
    run_id: str
    rmse: float
    registered_name: str
    version: str
    alias: str
    artifact_uri: str
    export_dir: Path | None

    def model_uris(self) -> dict[str, str]:
        return {
            "registry alias": f"models:/{self.registered_name}@{self.alias}",
            "registry version": f"models:/{self.registered_name}/{self.version}",
            "run": f"runs:/{self.run_id}/model",
            "artifact store": self.artifact_uri,
            **({"exported directory": str(self.export_dir)} if self.export_dir else {}),
        }


def train(
    *,
    train_path: str | None = None,
    val_path: str | None = None,
    model_kind: str = "linear",
    synthetic_rides: int = 20_000,
    seed: int = 42,
    tracking_uri: str | None = None,
    experiment: str = "ride-duration",
    artifact_location: str | None = None,
    registered_name: str = "ride-duration",
    alias: str = "champion",
    serialization_format: str = "pickle",
    export_dir: Path | None = None,
    log=print,
) -> TrainedModel:
    import mlflow  # noqa: PLC0415
    import mlflow.sklearn  # noqa: PLC0415
    import sklearn  # noqa: PLC0415
    from mlflow import MlflowClient  # noqa: PLC0415
    from mlflow.artifacts import download_artifacts  # noqa: PLC0415
    from mlflow.models import infer_signature  # noqa: PLC0415

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifact_location or DEFAULT_ARTIFACT_LOCATION)
    mlflow.set_experiment(experiment)

    started = time.perf_counter()
    if train_path:
        train_frame = read_trips(train_path)
        val_frame = read_trips(val_path) if val_path else None
        source = train_path
    else:
        train_frame = synthetic_trips(synthetic_rides, month=1, seed=seed)
        val_frame = synthetic_trips(synthetic_rides // 4, month=2, seed=seed)
        source = f"synthetic(rides={synthetic_rides}, seed={seed})"
    if val_frame is None:
        shuffled = train_frame.sample(frac=1.0, random_state=seed)
        cut = int(len(shuffled) * 0.8)
        train_frame, val_frame = shuffled.iloc[:cut], shuffled.iloc[cut:]
    x_train, y_train, _ = prepare(train_frame)
    x_val, y_val, val_rides = prepare(val_frame)
    log(f"data: {source}: {len(x_train):,} training and {len(x_val):,} validation rides (1-60 min)")

    pipeline = make_model(model_kind, seed)
    with mlflow.start_run() as run:
        pipeline.fit(x_train, y_train)
        rmse = float(np.sqrt(np.mean((pipeline.predict(x_val) - y_val) ** 2)))
        mlflow.log_params(
            {
                "model": model_kind,
                "data": source,
                "train_rides": len(x_train),
                "val_rides": len(x_val),
                "seed": seed,
            }
        )
        mlflow.log_metric("rmse", rmse)
        # The contract the function checks at load, and rides its self-test predicts again.
        known = pick_known_rides(val_rides)
        example = FeatureDicts(TRAIN_FEATURES).build(RideColumns.from_rides(known))
        answers = pipeline.predict(example)
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(pd.DataFrame(example), answers),
            input_example=example,
            metadata=known_rides_metadata(known, answers),
            serialization_format=serialization_format,
            # Listing requirements skips MLflow's inference, which loads the model in a
            # subprocess (about 15 s here).
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
            registered_model_name=registered_name,
        )
        version = str(info.registered_model_version)
        # Course compatibility: also keep the model at <run artifacts>/model, the path the
        # course's RUN_ID + MODEL_BUCKET + MLFLOW_EXPERIMENT_ID variables point to.
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(download_artifacts(artifact_uri=info.model_uri, dst_path=scratch))
            mlflow.log_artifacts(str(local), artifact_path="model")
            if export_dir:
                shutil.rmtree(export_dir, ignore_errors=True)
                shutil.copytree(local, export_dir)
        MlflowClient().set_registered_model_alias(registered_name, alias, version)
        artifact_uri = f"{run.info.artifact_uri}/model"

    log(f"trained {model_kind} in {time.perf_counter() - started:.1f} s: validation RMSE {rmse:.2f} min")
    return TrainedModel(
        tracking_uri, run.info.run_id, rmse, registered_name, version, alias, artifact_uri, export_dir
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train", dest="train_path", help="TLC parquet file (local or s3://); default: synthetic"
    )
    parser.add_argument("--val", dest="val_path", help="validation parquet; default: 20%% of --train")
    parser.add_argument("--model", dest="model_kind", choices=["linear", "random-forest"], default="linear")
    parser.add_argument("--synthetic-rides", type=int, default=20_000, help="rides per synthetic month")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tracking-uri", help=f"default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI}")
    parser.add_argument("--experiment", default="ride-duration")
    parser.add_argument("--artifact-location", help="for a new experiment: a folder or s3://bucket/prefix")
    parser.add_argument("--registered-name", default="ride-duration")
    parser.add_argument("--alias", default="champion")
    parser.add_argument(
        "--serialization-format",
        choices=["pickle", "cloudpickle", "skops"],
        default="pickle",
        help="pickle loads in ~0.1 ms but runs code from the file; skops does not, but adds ~1 s to cold start",
    )
    parser.add_argument(
        "--export-dir", type=Path, help="also copy the model directory here (e.g. for the image)"
    )
    parser.add_argument(
        "--write-synthetic", type=Path, help="write the synthetic January data to this parquet and exit"
    )
    args = vars(parser.parse_args(argv))
    if target := args.pop("write_synthetic"):
        synthetic_trips(args["synthetic_rides"], month=1, seed=args["seed"]).to_parquet(target)
        print(f"wrote {args['synthetic_rides']:,} synthetic rides to {target}")
        return 0
    trained = train(**args)
    print(
        f"MODEL_URI values that load this model (models:/ and runs:/ need MLFLOW_TRACKING_URI={trained.tracking_uri}):"
    )
    for label, uri in trained.model_uris().items():
        print(f"  {label:<19} {uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
