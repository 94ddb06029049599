"""Which model the local pipeline serves (MODEL_URI in the function's forms), and the watcher
that restarts the function when a local model changes."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest

from local_aws.model_source import (
    ModelWatcher,
    configured_model_uri,
    fetch_remote_model,
    loaded_model,
    local_model_dir,
)
from local_aws.stack import LocalStack, StackConfig, StackError
from stream.settings import ConfigurationError


@pytest.mark.parametrize(
    ("env", "uri"),
    [
        ({}, None),
        ({"MODEL_URI": "models:/rides@champion"}, "models:/rides@champion"),
        ({"MODEL_LOCATION": "/opt/model"}, "/opt/model"),
        ({"RUN_ID": "abc", "MODEL_BUCKET": "b"}, "s3://b/1/abc/artifacts/model"),
    ],
)
def test_the_model_is_named_in_any_form_the_function_reads(env: dict[str, str], uri: str | None) -> None:
    assert configured_model_uri(env) == uri


def test_a_half_course_form_is_the_functions_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="RUN_ID is set but MODEL_BUCKET is not"):
        configured_model_uri({"RUN_ID": "abc"})


def test_local_uris_name_a_directory_and_remote_ones_do_not(tmp_path: Path) -> None:
    assert local_model_dir(str(tmp_path)) == tmp_path.resolve()
    assert local_model_dir(f"file://{tmp_path}") == tmp_path.resolve()
    assert local_model_dir("s3://bucket/model") is None
    assert local_model_dir("runs:/abc/model") is None


def test_the_loaded_version_is_read_from_the_functions_init_log() -> None:
    log = b"\n".join(
        [
            b"START nothing to see",
            json.dumps(
                {"level": "INFO", "message": "model loaded", "model_uri": "s3://m/x", "model_version": "7"}
            ).encode(),
            b"not json {",
        ]
    )
    loaded = loaded_model(log)
    assert loaded is not None
    assert (loaded.uri, loaded.version) == ("s3://m/x", "7")
    assert loaded_model(b'{"message": "something else"}') is None


def a_model(directory: Path, run_id: str = "first") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "MLmodel").write_text(f"run_id: {run_id}\nflavors: {{}}\n")
    (directory / "model.pkl").write_bytes(b"weights")
    return directory


def test_the_watcher_calls_back_once_per_settled_change(tmp_path: Path) -> None:
    model = a_model(tmp_path / "model")
    changed = threading.Semaphore(0)
    watcher = ModelWatcher(model, changed.release, interval=0.05)
    watcher.start()
    try:
        assert not changed.acquire(timeout=0.3)  # nothing changed yet
        (model / "model.pkl").write_bytes(b"new weights, longer")
        assert changed.acquire(timeout=5)
        assert not changed.acquire(timeout=0.3)  # once
        (model / "MLmodel").unlink()  # a model being rewritten: no call while MLmodel is missing
        assert not changed.acquire(timeout=0.3)
        a_model(model, run_id="second")
        assert changed.acquire(timeout=5)
    finally:
        watcher.stop()
    assert not watcher.is_alive()


def test_a_remote_model_is_fetched_with_this_shells_credentials(aws: None, tmp_path: Path) -> None:
    source = a_model(tmp_path / "source")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="team-models")
    for path in source.iterdir():
        s3.upload_file(str(path), "team-models", f"rides/v3/{path.name}")
    fetched = fetch_remote_model("s3://team-models/rides/v3", tmp_path / "cache")
    assert sorted(p.name for p in fetched.iterdir()) == ["MLmodel", "model.pkl"]


def stack_for(tmp_path: Path, **config: Any) -> tuple[LocalStack, list[str]]:
    said: list[str] = []
    return LocalStack(StackConfig(log_dir=tmp_path / "logs", **config), say=said.append), said


def test_the_stack_serves_a_local_model_uri_from_its_directory(tmp_path: Path) -> None:
    model = a_model(tmp_path / "mine")
    stack, said = stack_for(tmp_path, model_uri=str(model))
    stack._ensure_model()
    assert stack.model_dir == model.resolve()  # uploaded to the local S3 and watched from here
    assert said == [f"  model      MODEL_URI={model}"]


def test_the_stack_refuses_a_local_model_uri_without_a_model(tmp_path: Path) -> None:
    stack, _ = stack_for(tmp_path, model_uri=str(tmp_path))
    with pytest.raises(StackError, match=f"MODEL_URI={tmp_path}: no MLflow model in {tmp_path}"):
        stack._ensure_model()


def test_the_stack_hands_the_function_a_fetched_copy_of_a_remote_model(aws: None, tmp_path: Path) -> None:
    source = a_model(tmp_path / "source")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="team-models")
    for path in source.iterdir():
        s3.upload_file(str(path), "team-models", f"rides/v3/{path.name}")
    stack, said = stack_for(tmp_path, model_uri="s3://team-models/rides/v3")
    stack._ensure_model()
    assert stack.model_dir is None  # nothing local to watch
    assert (Path(stack.model_uri) / "MLmodel").is_file()
    assert said[0].startswith(
        "  model      MODEL_URI=s3://team-models/rides/v3: fetched with this shell's credentials"
    )
    missing, _ = stack_for(tmp_path, model_uri="s3://team-models/nothing-here")
    with pytest.raises(StackError, match="MODEL_URI=s3://team-models/nothing-here: cannot load model"):
        missing._ensure_model()
