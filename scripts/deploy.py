"""Create or update a stage's stack (infra/template.yaml) and wait until it is done.

    python -m scripts.deploy --stage dev --image-uri <uri@sha256:...>        # first time
    python -m scripts.deploy --stage dev --model-uri s3://<bucket>/models/<name>/   # promote a model
    python -m scripts.deploy --stage dev --model-uri models:/ride-duration@champion # ... from the registry
    python -m scripts.deploy --stage dev --zip s3://<bucket>/<key>.zip              # a zip package instead
    python -m scripts.deploy --stage dev --image-uri <previous uri@sha256:...>     # roll back code

What is not given keeps its deployed value (ImageUri, ModelUri and every template parameter),
so a deploy changes only what it names. It prints what changed and the command that undoes it.
The image must be in ECR by digest (`make publish` prints it); an s3:// model must be under the
stack's model prefix (the only place the function may read) and hold an MLmodel file. A runs:/
or models:/ URI is resolved here, through MLFLOW_TRACKING_URI, to the model's s3:// location,
registry version and run id (the function has no mlflow and no tracking server): a moving alias
is pinned to the version it names now.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import ClientError, WaiterError

from scripts.publish import parse_image_uri
from scripts.stack import (
    TEMPLATE,
    PrerequisiteError,
    ScriptError,
    add_stack_arguments,
    caller_account,
    chosen_stack_name,
    describe_stack,
    load_template,
    outputs_of,
    parameters_of,
    run,
    say,
    session,
)
from stream.model_registry import RegistryUnavailableError, artifact_location, is_registry_uri, pin

# A stack whose status ends so is being changed; one in NEEDS_DELETE cannot be updated at all.
BUSY = "_IN_PROGRESS"
NEEDS_DELETE = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"}
WAIT_DELAY_SECONDS = 10
# Stages whose alarms must reach someone unless deployed with ProductionStage=false.
PRODUCTION_STAGE_NAMES = {"prod", "production"}


class StackOperationError(ScriptError):
    """CloudFormation rolled the create or update back (or it did not finish in time)."""


@dataclass(frozen=True)
class ModelSource:
    """What the function loads (s3:// or a path in the package) and what names it in events."""

    uri: str
    version: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class ZipPackage:
    """A deployment zip in S3 (`make package`, then uploaded)."""

    bucket: str
    key: str

    @classmethod
    def from_uri(cls, uri: str) -> ZipPackage:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
            raise PrerequisiteError(
                f"--zip takes s3://<bucket>/<key> of an uploaded `make package` zip, got {uri!r}"
            )
        return cls(parsed.netloc, parsed.path.lstrip("/"))


@dataclass(frozen=True)
class Deployment:
    """What a deploy asks for: the code (ImageUri or a zip), the model, other template parameters."""

    image_uri: str | None = None
    model_uri: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()
    model: ModelSource | None = None  # model_uri with its version and run id, once resolved
    zip_package: ZipPackage | None = None

    def requested(self) -> dict[str, str]:
        values: dict[str, str] = {}
        model = self.model or (ModelSource(self.model_uri) if self.model_uri else None)
        if model:
            # Always all three: a plain s3:// model must not keep the previous model's version.
            values |= {"ModelUri": model.uri, "ModelVersion": model.version, "ModelRunId": model.run_id}
        values |= dict(self.overrides)
        if self.image_uri:
            values |= {"ImageUri": self.image_uri, "PackageType": "Image"}
        if self.zip_package:
            values |= {
                "PackageType": "Zip",
                "ZipBucket": self.zip_package.bucket,
                "ZipKey": self.zip_package.key,
                "ImageUri": "",
            }
        return values


def resolve_model(model_uri: str, client: Any | None = None) -> ModelSource:
    """A runs:/ or models:/ URI as the function can load it: the pinned model's s3:// location,
    version and run id. Anything else is taken as it is."""
    if not is_registry_uri(model_uri):
        return ModelSource(model_uri)
    if client is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        from scripts.train import DEFAULT_TRACKING_URI  # noqa: PLC0415 - pandas: only when needed

        os.environ["MLFLOW_TRACKING_URI"] = DEFAULT_TRACKING_URI  # where `make train` registers
    try:
        pinned = pin(model_uri, client)
        location = artifact_location(pinned, client)
    except RegistryUnavailableError as error:
        raise PrerequisiteError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - MlflowException and the store's errors: name them
        raise PrerequisiteError(
            f"cannot resolve {model_uri} (MLFLOW_TRACKING_URI={os.environ.get('MLFLOW_TRACKING_URI', '(unset)')}): "
            f"{getattr(error, 'message', error)}"
        ) from None
    say(f"{model_uri} is {pinned.pinned_uri} (run {pinned.run_id}), stored at {location}")
    if urlparse(location).scheme != "s3":
        raise PrerequisiteError(
            f"{model_uri} is stored at {location}, which the function cannot read: train with "
            "--artifact-location s3://<ModelBucketName>/models/mlflow, or upload the model directory "
            "under the stack's ModelPrefixUri and deploy its s3:// URI"
        )
    return ModelSource(location.rstrip("/") + "/", pinned.version or "", pinned.run_id or "")


def template_parameters(template: Path) -> set[str]:
    return set(load_template(template)["Parameters"])


def stack_parameters(
    requested: dict[str, str], known: set[str], deployed: dict[str, str] | None
) -> list[dict[str, str]]:
    """Requested values; for an existing stack, every other parameter at its deployed value.

    Passed explicitly rather than as UsePreviousValue (the same thing for a template without
    NoEcho parameters), so the request says everything the stack will run with. A parameter
    new in the template and not requested takes its default.
    """
    unknown = sorted(set(requested) - known)
    if unknown:
        raise PrerequisiteError(f"unknown template parameter(s) {unknown}: the template has {sorted(known)}")
    values = {key: value for key, value in (deployed or {}).items() if key in known}
    values.update(requested)
    return [{"ParameterKey": key, "ParameterValue": value} for key, value in sorted(values.items())]


def check_image(ecr: Any, image_uri: str, account: str, region: str) -> None:
    """The image must exist in ECR (Lambda would fail the deploy minutes later otherwise)."""
    image = parse_image_uri(image_uri)
    if (image["account"], image["region"]) != (account, region):
        raise PrerequisiteError(
            f"image {image_uri} is in {image['account']}/{image['region']}, the stack in {account}/{region}: "
            "Lambda takes images from its own region; publish there"
        )
    try:
        ecr.describe_images(repositoryName=image["repository"], imageIds=[{"imageDigest": image["digest"]}])
    except ClientError as error:
        if error.response["Error"]["Code"] in ("ImageNotFoundException", "RepositoryNotFoundException"):
            raise PrerequisiteError(f"image {image_uri} is not in ECR: run `make publish` first") from None
        raise


def check_model_uri(s3: Any, model_uri: str, outputs: dict[str, str] | None) -> None:
    """An s3:// model must be where the function may read it, and be an MLflow model. A path is
    one inside the image or zip; runs:/ and models:/ are resolved to s3:// before (resolve_model)."""
    scheme = urlparse(model_uri).scheme
    if scheme != "s3":
        return
    if outputs is None:
        raise PrerequisiteError(
            "an s3:// model can only be set once the stack exists: deploy first without --model-uri "
            "(the model baked into the image), upload the model to the stack's ModelPrefixUri, then deploy it"
        )
    prefix = outputs["ModelPrefixUri"]
    if not model_uri.startswith(prefix):
        raise PrerequisiteError(f"{model_uri} is outside {prefix}, the only prefix the function may read")
    parsed = urlparse(model_uri)
    key = parsed.path.lstrip("/").rstrip("/") + "/MLmodel"
    try:
        s3.head_object(Bucket=parsed.netloc, Key=key)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            raise PrerequisiteError(
                f"no MLmodel file at s3://{parsed.netloc}/{key}: upload the model directory first "
                f"(aws s3 sync model {model_uri.rstrip('/')}/)"
            ) from None
        raise


def check_zip(s3: Any, package: ZipPackage) -> None:
    """The zip must be in S3 (Lambda would fail the deploy minutes later otherwise)."""
    try:
        s3.head_object(Bucket=package.bucket, Key=package.key)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise PrerequisiteError(
                f"no zip at s3://{package.bucket}/{package.key}: `make package`, then "
                f"aws s3 cp build/<the zip> s3://{package.bucket}/{package.key}"
            ) from None
        raise


def production_default(stage: str, deployed: dict[str, str] | None) -> dict[str, str]:
    """ProductionStage=true for a stage named prod when neither the stack nor the deploy says."""
    if stage in PRODUCTION_STAGE_NAMES and "ProductionStage" not in (deployed or {}):
        return {"ProductionStage": "true"}
    return {}


def confirmed_subscriptions(sns: Any, topic_arn: str | None) -> int:
    """Subscriptions of the alarm topic that deliver (an unconfirmed e-mail does not)."""
    if sns is None or not topic_arn:
        return 0
    pages = sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn)
    return sum(
        1
        for page in pages
        for subscription in page["Subscriptions"]
        if subscription["SubscriptionArn"] not in ("PendingConfirmation", "Deleted")
    )


