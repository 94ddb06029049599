"""scripts/publish.py without a Docker engine: the tag, the checks, ECR (moto), and the build and
push commands it would run, with a fake `docker` whose push puts the image into moto's ECR."""

from __future__ import annotations

import base64
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scripts import publish
from scripts.stack import PROJECT_ROOT, PrerequisiteError, run
from tests.deploy.conftest import publish_fake_image

COMMIT = "3f" * 20
BASE_DIGEST = "sha256:" + "ab" * 32


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_tag_is_the_commit_and_architecture_with_the_baked_model_and_the_time_of_a_dirty_tree() -> None:
    now = datetime(2026, 11, 25, 20, 30, tzinfo=UTC)
    assert publish.image_tag(COMMIT, dirty=False) == f"{COMMIT}-arm64"
    assert publish.image_tag(COMMIT, dirty=False, arch="x86_64") == f"{COMMIT}-x86_64"
    assert (
        publish.image_tag(COMMIT, dirty=False, model="0123456789ab") == f"{COMMIT}-arm64-model-0123456789ab"
    )
    assert publish.image_tag(COMMIT, dirty=True, now=now) == f"{COMMIT}-arm64-dirty-20261125T203000Z"


def test_a_retrained_model_gets_another_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "model.pkl").write_bytes(b"weights 1")
    first = publish.model_fingerprint(tmp_path)
    assert publish.model_fingerprint(tmp_path) == first
    (tmp_path / "model.pkl").write_bytes(b"weights 2")
    assert publish.model_fingerprint(tmp_path) != first
    assert len(first) == 12


def test_commit_and_uncommitted_changes_come_from_git(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "lambda_function.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")

    assert publish.git_commit(root=tmp_path) == git(tmp_path, "rev-parse", "HEAD")
    assert not publish.has_uncommitted_changes(root=tmp_path)
    (tmp_path / "model").mkdir()  # untracked: never reaches the image unasked
    assert not publish.has_uncommitted_changes(root=tmp_path)
    (tmp_path / "lambda_function.py").write_text("x = 2\n")
    assert publish.has_uncommitted_changes(root=tmp_path)


def test_outside_a_git_repository_the_commit_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteError, match="cannot read the git commit"):
        publish.git_commit(root=tmp_path)


