"""A model pinned by content (MODEL_SHA256): loaded when its files are the pinned ones, refused,
before anything is unpickled, when they are not."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest

from model_service import load_configured_model
from stream.model_loading import ModelLoadError, load_model, model_files_sha256
from stream.settings import ConfigurationError, Settings


@pytest.fixture
def s3(aws: None) -> Any:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="models")
    return client


def upload(client: Any, local: Path, prefix: str) -> str:
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "models", f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://models/{prefix}/"


class WritesAFile:
    """A pickle that runs code when loaded: what a writer of the bucket could put there."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pickle ran"))


def test_the_digest_is_what_the_documented_shell_pipeline_prints(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "model")
    (copy / "sub dir").mkdir()
    (copy / "sub dir" / "ä.txt").write_text("a file in a folder, with a space and a non-ASCII name")

    shell = subprocess.run(  # noqa: S602 - the documented pipeline, as a user types it
        "(cd model && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )

    assert model_files_sha256(copy) == shell.stdout.split()[0]


def test_a_changed_file_changes_the_digest(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "model")
    before = model_files_sha256(copy)
    (copy / "MLmodel").write_text((copy / "MLmodel").read_text() + "\n")
    assert model_files_sha256(copy) != before


def test_the_pinned_model_loads(s3: Any, model_dir: Path, tmp_path: Path) -> None:
    uri = upload(s3, model_dir, "models/run-1")

    model = load_model(uri, tmp_path / "cache", lambda: s3, expected_sha256=model_files_sha256(model_dir))

    assert model.self_test().passed


def test_a_model_overwritten_after_deploy_is_refused_before_it_is_unpickled(
    s3: Any, model_dir: Path, tmp_path: Path
) -> None:
    uri = upload(s3, model_dir, "models/run-1")
    pinned = model_files_sha256(model_dir)
    marker = tmp_path / "pwned"
    s3.put_object(Bucket="models", Key="models/run-1/model.pkl", Body=pickle.dumps(WritesAFile(marker)))

    with pytest.raises(ModelLoadError) as raised:
        load_model(uri, tmp_path / "cache", lambda: s3, expected_sha256=pinned)

    assert f"not {pinned} (MODEL_SHA256): the model changed since it was deployed" in str(raised.value)
    assert str(raised.value).startswith(f"cannot load model from '{uri}'")
    assert not marker.exists()


def test_without_a_pin_the_same_files_load(s3: Any, model_dir: Path, tmp_path: Path) -> None:
    """The check is what refuses them: the same load without MODEL_SHA256 unpickles (and runs) it."""
    uri = upload(s3, model_dir, "models/run-1")
    marker = tmp_path / "pwned"
    s3.put_object(Bucket="models", Key="models/run-1/model.pkl", Body=pickle.dumps(WritesAFile(marker)))

    with pytest.raises(ModelLoadError):
        load_model(uri, tmp_path / "cache", lambda: s3)

    assert marker.read_text() == "pickle ran"


def test_model_sha256_comes_from_the_environment(model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_URI": str(model_dir), "MODEL_CACHE_DIR": str(tmp_path)}
    assert Settings.from_env(env).model_sha256 is None
    good = model_files_sha256(model_dir)

    assert load_configured_model(Settings.from_env({**env, "MODEL_SHA256": good.upper()})).self_test().passed
    with pytest.raises(ModelLoadError, match="MODEL_SHA256"):
        load_configured_model(Settings.from_env({**env, "MODEL_SHA256": "0" * 64}))
    with pytest.raises(ConfigurationError, match="MODEL_SHA256 must be a SHA-256 in hex"):
        Settings.from_env({**env, "MODEL_SHA256": "abc"})