def check_alarm_subscriber(stage: str, values: dict[str, str], subscribers: Callable[[], int]) -> None:
    """A production stage's alarms must reach someone: AlarmEmail, or a subscription made on its
    topic outside the stack (an HTTPS endpoint, a chat integration). One line if not."""
    if values.get("ProductionStage") != "true" or values.get("AlarmEmail") or subscribers() > 0:
        return
    raise PrerequisiteError(
        f"stage {stage} is a production stage and nobody would receive its alarms: deploy with "
        f'ARGS="--parameter AlarmEmail=<on-call address>", or subscribe an endpoint to the topic '
        f"ride-duration-alarms-{stage} first"
    )


def failure_reasons(cloudformation: Any, name: str) -> list[str]:
    """Why the last create or update failed: its resources' *_FAILED events, oldest first."""
    reasons = []
    for page in cloudformation.get_paginator("describe_stack_events").paginate(StackName=name):
        for event in page["StackEvents"]:  # newest first, back to the operation's start
            if event["ResourceStatus"].endswith("_FAILED") and event.get("ResourceStatusReason"):
                reasons.append(f"{event['LogicalResourceId']}: {event['ResourceStatusReason']}")
            if event["LogicalResourceId"] == name and event.get("ResourceStatusReason") == "User Initiated":
                return list(reversed(reasons))
    return list(reversed(reasons))