def test_without_docker_publish_says_so_before_touching_aws(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(publish.shutil, "which", lambda _name: None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: AWS is never reached

    assert run(publish.main, ["--allow-dirty"]) == 1

    assert capsys.readouterr().err == (
        "error: docker not found: publishing builds the image with Docker 23+ (BuildKit). "
        "Install Docker, or publish from a machine or CI runner that has it\n"
    )


def test_a_stopped_docker_engine_is_reported_with_dockers_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish.shutil, "which", lambda _name: "/usr/bin/docker")

    def docker_info(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        reason = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
        return subprocess.CompletedProcess(command, 1, "", f"Client: ...\n{reason}\n")

    with pytest.raises(
        PrerequisiteError, match=r"not reachable .*Is the docker daemon running\?\): start Docker"
    ):
        publish.require_docker(docker_info)


def test_uncommitted_changes_stop_publish_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def dirty_git(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 0, " M model_service.py\n", "")

    with pytest.raises(PrerequisiteError, match=r"uncommitted changes.*--allow-dirty"):
        publish.main([], run_command=dirty_git)


def test_model_dir_must_be_an_mlflow_model_inside_the_build_context(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(
        PrerequisiteError, match=r"not an MLflow model directory \(no MLmodel file\): run `make train`"
    ):
        publish.validate_model_dir(Path("infra"))
    with pytest.raises(PrerequisiteError, match="outside the build context"):
        publish.validate_model_dir(model_dir)
    inside = tmp_path / "build" / "model"
    inside.mkdir(parents=True)
    (inside / "MLmodel").write_text("flavors: {}\n")
    assert publish.validate_model_dir(Path("build/model"), root=tmp_path) == "build/model"


@pytest.mark.parametrize(
    "uri",
    [
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration:3f3f",  # a tag can move
        "ride-duration@sha256:" + "a" * 64,  # no registry
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration@sha256:abc",  # not a digest
    ],
)
def test_only_ecr_images_by_digest_are_accepted(uri: str) -> None:
    with pytest.raises(PrerequisiteError, match="not an ECR image URI by digest"):
        publish.parse_image_uri(uri)


def test_image_uri_by_digest_parses_back() -> None:
    digest = "sha256:" + "0a" * 32
    uri = publish.image_uri_by_digest("123456789012.dkr.ecr.eu-west-1.amazonaws.com/ride-duration", digest)
    assert publish.parse_image_uri(uri) == {
        "registry": "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "account": "123456789012",
        "region": "eu-west-1",
        "repository": "ride-duration",
        "digest": digest,
    }


def test_repository_is_created_once_with_immutable_tags_and_scanning(client: Any) -> None:
    ecr = client("ecr")

    first = publish.ensure_repository(ecr, "ride-duration")
    second = publish.ensure_repository(ecr, "ride-duration")

    assert first == second == "123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration"
    [repository] = ecr.describe_repositories()["repositories"]
    assert repository["imageTagMutability"] == "IMMUTABLE"
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}


class FakeDocker:
    """Records docker commands; its push puts the image into moto's ECR, as a real push would."""

    def __init__(self, ecr: Any) -> None:
        self.ecr = ecr
        self.commands: list[list[str]] = []
        self.login_password: str | None = None

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        if command[:2] == ["docker", "login"]:
            self.login_password = kwargs["input"]
        if command[:2] == ["docker", "push"]:
            repository_uri, tag = command[2].rsplit(":", 1)
            publish_fake_image(self.ecr, repository_uri.split("/", 1)[1], tag)
        if command[:3] == ["docker", "image", "inspect"]:  # what docker reports after a pull
            repository = command[-1].rsplit(":", 1)[0]
            digests = [f"{repository}@{BASE_DIGEST}", f"mirror.example/python@sha256:{'0' * 64}"]
            return subprocess.CompletedProcess(command, 0, json.dumps(digests), "")
        return subprocess.CompletedProcess(command, 0, "", "")


def test_publish_builds_for_lambda_pushes_and_returns_the_pushed_digest(client: Any) -> None:
    ecr = client("ecr")
    docker = FakeDocker(ecr)

    image = publish.publish(ecr, "ride-duration", COMMIT, "model", run_command=docker)

    [details] = ecr.describe_images(repositoryName="ride-duration")["imageDetails"]
    assert image == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration@{details['imageDigest']}"
    assert details["imageTags"] == [COMMIT]
    reference = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration:{COMMIT}"
    base = publish.base_image()
    pull, inspect, build, login, push = docker.commands
    assert pull == ["docker", "pull", "--quiet", "--platform", "linux/arm64", base]
    assert inspect[-1] == base
    assert build == [
        "docker",
        "build",
        "--platform",
        "linux/arm64",
        "--tag",
        reference,
        "--provenance=false",
        "--label",
        f"org.opencontainers.image.base.name={base}",
        "--label",
        f"org.opencontainers.image.base.digest={BASE_DIGEST}",
        "--build-arg",
        "MODEL_DIR=model",
        str(PROJECT_ROOT),
    ]
    assert login[:4] == ["docker", "login", "--username", "AWS"]
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    assert docker.login_password == base64.b64decode(token).decode().split(":", 1)[1]
    assert push == ["docker", "push", reference]


def test_x86_64_builds_for_linux_amd64_and_the_base_digest_is_printed(
    client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    docker = FakeDocker(client("ecr"))

    publish.publish(client("ecr"), "ride-duration", COMMIT, None, run_command=docker, arch="x86_64")

    pull, _, build, *_ = docker.commands
    assert pull[pull.index("--platform") + 1] == build[build.index("--platform") + 1] == "linux/amd64"
    repository = publish.base_image().rsplit(":", 1)[0]
    assert f"base image {publish.base_image()} is {repository}@{BASE_DIGEST}" in capsys.readouterr().err


def test_a_base_image_without_a_registry_digest_stops_the_build(client: Any) -> None:
    def docker(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 0, "[]" if "inspect" in command else "", "")

    with pytest.raises(PrerequisiteError, match="reports no digest"):
        publish.publish(client("ecr"), "ride-duration", COMMIT, None, run_command=docker)


def test_a_commit_already_published_is_not_built_again(client: Any) -> None:
    ecr = client("ecr")
    existing = publish_fake_image(ecr, "ride-duration", COMMIT)
    docker = FakeDocker(ecr)

    assert publish.publish(ecr, "ride-duration", COMMIT, None, run_command=docker) == existing
    assert docker.commands == []
