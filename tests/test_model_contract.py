"""The feature contract: what a model asks for (its MLflow signature) is checked at load against
what the function can give it, and decides the shape it gets (stream/features.py)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline

from batch import cli as batch_cli
from model_service import build_service, predict_durations
from scripts.train import synthetic_trips
from stream.features import (
    COURSE_FEATURES,
    FEATURES,
    Feature,
    FeatureArray,
    FeatureDicts,
    ModelOutputError,
    RideColumns,
    as_durations,
    ride_features,
)
from stream.model_loading import ModelLoadError, load_model
from stream.ride_events import Ride
from stream.settings import Settings
from tests.conftest import PROJECT_ROOT, RecordingLog
from web_service import app_from_env

RIDE = Ride(PULocationID=130, DOLocationID=205, trip_distance=3.66)
AVAILABLE = "[PULocationID, DOLocationID, trip_distance, PU_DO]"


def save_model(path: Path, model: Any, example: pd.DataFrame | None) -> Path:
    """An MLflow sklearn model directory, as a user's own script would log it."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    signature = infer_signature(example) if example is not None else None
    mlflow.sklearn.save_model(
        model, path, signature=signature, serialization_format="pickle", pip_requirements=["scikit-learn"]
    )
    return path


def edit_mlmodel(source: Path, target: Path, edit: Any) -> Path:
    shutil.copytree(source, target)
    mlmodel = yaml.safe_load((target / "MLmodel").read_text())
    edit(mlmodel)
    (target / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return target


def pu_and_do_model() -> tuple[Any, pd.DataFrame]:
    """The course pipeline, trained on `PU` and `DO` instead of `PU_DO`."""
    rows = [{"PU": str(i % 7), "DO": str(i % 5), "trip_distance": float(i % 11)} for i in range(200)]
    target = [2.0 * row["trip_distance"] + int(row["PU"]) for row in rows]
    return make_pipeline(DictVectorizer(), LinearRegression()).fit(rows, target), pd.DataFrame(rows[:3])


def test_the_course_model_gets_feature_dicts_with_its_signature_names(
    model_dir: Path, tmp_path: Path
) -> None:
    loaded = load_model(str(model_dir), tmp_path)
    assert loaded.features.describe() == (
        "feature dicts of ['PU_DO', 'trip_distance'] (from the signature; built by column from the "
        "DictVectorizer's vocabulary)"
    )
    assert loaded.features.warning is None
    assert loaded.features.builder.build(RideColumns.from_rides([RIDE])) == [
        {"PU_DO": "130_205", "trip_distance": 3.66}
    ]


def test_a_column_model_gets_an_array_in_the_signature_order(own_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(str(own_model_dir), tmp_path)
    builder = loaded.features.builder
    assert isinstance(builder, FeatureArray)
    assert builder.names == ("PULocationID", "DOLocationID", "trip_distance")
    array = builder.build(
        RideColumns.from_rides([RIDE, Ride(PULocationID=1, DOLocationID=2, trip_distance=0.5)])
    )
    assert array.dtype == np.float64
    assert array.tolist() == [[130.0, 205.0, 3.66], [1.0, 2.0, 0.5]]
    # Fitted on a DataFrame, the model would warn on every array: not in the function's logs.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_durations(loaded, [RIDE])
    assert [str(w.message) for w in caught] == []


def test_a_signature_in_another_order_is_served_in_that_order(own_model_dir: Path, tmp_path: Path) -> None:
    def reorder(mlmodel: dict[str, Any]) -> None:
        mlmodel["signature"]["inputs"] = (
            '[{"type": "double", "name": "trip_distance"}, {"type": "long", "name": "PULocationID"},'
            ' {"type": "long", "name": "DOLocationID"}]'
        )

    with pytest.raises(ModelLoadError) as refused:
        load_model(str(edit_mlmodel(own_model_dir, tmp_path / "m", reorder)), tmp_path / "c")
    assert str(refused.value).endswith(
        "the signature lists the columns ['trip_distance', 'PULocationID', 'DOLocationID'] but the model was "
        "fitted on ['PULocationID', 'DOLocationID', 'trip_distance']: the function gives them in the "
        "signature's order"
    )


def test_a_model_trained_on_pu_and_do_is_refused_naming_both_lists(tmp_path: Path) -> None:
    pipeline, example = pu_and_do_model()
    path = save_model(tmp_path / "pu-do", pipeline, example)

    with pytest.raises(ModelLoadError) as refused:
        load_model(str(path), tmp_path / "cache")

    assert str(refused.value) == (
        f"cannot load model from '{path}': the model asks for [PU, DO], which the function cannot provide. "
        f"It asks for [PU, DO, trip_distance]; available: {AVAILABLE} (docs/model.md, 'Use your own model')"
    )


def test_without_a_signature_the_same_model_is_refused_by_its_vocabulary(tmp_path: Path) -> None:
    pipeline, _ = pu_and_do_model()
    path = save_model(tmp_path / "pu-do", pipeline, None)

    with pytest.raises(ModelLoadError) as refused:
        load_model(str(path), tmp_path / "cache")

    assert str(refused.value) == (
        f"cannot load model from '{path}': the model's DictVectorizer was fitted on [DO, PU, trip_distance] "
        "but is given [PU_DO, trip_distance]: [DO, PU] would be silently missing. "
        f"Available: {AVAILABLE} (docs/model.md, 'Use your own model')"
    )


def test_a_zone_the_model_wants_as_text_is_refused(tmp_path: Path) -> None:
    rows = [{"PULocationID": str(i % 7), "trip_distance": float(i)} for i in range(50)]
    pipeline = make_pipeline(DictVectorizer(), LinearRegression()).fit(rows, list(range(50)))
    path = save_model(tmp_path / "text-zone", pipeline, pd.DataFrame(rows[:2]))
    with pytest.raises(
        ModelLoadError, match=r"asks for PULocationID as string \(the function gives a number\)"
    ):
        load_model(str(path), tmp_path / "cache")


def test_an_unnamed_tensor_signature_is_refused_with_what_to_do(own_model_dir: Path, tmp_path: Path) -> None:
    def tensor(mlmodel: dict[str, Any]) -> None:
        mlmodel["signature"]["inputs"] = (
            '[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 3]}}]'
        )

    with pytest.raises(
        ModelLoadError, match=r"unnamed inputs .*log the model with a signature of named columns"
    ):
        load_model(str(edit_mlmodel(own_model_dir, tmp_path / "m", tensor)), tmp_path / "c")


def without_signature(mlmodel: dict[str, Any]) -> None:
    del mlmodel["signature"]


def test_a_model_without_signature_gets_the_course_features_and_a_warning(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    path = edit_mlmodel(model_dir, tmp_path / "no-signature", without_signature)
    expected_warning = (
        "the model has no signature: it is given the course's features ['PU_DO', 'trip_distance'] as "
        "feature dicts, unchecked; log it with a signature to have its inputs checked at load "
        "(docs/model.md, 'Use your own model')"
    )

    loaded = load_model(str(path), tmp_path / "cache")
    assert (
        loaded.features.describe() == "feature dicts of ['PU_DO', 'trip_distance'] (from the course "
        "default; built by column from the DictVectorizer's vocabulary)"
    )
    assert loaded.features.warning == expected_warning
    assert predict_durations(loaded, [RIDE]) == predict_durations(
        load_model(str(model_dir), tmp_path), [RIDE]
    )

    # The function says so at init, in its own log; the web service in its log.
    log = RecordingLog()
    build_service(Settings.from_env({"MODEL_URI": str(path), "MODEL_CACHE_DIR": str(tmp_path / "c")}), log)
    assert ("WARNING", expected_warning, {"model_uri": str(path)}) in log.entries
    with caplog.at_level(logging.WARNING, logger="web_service"):
        app_from_env({"MODEL_URI": str(path), "MODEL_CACHE_DIR": str(tmp_path / "c")})
    assert expected_warning in caplog.messages
    synthetic_trips(10, month=1, seed=1).to_parquet(tmp_path / "trips.parquet")
    capsys.readouterr()
    code = batch_cli.main(
        [
            str(tmp_path / "trips.parquet"),
            str(tmp_path / "out.parquet"),
            "--model-uri",
            str(path),
            "--no-progress",
        ]
    )
    assert (code, capsys.readouterr().err) == (0, f"warning: {expected_warning}\n")


def test_features_are_made_in_one_place() -> None:
    rides = RideColumns([130, 1], [205, 265], [3.66, 0.0])
    assert FeatureDicts(tuple(FEATURES)).build(rides)[1] == {
        "PULocationID": 1,
        "DOLocationID": 265,
        "trip_distance": 0.0,
        "PU_DO": "1_265",
    }
    # From columns (numpy arrays, as a file's) or from rides: the same input.
    from_arrays = RideColumns(np.array([130, 1]), np.array([205, 265]), np.array([3.66, 0.0]))
    assert FeatureDicts(COURSE_FEATURES).build(from_arrays) == FeatureDicts(COURSE_FEATURES).build(rides)
    assert ride_features(130, 205, 3.66) == {"PU_DO": "130_205", "trip_distance": 3.66}


def test_a_feature_added_in_one_place_reaches_a_model_that_asks_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/model.md's example: one entry in FEATURES, and a model whose signature names it."""
    monkeypatch.setitem(
        FEATURES,
        "same_zone",
        Feature(
            "number",
            lambda rides: [
                float(pu == do) for pu, do in zip(rides.PULocationID, rides.DOLocationID, strict=True)
            ],
        ),
    )
    frame = pd.DataFrame({"trip_distance": [1.0, 2.0, 3.0, 4.0], "same_zone": [0.0, 1.0, 0.0, 1.0]})
    model = LinearRegression().fit(frame, 3 * frame.trip_distance + 10 * frame.same_zone)
    path = save_model(tmp_path / "same-zone", model, frame.head(2))

    loaded = load_model(str(path), tmp_path / "cache")

    assert loaded.features.describe() == "2-D array of ['trip_distance', 'same_zone'] (from the signature)"
    rides = [RIDE, Ride(PULocationID=7, DOLocationID=7, trip_distance=1.0)]
    assert predict_durations(loaded, rides) == pytest.approx([3 * 3.66, 3 + 10])


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (np.array([1.5, 2.5]), [1.5, 2.5]),
        (np.array([[1.5], [2.5]]), [1.5, 2.5]),  # one column
        ([1, 2], [1.0, 2.0]),
        (np.array([1.0, np.nan]), [1.0, float("nan")]),  # the caller decides about non-finite values
    ],
)
def test_model_output_becomes_one_float_per_ride(output: Any, expected: list[float]) -> None:
    assert as_durations(output, 2) == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize(
    ("output", "error"),
    [
        (np.array([1.0, 2.0, 3.0]), r"expected 2 predictions \(one per ride\), got an array of shape \(3,\)"),
        (np.ones((2, 2)), r"got an array of shape \(2, 2\)"),
        (np.array(["12.5", "13"]), r"predictions must be numbers, got str \('12.5'\)"),
        ([True, False], r"predictions must be numbers, got bool"),
        ([1.0, None], r"predictions must be numbers, got NoneType"),
    ],
)
def test_model_output_that_is_not_one_number_per_ride_is_named(output: Any, error: str) -> None:
    with pytest.raises(ModelOutputError, match=error):
        as_durations(output, 2)


def test_a_pickled_model_is_read_without_importing_mlflow(model_dir: Path) -> None:
    """The runtime path reads the signature from the MLmodel file: a fresh process that loads
    and checks the model never imports mlflow (cold start; mlflow leaves the runtime set)."""
    code = (
        "import sys, pathlib; from stream.model_loading import load_model; "
        f"m = load_model({str(model_dir)!r}, pathlib.Path('unused')); "
        "print(m.features.source, m.known_rides.source, 'mlflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    ).stdout
    assert out.split() == ["signature", "rides", "recorded", "with", "the", "model", "False"]
