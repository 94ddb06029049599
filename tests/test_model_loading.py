"""Every MODEL_URI form loads the same trained model; failures name the URI and the reason."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from model_service import load_configured_model
from scripts.train import TrainedModel
from stream.features import ride_features
from stream.model_loading import MAX_CACHED_MODELS, ModelLoadError, keep_in_cache, load_model
from stream.settings import ConfigurationError, Settings

FEATURES = [ride_features(130, 205, 3.66), ride_features(1, 2, 10.0)]


@pytest.fixture
def s3(aws: None) -> Any:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="models")
    return client


def upload_dir(client: Any, local: Path, bucket: str, prefix: str) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local)}")


def expected_predictions(model_dir: Path, tmp_path: Path) -> list[float]:
    return list(load_model(str(model_dir), tmp_path / "reference").predict(FEATURES))


def test_local_directory(model_dir: Path, trained_model: TrainedModel, tmp_path: Path) -> None:
    loaded = load_model(str(model_dir), tmp_path)
    assert loaded.flavor == "sklearn/pickle"
    assert loaded.info.run_id == trained_model.run_id
    assert loaded.info.version == trained_model.run_id  # no registry involved: the run id, as the course
    assert 1 < loaded.predict(FEATURES)[0] < 60
    assert loaded.local_dir == model_dir  # used in place, not copied


def test_s3_prefix_is_downloaded_once_then_served_from_the_cache(
    s3: Any, model_dir: Path, tmp_path: Path
) -> None:
    upload_dir(s3, model_dir, "models", "ride-duration/v1/model")
    gets: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: gets.append(params["Key"])
    )
    first = load_model("s3://models/ride-duration/v1/model", tmp_path / "cache", lambda: s3)
    assert sorted(Path(key).name for key in gets) == sorted(p.name for p in model_dir.iterdir())
    assert list(first.predict(FEATURES)) == expected_predictions(model_dir, tmp_path)

    gets.clear()
    second = load_model("s3://models/ride-duration/v1/model/", tmp_path / "cache", lambda: s3)
    assert gets == []
    assert second.local_dir == first.local_dir


def test_s3_cache_is_refreshed_when_the_objects_change(s3: Any, model_dir: Path, tmp_path: Path) -> None:
    upload_dir(s3, model_dir, "models", "m")
    first = load_model("s3://models/m", tmp_path, lambda: s3)
    s3.put_object(Bucket="models", Key="m/README.txt", Body=b"changed")
    second = load_model("s3://models/m", tmp_path, lambda: s3)
    assert second.local_dir != first.local_dir
    assert (second.local_dir / "README.txt").read_bytes() == b"changed"


def test_s3_cache_sees_an_object_overwritten_with_as_many_bytes(
    s3: Any, model_dir: Path, tmp_path: Path
) -> None:
    upload_dir(s3, model_dir, "models", "m")
    s3.put_object(Bucket="models", Key="m/README.txt", Body=b"version 1")
    first = load_model("s3://models/m", tmp_path, lambda: s3)
    s3.put_object(Bucket="models", Key="m/README.txt", Body=b"version 2")  # same key, same size

    second = load_model("s3://models/m", tmp_path, lambda: s3)

    assert second.local_dir != first.local_dir
    assert (second.local_dir / "README.txt").read_bytes() == b"version 2"


@pytest.fixture
def s3_over_http(moto_server: str) -> Any:
    """A bucket on a real moto server: keys travel over HTTP as S3 would send them."""
    client = boto3.client("s3", endpoint_url=moto_server)
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.mark.parametrize(
    "key_below_prefix", ["../../escaped.txt", "sub/../../../escaped.txt", "/{tmp}/escaped.txt"]
)
def test_a_key_that_would_leave_the_model_directory_is_refused(
    s3_over_http: Any, key_below_prefix: str, model_dir: Path, tmp_path: Path
) -> None:
    client, bucket = s3_over_http
    upload_dir(client, model_dir, bucket, "models/m")
    # A leading "/" below the prefix would make the rest an absolute path: point it into tmp_path.
    key = "models/m/" + key_below_prefix.format(tmp=str(tmp_path).strip("/"))
    client.put_object(Bucket=bucket, Key=key, Body=b"written by whoever can write the bucket")
    cache = tmp_path / "a" / "b" / "cache"

    with pytest.raises(ModelLoadError) as raised:
        load_model(f"s3://{bucket}/models/m", cache, lambda: client)

    assert repr(key) in str(raised.value)
    assert "outside the model directory" in str(raised.value)
    assert sorted(p.name for p in tmp_path.rglob("escaped.txt")) == []
    assert not cache.exists() or list(cache.iterdir()) == []


def test_folder_markers_are_skipped(s3_over_http: Any, model_dir: Path, tmp_path: Path) -> None:
    client, bucket = s3_over_http
    # What the S3 console's "Create folder" leaves: empty objects named like folders.
    for marker in ("models/", "models/m/", "models/m/extra/"):
        client.put_object(Bucket=bucket, Key=marker, Body=b"")
    upload_dir(client, model_dir, bucket, "models/m")

    loaded = load_model(f"s3://{bucket}/models/m", tmp_path / "cache", lambda: client)

    assert list(loaded.predict(FEATURES)) == expected_predictions(model_dir, tmp_path)
    assert sorted(p.name for p in loaded.local_dir.iterdir()) == sorted(p.name for p in model_dir.iterdir())


def test_runs_uri_through_the_tracking_server(
    trained_model: TrainedModel, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    loaded = load_model(f"runs:/{trained_model.run_id}/model", tmp_path)
    assert loaded.info.run_id == trained_model.run_id
    assert list(loaded.predict(FEATURES)) == expected_predictions(model_dir, tmp_path)


@pytest.mark.parametrize("form", ["alias", "version"])
def test_models_uri_by_alias_and_by_version(
    form: str, trained_model: TrainedModel, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    uri = trained_model.model_uris()[f"registry {form}"]
    loaded = load_model(uri, tmp_path)
    assert loaded.info.version == trained_model.version
    assert loaded.info.uri == uri
    assert list(loaded.predict(FEATURES)) == expected_predictions(model_dir, tmp_path)


def test_course_run_id_bucket_and_experiment_variables(
    s3: Any, trained_model: TrainedModel, model_dir: Path, tmp_path: Path
) -> None:
    upload_dir(s3, model_dir, "models", f"7/{trained_model.run_id}/artifacts/model")
    settings = Settings.from_env(
        {
            "RUN_ID": trained_model.run_id,
            "MODEL_BUCKET": "models",
            "MLFLOW_EXPERIMENT_ID": "7",
            "MODEL_CACHE_DIR": str(tmp_path),
        }
    )
    assert settings.model_uri == f"s3://models/7/{trained_model.run_id}/artifacts/model"
    loaded = load_configured_model(settings)
    assert loaded.info.version == trained_model.run_id


def test_course_model_location_variable(model_dir: Path, tmp_path: Path) -> None:
    settings = Settings.from_env({"MODEL_LOCATION": str(model_dir), "MODEL_CACHE_DIR": str(tmp_path)})
    assert load_configured_model(settings).local_dir == model_dir


def test_skops_models_load_too(model_dir: Path, tmp_path: Path) -> None:
    import mlflow.sklearn

    pipeline = load_model(str(model_dir), tmp_path).predictor
    mlflow.sklearn.save_model(
        pipeline, tmp_path / "skops-model", serialization_format="skops", pip_requirements=["scikit-learn"]
    )
    loaded = load_model(str(tmp_path / "skops-model"), tmp_path / "cache")
    assert loaded.flavor == "sklearn/skops"
    assert list(loaded.predict(FEATURES)) == expected_predictions(model_dir, tmp_path)


def test_other_flavours_fall_back_to_pyfunc(model_dir: Path, tmp_path: Path) -> None:
    import yaml

    copy = tmp_path / "pyfunc-only"
    shutil.copytree(model_dir, copy)
    mlmodel = yaml.safe_load((copy / "MLmodel").read_text())
    del mlmodel["flavors"]["sklearn"]
    # With a signature, pyfunc hands the model a DataFrame, which a DictVectorizer cannot read
    # (test_model_contract); without one it passes the feature dicts through, as in the course.
    del mlmodel["signature"]
    (copy / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    loaded = load_model(str(copy), tmp_path / "cache")
    assert loaded.flavor == "pyfunc"
    assert list(loaded.predict(FEATURES)) == pytest.approx(expected_predictions(model_dir, tmp_path))


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("/nonexistent/model", "/nonexistent/model is not a directory"),
        ("s3://models/nothing/here", "no objects under s3://models/nothing/here/"),
        ("s3://no-such-bucket/model", "NoSuchBucket"),
    ],
)
def test_load_failures_name_the_uri_and_the_reason(s3: Any, uri: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_model(uri, tmp_path, lambda: s3)
    assert str(raised.value).startswith(f"cannot load model from {uri!r}: ")
    assert reason in str(raised.value)


def test_a_directory_that_is_not_a_model_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no MLmodel file: is this an MLflow model directory"):
        load_model(str(tmp_path / "empty"), tmp_path / "cache")


def test_unknown_registered_model_is_named(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    with pytest.raises(ModelLoadError, match=r"cannot load model from 'models:/nope@champion': .*nope"):
        load_model("models:/nope@champion", tmp_path)


def test_settings_require_a_model() -> None:
    with pytest.raises(ConfigurationError, match="no model configured: set MODEL_URI"):
        Settings.from_env({})
    with pytest.raises(ConfigurationError, match="RUN_ID is set but MODEL_BUCKET is not"):
        Settings.from_env({"RUN_ID": "abc"})


def test_a_model_saved_by_another_scikit_learn_is_flagged(model_dir: Path, tmp_path: Path) -> None:
    import yaml

    from stream.model_loading import local_model_problem

    assert local_model_problem(model_dir) is None
    assert local_model_problem(tmp_path / "nothing") == f"no model in {tmp_path / 'nothing'}"
    copy = tmp_path / "old-model"
    shutil.copytree(model_dir, copy)
    mlmodel = yaml.safe_load((copy / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["sklearn_version"] = "0.24.2"
    (copy / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    assert load_model(str(copy), tmp_path / "c").version_mismatch == local_model_problem(copy)
    assert local_model_problem(copy).startswith("trained with scikit-learn 0.24.2, running ")


@pytest.mark.parametrize("form", ["alias", "latest", "stage"])
def test_a_moving_registry_uri_is_pinned_before_the_cache(
    form: str, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a new version is registered, the same cache serves it, not the version cached before."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    client = MlflowClient()
    name = f"moving-{form}"
    client.create_registered_model(name)

    def register() -> str:
        version = str(
            client.create_model_version(name, trained_model.artifact_uri, trained_model.run_id).version
        )
        if form == "alias":
            client.set_registered_model_alias(name, "champion", version)
        if form == "stage":
            with pytest.warns(FutureWarning):  # stages are deprecated in MLflow 3, still served
                client.transition_model_version_stage(name, version, "Production")
        return version

    uri = {
        "alias": f"models:/{name}@champion",
        "latest": f"models:/{name}/latest",
        "stage": f"models:/{name}/Production",
    }[form]
    first_version = register()
    first = load_model(uri, tmp_path)
    second_version = register()

    second = load_model(uri, tmp_path)

    assert (first.info.version, second.info.version) == (first_version, second_version)
    assert second.local_dir != first.local_dir
    assert second.info.uri == uri
    assert list(second.predict(FEATURES)) == list(first.predict(FEATURES))


def test_the_cache_keeps_the_most_recently_used_models_only(s3: Any, model_dir: Path, tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        upload_dir(s3, model_dir, "models", name)
    cache = tmp_path / "cache"
    loaded = {name: load_model(f"s3://models/{name}", cache, lambda: s3).local_dir for name in "abc"}
    load_model("s3://models/a", cache, lambda: s3)  # a is used again: b is now the oldest

    newest = load_model("s3://models/d", cache, lambda: s3).local_dir

    assert MAX_CACHED_MODELS == 3
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        p.name for p in (loaded["a"], loaded["c"], newest)
    )
    assert not loaded["b"].exists()


def test_a_cache_entry_in_use_is_never_evicted(tmp_path: Path) -> None:
    entries = [tmp_path / f"s3-{n}" for n in range(5)]
    for age, entry in enumerate(entries):
        entry.mkdir()
        os.utime(entry, (1_000_000 - age * 1000, 1_000_000 - age * 1000))
    (tmp_path / ".staging-x").mkdir()  # another process filling an entry: not an entry yet
    (tmp_path / "someone-else").mkdir()  # MODEL_CACHE_DIR=/tmp: what else lives there stays
    os.utime(tmp_path / "someone-else", (1, 1))

    keep_in_cache(entries[-1], tmp_path, limit=2)

    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging-x", "s3-0", "s3-4", "someone-else"]


def test_without_mlflow_a_registry_uri_says_how_to_deploy_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as in the function's runtime set: not installed
    with pytest.raises(ModelLoadError) as raised:
        load_model("models:/ride-duration@champion", tmp_path)
    assert str(raised.value) == (
        "cannot load model from 'models:/ride-duration@champion': runs:/ and models:/ URIs need mlflow, "
        "which the function's runtime set leaves out: deploy with `make deploy MODEL_URI=<this uri>` "
        "(it resolves the URI to the model's s3:// location), or run in the dev environment (make setup)"
    )


def test_model_version_and_run_id_from_deploy_name_the_model(model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_URI": str(model_dir), "MODEL_CACHE_DIR": str(tmp_path)}
    plain = load_configured_model(Settings.from_env(env)).info

    named = load_configured_model(Settings.from_env(env | {"MODEL_VERSION": "7", "MODEL_RUN_ID": "abc"})).info

    assert (named.uri, named.version, named.run_id) == (plain.uri, "7", "abc")
    assert plain.version == plain.run_id  # without them: the run id from MLmodel, as the course
