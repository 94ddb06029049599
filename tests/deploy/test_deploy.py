"""scripts/deploy.py against a moto server (create, update, roll back, waiters), and with
botocore's Stubber for what moto cannot do (a failed or no-op update, a busy stack)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from scripts import deploy as deploy_script
from scripts.deploy import Deployment, StackOperationError, ZipPackage, deploy
from scripts.stack import PrerequisiteError, run
from tests.deploy.conftest import STACK, STAGE, answer_invocations, publish_fake_image, self_test_report

NO_WATCH = ["--watch-minutes", "0"]


def function_config(client: Any) -> dict[str, Any]:
    return client("lambda").get_function(FunctionName=f"ride-duration-{STAGE}")


def upload_model(client: Any, stack: dict[str, str], name: str) -> str:
    uri = f"{stack['ModelPrefixUri']}{name}/"
    client("s3").put_object(
        Bucket=stack["ModelBucketName"], Key=f"models/{name}/MLmodel", Body=b"flavors: {}\n"
    )
    return uri


def test_first_deploy_creates_the_stack_and_prints_its_outputs(
    client: Any, image_uri: str, aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    answer_invocations(aws_endpoint, self_test_report())

    assert run(deploy_script.main, ["--stage", STAGE, "--image-uri", image_uri, *NO_WATCH]) == 0

    out, err = capsys.readouterr()
    outputs = dict(line.split("\t") for line in out.splitlines())
    assert outputs["FunctionName"] == f"ride-duration-{STAGE}"
    assert outputs["ImageUri"] == image_uri
    assert f"ImageUri: (new stack) -> {image_uri}" in err
    assert "roll back" not in err  # nothing to roll back to
    assert function_config(client)["Code"]["ImageUri"] == image_uri
    [stack] = client("cloudformation").describe_stacks(StackName=STACK)["Stacks"]
    assert {t["Key"]: t["Value"] for t in stack["Tags"]} == {"project": "ride-duration", "stage": STAGE}


def test_a_new_model_changes_only_the_model_and_prints_the_way_back(
    client: Any, stack: dict[str, str], image_uri: str, aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model_uri = upload_model(client, stack, "run-2")
    answer_invocations(aws_endpoint, self_test_report(model_uri))

    assert run(deploy_script.main, ["--stage", STAGE, "--model-uri", model_uri, *NO_WATCH]) == 0

    config = function_config(client)
    assert config["Configuration"]["Environment"]["Variables"]["MODEL_URI"] == model_uri
    assert config["Code"]["ImageUri"] == image_uri  # kept
    err = capsys.readouterr().err
    assert f"ModelUri: /opt/ml/model -> {model_uri}" in err
    assert f"roll back with: make deploy STAGE={STAGE} IMAGE={image_uri} MODEL_URI=/opt/ml/model" in err


def test_deploying_the_previous_digest_again_restores_the_code(
    client: Any, stack: dict[str, str], image_uri: str, aws_endpoint: str
) -> None:
    newer = publish_fake_image(client("ecr"), tag="1" * 40)
    deploy(client("cloudformation"), STACK, STAGE, Deployment(image_uri=newer))
    assert function_config(client)["Code"]["ImageUri"] == newer
    answer_invocations(aws_endpoint, self_test_report())

    assert run(deploy_script.main, ["--stage", STAGE, "--image-uri", image_uri, *NO_WATCH]) == 0

    assert function_config(client)["Code"]["ImageUri"] == image_uri


def test_parameters_not_named_keep_their_deployed_values(client: Any, stack: dict[str, str]) -> None:
    cloudformation = client("cloudformation")
    deploy(cloudformation, STACK, STAGE, Deployment(overrides=(("BatchSize", "250"),)))

    deploy(cloudformation, STACK, STAGE, Deployment(model_uri=upload_model(client, stack, "run-3")))

    [mapping] = client("lambda").list_event_source_mappings(FunctionName=stack["LiveAliasArn"])[
        "EventSourceMappings"
    ]
    assert mapping["BatchSize"] == 250


class Registry:
    """A real MLflow tracking store (sqlite) whose model versions point at S3 locations."""

    def __init__(self, root: Path) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        experiment = self.client.create_experiment("ride-duration", artifact_location=str(root / "artifacts"))
        self.experiment = experiment
        self.client.create_registered_model("ride-duration")

    def register(self, source: str, alias: str = "champion") -> tuple[str, str]:
        """A new version stored at `source`, with the alias moved to it: (version, run id)."""
        run_id = self.client.create_run(self.experiment).info.run_id
        version = self.client.create_model_version("ride-duration", source, run_id).version
        self.client.set_registered_model_alias("ride-duration", alias, version)
        return str(version), run_id


def registry(root: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    store = Registry(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.client.tracking_uri)
    return store


def test_a_registry_alias_is_deployed_as_its_s3_location_version_and_run(
    client: Any,
    stack: dict[str, str],
    image_uri: str,
    aws_endpoint: str,
    *,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = registry(tmp_path, monkeypatch)
    champion = ["--stage", STAGE, "--model-uri", "models:/ride-duration@champion", *NO_WATCH]
    first = store.register(upload_model(client, stack, "registry-1"))
    answer_invocations(aws_endpoint, self_test_report(f"{stack['ModelPrefixUri']}registry-1/"))
    assert run(deploy_script.main, champion) == 0
    second = store.register(upload_model(client, stack, "registry-2"))  # the alias moves on
    answer_invocations(aws_endpoint, self_test_report(f"{stack['ModelPrefixUri']}registry-2/"))

    assert run(deploy_script.main, champion) == 0

    variables = function_config(client)["Configuration"]["Environment"]["Variables"]
    assert variables["MODEL_URI"] == f"{stack['ModelPrefixUri']}registry-2/"
    assert (variables["MODEL_VERSION"], variables["MODEL_RUN_ID"]) == second
    err = capsys.readouterr().err
    assert f"models:/ride-duration@champion is models:/ride-duration/{second[0]} (run {second[1]})" in err
    assert (
        f"roll back with: make deploy STAGE={STAGE} IMAGE={image_uri} "
        f"MODEL_URI={stack['ModelPrefixUri']}registry-1/ "
        f'ARGS="--parameter ModelVersion={first[0]} --parameter ModelRunId={first[1]}"'
    ) in err


def test_a_plain_s3_model_after_a_registry_one_names_no_registry_version(
    client: Any, stack: dict[str, str], aws_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = registry(tmp_path, monkeypatch)
    store.register(upload_model(client, stack, "registry-1"))
    plain = upload_model(client, stack, "plain")
    answer_invocations(
        aws_endpoint,
        self_test_report(f"{stack['ModelPrefixUri']}registry-1/"),
        self_test_report(plain),
    )
    assert (
        run(deploy_script.main, ["--stage", STAGE, "--model-uri", "models:/ride-duration/1", *NO_WATCH]) == 0
    )

    assert run(deploy_script.main, ["--stage", STAGE, "--model-uri", plain, *NO_WATCH]) == 0

    variables = function_config(client)["Configuration"]["Environment"]["Variables"]
    assert (variables["MODEL_VERSION"], variables["MODEL_RUN_ID"]) == ("", "")


def test_a_registry_model_stored_outside_s3_is_refused_naming_where_it_is(
    client: Any,
    stack: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = registry(tmp_path, monkeypatch)
    _, run_id = store.register(str(tmp_path / "local-model"))

    assert run(deploy_script.main, ["--stage", STAGE, "--model-uri", f"runs:/{run_id}/model"]) == 1

    last = capsys.readouterr().err.splitlines()[-1]
    assert f"runs:/{run_id}/model is stored at {tmp_path / 'artifacts'}" in last
    assert "which the function cannot read" in last


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--image-uri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration:latest"],
            "not an ECR image URI by digest",
        ),
        (
            ["--image-uri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration@sha256:" + "e" * 64],
            "is not in ECR: run `make publish` first",
        ),
        (
            ["--image-uri", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ride-duration@sha256:" + "e" * 64],
            "Lambda takes images from its own region",
        ),
        ([], f"stack ride-duration-{STAGE} does not exist yet: pass --image-uri"),
        (["--model-uri", "s3://bucket/models/x/"], "an s3:// model can only be set once the stack exists"),
        (
            ["--parameter", "BatchSise=10", "--image-uri", "{image}"],
            "unknown template parameter(s) ['BatchSise']",
        ),
    ],
)
def test_a_first_deploy_without_what_it_needs_says_what_to_do(
    client: Any, image_uri: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [arg.replace("{image}", image_uri) for arg in argv]

    assert run(deploy_script.main, ["--stage", STAGE, *argv]) == 1

    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith("error: ")
    assert message in last_line
    assert client("cloudformation").describe_stacks()["Stacks"] == []


@pytest.mark.parametrize(
    ("model_uri", "message"),
    [
        ("s3://another-bucket/models/x/", "the only prefix the function may read"),
        (
            "{prefix}missing/",
            "no MLmodel file at s3://{bucket}/models/missing/MLmodel: upload the model directory first",
        ),
        ("models:/nope@champion", "cannot resolve models:/nope@champion"),
    ],
)
def test_a_model_the_function_could_not_load_is_refused(
    client: Any,
    stack: dict[str, str],
    model_uri: str,
    message: str,
    *,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model_uri = model_uri.replace("{prefix}", stack["ModelPrefixUri"])
    registry(tmp_path, monkeypatch)

    assert run(deploy_script.main, ["--stage", STAGE, "--model-uri", model_uri]) == 1

    assert message.replace("{bucket}", stack["ModelBucketName"]) in capsys.readouterr().err
    assert (
        function_config(client)["Configuration"]["Environment"]["Variables"]["MODEL_URI"] == "/opt/ml/model"
    )


# What moto cannot do: fail a stack update, or find nothing to update. Stubbed responses.
STACK_ID = f"arn:aws:cloudformation:us-east-1:123456789012:stack/{STACK}/1"
NOW = dt.datetime(2026, 11, 25, 20, 0, tzinfo=dt.UTC)


def described(status: str) -> dict[str, Any]:
    return {
        "Stacks": [
            {
                "StackName": STACK,
                "StackId": STACK_ID,
                "CreationTime": NOW,
                "StackStatus": status,
                "Parameters": [{"ParameterKey": "ImageUri", "ParameterValue": "old"}],
            }
        ]
    }


def event(logical_id: str, status: str, reason: str | None = None) -> dict[str, Any]:
    result = {
        "StackId": STACK_ID,
        "EventId": f"{logical_id}-{status}",
        "StackName": STACK,
        "LogicalResourceId": logical_id,
        "Timestamp": NOW,
        "ResourceStatus": status,
    }
    return result | ({"ResourceStatusReason": reason} if reason else {})


@pytest.fixture
def stubbed() -> Any:
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    with Stubber(cloudformation) as stubber:
        yield cloudformation, stubber
        stubber.assert_no_pending_responses()


def test_a_failed_update_names_the_resources_that_failed(stubbed: Any) -> None:
    cloudformation, stubber = stubbed
    stubber.add_response("describe_stacks", described("UPDATE_COMPLETE"))
    stubber.add_response("update_stack", {"StackId": STACK_ID})
    stubber.add_response("describe_stacks", described("UPDATE_ROLLBACK_COMPLETE"))  # the waiter's first look
    reason = "Resource handler returned message: Source image ... does not exist"
    stubber.add_response(
        "describe_stack_events",
        {
            "StackEvents": [
                event(STACK, "UPDATE_ROLLBACK_COMPLETE"),
                event("Function", "UPDATE_FAILED", reason),
                event(STACK, "UPDATE_IN_PROGRESS", "User Initiated"),
                event("Function", "CREATE_FAILED", "an older failure, not this update's"),
            ]
        },
    )

    with pytest.raises(StackOperationError) as raised:
        deploy(cloudformation, STACK, STAGE, Deployment(image_uri="new"))

    assert str(raised.value) == f"stack {STACK} ended UPDATE_ROLLBACK_COMPLETE: Function: {reason}"


def test_an_update_that_changes_nothing_is_no_error(stubbed: Any) -> None:
    cloudformation, stubber = stubbed
    stubber.add_response("describe_stacks", described("UPDATE_COMPLETE"))
    stubber.add_client_error("update_stack", "ValidationError", "No updates are to be performed.")

    before, after = deploy(cloudformation, STACK, STAGE, Deployment(image_uri="old"))

    assert before is after


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("UPDATE_IN_PROGRESS", "is UPDATE_IN_PROGRESS: wait for it to finish"),
        ("ROLLBACK_COMPLETE", f"aws cloudformation delete-stack --stack-name {STACK}"),
    ],
)
def test_a_stack_that_cannot_be_updated_now_is_left_alone(stubbed: Any, status: str, message: str) -> None:
    cloudformation, stubber = stubbed
    stubber.add_response("describe_stacks", described(status))

    with pytest.raises(PrerequisiteError, match=message):
        deploy(cloudformation, STACK, STAGE, Deployment(image_uri="new"))


def test_a_stack_still_busy_when_the_wait_ends_is_reported_as_such(stubbed: Any) -> None:
    cloudformation, stubber = stubbed
    stubber.add_response("describe_stacks", described("UPDATE_COMPLETE"))
    stubber.add_response("update_stack", {"StackId": STACK_ID})
    stubber.add_response("describe_stacks", described("UPDATE_IN_PROGRESS"))  # the only look at 0 minutes

    with pytest.raises(StackOperationError, match="is still UPDATE_IN_PROGRESS after 0 minutes"):
        deploy(cloudformation, STACK, STAGE, Deployment(image_uri="new"), max_minutes=0)


def test_an_image_stack_is_not_switched_to_a_zip(client: Any, stack: dict[str, str]) -> None:
    zip_package = ZipPackage("artifacts", "ride-duration/function.zip")
    with pytest.raises(PrerequisiteError, match="has PackageType Image; Zip needs a new stack"):
        deploy(client("cloudformation"), STACK, STAGE, Deployment(zip_package=zip_package))


def test_a_zip_deployment_asks_for_the_zip_package_and_no_image() -> None:
    requested = Deployment(zip_package=ZipPackage.from_uri("s3://artifacts/ride-duration/f.zip")).requested()
    assert requested == {
        "PackageType": "Zip",
        "ZipBucket": "artifacts",
        "ZipKey": "ride-duration/f.zip",
        "ImageUri": "",
    }
    with pytest.raises(PrerequisiteError, match="--zip takes s3://<bucket>/<key>"):
        ZipPackage.from_uri("build/ride-duration-arm64.zip")
