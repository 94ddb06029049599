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
from tests.deploy.conftest import moto_api, publish_fake_image

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


def create_repository(ecr: Any, name: str = "ride-duration") -> None:
    """The repository as `make ecr` leaves it (moto's CloudFormation cannot set scanning)."""
    ecr.create_repository(
        repositoryName=name, imageTagMutability="IMMUTABLE", imageScanningConfiguration={"scanOnPush": True}
    )


def test_a_missing_repository_is_not_created_but_named_with_the_command_that_creates_it(client: Any) -> None:
    ecr = client("ecr")

    with pytest.raises(PrerequisiteError) as missing:
        publish.publish(ecr, "ride-duration", COMMIT, None, run_command=FakeDocker(ecr))

    assert str(missing.value) == (
        "ECR repository ride-duration does not exist in us-east-1: create it once with `make ecr` "
        "(stack ride-duration-ecr from infra/ecr.yaml: immutable tags, scan on push, lifecycle policy)"
    )
    assert ecr.describe_repositories()["repositories"] == []
    with pytest.raises(PrerequisiteError, match=r"`make ecr ARGS='--parameter RepositoryName=other'`"):
        publish.existing_repository_uri(ecr, "other")


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
            repository = repository_uri.split("/", 1)[1]
            publish_fake_image(self.ecr, repository, tag)
            # ECR's scan on push (moto scans only when asked, and finishes at once).
            self.ecr.start_image_scan(repositoryName=repository, imageId={"imageTag": tag})
        if command[:3] == ["docker", "image", "inspect"]:  # what docker reports after a pull
            repository = command[-1].rsplit(":", 1)[0]
            digests = [f"{repository}@{BASE_DIGEST}", f"mirror.example/python@sha256:{'0' * 64}"]
            return subprocess.CompletedProcess(command, 0, json.dumps(digests), "")
        return subprocess.CompletedProcess(command, 0, "", "")


def test_publish_builds_for_lambda_pushes_and_returns_the_pushed_digest(client: Any) -> None:
    ecr = client("ecr")
    create_repository(ecr)
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
    create_repository(client("ecr"))
    docker = FakeDocker(client("ecr"))

    publish.publish(client("ecr"), "ride-duration", COMMIT, None, run_command=docker, arch="x86_64")

    pull, _, build, *_ = docker.commands
    assert pull[pull.index("--platform") + 1] == build[build.index("--platform") + 1] == "linux/amd64"
    repository = publish.base_image().rsplit(":", 1)[0]
    assert f"base image {publish.base_image()} is {repository}@{BASE_DIGEST}" in capsys.readouterr().err


def test_a_base_image_without_a_registry_digest_stops_the_build(client: Any) -> None:
    def docker(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 0, "[]" if "inspect" in command else "", "")

    create_repository(client("ecr"))
    with pytest.raises(PrerequisiteError, match="reports no digest"):
        publish.publish(client("ecr"), "ride-duration", COMMIT, None, run_command=docker)


def test_a_commit_already_published_is_not_built_again(client: Any) -> None:
    ecr = client("ecr")
    create_repository(ecr)
    existing = publish_fake_image(ecr, "ride-duration", COMMIT)
    docker = FakeDocker(ecr)

    assert publish.publish(ecr, "ride-duration", COMMIT, None, run_command=docker) == existing
    assert docker.commands == []


# --- The scan on push -------------------------------------------------------------------------


def scan_findings(endpoint: str, tag: str, counts: dict[str, int]) -> None:
    """Tell moto what the scan of ride-duration:<tag> found (by default it reports one HIGH).
    publish tags `<commit>-<arch>` (arm64 by default) when no model is baked in."""
    result = {
        "registryId": "123456789012",
        "repositoryName": "ride-duration",
        "imageId": {"imageTag": tag},
        "imageScanStatus": {"status": "COMPLETE", "description": "The scan was completed successfully."},
        "imageScanFindings": {"findings": [], "findingSeverityCounts": counts},
    }
    moto_api(endpoint, "static/ecr/scan-finding-results", {"results": [result], "region": "us-east-1"})


class PublishingGit(FakeDocker):
    """FakeDocker that also answers publish's git questions: a clean tree at COMMIT."""

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if command[:2] == ["git", "rev-parse"]:
            return subprocess.CompletedProcess(command, 0, f"{COMMIT}\n", "")
        return super().__call__(command, **kwargs)


