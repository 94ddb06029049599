"""Fixtures for the deployment tests: moto behind a real HTTP endpoint, a published image, a stack.

The scripts run as users run them: boto3 clients built from the environment, pointed at a
moto server on 127.0.0.1 by AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest

from scripts.deploy import Deployment, deploy
from scripts.stack import PROJECT_ROOT
from stream.self_test import BUILT_IN_RIDES, SelfTestReport
from tests.deploy import moto_cloudformation

# moto's CloudFormation lacks AWS::Lambda::Alias (and two details the template relies on): added
# to the moto server these tests run in this process (tests/deploy/moto_cloudformation.py).
moto_cloudformation.install()

# Every CloudFormation template: the stage's, the image repository's, CI's roles.
TEMPLATES = sorted((PROJECT_ROOT / "infra").glob("*.yaml"))
REGION = "us-east-1"
STAGE = "test"
STACK = f"ride-duration-{STAGE}"

CFN_LINT_TEST = "test_templates_pass_cfn_lint_including_informational_rules"
CFN_LINT_KEY = pytest.StashKey[subprocess.Popen[str]]()
# moto's CloudFormation skips the alarms and the bucket policy, with a warning for each (the
# tests check those statically).
MOTO_SKIPS_RESOURCE = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(MOTO_SKIPS_RESOURCE)
    # cfn-lint spends ~6 s importing its rules: start it now, in the background, and let its test
    # collect the result (2 cores: it runs while the other tests do).
    if not config.option.collectonly and any(item.name == CFN_LINT_TEST for item in items):
        config.stash[CFN_LINT_KEY] = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "cfn-lint"),
                "--include-checks",
                "I",
                "--",
                *map(str, TEMPLATES),
            ],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An interrupted run leaves no linter behind."""
    process = session.config.stash.get(CFN_LINT_KEY, None)
    if process is not None and process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture
def cfn_lint_result(pytestconfig: pytest.Config) -> tuple[int, str]:
    process = pytestconfig.stash[CFN_LINT_KEY]
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


@pytest.fixture(autouse=True)
def nothing_outside_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until a test asks for moto (aws_endpoint), every AWS call goes to a closed local port."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")


def moto_api(endpoint: str, path: str, body: dict[str, Any] | None = None) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/{path}", data=json.dumps(body or {}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
def aws_endpoint(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty moto account behind AWS_ENDPOINT_URL, seen by every boto3 client."""
    moto_api(moto_server, "reset")
    # moto cannot run an image function; without Docker its Lambda answers an invocation with a
    # configured response instead (test_invoke.py).
    moto_api(moto_server, "config", {"lambda": {"use_docker": False}})
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


def self_test_report(model_uri: str = "/opt/ml/model", *, drift: float = 0.0) -> str:
    """A function's answer to {"self_test": true}, as SelfTestReport.to_dict() makes it; with
    `drift`, the model predicts the recorded rides that many minutes off."""
    expected = [10.0 + index for index in range(len(BUILT_IN_RIDES))]
    got = [value + drift for value in expected]
    report = SelfTestReport(
        model_uri=model_uri,
        model_version="run-1",
        source="rides recorded with the model",
        rides=[ride.model_dump() for ride in BUILT_IN_RIDES],
        expected=expected,
        got=got,
        max_difference=drift,
        problem=f"4 of 4 predictions differ by up to {drift} min" if drift else None,
        seconds=0.003,
    )
    return json.dumps(report.to_dict())


def answer_invocations(endpoint: str, *answers: str) -> None:
    """What moto's Lambda (which cannot run an image) answers to the next invocations, in order."""
    moto_api(endpoint, "static/lambda-simple/response", {"results": list(answers), "region": REGION})


@pytest.fixture
def client(aws_endpoint: str) -> Any:
    """boto3.client, for the test's own look at the account."""
    return lambda service: boto3.client(service, region_name=REGION)


def publish_fake_image(ecr: Any, repository: str = "ride-duration", tag: str = "0" * 40) -> str:
    """An image in (moto's) ECR, as `make publish` leaves it; its URI by digest."""
    try:
        uri = ecr.create_repository(repositoryName=repository)["repository"]["repositoryUri"]
    except ecr.exceptions.RepositoryAlreadyExistsException:
        uri = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]["repositoryUri"]
    # moto derives the digest from the layers' digests: one layer per tag, one digest per tag.
    layer = {"digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest(), "size": 1}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": [layer],
    }
    digest = ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    return f"{uri}@{digest['image']['imageId']['imageDigest']}"


@pytest.fixture
def image_uri(client: Any) -> str:
    return publish_fake_image(client("ecr"))


@pytest.fixture
def stack(client: Any, image_uri: str) -> dict[str, str]:
    """The template deployed by the deploy script's own create path; its outputs."""
    _, after = deploy(client("cloudformation"), STACK, STAGE, Deployment(image_uri=image_uri))
    return {o["OutputKey"]: o["OutputValue"] for o in after["Outputs"]}
