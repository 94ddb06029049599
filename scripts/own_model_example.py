"""Bring your own model: a worked example (docs/model.md, "Use your own model").

A training script of your own, using nothing of this project: scikit-learn on the TLC columns
`[PULocationID, DOLocationID, trip_distance]` (a gradient-boosted regressor fitted on a pandas
DataFrame), logged with `mlflow.sklearn.log_model` and a signature. The function reads the
signature at load and gives this model a 2-D array in the signature's column order.

    make data/synthetic-trips.parquet                     # or any NYC TLC green-taxi file
    .venv/bin/python -m scripts.own_model_example data/synthetic-trips.parquet --export-dir own-model
    make serve MODEL_URI=own-model                        # or make score / make demo MODEL_URI=own-model
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

COLUMNS = ["PULocationID", "DOLocationID", "trip_distance"]


def model_columns(trips: pd.DataFrame) -> tuple[pd.DataFrame, npt.NDArray[np.float64]]:
    """The model's columns and each ride's duration in minutes, for rides of 1-60 minutes."""
    minutes = (trips.lpep_dropoff_datetime - trips.lpep_pickup_datetime).dt.total_seconds() / 60
    keep = minutes.between(1, 60) & trips[COLUMNS].notna().all(axis=1)
    columns = trips.loc[keep, COLUMNS].astype({"PULocationID": "int64", "DOLocationID": "int64"})
    return columns, minutes[keep].to_numpy()


def train_and_log(trips: pd.DataFrame, export_dir: Path | None = None, seed: int = 1) -> str:
    """Fit, then log the model with its signature, an input example and a few known rides.
    Returns a MODEL_URI for it: `runs:/<run id>/model`, or the exported directory."""
    import mlflow  # noqa: PLC0415 - imported here so that `--help` is instant
    import mlflow.sklearn  # noqa: PLC0415
    from mlflow.models import infer_signature  # noqa: PLC0415

    features, target = model_columns(trips)
    model = HistGradientBoostingRegressor(max_iter=100, random_state=seed).fit(features, target)
    example = features.head(5)
    predicted = model.predict(example)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            # What the function checks at load: the input names and types, in order.
            signature=infer_signature(example, predicted),
            input_example=example,
            # Optional: rides and the predictions this model gave them. The function predicts
            # them again at load and refuses the model if the answers have changed.
            metadata={
                "known_rides": {
                    "rides": example.to_dict(orient="records"),
                    "predictions": predicted.tolist(),
                }
            },
            serialization_format="pickle",  # loads in the function without skops (docs/model.md)
            pip_requirements=["scikit-learn"],
        )
    if export_dir is None:
        return str(info.model_uri)
    shutil.rmtree(export_dir, ignore_errors=True)
    shutil.copytree(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri), export_dir)
    return str(export_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trips", help="a TLC green-taxi parquet file")
    parser.add_argument("--export-dir", type=Path, help="also copy the model directory here")
    args = parser.parse_args(argv)

    import mlflow  # noqa: PLC0415

    # The store `make train` uses, unless MLFLOW_TRACKING_URI says otherwise.
    Path(".mlflow").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///.mlflow/mlflow.db")
    if mlflow.get_experiment_by_name("own-model") is None:
        mlflow.create_experiment("own-model", artifact_location=str(Path(".mlflow/artifacts").absolute()))
    mlflow.set_experiment("own-model")
    print(f"MODEL_URI={train_and_log(pd.read_parquet(args.trips), args.export_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
