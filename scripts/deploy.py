"""Create or update a stage's stack (infra/template.yaml), then release the new function version.

    python -m scripts.deploy --stage dev --image-uri <uri@sha256:...>        # first time
    python -m scripts.deploy --stage dev --model-uri s3://<bucket>/models/<name>/   # promote a model
    python -m scripts.deploy --stage dev --model-uri models:/ride-duration@champion # ... from the registry
    python -m scripts.deploy --stage dev --zip s3://<bucket>/<key>.zip              # a zip package instead
    python -m scripts.deploy --stage dev --image-uri <uri@sha256:...> --preview    # the change set only

What is not given keeps its deployed value (ImageUri, ModelUri and every template parameter),
so a deploy changes only what it names. It prints what changed and the command that undoes it.
The image must be in ECR by digest (`make publish` prints it); an s3:// model must be under the
stack's model prefix (the only place the function may read) and hold an MLmodel file, and is
pinned by the SHA-256 of its files (ModelSha256: the function refuses other files). A runs:/
or models:/ URI is resolved here, through MLFLOW_TRACKING_URI, to the model's s3:// location,
registry version and run id (the function has no mlflow and no tracking server): a moving alias
is pinned to the version it names now.

The stream invokes the alias `live`, never $LATEST. After the stack update, the deploy
publishes a version of the function, invokes it with the self-test event (the model's known
rides; nothing is written) and only then moves the alias to it; a version that fails is deleted
and the alias stays. Then it watches the stage's alarms (--watch-minutes) and moves the alias
back if one fires. `make rollback` moves it back by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import ClientError, WaiterError

from scripts import alarm_watch
from scripts.invoke import LIVE_ALIAS, self_test
from scripts.live_alias import delete_version, description, live_version, move, publish
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
from stream.model_loading import download_s3_model, model_files_sha256
from stream.model_registry import RegistryUnavailableError, artifact_location, is_registry_uri, pin

# A stack whose status ends so is being changed; one in NEEDS_DELETE cannot be updated at all.
BUSY = "_IN_PROGRESS"
NEEDS_DELETE = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"}
WAIT_DELAY_SECONDS = 10
# Stages whose alarms must reach someone unless deployed with ProductionStage=false.
PRODUCTION_STAGE_NAMES = {"prod", "production"}


class StackOperationError(ScriptError):
    """CloudFormation rolled the create or update back (or it did not finish in time)."""


class ReleaseError(ScriptError):
    """The new version failed its check, or an alarm fired after the alias moved to it."""


@dataclass(frozen=True)
class ModelSource:
    """What the function loads (s3:// or a path in the package), what names it in events, and
    the SHA-256 of its files (s3:// only: a path is inside the image or zip, pinned with it)."""

    uri: str
    version: str = ""
    run_id: str = ""
    sha256: str = ""


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
    live_version: str | None = None  # where the alias points now: CloudFormation keeps it there

    def requested(self) -> dict[str, str]:
        values: dict[str, str] = {}
        model = self.model or (ModelSource(self.model_uri) if self.model_uri else None)
        if model:
            # Always all four: a plain s3:// model must not keep the previous model's version.
            values |= {
                "ModelUri": model.uri,
                "ModelVersion": model.version,
                "ModelRunId": model.run_id,
                "ModelSha256": model.sha256,
            }
        values |= dict(self.overrides)
        if self.live_version:
            values["LiveVersion"] = self.live_version
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


def model_sha256(s3: Any, model_uri: str) -> str:
    """The SHA-256 of the files under an s3:// model prefix, as the function computes it after
    fetching them (stream/model_loading.py): fetched here the same way, into a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="model-sha256-") as scratch:
        return model_files_sha256(download_s3_model(s3, model_uri, Path(scratch)))


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


def stack_request(
    cloudformation: Any,
    name: str,
    stage: str,
    deployment: Deployment,
    template: Path,
    *,
    sns: Any | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The stack as it is (None if new) and the create or update request, once it is known the
    stack can take one. `sns` reads the alarm topic's subscriptions for a production stage
    without AlarmEmail."""
    before = describe_stack(cloudformation, name)
    if before is not None:
        check_updatable(before, name)
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
    return before, request


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
    """Create or update the stack and wait; the stack before (None if new) and after."""
    before, request = stack_request(cloudformation, name, stage, deployment, template, sns=sns)
    return before, apply_stack(cloudformation, name, before, request, max_minutes=max_minutes)


def check_updatable(stack: dict[str, Any], name: str) -> None:
    """A stack being changed, or one CloudFormation can only delete, cannot take an update."""
    status = stack["StackStatus"]
    if status.endswith(BUSY):
        raise PrerequisiteError(f"stack {name} is {status}: wait for it to finish, then try again")
    if status in NEEDS_DELETE:
        raise PrerequisiteError(
            f"stack {name} is {status} and cannot be updated: delete it with "
            f"`aws cloudformation delete-stack --stack-name {name}` and try again"
        )


def apply_stack(
    cloudformation: Any,
    name: str,
    before: dict[str, Any] | None,
    request: dict[str, Any],
    *,
    max_minutes: int,
    source: str = "",
) -> dict[str, Any]:
    """Create the stack (`before` None) or update it, wait until done, and return it as it is."""
    if before is None:
        say(f"creating stack {name}{source}")
        cloudformation.create_stack(**request)
        wait(cloudformation, name, "stack_create_complete", max_minutes)
    else:
        say(f"updating stack {name}{source}")
        try:
            cloudformation.update_stack(**request)
        except ClientError as error:
            if "No updates are to be performed" not in str(error):
                raise
            say("nothing to change: the stack already has these values")
            return before
        wait(cloudformation, name, "stack_update_complete", max_minutes)
    after = describe_stack(cloudformation, name)
    if after is None:  # deleted by someone else since the waiter saw it
        raise StackOperationError(f"stack {name} is gone")
    return after


def preview(
    cloudformation: Any,
    name: str,
    stage: str,
    deployment: Deployment,
    *,
    template: Path = TEMPLATE,
    sns: Any | None = None,
) -> list[str]:
    """What a deploy would change, from a CloudFormation change set that is then deleted (never
    executed: a deploy publishes, checks and moves the alias after the stack update, which
    executing the change set by hand would skip)."""
    before, request = stack_request(cloudformation, name, stage, deployment, template, sns=sns)
    change_set = f"preview-{time.strftime('%Y%m%d-%H%M%S')}"
    kind = "CREATE" if before is None else "UPDATE"
    say(f"creating change set {change_set} of stack {name} ({kind})")
    cloudformation.create_change_set(ChangeSetName=change_set, ChangeSetType=kind, **request)
    try:
        with contextlib.suppress(WaiterError):  # FAILED: described below (so is "no changes")
            cloudformation.get_waiter("change_set_create_complete").wait(
                StackName=name, ChangeSetName=change_set, WaiterConfig={"Delay": 5, "MaxAttempts": 120}
            )
        described = cloudformation.describe_change_set(StackName=name, ChangeSetName=change_set)
        changes = [change["ResourceChange"] for change in described.get("Changes", [])]
        reason = described.get("StatusReason", "")
        if described["Status"] == "FAILED" and not changes:
            if "didn't contain changes" in reason or "No updates" in reason:
                return [f"change set {change_set} of stack {name}: no changes"]
            raise StackOperationError(f"change set {change_set} of stack {name} failed: {reason}")
        lines = [f"change set {change_set} of stack {name} ({kind}), not executed:"]
        lines += [_change_line(change) for change in changes]
        return lines
    finally:
        cloudformation.delete_change_set(StackName=name, ChangeSetName=change_set)
        if before is None:  # a CREATE change set leaves an empty stack in REVIEW_IN_PROGRESS
            cloudformation.delete_stack(StackName=name)


def _change_line(change: dict[str, Any]) -> str:
    changed = sorted(
        {
            detail["Target"].get("Name") or detail["Target"].get("Attribute", "")
            for detail in change.get("Details", [])
        }
        - {""}
    )
    replacement = change.get("Replacement")
    return (
        f"  {change['Action']:<7} {change['LogicalResourceId']:<28} {change['ResourceType']:<32}"
        + (f" {', '.join(changed)}" if changed else "")
        + (f" (replacement: {replacement})" if replacement and replacement != "False" else "")
    )


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


def code_of(parameters: dict[str, str]) -> str:
    """The function's code in a version's description: the image digest, or the zip."""
    if parameters.get("PackageType") == "Zip":
        return f"s3://{parameters.get('ZipBucket')}/{parameters.get('ZipKey')}"
    return parameters.get("ImageUri", "").rpartition("@")[2][:19] or "(none)"  # sha256:<12 digits>


@dataclass(frozen=True)
class Watch:
    """How long to watch the alarms after the alias moved (0: not at all), and how often."""

    minutes: float = alarm_watch.DEFAULT_WATCH_MINUTES
    poll_seconds: float | None = None
    sleep: Callable[[float], None] = time.sleep


def go_live(
    lambda_client: Any,
    cloudwatch: Any,
    stage: str,
    after: dict[str, Any],
    *,
    created: bool,
    redeploy: bool = False,
    watch: Watch = Watch(),
) -> str:
    """Publish what the stack deployed, check it, move the alias, watch: the live version."""
    outputs, parameters = outputs_of(after), parameters_of(after)
    function = outputs["FunctionName"]
    live = live_version(lambda_client, function)
    if live is None:
        raise StackOperationError(
            f"{function} has no alias {LIVE_ALIAS!r}: the stack's template is older than this script"
        )
    model = parameters.get("ModelUri", "")
    version = publish(lambda_client, function, description(live, code_of(parameters), model))
    if version.number == live:
        if not created:
            say(f"the function's code and configuration are unchanged: version {live} stays live")
            return live
        # A new stack's first version is live already, but no producer writes to a new stream yet.
        say(f"version {live} (the stack's first): invoking it with the self-test event")
        outcome = self_test(lambda_client, function, live, model)
        for line in outcome.lines():
            say(line)
        if not outcome.passed:
            raise ReleaseError(
                f"the new stack's first version fails its self-test ({outcome.error}): deploy another "
                "image or model (records put meanwhile wait: the mapping retries them)"
            )
        say(f"alias {LIVE_ALIAS}: version {live}")
        return live
    if not version.new and not redeploy:
        raise PrerequisiteError(
            f"version {version.number} ({version.description}) is what the stack describes, and it is not "
            f"live (version {live} is): it was rolled back, or a deploy stopped before moving the alias. "
            "Deploy other code or another model, or pass --redeploy to check it and put it live again"
        )
    say(f"version {version.number}: invoking it with the self-test event")
    outcome = self_test(lambda_client, function, version.number, model)
    for line in outcome.lines():
        say(line)
    if not outcome.passed:
        if version.new:
            delete_version(lambda_client, function, version.number)
        raise ReleaseError(
            f"version {version.number} failed its pre-traffic check ({outcome.error}); alias {LIVE_ALIAS} "
            f"stays on version {live}"
            + (f", version {version.number} was deleted" if version.new else "")
            + ". The stack still names its code and model: deploy a fix, or the previous ones back"
        )
    move(lambda_client, function, version.number, live)
    say(f"alias {LIVE_ALIAS}: version {live} -> {version.number}")
    if watch.minutes <= 0:
        say(f"alarms not watched (--watch-minutes 0); roll back with: make rollback STAGE={stage}")
        return version.number
    try:
        fired = alarm_watch.watch(
            cloudwatch,
            outputs["AlarmTopicArn"],
            watch.minutes,
            name_prefix=f"{function}-",
            say=say,
            poll_seconds=watch.poll_seconds,
            sleep=watch.sleep,
        )
    except KeyboardInterrupt:
        raise ReleaseError(
            f"stopped watching the alarms (Ctrl-C): version {version.number} stays live; roll back with: "
            f"make rollback STAGE={stage}"
        ) from None
    if fired is None:
        say(f"no alarm fired in {watch.minutes:g} minute(s): version {version.number} stays live")
        return version.number
    move(lambda_client, function, live, version.number)
    raise ReleaseError(
        f"alarm {fired.name} went to ALARM at {fired.at} ({fired.reason}); rolled back: alias "
        f"{LIVE_ALIAS}: version {version.number} -> {live}"
    )


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


def live_before(cloudformation: Any, lambda_client: Any, name: str, *, changes_code: bool) -> str | None:
    """The version the alias points to before the deploy (None: no stack, or no alias yet)."""
    existing = describe_stack(cloudformation, name)
    if existing is None:
        return None
    outputs = outputs_of(existing)
    if "LiveAliasArn" not in outputs:
        if changes_code:
            # The update would create the alias on a version of the new code, with no check first.
            raise PrerequisiteError(
                f"stack {name} predates the alias {LIVE_ALIAS!r}: deploy once without --image-uri, --zip "
                "and --model-uri (it adds the alias on the code running now), then deploy the new ones"
            )
        return None
    return live_version(lambda_client, outputs["FunctionName"])


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
    result.add_argument(
        "--preview",
        action="store_true",
        help="create a change set, print it and delete it: nothing is changed",
    )
    result.add_argument(
        "--watch-minutes",
        type=float,
        default=alarm_watch.DEFAULT_WATCH_MINUTES,
        help="after moving the alias, watch the stage's alarms this long and move it back if one "
        "fires (default: %(default)g; 0: do not watch)",
    )
    result.add_argument(
        "--redeploy",
        action="store_true",
        help="put the stack's version live again although it was rolled back from",
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
    if model and urlparse(model.uri).scheme == "s3":
        model = replace(model, sha256=model_sha256(aws.client("s3"), model.uri))
        say(f"{model.uri} pinned by the SHA-256 of its files: {model.sha256}")
    if any(key == "LiveVersion" for key, _ in args.parameter):
        raise PrerequisiteError(
            "LiveVersion is kept by the deploy itself: move the alias with `make rollback`"
        )
    lambda_client = aws.client("lambda")
    live = live_before(
        cloudformation, lambda_client, name, changes_code=bool(args.image_uri or zip_package or model)
    )
    deployment = Deployment(
        args.image_uri, model.uri if model else None, tuple(args.parameter), model, zip_package, live
    )
    if args.preview:
        for line in preview(
            cloudformation, name, args.stage, deployment, template=args.template, sns=aws.client("sns")
        ):
            print(line)
        return 0
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
    wait_for_function(lambda_client, outputs["FunctionName"])
    for line in report(args.stage, before, after):
        say(line)
    go_live(
        lambda_client,
        aws.client("cloudwatch"),
        args.stage,
        after,
        created=before is None,
        redeploy=args.redeploy,
        watch=Watch(minutes=args.watch_minutes),
    )
    for key, value in sorted(outputs.items()):
        print(f"{key}\t{value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