def wait(cloudformation: Any, name: str, waiter_name: str, max_minutes: int) -> None:
    attempts = max(1, max_minutes * 60 // WAIT_DELAY_SECONDS)
    try:
        cloudformation.get_waiter(waiter_name).wait(
            StackName=name, WaiterConfig={"Delay": WAIT_DELAY_SECONDS, "MaxAttempts": attempts}
        )
    except WaiterError as error:
        status = (error.last_response or {}).get("Stacks", [{}])[0].get("StackStatus", "unknown")
        if status.endswith(BUSY):
            raise StackOperationError(
                f"stack {name} is still {status} after {max_minutes} minutes: follow it in the "
                "CloudFormation console, then deploy again"
            ) from None
        detail = "; ".join(failure_reasons(cloudformation, name)[:3]) or str(error)
        raise StackOperationError(f"stack {name} ended {status}: {detail}") from None


def deploy(
    cloudformation: Any,
    name: str,
    stage: str,
    deployment: Deployment,
    *,
    template: Path = TEMPLATE,
    max_minutes: int = 30,
    sns: Any | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Create or update the stack and wait; the stack before (None if new) and after. `sns`
    reads the alarm topic's subscriptions for a production stage without AlarmEmail."""
    before = describe_stack(cloudformation, name)
    if before is not None:
        status = before["StackStatus"]
        if status.endswith(BUSY):
            raise PrerequisiteError(f"stack {name} is {status}: wait for it to finish, then deploy again")
        if status in NEEDS_DELETE:
            raise PrerequisiteError(
                f"stack {name} is {status} and cannot be updated: delete it with "
                f"`aws cloudformation delete-stack --stack-name {name}` and deploy again"
            )
    elif not (deployment.image_uri or deployment.zip_package):
        raise PrerequisiteError(
            f"stack {name} does not exist yet: pass --image-uri (what `make publish` printed) or --zip"
        )

    known = template_parameters(template)
    deployed = parameters_of(before) if before is not None else None
    defaults = production_default(stage, deployed) if "ProductionStage" in known else {}
    requested = {"Stage": stage, **defaults, **deployment.requested()}
    package_type = (deployed or {}).get("PackageType", "Image")
    if deployed is not None and requested.get("PackageType", package_type) != package_type:
        # Lambda cannot change a function's package type; CloudFormation would have to replace
        # the function, which it refuses for a named one, after minutes of rollback.
        raise PrerequisiteError(
            f"stack {name} has PackageType {package_type}; {requested['PackageType']} needs a new "
            "stack (another --stage), or delete this one first"
        )
    parameters = stack_parameters(requested, known, deployed)
    topic = outputs_of(before).get("AlarmTopicArn") if before is not None else None
    check_alarm_subscriber(
        stage,
        {p["ParameterKey"]: p["ParameterValue"] for p in parameters},
        lambda: confirmed_subscriptions(sns, topic),
    )
    request = {
        "StackName": name,
        "TemplateBody": template.read_text(),
        "Parameters": parameters,
        # The template creates an IAM role (unnamed: CAPABILITY_IAM, not NAMED_IAM).
        "Capabilities": ["CAPABILITY_IAM"],
        "Tags": [{"Key": "project", "Value": "ride-duration"}, {"Key": "stage", "Value": stage}],
    }
    if before is None:
        say(f"creating stack {name}")
        cloudformation.create_stack(**request)
        wait(cloudformation, name, "stack_create_complete", max_minutes)
    else:
        say(f"updating stack {name}")
        try:
            cloudformation.update_stack(**request)
        except ClientError as error:
            if "No updates are to be performed" not in str(error):
                raise
            say("nothing to change: the stack already has these values")
            return before, before
        wait(cloudformation, name, "stack_update_complete", max_minutes)
    after = describe_stack(cloudformation, name)
    if after is None:  # deleted by someone else since the waiter saw it
        raise StackOperationError(f"stack {name} is gone")
    return before, after


def wait_for_function(lambda_client: Any, function_name: str) -> None:
    """CloudFormation is done; the function's new code is live once its update has finished."""
    lambda_client.get_waiter("function_updated_v2").wait(
        FunctionName=function_name, WaiterConfig={"Delay": 5, "MaxAttempts": 60}
    )


def report(stage: str, before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """What changed, and the command that puts the previous values back."""
    old = parameters_of(before) if before else {}
    new = parameters_of(after)
    lines = []
    keys = (
        ("ImageUri", "ZipKey", "ModelUri", "ModelVersion")
        if new.get("PackageType") == "Zip"
        else ("ImageUri", "ModelUri", "ModelVersion")
    )
    for key in keys:
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {old.get(key, '(new stack)')} -> {new.get(key)}")
        else:
            lines.append(f"{key}: {new.get(key)} (unchanged)")
    if before and any(old.get(k) != new.get(k) for k in keys):
        lines.append(f"roll back with: {rollback_command(stage, old)}")
    return lines


def rollback_command(stage: str, old: dict[str, str]) -> str:
    """The deploy that restores the previous code and model, with the model's version and run."""
    if old.get("PackageType") == "Zip":
        command = f"make deploy STAGE={stage} MODEL_URI={old['ModelUri']}"
        arguments = [f"--zip s3://{old['ZipBucket']}/{old['ZipKey']}"]
    else:
        command = f"make deploy STAGE={stage} IMAGE={old['ImageUri']} MODEL_URI={old['ModelUri']}"
        arguments = []
    arguments += [f"--parameter {key}={old[key]}" for key in ("ModelVersion", "ModelRunId") if old.get(key)]
    return command + (f' ARGS="{" ".join(arguments)}"' if arguments else "")


def key_value(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.deploy",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Other template parameters: --parameter ShardCount=2 --parameter AlarmEmail=you@example.com "
        "(a stage named prod needs a subscriber to its alarms: AlarmEmail or one on its topic)",
    )
    add_stack_arguments(result)
    result.add_argument("--image-uri", help="ECR image by digest (required to create the stack)")
    result.add_argument(
        "--model-uri",
        help="MODEL_URI of the function: s3://<bucket>/models/<name>/, /opt/ml/model (the baked model), "
        "or runs:/ and models:/ (resolved here through MLFLOW_TRACKING_URI to their s3:// location)",
    )
    result.add_argument(
        "--zip",
        metavar="S3_URI",
        help="deploy this `make package` zip (uploaded to S3) instead of an image: python3.13 with SnapStart",
    )
    result.add_argument(
        "--parameter",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another template parameter",
    )
    result.add_argument("--template", type=Path, default=TEMPLATE, help="default: %(default)s")
    result.add_argument(
        "--max-minutes", type=int, default=30, help="give up waiting after this (default: 30)"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    aws = session(args)
    account = caller_account(aws.client("sts"))
    cloudformation = aws.client("cloudformation")
    name = chosen_stack_name(args)
    say(f"account {account}, region {aws.region_name}, stack {name}")
    if args.image_uri and args.zip:
        raise PrerequisiteError("pass --image-uri or --zip, not both")
    if args.image_uri:
        check_image(aws.client("ecr"), args.image_uri, account, aws.region_name)
    zip_package = ZipPackage.from_uri(args.zip) if args.zip else None
    if zip_package:
        check_zip(aws.client("s3"), zip_package)
    model = None
    if args.model_uri:
        model = resolve_model(args.model_uri)
        existing = describe_stack(cloudformation, name)
        check_model_uri(aws.client("s3"), model.uri, outputs_of(existing) if existing else None)
    deployment = Deployment(
        args.image_uri, model.uri if model else None, tuple(args.parameter), model, zip_package
    )
    before, after = deploy(
        cloudformation,
        name,
        args.stage,
        deployment,
        template=args.template,
        max_minutes=args.max_minutes,
        sns=aws.client("sns"),
    )
    outputs = outputs_of(after)
    wait_for_function(aws.client("lambda"), outputs["FunctionName"])
    for line in report(args.stage, before, after):
        say(line)
    for key, value in sorted(outputs.items()):
        print(f"{key}\t{value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