@pytest.fixture
def docker_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish.shutil, "which", lambda _name: "/usr/bin/docker")


@pytest.mark.usefixtures("docker_found")
def test_publish_reports_the_critical_and_high_findings_and_prints_the_image(
    client: Any, aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ecr = client("ecr")
    create_repository(ecr)
    scan_findings(aws_endpoint, f"{COMMIT}-arm64", {"CRITICAL": 1, "HIGH": 2, "MEDIUM": 5, "LOW": 1})

    assert run(lambda argv: publish.main(argv, run_command=PublishingGit(ecr)), []) == 0

    out, err = capsys.readouterr()
    [details] = ecr.describe_images(repositoryName="ride-duration")["imageDetails"]
    assert out == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration@{details['imageDigest']}\n"
    assert f"ride-duration@{details['imageDigest']}: scan COMPLETE: CRITICAL 1, HIGH 2, 6 lower\n" in err


@pytest.mark.usefixtures("docker_found")
@pytest.mark.parametrize(
    ("fail_on", "counts", "refused"),
    [
        ("critical", {"CRITICAL": 1, "HIGH": 2}, "1 CRITICAL"),
        ("high", {"HIGH": 2, "MEDIUM": 5}, "2 HIGH"),
        ("high", {"CRITICAL": 3, "HIGH": 2}, "3 CRITICAL, 2 HIGH"),
    ],
)
def test_fail_on_refuses_findings_at_or_above_its_severity_and_prints_no_image(  # noqa: PLR0917 - fixtures
    client: Any,
    aws_endpoint: str,
    capsys: pytest.CaptureFixture[str],
    fail_on: str,
    counts: dict[str, int],
    refused: str,
) -> None:
    ecr = client("ecr")
    create_repository(ecr)
    scan_findings(aws_endpoint, f"{COMMIT}-arm64", counts)

    assert run(lambda argv: publish.main(argv, run_command=PublishingGit(ecr)), ["--fail-on", fail_on]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert f"error: the image has {refused} finding(s) (--fail-on {fail_on}): not printed for deploy." in err
    assert (
        "aws ecr describe-image-scan-findings --repository-name ride-duration --image-id imageDigest=sha256:"
        in err
    )


@pytest.mark.usefixtures("docker_found")
def test_fail_on_lets_lower_findings_through(
    client: Any, aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ecr = client("ecr")
    create_repository(ecr)
    scan_findings(aws_endpoint, f"{COMMIT}-arm64", {"HIGH": 4, "MEDIUM": 1})

    assert (
        run(lambda argv: publish.main(argv, run_command=PublishingGit(ecr)), ["--fail-on", "critical"]) == 0
    )
    assert capsys.readouterr().out.startswith(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration@sha256:"
    )


def test_a_scan_that_never_started_is_reported_and_fails_only_with_fail_on(client: Any) -> None:
    ecr = client("ecr")
    create_repository(ecr)
    image = publish_fake_image(ecr, "ride-duration", COMMIT)  # pushed, never scanned
    digest = publish.parse_image_uri(image)["digest"]
    waited: list[float] = []

    result = publish.scan_result(ecr, "ride-duration", digest, timeout=0, sleep=waited.append)

    assert (result.status, result.counts, waited) == ("NOT_FOUND", {}, [])
    assert result.summary() == "scan NOT_FOUND (no scan of this image yet: does the repository scan on push?)"
    publish.check_scan(result, None, "ride-duration")
    with pytest.raises(publish.ScanFindingsError, match=r"^cannot check for HIGH findings: scan NOT_FOUND"):
        publish.check_scan(result, "HIGH", "ride-duration")


def test_a_running_scan_is_polled_until_it_completes(client: Any) -> None:
    ecr = client("ecr")
    create_repository(ecr)
    digest = publish.parse_image_uri(publish_fake_image(ecr, "ride-duration", COMMIT))["digest"]
    now = [0.0]

    def sleep(seconds: float) -> None:  # the scan starts while publish waits
        now[0] += seconds
        ecr.start_image_scan(repositoryName="ride-duration", imageId={"imageDigest": digest})

    result = publish.scan_result(ecr, "ride-duration", digest, timeout=60, sleep=sleep, clock=lambda: now[0])

    assert (result.status, now[0]) == ("COMPLETE", publish.SCAN_POLL_SECONDS)
    assert result.counts == {"HIGH": 1}  # moto's default finding
